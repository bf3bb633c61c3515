//! The circuit breaker on a cluster of a dozen real nodes (its own: `/tmp/sgpu-cluster-breaker`,
//! 12 slurmd x 1 simulated GPU, ports 17317+): every node's GPU falls off the bus in the same
//! second (a bad driver rollout), with a limit of 3 (`breaker_max_fraction = 0.25`): at most
//! 3 end drained and the others' healthd report the breaker open; `sgpu breaker reset` hands
//! the drains to the admins and the breaker lets the next ones through, again at most 3; and
//! a slow storm (one node every 1.5 s, longer than the old time window's reach into the
//! drains) is capped the same. The cluster is brought down at the end (12 slurmd and 12
//! healthd would load the CI machine for the tests after it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sgpu_tests::cluster::repo_root;
use sgpu_tests::sgpu::{self, node_files};
use sgpu_tests::{Cluster, Record, node_state, poll};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIR: &str = "/tmp/sgpu-cluster-breaker";
const NODES: usize = 12;
const LIMIT: usize = 3;

fn sgpu_drained(r: &Record) -> bool {
    node_state(r).1 && r.get("Reason").starts_with("sgpu:")
}

/// Brings the cluster down (also when the test fails).
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("tests/cluster/down"))
            .arg("--keep-munge")
            .env("SGPU_CLUSTER_DIR", DIR)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Stops every node's healthd at once when dropped (before the nodes are restored, so no
/// healthd drains a node again while the test cleans up; the cluster goes down after).
struct Quiet<'a>(&'a Cluster, Vec<String>);

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        let cluster = self.0;
        std::thread::scope(|s| {
            for n in &self.1 {
                s.spawn(move || sgpu::stop_healthd(cluster, n));
            }
        });
    }
}

