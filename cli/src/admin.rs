//! `sgpu drain`, `sgpu resume`, `sgpu status` and `sgpu history`: the admin's view of nodes.
//!
//! - `sgpu drain <hostlist> --reason TEXT` drains through `scontrol` with the reason
//!   `sgpu-admin(<user>): TEXT` (`<user>` is `$SUDO_USER` under sudo, else the caller). It
//!   deliberately does not start with `sgpu:`: healthd resumes only its own `sgpu:` drains,
//!   never an admin's.
//! - `sgpu resume <hostlist> [--force]` resumes a drained node only when its drain is sgpu's
//!   own (`sgpu:`) and its healthd says the checks pass now ([`nodes::resume_decision`]);
//!   any other reason (an admin's, `sgpu drain`'s included) or a failing or unknown check is
//!   refused with the reason, unless `--force`.
//! - `sgpu status [<hostlist>]`: per node Slurm's state, reason and who set it
//!   (`[user@time]`), healthd's verdict and failing checks, and its circuit breaker.
//! - `sgpu breaker status|reset [--partition P]`: how many nodes sgpu holds drained per
//!   scope against the circuit breaker's limit; `reset` hands those drains to the admins
//!   ([`breaker`]), which closes the breaker.
//! - `sgpu history [<hostlist>]`: acctd's node history (every drain/resume made through
//!   `sgpu`; healthd and the prolog report theirs to the same endpoint).
//!
//! Every drain and resume is recorded in acctd ([`acctd::record`]) after Slurm accepted it;
//! if acctd cannot be reached the action stands, the command says so and exits 1.
//!
//! Exit codes: 0 done, 1 some node refused or failed (or the history was not recorded),
//! 3 ([`crate::EXIT_SGPU_ERROR`]) bad usage or configuration.

pub mod acctd;
pub mod breaker;
pub mod healthd;
pub mod nodes;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};
use sgpu_nodelib::slurmctl::Scontrol;
use sgpu_spool::{NodeAction, NodeEvent};

use crate::settings::Settings;

use nodes::{Health, ResumeDecision, SlurmNode};

/// Options every admin command shares.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// scontrol to use (default: on PATH).
    #[arg(long, value_name = "PATH")]
    pub scontrol: Option<PathBuf>,
    /// Where a node's healthd answers: NODE=URL (repeatable) or a template with %n
    /// (default http://%n:<status_listen port of this host's sgpu.toml>).
    #[arg(long = "healthd", value_name = "NODE=URL|TEMPLATE")]
    pub healthd: Vec<String>,
}

/// `sgpu drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Nodes, as a Slurm hostlist (`node[1-4,7]`).
    pub hostlist: String,
    /// Why (shown by `sinfo -R` as `sgpu-admin(<user>): TEXT`).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Shared options.
    #[command(flatten)]
    pub opts: AdminOpts,
}

/// `sgpu resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Nodes, as a Slurm hostlist.
    pub hostlist: String,
    /// Resume even nodes drained for another reason or whose sgpu checks fail.
    #[arg(long)]
    pub force: bool,
    /// Why (kept in the history).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Shared options.
    #[command(flatten)]
    pub opts: AdminOpts,
}

/// `sgpu status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Nodes, as a Slurm hostlist (default: all).
    pub hostlist: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Shared options.
    #[command(flatten)]
    pub opts: AdminOpts,
}

/// `sgpu breaker`.
#[derive(Debug, Args)]
pub struct BreakerArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: BreakerAction,
}

/// `sgpu breaker status|reset`.
#[derive(Debug, clap::Subcommand)]
pub enum BreakerAction {
    /// Per scope (cluster, partitions): nodes held drained by sgpu, the limit, open/closed.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Shared options.
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Hand every sgpu drain to the admins (reason `sgpu-admin(<you>): breaker reset:
    /// ...`): they stop counting, so the breaker closes; the nodes stay drained.
    Reset {
        /// Only the nodes of this partition.
        #[arg(long, value_name = "NAME")]
        partition: Option<String>,
        /// Shared options.
        #[command(flatten)]
        opts: AdminOpts,
    },
}

