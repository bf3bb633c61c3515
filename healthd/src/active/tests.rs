use std::collections::BTreeMap;
use std::time::Duration;

use sgpu_nodelib::active::{ActiveCheck, ActiveResult, ActiveSettings, Outcome, OutputFormat};
use sgpu_nodelib::catalogue::Severity;

use super::*;

/// A cluster of one node: its state, and the jobs sgpu submitted.
#[derive(Default)]
struct Fake {
    node: String,
    jobs: BTreeMap<u64, Option<String>>,
    submitted: Vec<(u64, String)>,
    cancelled: Vec<u64>,
    next: u64,
    sbatch_error: Option<String>,
    sbatch_calls: u32,
}

impl ActiveSlurm for Fake {
    fn node_state(&mut self) -> Result<String, ActiveSlurmError> {
        Ok(self.node.clone())
    }
    fn submit(&mut self, check: &ActiveCheck) -> Result<u64, ActiveSlurmError> {
        self.sbatch_calls += 1;
        if let Some(e) = &self.sbatch_error {
            return Err(SlurmctlError::Failed {
                command: "sbatch".into(),
                status: "exit status: 1".into(),
                stderr: e.clone(),
            }
            .into());
        }
        self.next += 1;
        self.jobs.insert(self.next, Some("PENDING".into()));
        self.submitted.push((self.next, check.name.clone()));
        Ok(self.next)
    }
    fn job_state(&mut self, id: u64) -> Result<Option<String>, ActiveSlurmError> {
        Ok(self.jobs.get(&id).cloned().flatten())
    }
    fn cancel(&mut self, id: u64) -> Result<(), ActiveSlurmError> {
        self.cancelled.push(id);
        self.jobs.insert(id, Some("CANCELLED".into()));
        Ok(())
    }
}

const HOUR_MS: u64 = 3_600_000;

fn check(name: &str) -> ActiveCheck {
    ActiveCheck {
        name: name.into(),
        command: vec!["/bin/true".into()],
        interval: Duration::from_secs(3600),
        stagger: Duration::ZERO,
        deadline: Duration::from_secs(120),
        format: OutputFormat::Exit,
        severity: Severity::Drain,
    }
}

fn settings(checks: Vec<ActiveCheck>) -> ActiveSettings {
    ActiveSettings {
        partition: Some("maint".into()),
        pending_timeout: Duration::from_secs(600),
        checks,
        ..ActiveSettings::default()
    }
}

fn result(name: &str, job: u64, outcome: Outcome) -> ActiveResult {
    ActiveResult {
        check: name.into(),
        node: "node1".into(),
        outcome,
        message: "m".into(),
        gpu: None,
        exit_code: Some(0),
        started_at_ms: 0,
        finished_at_ms: 1,
        job_id: Some(job),
    }
}

