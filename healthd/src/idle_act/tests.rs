use std::sync::Mutex;

use super::*;
use crate::idle::IdleTrack;
use sgpu_nodelib::config::{IdleDetect, IdlePartition};

/// What the fake Slurm was asked to do.
#[derive(Debug, Default)]
struct Calls {
    told: Vec<String>,
    mailed: Vec<(String, String)>,
    cancelled: Vec<u32>,
}

struct Fake {
    job: SlurmJob,
    calls: Arc<Mutex<Calls>>,
}

impl JobControl for Fake {
    fn job(&self, _: u32) -> Result<SlurmJob, ActError> {
        Ok(self.job.clone())
    }
    fn tell(&self, _: &SlurmJob, text: &str) -> Result<(), ActError> {
        self.calls
            .lock()
            .map_err(|_| ActError::Answer {
                job: 0,
                line: "poisoned".into(),
            })?
            .told
            .push(text.into());
        Ok(())
    }
    fn mail(&self, _: &Path, user: &str, subject: &str) -> Result<(), ActError> {
        self.calls
            .lock()
            .map_err(|_| ActError::Answer {
                job: 0,
                line: "poisoned".into(),
            })?
            .mailed
            .push((user.into(), subject.into()));
        Ok(())
    }
    fn cancel(&self, job_id: u32) -> Result<(), ActError> {
        self.calls
            .lock()
            .map_err(|_| ActError::Answer {
                job: 0,
                line: "poisoned".into(),
            })?
            .cancelled
            .push(job_id);
        Ok(())
    }
}

fn slurm_job() -> SlurmJob {
    SlurmJob {
        job_id: 7,
        uid: 1001,
        gid: 1001,
        user: "alice".into(),
        account: Some("physics".into()),
        qos: Some("normal".into()),
        state: "RUNNING".into(),
        batch_host: Some("node1".into()),
    }
}

fn config(dir: &Path, dry_run: bool, max_cancels: u32) -> Config {
    let mut c = Config {
        spool_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.idle.mail_program = Some("/usr/bin/mail".into());
    c.idle.exempt_qos.insert("interactive".into());
    c.idle.exempt_accounts.insert("bench".into());
    c.idle.dry_run = dry_run;
    c.idle.max_cancels_per_hour = max_cancels;
    c.idle.partitions.insert(
        "gpu".into(),
        IdlePartition {
            detect: IdleDetect {
                util_below_pct: 5,
                mem_util_below_pct: 5,
                window: Duration::from_secs(60),
            },
            policy: IdlePolicy {
                warn: true,
                mail: true,
                cancel_after: Some(Duration::from_secs(120)),
            },
        },
    );
    c
}

fn job(partition: &str, account: &str, gpus: usize) -> JobAccumulator {
    let start = sgpu_spool::JobStart {
        user: "alice".into(),
        uid: 1001,
        account: Some(account.into()),
        partition: Some(partition.into()),
        start_time: 0,
        gpus: (0..gpus)
            .map(|i| sgpu_spool::GpuRef {
                index: i as u32,
                uuid: format!("GPU-{i}"),
                name: None,
                energy_mj: None,
                mig: None,
            })
            .collect(),
    };
    let id = sgpu_spool::RecordId::new("c", 7, None, "node1", sgpu_spool::RecordKind::JobStart)
        .unwrap_or_else(|e| panic!("{e}"));
    JobAccumulator::from_start(&id, &start)
}

/// Feeds every GPU of `acc` the utilizations `util` (one per GPU) at `t`.
fn sample(acc: &mut JobAccumulator, config: &Config, t: u64, util: &[u32]) {
    let d = config.idle.detect_for(acc.partition.as_deref());
    for (g, u) in acc.gpus.iter_mut().zip(util) {
        g.idle.observe(t, Some(*u), None, &d);
    }
}

fn actor(config: &Config, job: SlurmJob) -> (Actor, Arc<Mutex<Calls>>) {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let shared = Shared::new("node1", Duration::from_secs(10));
    let a = Actor::new(
        config,
        "node1".into(),
        Box::new(Fake {
            job,
            calls: calls.clone(),
        }),
        shared,
    );
    (a, calls)
}

fn events(dir: &Path) -> Vec<NodeEvent> {
    EventSpool::open(dir)
        .and_then(|s| s.pending())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, e)| e.ok())
        .collect()
}

/// Runs the actor every 10 s from 0 to `until` s with the GPUs at `util(t)`.
fn drive(
    actor: &mut Actor,
    acc: &mut JobAccumulator,
    config: &Config,
    until_s: u64,
    util: impl Fn(u64) -> Vec<u32>,
) {
    for t in (0..=until_s).step_by(10) {
        sample(acc, config, t * 1000, &util(t));
        actor.step(acc, t * 1000);
    }
}