/// `sgpu history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Nodes, as a Slurm hostlist (default: every node Slurm knows).
    pub hostlist: Option<String>,
    /// At most this many events (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// `-S` and `-E`: only events in that window.
    #[command(flatten)]
    pub window: crate::timespec::WindowArgs,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only the actions taken on jobs (the idle policy's warnings, mails and cancels),
    /// with the job, its owner, the idle GPUs and how long they were idle.
    #[arg(long)]
    pub jobs: bool,
    /// Only the runs of active checks (`[active]`: each run's outcome and measurement).
    #[arg(long, conflicts_with = "jobs")]
    pub active: bool,
    /// Shared options.
    #[command(flatten)]
    pub opts: AdminOpts,
}

/// What the admin commands need from the environment.
struct Env {
    scontrol: Scontrol,
    breaker: sgpu_nodelib::config::BreakerConfig,
    cluster: String,
    healthd: healthd::HealthdUrls,
    acctd_url: String,
    acctd_auth: sgpu_acct_client::ClientAuth,
}

fn env(settings: &Settings, opts: &AdminOpts) -> anyhow::Result<Env> {
    let scontrol = Scontrol::locate(opts.scontrol.as_deref())
        .context("cannot find scontrol; pass --scontrol PATH")?;
    let conf = &settings.config;
    let port = conf
        .status_listen
        .map(|a| a.port())
        .or_else(|| {
            sgpu_nodelib::config::DEFAULT_STATUS_LISTEN
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        })
        .unwrap_or(9411);
    let healthd = healthd::HealthdUrls::new(&opts.healthd, port).map_err(anyhow::Error::msg)?;
    let cluster = sgpu_nodelib::node_events::cluster_name();
    Ok(Env {
        scontrol,
        breaker: conf.breaker,
        cluster,
        healthd,
        acctd_url: settings.acctd_url.clone(),
        acctd_auth: settings.acctd_auth.clone(),
    })
}

fn expand(hostlist: &str) -> anyhow::Result<Vec<String>> {
    let nodes = sgpu_slurm_conf::expand(hostlist)
        .with_context(|| format!("hostlist {hostlist:?}: expected e.g. node[1-4,7]"))?;
    if nodes.is_empty() {
        bail!("hostlist {hostlist:?} names no node");
    }
    Ok(nodes)
}

/// Who is acting: (uid, user name), `$SUDO_USER` under sudo.
fn actor() -> (u32, String) {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let sudo = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty());
    let name = match sudo {
        Some(u) if uid == 0 => u,
        _ => sgpu_spool::passwd::user_name(uid).unwrap_or_else(|| uid.to_string()),
    };
    (uid, name)
}

fn event(env: &Env, node: &SlurmNode, action: NodeAction, reason: String) -> NodeEvent {
    let (uid, user) = actor();
    let time_ms = sgpu_spool::now_ms();
    NodeEvent {
        id: NodeEvent::new_id(&node.name, time_ms),
        cluster: env.cluster.clone(),
        node: node.name.clone(),
        time_ms,
        action,
        source: "sgpu-admin".into(),
        uid,
        user,
        reason,
        previous_reason: node.full_reason(),
        forced: false,
        job: None,
    }
}

/// Looks the nodes up in Slurm; every name must exist.
fn slurm_nodes(env: &Env, names: &[String]) -> anyhow::Result<Vec<SlurmNode>> {
    let found = nodes::show_nodes(env.scontrol.path(), Some(names)).map_err(anyhow::Error::msg)?;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !found.iter().any(|f| &f.name == *n))
        .collect();
    if !missing.is_empty() {
        bail!("Slurm does not know {missing:?}; check the hostlist against `sinfo -N`");
    }
    Ok(found)
}

/// Sends the events to acctd; returns the exit code contribution.
fn record_history(env: &Env, events: &[NodeEvent]) -> i32 {
    if events.is_empty() {
        return 0;
    }
    let r = acctd::client(&env.acctd_url, env.acctd_auth.clone())
        .and_then(|c| acctd::record(&c, events));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "sgpu: warning: the Slurm change stands but is NOT in acctd's history: {e}; \
                 check acctd (--acctd URL)"
            );
            1
        }
    }
}