#[test]
fn a_busy_node_is_checked_only_once_it_is_idle_and_once_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    // first sight half an hour into a slot: nothing until the next slot
    s.tick(10 * HOUR_MS + HOUR_MS / 2, &mut slurm);
    assert!(slurm.submitted.is_empty());
    // the slot comes while a job runs: waits, submits nothing
    slurm.node = "MIXED".into();
    s.tick(11 * HOUR_MS + 5, &mut slurm);
    s.tick(11 * HOUR_MS + 60_000, &mut slurm);
    assert!(slurm.submitted.is_empty());
    assert_eq!(
        s.state().checks["diag"].waiting.as_deref(),
        Some("the node is MIXED, not IDLE")
    );
    let st = &s.statuses(11 * HOUR_MS + 60_000)[0];
    assert_eq!(
        (st.due_at_ms, st.waiting.as_deref()),
        (Some(11 * HOUR_MS), Some("the node is MIXED, not IDLE"))
    );
    // drained nodes and completing nodes are not idle either
    for st in [
        "IDLE+DRAIN",
        "IDLE+COMPLETING",
        "ALLOCATED",
        "DOWN+NOT_RESPONDING",
    ] {
        slurm.node = st.into();
        s.tick(11 * HOUR_MS + 90_000, &mut slurm);
        assert!(slurm.submitted.is_empty(), "{st}");
    }
    // idle: one job, and no second one while it is in flight
    slurm.node = "IDLE".into();
    s.tick(11 * HOUR_MS + 120_000, &mut slurm);
    assert_eq!(slurm.submitted, [(1, "diag".to_string())]);
    assert_eq!(s.state().checks["diag"].waiting, None);
    slurm.jobs.insert(1, Some("RUNNING".into()));
    slurm.node = "ALLOCATED".into();
    s.tick(11 * HOUR_MS + 130_000, &mut slurm);
    assert_eq!(slurm.submitted.len(), 1);
    // the job ends with its result: the slot is handled
    active::save_result(dir.path(), &result("diag", 1, Outcome::Pass)).unwrap();
    slurm.jobs.insert(1, Some("COMPLETED".into()));
    slurm.node = "IDLE".into();
    s.tick(11 * HOUR_MS + 140_000, &mut slurm);
    assert_eq!(s.state().checks["diag"].job, None);
    assert_eq!(s.state().checks["diag"].last_slot_ms, 11 * HOUR_MS);
    s.tick(12 * HOUR_MS - 1, &mut slurm);
    assert_eq!(slurm.submitted.len(), 1, "once per slot");
    s.tick(12 * HOUR_MS, &mut slurm);
    assert_eq!(slurm.submitted.len(), 2, "the next slot");
    // a restarted scheduler remembers the job in flight
    let again = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    assert_eq!(
        again.state().checks["diag"].job.as_ref().map(|j| j.id),
        Some(2)
    );
    let st = again.statuses(12 * HOUR_MS + 1);
    assert_eq!(
        st,
        [CheckStatus {
            name: "diag".into(),
            job_in_flight: Some(2),
            due_at_ms: Some(12 * HOUR_MS),
            waiting: None,
        }]
    );
}

#[test]
fn a_job_pending_too_long_is_cancelled_and_the_check_stays_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    assert_eq!(slurm.submitted.len(), 1);
    // a user job got the node first: ours pends
    slurm.node = "ALLOCATED".into();
    s.tick(HOUR_MS + 599_000, &mut slurm);
    assert!(slurm.cancelled.is_empty());
    s.tick(HOUR_MS + 601_000, &mut slurm);
    assert_eq!(slurm.cancelled, [1]);
    let st = &s.state().checks["diag"];
    assert_eq!(st.job, None);
    assert_eq!(st.last_slot_ms, 0, "still due");
    slurm.node = "IDLE".into();
    s.tick(HOUR_MS + 700_000, &mut slurm);
    assert_eq!(slurm.submitted.len(), 2);
}

#[test]
fn a_runner_that_outlives_its_deadline_is_cancelled_and_reported_as_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    slurm.jobs.insert(1, Some("RUNNING".into()));
    s.tick(HOUR_MS + 1000, &mut slurm);
    // deadline 120 s + 60 s margin
    s.tick(HOUR_MS + 1000 + 180_000, &mut slurm);
    assert!(slurm.cancelled.is_empty());
    s.tick(HOUR_MS + 1000 + 181_000, &mut slurm);
    assert_eq!(slurm.cancelled, [1]);
    let r = active::load_result(dir.path(), "diag").unwrap().unwrap();
    assert_eq!(r.outcome, Outcome::Timeout);
    assert_eq!(r.job_id, Some(1));
    assert!(r.message.contains("ran past deadline_s"), "{}", r.message);
    assert_eq!(s.state().checks["diag"].last_slot_ms, HOUR_MS);
}