#[test]
fn idle_job_is_warned_mailed_then_cancelled_after_grace() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let c = config(dir.path(), false, 2);
    let (mut a, calls) = actor(&c, slurm_job());
    let mut acc = job("gpu", "physics", 2);
    drive(&mut a, &mut acc, &c, 170, |_| vec![0, 0]);
    {
        let calls = calls.lock().map_err(|_| "poisoned")?;
        assert_eq!(
            calls.told.len(),
            1,
            "warned once, not yet cancelled: {calls:?}"
        );
        assert!(
            calls.told[0].contains("GPU 0,1 idle for 60 s"),
            "{}",
            calls.told[0]
        );
        assert!(
            calls.told[0].contains("cancelled in 2 min"),
            "{}",
            calls.told[0]
        );
        assert_eq!(calls.mailed.len(), 1);
        assert_eq!(calls.mailed[0].0, "alice", "Slurm's user name");
        assert!(calls.cancelled.is_empty());
    }
    assert_eq!(acc.policy.warned_at, Some(60_000));
    drive(&mut a, &mut acc, &c, 190, |_| vec![0, 0]);
    let calls = calls.lock().map_err(|_| "poisoned")?;
    assert_eq!(
        calls.cancelled,
        vec![7],
        "cancelled 120 s after the warning"
    );
    assert!(calls.told[1].contains("cancelled"), "{:?}", calls.told);
    assert!(acc.policy.cancelled);
    let actions: Vec<NodeAction> = {
        let mut e = events(dir.path());
        e.sort_by_key(|e| e.time_ms);
        e.iter().map(|e| e.action).collect()
    };
    assert!(actions.contains(&NodeAction::IdleWarn) && actions.contains(&NodeAction::IdleMail));
    assert!(actions.contains(&NodeAction::IdleCancel));
    let cancel = events(dir.path())
        .into_iter()
        .find(|e| e.action == NodeAction::IdleCancel)
        .and_then(|e| e.job)
        .ok_or("a cancel event")?;
    assert_eq!(
        (
            cancel.job_id,
            cancel.gpus.clone(),
            cancel.partition.as_str()
        ),
        (7, vec![0, 1], "gpu")
    );
    assert_eq!(cancel.idle_minutes, 3, "{cancel:?}");
    assert!(!cancel.dry_run);
    Ok(())
}

#[test]
fn busy_partial_and_recovered_jobs_are_not_cancelled() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let c = config(dir.path(), false, 2);
    // busy
    let (mut a, calls) = actor(&c, slurm_job());
    let mut acc = job("gpu", "physics", 1);
    drive(&mut a, &mut acc, &c, 600, |_| vec![60]);
    // one of two GPUs works
    let mut half = job("gpu", "physics", 2);
    drive(&mut a, &mut half, &c, 600, |_| vec![0, 90]);
    // back to work before the grace period ends: warned, never cancelled
    let mut back = job("gpu", "physics", 1);
    drive(&mut a, &mut back, &c, 600, |t| {
        vec![if (100..130).contains(&t) {
            80
        } else if t < 100 {
            0
        } else {
            50
        }]
    });
    let calls = calls.lock().map_err(|_| "poisoned")?;
    assert!(calls.cancelled.is_empty(), "{calls:?}");
    assert_eq!(
        calls.told.len(),
        1,
        "only the job that went idle was warned: {calls:?}"
    );
    assert_eq!(back.policy.warned_at, None, "the warning is withdrawn");
    Ok(())
}

#[test]
fn exempt_unpoliced_and_dry_run_jobs_are_left_alone() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let c = config(dir.path(), false, 2);
    let (mut a, calls) = actor(&c, slurm_job());
    let mut exempt_account = job("gpu", "bench", 1);
    drive(&mut a, &mut exempt_account, &c, 600, |_| vec![0]);
    assert!(exempt_account.policy.exempt);
    let mut other_partition = job("cpu", "physics", 1);
    // the default window (1800 s) applies outside `gpu`
    drive(&mut a, &mut other_partition, &c, 1900, |_| vec![0]);
    assert!(other_partition.gpus[0].idle.idle, "still measured");
    let qos = SlurmJob {
        qos: Some("interactive".into()),
        ..slurm_job()
    };
    let (mut a2, calls2) = actor(&c, qos);
    let mut exempt_qos = job("gpu", "physics", 1);
    drive(&mut a2, &mut exempt_qos, &c, 600, |_| vec![0]);
    assert!(exempt_qos.policy.exempt);
    // another user's job under the same id (the record is stale): left alone
    let (mut a3, calls3) = actor(
        &c,
        SlurmJob {
            uid: 1002,
            ..slurm_job()
        },
    );
    let mut stale = job("gpu", "physics", 1);
    drive(&mut a3, &mut stale, &c, 600, |_| vec![0]);
    for calls in [&calls, &calls2, &calls3] {
        let calls = calls.lock().map_err(|_| "poisoned")?;
        assert!(
            calls.told.is_empty() && calls.mailed.is_empty() && calls.cancelled.is_empty(),
            "{calls:?}"
        );
    }
    assert!(events(dir.path()).is_empty());

    // dry run: decided and recorded, nothing done
    let dry = tempfile::tempdir()?;
    let c = config(dry.path(), true, 2);
    let (mut a, calls) = actor(&c, slurm_job());
    let mut acc = job("gpu", "physics", 1);
    drive(&mut a, &mut acc, &c, 600, |_| vec![0]);
    let calls = calls.lock().map_err(|_| "poisoned")?;
    assert!(
        calls.told.is_empty() && calls.mailed.is_empty() && calls.cancelled.is_empty(),
        "{calls:?}"
    );
    let ev = events(dry.path());
    assert_eq!(ev.len(), 3, "warn, mail, cancel recorded: {ev:?}");
    assert!(ev.iter().all(|e| e.job.as_ref().is_some_and(|j| j.dry_run)));
    Ok(())
}