/// `sgpu drain`.
pub fn drain(settings: &Settings, a: &DrainArgs) -> anyhow::Result<i32> {
    if a.reason.trim().is_empty() {
        bail!("--reason must say why the nodes are drained");
    }
    let names = expand(&a.hostlist)?;
    let env = env(settings, &a.opts)?;
    let (_, user) = actor();
    let reason = nodes::admin_reason(&user, &a.reason);
    let mut code = 0;
    let mut events = Vec::new();
    for node in slurm_nodes(&env, &names)? {
        match env.scontrol.drain(&node.name, &reason) {
            Ok(()) => {
                println!("{}: drained ({reason})", node.name);
                events.push(event(&env, &node, NodeAction::Drain, reason.clone()));
            }
            Err(e) => {
                eprintln!("{}: not drained: {e}", node.name);
                code = 1;
            }
        }
    }
    Ok(code.max(record_history(&env, &events)))
}

/// `sgpu resume`.
pub fn resume(settings: &Settings, a: &ResumeArgs) -> anyhow::Result<i32> {
    let names = expand(&a.hostlist)?;
    let env = env(settings, &a.opts)?;
    let mut code = 0;
    let mut events = Vec::new();
    for node in slurm_nodes(&env, &names)? {
        let health = if node.drained() {
            node_health(&env, &node.name).0
        } else {
            Health::NotChecked
        };
        match nodes::resume_decision(&node, &health, a.force) {
            ResumeDecision::NotDrained => {
                println!("{}: not drained ({}), nothing to do", node.name, node.state);
            }
            ResumeDecision::Refuse(why) => {
                eprintln!("{}: not resumed: {why}", node.name);
                code = 1;
            }
            ResumeDecision::Resume => match env.scontrol.resume(&node.name) {
                Ok(()) => {
                    let forced = a.force
                        && nodes::resume_decision(&node, &health, false) != ResumeDecision::Resume;
                    println!(
                        "{}: resumed{} (was: {})",
                        node.name,
                        if forced { " with --force" } else { "" },
                        node.full_reason().unwrap_or_default()
                    );
                    let why = a.reason.clone().unwrap_or_else(|| {
                        if forced {
                            "resumed with --force".into()
                        } else {
                            "resumed: sgpu checks pass".into()
                        }
                    });
                    let mut e = event(&env, &node, NodeAction::Resume, why);
                    e.forced = forced;
                    events.push(e);
                }
                Err(e) => {
                    eprintln!("{}: not resumed: {e}", node.name);
                    code = 1;
                }
            },
        }
    }
    Ok(code.max(record_history(&env, &events)))
}