#[test]
fn a_result_healthd_makes_itself_is_a_line_of_the_nodes_history() {
    let (dir, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path())
        .with_history(spool.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    slurm.jobs.insert(1, Some("RUNNING".into()));
    s.tick(HOUR_MS + 1000, &mut slurm);
    let events = || {
        sgpu_spool::EventSpool::open(spool.path())
            .unwrap()
            .pending()
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.unwrap())
            .collect::<Vec<_>>()
    };
    assert!(events().is_empty(), "nothing while the job runs");
    s.tick(HOUR_MS + 1000 + 181_000, &mut slurm);
    let r = active::load_result(dir.path(), "diag").unwrap().unwrap();
    let got = events();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].action, got[0].node.as_str(), got[0].source.as_str()),
        (sgpu_spool::NodeAction::ActiveCheck, "node1", "healthd")
    );
    assert_eq!(got[0].reason, active::history_reason(&r));
    assert!(
        got[0].reason.starts_with("active.diag timeout in "),
        "{}",
        got[0].reason
    );
}

#[test]
fn jobs_that_end_without_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    // cancelled before it ran (an admin's scancel): still due, submitted again
    slurm.jobs.insert(1, Some("CANCELLED".into()));
    s.tick(HOUR_MS + 1000, &mut slurm);
    assert_eq!(s.state().checks["diag"].last_slot_ms, 0);
    s.tick(HOUR_MS + 2000, &mut slurm);
    assert_eq!(slurm.submitted.len(), 2);
    // ran, and Slurm ended it at its time limit: a timeout
    slurm.jobs.insert(2, Some("RUNNING".into()));
    s.tick(HOUR_MS + 3000, &mut slurm);
    slurm.jobs.insert(2, Some("TIMEOUT".into()));
    s.tick(HOUR_MS + 4000, &mut slurm);
    let r = active::load_result(dir.path(), "diag").unwrap().unwrap();
    assert_eq!((r.outcome, r.job_id), (Outcome::Timeout, Some(2)));
    // the next slot's job ran and vanished from squeue without a result: an error
    s.tick(2 * HOUR_MS, &mut slurm);
    slurm.jobs.insert(3, Some("RUNNING".into()));
    s.tick(2 * HOUR_MS + 1000, &mut slurm);
    slurm.jobs.insert(3, None);
    s.tick(2 * HOUR_MS + 2000, &mut slurm);
    let r = active::load_result(dir.path(), "diag").unwrap().unwrap();
    assert_eq!((r.outcome, r.job_id), (Outcome::Error, Some(3)));
    assert_eq!(r.message, "job 3 ended (gone from squeue) without a result");
}

#[test]
fn one_check_at_a_time_holds_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("a"), check("b")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    assert_eq!(slurm.submitted, [(1, "a".to_string())]);
    assert_eq!(
        s.state().checks["b"].waiting.as_deref(),
        Some("another active check holds the node")
    );
    active::save_result(dir.path(), &result("a", 1, Outcome::Fail)).unwrap();
    slurm.jobs.insert(1, Some("FAILED".into()));
    s.tick(HOUR_MS + 1000, &mut slurm);
    assert_eq!(
        slurm.submitted.len(),
        1,
        "the policy sees a new result first"
    );
    s.tick(HOUR_MS + 2000, &mut slurm);
    assert_eq!(slurm.submitted.len(), 2);
    assert_eq!(slurm.submitted[1].1, "b");
}