#[test]
fn cancels_per_hour_are_bounded() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let c = config(dir.path(), false, 1);
    let (mut a, calls) = actor(&c, slurm_job());
    let mut first = job("gpu", "physics", 1);
    let mut second = job("gpu", "physics", 1);
    for t in (0..=600u64).step_by(10) {
        for acc in [&mut first, &mut second] {
            sample(acc, &c, t * 1000, &[0]);
            a.step(acc, t * 1000);
        }
    }
    assert_eq!(
        calls.lock().map_err(|_| "poisoned")?.cancelled.len(),
        1,
        "{calls:?}"
    );
    assert!(first.policy.cancelled && !second.policy.cancelled);
    assert!(
        second.policy.refused,
        "the refusal is remembered: logged and counted once"
    );
    // an hour after the first cancel the bound lets the second one go
    sample(&mut second, &c, 3_900_000, &[0]);
    a.step(&mut second, 3_900_000);
    assert!(second.policy.cancelled);
    Ok(())
}

#[test]
fn durations_read_as_seconds_then_minutes() {
    assert_eq!(human(25_400), "25 s");
    assert_eq!(human(119_999), "119 s");
    assert_eq!(human(35 * 60_000 + 5), "35 min");
}

#[test]
fn patterns_expand_or_refuse() {
    let j = slurm_job();
    assert_eq!(
        expand_pattern("/home/a/%x-%j.%u.%N.err%%", &j, "train").as_deref(),
        Some("/home/a/train-7.alice.node1.err%")
    );
    assert_eq!(expand_pattern("/home/a/%A_%a.out", &j, ""), None);
    assert_eq!(expand_pattern("/home/a/%5j.out", &j, ""), None);
    assert_eq!(expand_pattern("/home/a/x%", &j, ""), None);
}

#[test]
fn squeue_lines_parse_strictly() {
    let j = parse_job(7, "7|1001|1002|alice|physics|normal|RUNNING|node1|");
    assert_eq!(
        j.map(|j| (j.uid, j.gid, j.user, j.account, j.qos)),
        Some((
            1001,
            1002,
            "alice".into(),
            Some("physics".into()),
            Some("normal".into())
        ))
    );
    let none = parse_job(7, "7|0|0|root|(null)|(null)|RUNNING|node1|");
    assert_eq!(none.map(|j| (j.account, j.qos)), Some((None, None)));
    assert_eq!(parse_job(7, "7|x|0|root|a|b|RUNNING|n|"), None);
    assert_eq!(parse_job(7, "7|0|0|root|a|b|RUNNING|n|extra"), None);
}

#[test]
fn the_child_appends_only_to_a_regular_file_of_its_user() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("job.err");
    std::fs::write(&file, "before\n")?;
    append_as_user(&file, "line\n")?;
    assert_eq!(std::fs::read_to_string(&file)?, "before\nline\n");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link)?;
    assert!(
        append_as_user(&link, "x").is_err(),
        "never follows a symlink"
    );
    assert!(
        append_as_user(&dir.path().join("missing"), "x").is_err(),
        "never creates"
    );
    assert!(append_as_user(dir.path(), "x").is_err(), "not a directory");
    assert_eq!(std::fs::read_to_string(&file)?, "before\nline\n");
    let args: Vec<OsString> = vec![APPEND_FLAG.into(), "/p".into(), "t".into()];
    assert_eq!(
        append_args(&args),
        Some((PathBuf::from("/p"), "t".to_string()))
    );
    assert_eq!(append_args(&args[..2]), None);
    Ok(())
}

#[test]
fn idle_track_default_is_unknown() {
    assert_eq!(IdleTrack::default().figures(0, 1), None);
}