/// `sgpu breaker status|reset`.
pub fn breaker(settings: &Settings, a: &BreakerArgs) -> anyhow::Result<i32> {
    match &a.action {
        BreakerAction::Status { json, opts } => {
            let env = env(settings, opts)?;
            let nodes = env.scontrol.nodes().context("cannot list the nodes")?;
            let counts = sgpu_nodelib::breaker::scope_counts(&nodes, &env.breaker);
            if *json {
                let rows: Vec<breaker::StatusRow> = counts
                    .iter()
                    .map(|c| breaker::StatusRow {
                        count: c,
                        breaker: if c.open() { "open" } else { "closed" },
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", table(&breaker::status_rows(&counts)));
            }
            Ok(0)
        }
        BreakerAction::Reset { partition, opts } => {
            let env = env(settings, opts)?;
            let nodes = env.scontrol.nodes().context("cannot list the nodes")?;
            if let Some(p) = partition {
                if !nodes.iter().any(|n| n.partitions.contains(p)) {
                    bail!("no node of Slurm is in partition {p:?}; check `sinfo -s`");
                }
            }
            let (_, user) = actor();
            let held = breaker::held_nodes(&nodes, partition.as_deref());
            if held.is_empty() {
                println!("sgpu holds no node drained: the breaker is closed");
                return Ok(0);
            }
            let mut code = 0;
            let mut events = Vec::new();
            for n in held {
                let old = n.state.reason.clone().unwrap_or_default();
                let reason = breaker::reset_reason(&user, &old);
                match env.scontrol.drain(&n.name, &reason) {
                    Ok(()) => {
                        println!("{}: handed to the admins ({reason})", n.name);
                        let node = SlurmNode {
                            name: n.name.clone(),
                            state: n.state.state.clone(),
                            reason: n.state.reason.clone(),
                            reason_user: None,
                            reason_time: None,
                        };
                        events.push(event(&env, &node, NodeAction::Drain, reason));
                    }
                    Err(e) => {
                        eprintln!("{}: not handed over: {e}", n.name);
                        code = 1;
                    }
                }
            }
            Ok(code.max(record_history(&env, &events)))
        }
    }
}

/// healthd's verdict, breaker and active checks for `node`.
fn node_health(env: &Env, node: &str) -> (Health, Option<String>, Option<String>) {
    match healthd::fetch(&env.healthd, node) {
        Ok(doc) => (
            healthd::health(&doc),
            Some(healthd::breaker(&doc)),
            Some(healthd::active(&doc)),
        ),
        Err(e) => (Health::Unknown(e.to_string()), None, None),
    }
}

fn health_text(h: &Health) -> String {
    match h {
        Health::Passing { verdict } => verdict.clone(),
        Health::Failing(why) => format!("FAILING: {}", why.join("; ")),
        Health::NotChecked => "not checked yet".into(),
        Health::Unknown(e) => format!("unknown ({e})"),
    }
}

/// How many nodes' healthd `sgpu status` asks at once.
pub const STATUS_PARALLEL: usize = 128;

/// `f` over `items` on at most `workers` threads, results in the items' order (`lost` for
/// an item whose worker panicked).
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
    lost: impl Fn() -> R,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<(usize, Option<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)));
                        mine.push((i, r.ok()));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in done {
        if let Some(slot) = slots.get_mut(i) {
            *slot = r;
        }
    }
    slots.into_iter().map(|r| r.unwrap_or_else(&lost)).collect()
}

