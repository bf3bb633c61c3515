//! `sgpu drain`, `sgpu resume`, `sgpu status` and `sgpu history` on the real test cluster,
//! with healthd's simulated GPUs and a real sgpu-acctd authenticating through the system
//! munged.
//!
//! Every test takes the cluster's exclusive lock (it changes node states) and restores the
//! nodes it touched ([`sgpu::Restore`]).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use sgpu_tests::acctd::Acctd;
use sgpu_tests::sgpu::{self, HEALTHD_INTERVAL_S};
use sgpu_tests::{Cluster, node_state};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const INTERVAL: Duration = Duration::from_secs(HEALTHD_INTERVAL_S);

/// The `sgpu` command wired to the test cluster: its scontrol (via `SLURM_CONF`), each
/// node's healthd and the given acctd.
struct Sgpu {
    bin: PathBuf,
    healthd: Vec<String>,
    acctd: String,
}

impl Sgpu {
    fn new(cluster: &Cluster, acctd: &Acctd) -> Result<Sgpu, Box<dyn std::error::Error>> {
        let mut healthd = Vec::new();
        for node in cluster.nodes()? {
            let addr = sgpu::healthd_status_addr(cluster, &node)?;
            healthd.push(format!("--healthd={node}=http://{addr}"));
        }
        Ok(Sgpu {
            bin: sgpu::cargo_bin("sgpu-cli", "sgpu")?,
            healthd,
            acctd: acctd.url(),
        })
    }