/// A failed active check in a run: `/status` lists its check result (the reason it drains
/// for), `/metrics` its result, end time and duration.
#[test]
fn an_active_result_shows_in_status_and_metrics() {
    use crate::daemon::{RunReport, Trigger};
    use crate::policy::{Decision, Memory};
    use crate::status::Shared;
    let c = check("matmul");
    let r = ActiveResult {
        message: "matmul 312 TFLOPS on gpu3, expected at least 600".into(),
        started_at_ms: 1_764_842_400_000,
        finished_at_ms: 1_764_842_412_500,
        ..result("matmul", 42, Outcome::Fail)
    };
    let results = vec![active::to_check_result(&c, &r, true)];
    let report = RunReport {
        verdict: sgpu_nodelib::checks::Verdict::of(&results),
        results,
        decision: Decision::Healthy,
        spool: crate::spool_probe::SpoolHealth {
            error: None,
            free_bytes: None,
        },
        active: vec![r],
        active_status: vec![CheckStatus {
            name: "matmul".into(),
            job_in_flight: None,
            due_at_ms: Some(1_764_846_000_000),
            waiting: Some("the node is MIXED, not IDLE".into()),
        }],
    };
    let shared = Shared::new("node1", Duration::from_secs(10));
    shared.record_run(&report, &Memory::default(), Trigger::Periodic);
    let health = shared.status().health.expect("a run");
    let doc = health
        .results
        .iter()
        .find(|d| d.check == "active.matmul")
        .expect("the active check's result");
    assert_eq!(
        doc.message,
        "matmul 312 TFLOPS on gpu3, expected at least 600"
    );
    assert_eq!(
        doc.observed,
        "fail at 2025-12-04T10:00:12Z (job 42, 12.5 s)"
    );
    let a = shared.status().active.expect("the active checks");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].name, "matmul");
    assert_eq!(a[0].outcome.as_deref(), Some("fail"));
    assert_eq!((a[0].job_id, a[0].duration_ms), (Some(42), Some(12_500)));
    assert_eq!(a[0].waiting.as_deref(), Some("the node is MIXED, not IDLE"));
    assert_eq!(a[0].due_at_ms, Some(1_764_846_000_000));
    let m = crate::metrics::render(&crate::metrics::registry(shared)).unwrap();
    for line in [
        "sgpu_active_check_result{check=\"matmul\"} 2",
        "sgpu_active_check_last_run_timestamp_seconds{check=\"matmul\"} 1764842412.5",
        "sgpu_active_check_duration_seconds{check=\"matmul\"} 12.5",
        "sgpu_check_failing{check=\"active.matmul\",gpu=\"\",severity=\"drain\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[test]
fn a_check_taken_out_of_the_configuration_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut slurm = Fake {
        node: "IDLE".into(),
        ..Fake::default()
    };
    let mut s = Scheduler::new("node1", &settings(vec![check("old")]), dir.path());
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    assert_eq!(slurm.submitted, [(1, "old".to_string())]);
    slurm.jobs.insert(1, Some("RUNNING".into()));
    // sgpu.toml now lists another check; healthd restarted while "old" ran
    let mut s = Scheduler::new("node1", &settings(vec![check("new")]), dir.path());
    s.tick(HOUR_MS + 1000, &mut slurm);
    s.tick(2 * HOUR_MS, &mut slurm);
    assert_eq!(slurm.submitted[1..], [(2, "new".to_string())]);
    assert!(!s.state().checks.contains_key("old"));
}

#[test]
fn a_failing_sbatch_is_not_retried_on_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::new("node1", &settings(vec![check("diag")]), dir.path());
    let mut slurm = Fake {
        node: "IDLE".into(),
        sbatch_error: Some("sbatch: error: invalid partition specified: maint".into()),
        ..Fake::default()
    };
    s.tick(HOUR_MS / 2, &mut slurm);
    s.tick(HOUR_MS, &mut slurm);
    assert_eq!(slurm.sbatch_calls, 1);
    assert!(
        s.state().checks["diag"]
            .waiting
            .as_deref()
            .is_some_and(|w| w.contains("invalid partition")),
        "{:?}",
        s.state().checks["diag"]
    );
    // every 30 s for ten minutes: no new sbatch
    for t in 1..20 {
        s.tick(HOUR_MS + t * 30_000, &mut slurm);
    }
    assert_eq!(slurm.sbatch_calls, 1);
    // the partition is fixed: the next try after ten minutes submits
    slurm.sbatch_error = None;
    s.tick(HOUR_MS + 600_000, &mut slurm);
    assert_eq!(slurm.sbatch_calls, 2);
    assert_eq!(slurm.submitted.len(), 1);
    assert_eq!(s.state().checks["diag"].submit_failed_ms, None);
}