/// `sgpu status`.
pub fn status(settings: &Settings, a: &StatusArgs) -> anyhow::Result<i32> {
    let env = env(settings, &a.opts)?;
    let list = match &a.hostlist {
        Some(h) => slurm_nodes(&env, &expand(h)?)?,
        None => nodes::show_nodes(env.scontrol.path(), None).map_err(anyhow::Error::msg)?,
    };
    // at most STATUS_PARALLEL healthd asked at once: a dead node costs its timeout once,
    // not once per node, and 10,000 nodes are not 10,000 threads
    let healths: Vec<(Health, Option<String>, Option<String>)> = parallel_map(
        &list,
        STATUS_PARALLEL,
        |n| node_health(&env, &n.name),
        || (Health::Unknown("internal error".into()), None, None),
    );
    if a.json {
        let rows: Vec<Value> = list
            .iter()
            .zip(&healths)
            .map(|(n, (h, b, a))| {
                json!({
                    "node": n.name, "state": n.state, "reason": n.reason,
                    "reason_user": n.reason_user, "reason_time": n.reason_time,
                    "drained_by": n.drained_by(),
                    "health": health_text(h), "breaker": b, "active": a,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let mut rows = vec![
        [
            "NODE", "STATE", "REASON", "BY", "HEALTH", "BREAKER", "ACTIVE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (n, (h, b, a)) in list.iter().zip(&healths) {
        let by = n.drained_by();
        rows.push(vec![
            n.name.clone(),
            n.state.clone(),
            n.reason.clone().unwrap_or_else(|| "-".into()),
            by,
            health_text(h),
            b.clone().unwrap_or_else(|| "-".into()),
            a.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// `sgpu history`.
pub fn history(settings: &Settings, a: &HistoryArgs) -> anyhow::Result<i32> {
    let env = env(settings, &a.opts)?;
    let names = match &a.hostlist {
        Some(h) => expand(h)?,
        None => nodes::show_nodes(env.scontrol.path(), None)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|n| n.name)
            .collect(),
    };
    let client =
        acctd::client(&env.acctd_url, env.acctd_auth.clone()).map_err(anyhow::Error::msg)?;
    let window = a
        .window
        .read(crate::timespec::now_s())
        .map_err(anyhow::Error::msg)?;
    let mut events =
        acctd::history(&client, &names, a.limit, window).map_err(anyhow::Error::msg)?;
    if a.jobs {
        events.retain(|e| e.job.is_some());
    }
    if a.active {
        events.retain(|e| e.action == NodeAction::ActiveCheck);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(0);
    }
    if a.jobs {
        print!("{}", table(&job_action_rows(&events)));
        return Ok(0);
    }
    let mut rows = vec![
        [
            "TIME (UTC)",
            "NODE",
            "ACTION",
            "USER",
            "SOURCE",
            "REASON",
            "BEFORE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &events {
        rows.push(vec![
            utc(e.time_ms),
            e.node.clone(),
            format!(
                "{}{}",
                e.action.as_str(),
                if e.forced { " (forced)" } else { "" }
            ),
            format!("{}({})", e.user, e.uid),
            e.source.clone(),
            e.reason.clone(),
            e.previous_reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// `sgpu history --jobs`' table: one row per action taken on a job.
pub fn job_action_rows(events: &[sgpu_spool::NodeEvent]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "TIME (UTC)",
            "NODE",
            "ACTION",
            "JOB",
            "OWNER",
            "ACCOUNT",
            "GPUS",
            "IDLE MIN",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in events {
        let Some(j) = &e.job else { continue };
        rows.push(vec![
            utc(e.time_ms),
            e.node.clone(),
            format!(
                "{}{}",
                e.action.as_str(),
                if j.dry_run { " (dry run)" } else { "" }
            ),
            if j.run > 0 {
                format!("{} (run {})", j.job_id, j.run)
            } else {
                j.job_id.to_string()
            },
            j.user.clone(),
            j.account.clone().unwrap_or_else(|| "-".into()),
            j.gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            j.idle_minutes.to_string(),
            e.reason.clone(),
        ]);
    }
    rows
}

/// Left-aligned columns separated by two spaces (the last column unpadded).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    format!("{}Z", sgpu_spool::calendar::format_datetime(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order_and_bounds_threads() {
        let items: Vec<u32> = (0..1000).collect();
        let live = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let out = parallel_map(
            &items,
            8,
            |i| {
                let now = live.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                if *i == 500 {
                    panic!("one node's query panics");
                }
                live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                i * 2
            },
            || u32::MAX,
        );
        assert_eq!(out.len(), 1000);
        assert_eq!(out[499], 998);
        assert_eq!(out[500], u32::MAX);
        assert_eq!(out[999], 1998);
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 8);
        assert!(parallel_map(&[] as &[u32], 8, |i| *i, || 0).is_empty());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_435_201_000), "2026-11-23T12:00:01Z");
    }

    #[test]
    fn job_actions_list_the_job_its_owner_and_idle_gpus() {
        use sgpu_spool::{JobAction, NodeAction, NodeEvent};
        let mut e = NodeEvent {
            id: "e1".into(),
            cluster: "c".into(),
            node: "node1".into(),
            time_ms: 1_795_435_201_000,
            action: NodeAction::IdleCancel,
            source: "healthd".into(),
            uid: 0,
            user: "root".into(),
            reason: "GPUs 0,2 idle for 60 minutes: cancelled".into(),
            previous_reason: None,
            forced: false,
            job: Some(JobAction {
                job_id: 42,
                run: 1,
                user: "ann".into(),
                account: Some("phys".into()),
                partition: "gpu".into(),
                gpus: vec![0, 2],
                idle_minutes: 60,
                policy: "util<5% for 3600s".into(),
                dry_run: true,
            }),
        };
        let rows = job_action_rows(std::slice::from_ref(&e));
        assert_eq!(
            rows[1],
            [
                "2026-11-23T12:00:01Z",
                "node1",
                "idle_cancel (dry run)",
                "42 (run 1)",
                "ann",
                "phys",
                "0,2",
                "60",
                "GPUs 0,2 idle for 60 minutes: cancelled"
            ]
        );
        // a drain is not a job action
        e.job = None;
        e.action = NodeAction::Drain;
        assert_eq!(job_action_rows(&[e]).len(), 1);
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["xxx".into(), "y".into(), "z".into()],
        ]);
        assert_eq!(t, "A    BB  C\nxxx  y   z\n");
    }
}