    /// Runs `sgpu ARGS` (as root, or as `user`).
    fn run_as(
        &self,
        cluster: &Cluster,
        user: Option<&str>,
        args: &[&str],
    ) -> Result<Output, Box<dyn std::error::Error>> {
        let mut cmd = match user {
            Some(u) => {
                let mut c = cluster.command("runuser");
                c.args(["-u", u, "--"]).arg(&self.bin);
                c
            }
            None => cluster.command(&self.bin.to_string_lossy()),
        };
        cmd.arg(format!("--acctd={}", self.acctd))
            .args(args)
            .args(&self.healthd)
            // no sgpu.toml on the "admin host": defaults
            .env("SGPU_CONFIG", "/nonexistent/sgpu.toml")
            .env_remove("SUDO_USER")
            .env_remove("SGPU_ACCTD_AUTH");
        let out = cmd.output()?;
        eprintln!(
            "$ sgpu {}\n{}{}(exit {:?})",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        Ok(out)
    }

    fn run(&self, cluster: &Cluster, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
        self.run_as(cluster, None, args)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sinfo -R` lines: (node, reason).
fn sinfo_reasons(cluster: &Cluster) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let out = cluster.output("sinfo", &["-R", "-N", "-h", "-o", "%N|%E"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(n, r)| (n.trim().to_string(), r.trim().to_string()))
        .collect())
}

fn ready(cluster: &Cluster, nodes: &[&str]) -> TestResult {
    for node in nodes {
        assert!(
            sgpu::healthd_pid(cluster, node).is_some(),
            "sgpu-healthd does not run on {node}"
        );
        cluster.wait_node(node, Duration::from_secs(10), "in service", |r| {
            !node_state(r).1
        })?;
    }
    Ok(())
}

#[test]
fn drain_two_nodes_refuse_an_admin_drain_then_force_and_show_the_history() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let _restore = sgpu::Restore::new(&cluster, &["node1", "node2"]);
    ready(&cluster, &["node1", "node2"])?;
    let acctd = Acctd::start(&[])?;
    let sgpu = Sgpu::new(&cluster, &acctd)?;

    // drain a hostlist of two nodes
    let out = sgpu.run(&cluster, &["drain", "node[1-2]", "--reason", "swap PSU 7"])?;
    assert!(out.status.success(), "{}", text(&out));
    let reason = "sgpu-admin(root): swap PSU 7";
    for node in ["node1", "node2"] {
        let rec = cluster.node(node)?;
        assert!(node_state(&rec).1, "{node} not drained: {rec:?}");
        assert_eq!(
            rec.get("Reason").split(" [").next(),
            Some(reason),
            "{rec:?}"
        );
    }
    let reasons = sinfo_reasons(&cluster)?;
    for node in ["node1", "node2"] {
        assert!(
            reasons.iter().any(|(n, r)| n == node && r == reason),
            "sinfo -R lacks {node}: {reasons:?}"
        );
    }
    // healthd leaves an admin's drain alone (its reason does not start with "sgpu:")
    std::thread::sleep(INTERVAL * 2);
    assert!(
        node_state(&cluster.node("node1")?).1,
        "healthd resumed an admin drain"
    );

    // status shows state, reason, who drained, health and breaker
    let out = sgpu.run(&cluster, &["status", "node[1-2]"])?;
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    for node in ["node1", "node2"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(node))
            .ok_or_else(|| format!("no {node} in status:\n{status}"))?;
        assert!(line.contains("DRAIN"), "{line}");
        assert!(line.contains(reason), "{line}");
        assert!(line.contains("root@"), "who drained: {line}");
        assert!(line.contains("healthy"), "healthd verdict: {line}");
        assert!(line.contains("closed"), "breaker: {line}");
    }

    // an admin drain through plain scontrol: refused without --force, resumed with it
    cluster.output(
        "scontrol",
        &[
            "update",
            "NodeName=node2",
            "State=DRAIN",
            "Reason=rack 4 maintenance",
        ],
    )?;
    let out = sgpu.run(&cluster, &["resume", "node2"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains(
            "node2: not resumed: drained by root for another reason (\"rack 4 maintenance\")"
        ),
        "{msg}"
    );
    assert!(node_state(&cluster.node("node2")?).1, "node2 was resumed");
    let out = sgpu.run(
        &cluster,
        &["resume", "node2", "--force", "--reason", "rack done"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !node_state(&cluster.node("node2")?).1,
        "node2 still drained"
    );
    // sgpu drain's own reason is an admin's too
    let out = sgpu.run(&cluster, &["resume", "node1"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(node_state(&cluster.node("node1")?).1, "node1 was resumed");
    let out = sgpu.run(&cluster, &["resume", "node1", "--force"])?;
    assert!(out.status.success(), "{}", text(&out));

    // the history: four events, with user and reason, oldest first
    let out = sgpu.run(&cluster, &["history", "node[1-2]", "--json"])?;
    assert!(out.status.success(), "{}", text(&out));
    let events: Vec<sgpu_spool::NodeEvent> = serde_json::from_slice(&out.stdout)?;
    let seen: Vec<(&str, &str, &str, bool)> = events
        .iter()
        .map(|e| {
            (
                e.node.as_str(),
                e.action.as_str(),
                e.reason.as_str(),
                e.forced,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("node1", "drain", reason, false),
            ("node2", "drain", reason, false),
            ("node2", "resume", "rack done", true),
            ("node1", "resume", "resumed with --force", true),
        ],
        "{events:?}"
    );
    for e in &events {
        assert_eq!(
            (e.uid, e.user.as_str(), e.source.as_str()),
            (0, "root", "sgpu-admin")
        );
    }
    assert_eq!(
        events[2]
            .previous_reason
            .as_deref()
            .map(|r| r.split(" [").next()),
        Some(Some("rack 4 maintenance")),
        "the resume keeps what it overrode: {:?}",
        events[2]
    );
    // a time window: all four are before an hour from now, none after it
    let window = |flags: &[&str]| -> Result<usize, Box<dyn std::error::Error>> {
        let mut args = vec!["history", "node[1-2]", "--json"];
        args.extend_from_slice(flags);
        let out = sgpu.run(&cluster, &args)?;
        assert!(out.status.success(), "{}", text(&out));
        Ok(serde_json::from_slice::<Vec<sgpu_spool::NodeEvent>>(&out.stdout)?.len())
    };
    assert_eq!(window(&["-S", "now-1hours", "-E", "now+1hours"])?, 4);
    assert_eq!(window(&["-S", "now+1hours"])?, 0);
    // the table form, and a plain user may read the history but not write it
    let out = sgpu.run_as(&cluster, Some("sgpu-test-a"), &["history", "node1"])?;
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert_eq!(
        table.lines().count(),
        3,
        "header + node1's two events:\n{table}"
    );
    assert!(
        table.contains("root(0)") && table.contains(reason),
        "{table}"
    );
    // nor may a plain user write to the history directly (their own MUNGE credential)
    // a well-formed credential bound to the body, so the refusal is the user's rights
    let body = r#"{"events": []}"#;
    let payload = sgpu_munge::request::payload("POST", "/v1/history", body.as_bytes());
    let post = format!(
        "cred=$(munge -n -s '{payload}') && curl -s -o /dev/null -w '%{{http_code}}' \
         -H \"Authorization: MUNGE $cred\" -H 'Content-Type: application/json' \
         -d '{body}' {}/v1/history",
        acctd.url()
    );
    let out = cluster
        .command("runuser")
        .args(["-u", "sgpu-test-a", "--", "sh", "-c", &post])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "{}",
        text(&out)
    );
    // a plain user cannot drain (Slurm refuses), so nothing is recorded
    let out = sgpu.run_as(
        &cluster,
        Some("sgpu-test-a"),
        &["drain", "node1", "--reason", "x"],
    )?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !node_state(&cluster.node("node1")?).1,
        "a plain user drained node1"
    );
    let out = sgpu.run(&cluster, &["history", "node1", "--json"])?;
    let after: Vec<sgpu_spool::NodeEvent> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(after.len(), 2, "{after:?}");
    Ok(())
}

#[test]
fn resume_refuses_a_node_whose_gpu_still_fails_and_says_why() -> TestResult {
    let cluster = Cluster::up()?;
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    ready(&cluster, &[node])?;
    let acctd = Acctd::start(&[])?;
    let sgpu = Sgpu::new(&cluster, &acctd)?;
    // node1's healthd sends its records and node history events to this acctd
    let _fwd = sgpu_tests::acctd::forward_to(&cluster, &[node], &acctd.url(), "")?;
    // the restarted healthd watches XIDs once it has run its first check
    let start = std::time::Instant::now();
    while !sgpu::healthd_get(&cluster, node, "/status")
        .is_ok_and(|(code, body)| code == 200 && !body.contains("\"health\":null"))
    {
        assert!(start.elapsed() < Duration::from_secs(20), "healthd not up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // events of earlier tests still in node1's spool are forwarded too: look at ours only
    let t0 = sgpu_spool::now_ms();
    // XID 79 (fallen off the bus): healthd drains the node with an sgpu reason
    sgpu::update_gpus(&cluster, node, |s| {
        s.inject_xid(2, 79);
    })?;
    cluster.wait_node(node, INTERVAL * 5, "drained by sgpu", |r| {
        node_state(r).1 && r.get("Reason").starts_with("sgpu:")
    })?;
    // healthd's run ends (and /status shows it) once the breaker's recount is done, a
    // second or two after Slurm shows the drain
    sgpu_tests::poll(
        INTERVAL * 2,
        "sgpu status to show the failing check",
        || {
            let out = sgpu.run(&cluster, &["status", node])?;
            Ok(text(&out).contains("FAILING: gpu.xid gpu2").then_some(()))
        },
    )?;

    let out = sgpu.run(&cluster, &["resume", node])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("node1: not resumed: sgpu checks still fail on this node: gpu.xid gpu2:"),
        "{msg}"
    );
    assert!(msg.contains("79"), "names the XID: {msg}");
    assert!(
        node_state(&cluster.node(node)?).1,
        "resumed with a failing GPU"
    );
    // healthd's own drain reaches the history (spooled, forwarded); the refusal is no event
    let start = std::time::Instant::now();
    let history = |sgpu: &Sgpu| -> Result<Vec<sgpu_spool::NodeEvent>, Box<dyn std::error::Error>> {
        let out = sgpu.run(&cluster, &["history", node, "--json"])?;
        let all: Vec<sgpu_spool::NodeEvent> = serde_json::from_slice(&out.stdout)?;
        Ok(all.into_iter().filter(|e| e.time_ms >= t0).collect())
    };
    let events = loop {
        let events = history(&sgpu)?;
        if !events.is_empty() || start.elapsed() > Duration::from_secs(20) {
            break events;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (e.action.as_str(), e.source.as_str(), e.uid, e.user.as_str()),
        ("drain", "healthd", 0, "root"),
        "{e:?}"
    );
    assert!(e.reason.starts_with("sgpu: gpu.xid gpu2:"), "{e:?}");
    let left = sgpu_spool::EventSpool::open(sgpu::node_files(&cluster, node).spool_dir)?;
    assert!(
        left.pending()?.is_empty(),
        "forwarded events leave the spool"
    );

    // the GPU replaced: once healthd's checks pass, a plain `sgpu resume` returns the node
    sgpu::reset_gpus(&cluster, node)?;
    let start = std::time::Instant::now();
    loop {
        let out = sgpu.run(&cluster, &["status", node])?;
        if String::from_utf8_lossy(&out.stdout).contains(" healthy ") {
            break;
        }
        assert!(
            start.elapsed() < INTERVAL * 10,
            "healthd never passed its checks again: {}",
            text(&out)
        );
        std::thread::sleep(INTERVAL / 2);
    }
    // (healthd does not resume an XID drain by itself: gpu.xid is not a recoverable check)
    assert!(
        node_state(&cluster.node(node)?).1,
        "still drained before sgpu resume"
    );
    let out = sgpu.run(&cluster, &["resume", node])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!node_state(&cluster.node(node)?).1, "node1 not resumed");
    let events = history(&sgpu)?;
    let last = events.last().ok_or("no events")?;
    assert_eq!(
        (last.action.as_str(), last.source.as_str(), last.forced),
        ("resume", "sgpu-admin", false),
        "{events:?}"
    );
    assert_eq!(last.reason, "resumed: sgpu checks pass");
    assert!(
        last.previous_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("sgpu: gpu.xid gpu2:")),
        "{last:?}"
    );
    Ok(())
}