/// Every node's sgpu.toml with the breaker at 25 % (limit 3 of 12); healthd restarted
/// (all at once: one by one, their shutdowns add up to many seconds).
fn limit_three(cluster: &Cluster, nodes: &[String]) -> TestResult {
    let mut changed = Vec::new();
    for n in nodes {
        let f = node_files(cluster, n);
        let text = std::fs::read_to_string(&f.config)?;
        let new = text.replace("breaker_max_fraction = 0.10", "breaker_max_fraction = 0.25");
        if new != text {
            std::fs::write(&f.config, new)?;
            changed.push(n.clone());
        }
    }
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = changed
            .iter()
            .map(|n| {
                s.spawn(move || {
                    sgpu::stop_healthd(cluster, n)
                        .and_then(|()| sgpu::start_healthd(cluster, n))
                        .map_err(|e| format!("{n}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panic".into())))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(())
}

fn healthd_state(cluster: &Cluster, node: &str) -> String {
    std::fs::read_to_string(
        node_files(cluster, node)
            .state_dir
            .join("healthd-state.toml"),
    )
    .unwrap_or_default()
}

/// Whether `node`'s healthd has judged its failure: it holds the node drained (`[drained]`
/// in its state file, written once the recount kept the drain) or its breaker is open.
fn judged(cluster: &Cluster, node: &str) -> bool {
    let s = healthd_state(cluster, node);
    s.contains("[drained]") || s.contains("[breaker_open]")
}

/// Waits until every failing node has been judged and returns the nodes drained by sgpu.
fn settled(
    cluster: &Cluster,
    failing: &[String],
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    poll(
        Duration::from_secs(40),
        "every failing node drained or refused",
        || {
            if !failing.iter().all(|n| judged(cluster, n)) {
                return Ok(None);
            }
            Ok(Some(held(cluster, failing)?))
        },
    )
}

/// Waits until no healthd remembers a drain or an open breaker (after a restore).
fn forgotten(cluster: &Cluster, nodes: &[String]) -> TestResult {
    poll(
        Duration::from_secs(30),
        "healthd to forget the last storm",
        || Ok((!nodes.iter().any(|n| judged(cluster, n))).then_some(())),
    )?;
    Ok(())
}

/// How many nodes are drained with an sgpu reason right now.
fn held(cluster: &Cluster, nodes: &[String]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut v = Vec::new();
    for n in nodes {
        if sgpu_drained(&cluster.node(n)?) {
            v.push(n.clone());
        }
    }
    Ok(v)
}

/// Runs `sgpu --config=CONFIG ARGS`: (exit code, stdout, stderr).
fn sgpu_cli(
    cluster: &Cluster,
    config: &Path,
    args: &[&str],
) -> Result<(i32, String, String), Box<dyn std::error::Error>> {
    let bin: PathBuf = sgpu::cargo_bin("sgpu-cli", "sgpu")?;
    let out = cluster
        .command(&bin.to_string_lossy())
        .arg(format!("--config={}", config.display()))
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Injects XID 79 on every node of `nodes` at once (one thread each).
fn storm(cluster: &Cluster, nodes: &[String]) {
    std::thread::scope(|s| {
        for n in nodes {
            s.spawn(move || {
                let _ = sgpu::update_gpus(cluster, n, |st| {
                    st.inject_xid(0, 79);
                });
            });
        }
    });
}

#[test]
fn a_dozen_nodes_failing_together_drain_at_most_the_limit() -> TestResult {
    let start = Instant::now();
    let _down = Down;
    let cluster = Cluster::up_in(
        Path::new(DIR),
        &[
            ("SGPU_CLUSTER_NODES", "12"),
            ("SGPU_CLUSTER_GPUS", "1"),
            ("SGPU_CLUSTER_PORT", "17317"),
        ],
    )?;
    eprintln!(
        "tests/cluster/up + sgpu install, {NODES} nodes: {} ms",
        start.elapsed().as_millis()
    );
    let _lock = cluster.lock_exclusive()?;
    let nodes = cluster.nodes()?;
    assert_eq!(nodes.len(), NODES, "{nodes:?}");
    limit_three(&cluster, &nodes)?;
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let _restore = sgpu::Restore::new(&cluster, &names);
    let _quiet = Quiet(&cluster, nodes.clone());
    // the cluster is this test's alone: start from healthy GPUs and nodes in service
    for n in &nodes {
        sgpu::reset_gpus(&cluster, n)?;
        if node_state(&cluster.node(n)?).1 {
            cluster.output(
                "scontrol",
                &["update", &format!("NodeName={n}"), "State=RESUME"],
            )?;
        }
    }
    for n in &nodes {
        cluster.wait_node(n, Duration::from_secs(30), "in service", |r| {
            !node_state(r).1
        })?;
    }
    forgotten(&cluster, &nodes)?;
    eprintln!(
        "{NODES}-node cluster up with healthd on every node: {} ms",
        start.elapsed().as_millis()
    );

    // the same second on every node
    storm(&cluster, &nodes);
    let drained = settled(&cluster, &nodes)?;
    eprintln!("same-second storm: drained {drained:?}");
    assert!(
        (1..=LIMIT).contains(&drained.len()),
        "at most {LIMIT} drained, got {drained:?}"
    );
    for n in nodes.iter().filter(|n| !drained.contains(n)) {
        let state = healthd_state(&cluster, n);
        assert!(state.contains("[breaker_open]"), "{n}: {state}");
        let log = std::fs::read_to_string(node_files(&cluster, n).healthd_log)?;
        assert!(log.contains("circuit breaker open:"), "{n} logs it");
    }
    // it holds: a few more runs change nothing
    std::thread::sleep(Duration::from_secs(2 * sgpu::HEALTHD_INTERVAL_S));
    assert_eq!(held(&cluster, &nodes)?, drained, "the held set is stable");
    // what the admin sees
    let config = node_files(&cluster, &nodes[0]).config;
    let (code, status, err) = sgpu_cli(&cluster, &config, &["breaker", "status", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&status)?;
    let cluster_row = &rows[0];
    assert_eq!(cluster_row["scope"], "cluster", "{status}");
    assert_eq!(cluster_row["held"], drained.len(), "{status}");
    assert_eq!(cluster_row["limit"], LIMIT, "{status}");
    let refused = nodes
        .iter()
        .find(|n| !drained.contains(n))
        .ok_or("no refused node")?;
    let (_, body) = sgpu::healthd_get(&cluster, refused, "/status")?;
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(doc["breaker"]["open"], true, "{body}");
    let healthd = format!(
        "--healthd={refused}=http://{}",
        sgpu::healthd_status_addr(&cluster, refused)?
    );
    let (code, status, err) =
        sgpu_cli(&cluster, &config, &["status", refused, "--json", &healthd])?;
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&status)?;
    let shown = rows[0]["breaker"].as_str().unwrap_or("");
    assert!(
        shown.starts_with("open (cluster: 3 of 12 nodes held drained by sgpu, limit 3)"),
        "sgpu status: {status}"
    );

    // the admin takes the drains over: they stop counting, the next ones drain, again capped
    let (code, out, err) = sgpu_cli(&cluster, &config, &["breaker", "reset"])?;
    // this cluster runs no acctd: the change stands, the history is not recorded (exit 1)
    assert!(
        code == 0 || (code == 1 && err.contains("the Slurm change stands")),
        "{code}: {err}"
    );
    assert_eq!(
        out.matches("handed to the admins").count(),
        drained.len(),
        "{out}"
    );
    for n in &drained {
        let r = cluster.node(n)?;
        assert!(
            node_state(&r).1
                && r.get("Reason").starts_with("sgpu-admin(")
                && r.get("Reason").contains("breaker reset: sgpu:"),
            "{r:?}"
        );
    }
    let rest: Vec<String> = nodes
        .iter()
        .filter(|n| !drained.contains(n))
        .cloned()
        .collect();
    let second = poll(Duration::from_secs(30), "the next nodes to drain", || {
        let h = held(&cluster, &rest)?;
        Ok((!h.is_empty()).then_some(h))
    })?;
    std::thread::sleep(Duration::from_secs(2 * sgpu::HEALTHD_INTERVAL_S + 2));
    let second_final = held(&cluster, &rest)?;
    eprintln!("after breaker reset: drained {second_final:?} (first seen {second:?})");
    assert!(
        (1..=LIMIT).contains(&second_final.len()),
        "{second_final:?}"
    );

    // everything back, then a slow storm: one node every 1.5 s
    for n in &nodes {
        sgpu::reset_gpus(&cluster, n)?;
        if node_state(&cluster.node(n)?).1 {
            cluster.output(
                "scontrol",
                &["update", &format!("NodeName={n}"), "State=RESUME"],
            )?;
        }
    }
    for n in &nodes {
        cluster.wait_node(n, Duration::from_secs(30), "in service", |r| {
            !node_state(r).1
        })?;
    }
    forgotten(&cluster, &nodes)?;
    let slow = Instant::now();
    for n in &nodes {
        sgpu::update_gpus(&cluster, n, |st| {
            st.inject_xid(0, 79);
        })?;
        std::thread::sleep(Duration::from_millis(1500));
    }
    let drained = settled(&cluster, &nodes)?;
    eprintln!(
        "slow storm over {} ms: drained {drained:?}",
        slow.elapsed().as_millis()
    );
    assert!((1..=LIMIT).contains(&drained.len()), "{drained:?}");
    eprintln!("breaker test total: {} ms", start.elapsed().as_millis());
    Ok(())
}
