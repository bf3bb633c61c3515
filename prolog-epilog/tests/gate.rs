//! The gates in-process against the simulated NVML library, with every outcome checked:
//! health modes, XIDs from the node's XID store, the epilog's records and leak check,
//! fail_closed. `scontrol` is a recording script here (a test double: the real drains are
//! tested on the Slurm test cluster in `tests/tests/gates.rs`).

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use nvml_sim::{Process, ProcessKind, State};
use sgpu_nodelib::config::Config;
use sgpu_nodelib::xid::{XidEvent, XidStore};
use sgpu_prolog_epilog::gate::{epilog, prolog};
use sgpu_prolog_epilog::handoff::JobStartState;
use sgpu_prolog_epilog::{HealthMode, JobEnv};
use sgpu_spool::{RecordBody, Spool};

struct Node {
    _guard: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    state: PathBuf,
    config: Config,
}

impl Node {
    /// A node `n1` with 4 healthy simulated GPUs, its slurm.conf/gres.conf, and a recording
    /// scontrol.
    fn new() -> Node {
        // the simulated library reads its state file from a process-wide variable
        let guard = nvml_sim::testing::lock();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lib = nvml_sim::testing::library();
        let state = d.join("nvml.toml");
        State::healthy_seeded(4, 7).save(&state).unwrap();
        std::fs::write(
            d.join("slurm.conf"),
            "ClusterName=c1\nSlurmctldHost=h\nGresTypes=gpu\n\
             NodeName=n1 Gres=gpu:h100:4 CPUs=2\nPartitionName=p Nodes=n1\n",
        )
        .unwrap();
        std::fs::write(
            d.join("gres.conf"),
            format!(
                "NodeName=n1 Name=gpu Type=h100 File={}/nvidia[0-3]\n",
                d.display()
            ),
        )
        .unwrap();
        let scontrol = d.join("scontrol");
        std::fs::write(
            &scontrol,
            // `show node` answers from nodes.txt (empty when the test wrote none)
            format!(
                "#!/bin/sh\necho \"$@\" >> {d}/scontrol.log\n\
                 [ \"$1 $2\" = \"show node\" ] && cat {d}/nodes.txt 2>/dev/null\nexit 0\n",
                d = d.display()
            ),
        )
        .unwrap();
        let mut perm = std::fs::metadata(&scontrol).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&scontrol, perm).unwrap();
        nvml_sim::testing::set_state_env(Some(&state));
        // SAFETY: edition 2024 marks set_var unsafe; the testing lock serialises every test
        // of this binary that reads or writes process environment variables.
        unsafe { std::env::set_var("SLURM_CONF", d.join("slurm.conf")) };
        let config = Config::parse(
            &format!(
                "nvml_library = \"{}\"\nnvml_timeout_ms = 2000\nstate_dir = \"{}\"\n\
                 spool_dir = \"{}\"\nscontrol = \"{}\"\ngate_socket = \"off\"\n",
                lib.display(),
                d.join("state").display(),
                d.join("spool").display(),
                scontrol.display()
            ),
            Path::new("sgpu.toml"),
        )
        .unwrap();
        Node {
            _guard: guard,
            state,
            config,
            dir,
        }
    }

    fn job(&self, id: u32, gpus: &str, mode: HealthMode) -> JobEnv {
        let mut j = JobEnv::from_vars(|k| match k {
            "SLURM_JOB_ID" => Some(id.to_string()),
            "SLURMD_NODENAME" => Some("n1".into()),
            "SLURM_CLUSTER_NAME" => Some("c1".into()),
            "SLURM_JOB_USER" => Some("alice".into()),
            "SLURM_JOB_UID" => Some("1001".into()),
            "SLURM_JOB_PARTITION" => Some("p".into()),
            "SLURM_JOB_GPUS" => Some(gpus.into()),
            _ => None,
        })
        .unwrap();
        j.health_mode = mode;
        j
    }

    fn scontrol_calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scontrol.log")).unwrap_or_default()
    }

    /// The calls that changed a node's state (`update ...`), one a line.
    fn updates(&self) -> String {
        self.scontrol_calls()
            .lines()
            .filter(|l| l.starts_with("update "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// What `scontrol show node -o` answers from now on.
    fn slurm_nodes(&self, lines: &[String]) {
        std::fs::write(self.dir.path().join("nodes.txt"), lines.join("\n") + "\n").unwrap();
    }

    fn fault(&self, gpu: u32, edit: impl FnOnce(&mut nvml_sim::Gpu)) {
        State::update(&self.state, |s| edit(s.gpu_mut(gpu).unwrap())).unwrap();
    }

    fn spool(&self) -> Spool {
        Spool::open(&self.config.spool_dir).unwrap()
    }
}

#[test]
fn healthy_prolog_passes_and_leaves_note_and_record() {
    let node = Node::new();
    let job = node.job(10, "1,2", HealthMode::Strict);
    let r = prolog(&node.config, &job);
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(!r.sgpu_error, "{r:?}");
    assert_eq!(node.scontrol_calls(), "");
    let note = JobStartState::load(&node.config.state_dir, 10, 0)
        .unwrap()
        .unwrap();
    assert_eq!(note.gpus.len(), 2);
    assert!(
        note.gpus
            .iter()
            .all(|g| g.energy_mj.is_some() && g.uuid.is_some())
    );
    let spool = node.spool();
    let entries = spool.list().unwrap();
    assert_eq!(entries.len(), 1);
    let rec = spool.read(&entries[0]).unwrap();
    assert!(
        matches!(rec.body(), RecordBody::JobStart(s) if s.gpus.len() == 2 && s.user == "alice")
    );
}

#[test]
fn health_modes_decide_whether_the_job_runs() {
    let node = Node::new();
    node.fault(2, |g| g.ecc.volatile_uncorrected = 2);

    let strict = prolog(&node.config, &node.job(11, "0", HealthMode::Strict));
    assert_eq!(strict.exit_code, 1, "{strict:?}");
    assert!(strict.drained);
    let calls = node.updates();
    assert!(
        calls
            .starts_with("update NodeName=n1 State=DRAIN Reason=sgpu: gpu.ecc_uncorrectable gpu2:"),
        "{calls}"
    );
    // a failed prolog leaves no record (nothing ran to sample), but a note: its epilog
    // bills the run's GPUs as Slurm does (sacct counts them until the requeue)
    let note = JobStartState::load(&node.config.state_dir, 11, 0)
        .unwrap()
        .expect("the failed run's note");
    assert_eq!((note.run, note.gpus.len()), (0, 1), "{note:?}");
    assert!(node.spool().list().unwrap().is_empty());

    let warn = prolog(&node.config, &node.job(12, "0", HealthMode::Warn));
    assert_eq!(warn.exit_code, 0, "{warn:?}");
    assert!(
        warn.drained,
        "warn still drains the node for the next jobs: {warn:?}"
    );

    let off = prolog(&node.config, &node.job(13, "0", HealthMode::Off));
    assert_eq!(off.exit_code, 0, "{off:?}");
    assert!(!off.drained && off.verdict.is_none(), "{off:?}");
    assert_eq!(node.updates().lines().count(), 2, "off does not drain");
    assert!(
        JobStartState::load(&node.config.state_dir, 13, 0)
            .unwrap()
            .is_some()
    );
}

#[test]
fn xids_in_the_store_are_judged_once_by_class() {
    let node = Node::new();
    let record = |code: u64| {
        let mut store = XidStore::open(&node.config.state_dir).unwrap();
        store.record([XidEvent {
            id: 0,
            gpu_index: Some(2),
            gpu_uuid: None,
            code,
            time: nvml_sim::unix_now(),
        }]);
        store.save().unwrap();
    };
    // an application fault (XID 13) never drains
    record(13);
    let r = prolog(&node.config, &node.job(20, "0", HealthMode::Strict));
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(node.scontrol_calls(), "");

    // a GPU fallen off the bus (XID 79), seen by the daemon's watch between jobs, drains
    record(79);
    let r = prolog(&node.config, &node.job(21, "0", HealthMode::Strict));
    assert_eq!(r.exit_code, 1, "{r:?}");
    let calls = node.updates();
    assert!(
        calls.contains("Reason=sgpu: gpu.xid gpu2: xid 79"),
        "{calls}"
    );

    // reported once: after the admin resumes the node, the old XID does not drain it again
    let r = prolog(&node.config, &node.job(22, "0", HealthMode::Strict));
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(node.updates().lines().count(), 1);
}

#[test]
fn epilog_records_energy_and_drains_on_leaked_processes() {
    let node = Node::new();
    let job = node.job(30, "0,3", HealthMode::Strict);
    assert_eq!(prolog(&node.config, &job).exit_code, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // the job left a process on its GPU 3
    node.fault(3, |g| {
        g.processes.push(Process {
            pid: 777,
            used_memory_mib: Some(4096),
            kind: ProcessKind::Compute,
        })
    });
    let r = epilog(&node.config, &job);
    assert_eq!(
        r.exit_code, 0,
        "drained, so the epilog itself succeeds: {r:?}"
    );
    assert!(r.drained, "{r:?}");
    let calls = node.updates();
    assert!(
        calls.contains("Reason=sgpu: gpu.leftover_processes gpu3:"),
        "{calls}"
    );
    assert!(
        JobStartState::load(&node.config.state_dir, 30, 0)
            .unwrap()
            .is_none()
    );

    let spool = node.spool();
    let end = spool
        .list()
        .unwrap()
        .iter()
        .map(|e| spool.read(e).unwrap())
        .find_map(|r| match r.body() {
            RecordBody::JobEnd(e) => Some(e.clone()),
            _ => None,
        })
        .expect("a job_end record");
    assert_eq!(end.gpus.len(), 2);
    let wall = end.end_time - end.start_time;
    assert!(wall >= 300);
    assert_eq!(end.allocated_gpu_ms, 2 * wall);
    let state = State::load(&node.state).unwrap();
    for g in &end.gpus {
        let power = state
            .gpus
            .iter()
            .find(|s| s.uuid == g.uuid)
            .and_then(|s| s.power_usage_mw)
            .unwrap() as f64;
        let delta = g.energy_delta_mj.unwrap() as f64;
        let expected = power * wall as f64 / 1000.0;
        assert!(
            (delta - expected).abs() <= power * 0.1,
            "energy {delta} mJ vs power x time {expected} mJ"
        );
    }
}

#[test]
fn sgpu_errors_fail_the_gate_only_when_fail_closed() {
    let mut node = Node::new();
    // a spool sgpu refuses to use (world-writable): an sgpu error, not a GPU fault
    let spool = node.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut perm = std::fs::metadata(&spool).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o777);
    std::fs::set_permissions(&spool, perm).unwrap();

    let open = prolog(&node.config, &node.job(40, "0", HealthMode::Strict));
    assert!(open.sgpu_error, "{open:?}");
    assert_eq!(open.exit_code, 0, "fail open by default: {open:?}");
    assert!(
        open.log.iter().any(|l| l.contains("job-start record")),
        "{open:?}"
    );

    node.config.fail_closed = true;
    let closed = prolog(&node.config, &node.job(41, "0", HealthMode::Strict));
    assert_eq!(closed.exit_code, 1, "{closed:?}");
    assert!(!closed.drained, "an sgpu error never drains: {closed:?}");
}

/// The job_end records in the node's spool, by job id.
fn job_end(node: &Node, job: u32) -> sgpu_spool::JobEnd {
    let spool = node.spool();
    spool
        .list()
        .unwrap()
        .iter()
        .map(|e| spool.read(e).unwrap())
        .filter(|r| r.id().job_id() == job)
        .find_map(|r| match r.body() {
            RecordBody::JobEnd(e) => Some(e.clone()),
            _ => None,
        })
        .expect("a job_end record")
}

#[test]
fn epilog_takes_the_job_window_from_slurmctld_or_goes_without() {
    let node = Node::new();
    // slurmctld (a recording squeue beside scontrol) knows job 50 ended 7 s after it
    // started, just now; job 53 with a window far from the node's (as a forged one would
    // be), job 54 as another run than the prolog noted
    let d = node.dir.path();
    std::fs::write(
        d.join("squeue"),
        format!(
            "#!/bin/sh\necho \"$@ $SLURM_TIME_FORMAT\" >> {}/squeue.log\nnow=$(date +%s)\n\
             case \"$3\" in\n\
             --jobs=50) echo \"50|COMPLETING|$((now - 7))|$now|0|\" ;;\n\
             --jobs=53) echo '53|COMPLETED|1|2|0|' ;;\n\
             --jobs=54) echo \"54|COMPLETING|$((now - 3))|$now|1|\" ;;\n\
             esac\nexit 0\n",
            d.display()
        ),
    )
    .unwrap();
    let mut perm = std::fs::metadata(d.join("squeue")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(d.join("squeue"), perm).unwrap();
    let squeue_calls = || std::fs::read_to_string(d.join("squeue.log")).unwrap_or_default();
    let job = node.job(50, "0,3", HealthMode::Strict);
    assert_eq!(prolog(&node.config, &job).exit_code, 0);
    assert_eq!(
        (node.scontrol_calls(), squeue_calls()),
        (String::new(), String::new()),
        "the prolog asks slurmctld nothing"
    );
    let r = epilog(&node.config, &job);
    assert_eq!((r.exit_code, r.sgpu_error), (0, false), "{r:?}");
    assert_eq!(
        squeue_calls(),
        "--noheader --states=all --jobs=50 \
         --Format=JobID:|,State:|,StartTime:|,EndTime:|,RestartCnt:| %s\n"
    );
    let end = job_end(&node, 50);
    let w = end.slurm_window.expect("Slurm's window in the record");
    assert_eq!(w.end_s - w.start_s, 7);
    assert_eq!(end.allocated_gpu_ms, 2 * 7_000);
    assert!(end.end_time > end.start_time, "the gates' own window stays");

    // a window that does not overlap the node's, or another run's: an error line, and the
    // record keeps the node's window (never the shorter one), the epilog does not fail
    for (id, why) in [(53, "does not overlap"), (54, "shows run 1 of the job")] {
        let job = node.job(id, "1", HealthMode::Strict);
        assert_eq!(prolog(&node.config, &job).exit_code, 0);
        let r = epilog(&node.config, &job);
        assert_eq!((r.exit_code, r.sgpu_error), (0, false), "{r:?}");
        assert!(
            r.log
                .iter()
                .any(|l| l.starts_with(&format!("error: job {id}: ")) && l.contains(why)),
            "{:?}",
            r.log
        );
        let end = job_end(&node, id);
        assert_eq!(end.slurm_window, None);
        assert_eq!(end.allocated_gpu_ms, end.end_time - end.start_time);
    }

    // slurmctld does not know job 51: the record keeps the gates' window, with a warning
    let job = node.job(51, "1", HealthMode::Strict);
    assert_eq!(prolog(&node.config, &job).exit_code, 0);
    let r = epilog(&node.config, &job);
    assert_eq!((r.exit_code, r.sgpu_error), (0, false), "{r:?}");
    assert!(
        r.log
            .iter()
            .any(|l| l.starts_with("warning: job 51: Slurm's start/end not read")),
        "{:?}",
        r.log
    );
    let end = job_end(&node, 51);
    assert_eq!(end.slurm_window, None);
    assert_eq!(end.allocated_gpu_ms, end.end_time - end.start_time);

    // slurm_job_times = false: no RPC at all
    let mut config = node.config.clone();
    config.slurm_job_times = false;
    let job = node.job(52, "2", HealthMode::Strict);
    let _ = std::fs::remove_file(d.join("scontrol.log"));
    std::fs::remove_file(d.join("squeue.log")).unwrap();
    assert_eq!(prolog(&config, &job).exit_code, 0);
    assert_eq!(epilog(&config, &job).exit_code, 0);
    assert_eq!(
        (node.scontrol_calls(), squeue_calls()),
        (String::new(), String::new())
    );
    assert_eq!(job_end(&node, 52).slurm_window, None);
}

/// `scontrol show node -o` lines: `n1` in `state` with `reason`, and `others` more nodes of
/// partition p, the first `held` of them drained by sgpu.
fn cluster_lines(state: &str, reason: &str, others: usize, held: usize) -> Vec<String> {
    let mut lines = vec![format!(
        "NodeName=n1 Arch=x86_64 State={state} Partitions=p Reason={reason}"
    )];
    for i in 0..others {
        lines.push(if i < held {
            format!(
                "NodeName=m{i:02} State=IDLE+DRAIN Partitions=p \
                 Reason=sgpu: gpu.xid gpu0: xid 79 [root@2026-11-23T09:45:10]"
            )
        } else {
            format!("NodeName=m{i:02} State=IDLE Partitions=p Reason=(null)")
        });
    }
    lines
}

#[test]
fn admin_states_are_never_drained_over() {
    let node = Node::new();
    node.fault(2, |g| g.ecc.volatile_uncorrected = 2);
    for (state, reason) in [
        ("DOWN", "x [root@2026-11-23T09:45:10]"),
        ("IDLE+FAIL", "psu [root@2026-11-23T09:45:10]"),
        ("MIXED+DRAIN", "bad dimm [root@2026-11-23T09:45:10]"),
    ] {
        node.slurm_nodes(&cluster_lines(state, reason, 3, 0));
        // the epilog of a job on a node an admin took out: no drain over the admin's
        // reason, and no failing exit (Slurm would drain it with "Epilog error")
        let job = node.job(60, "0", HealthMode::Strict);
        let r = epilog(&node.config, &job);
        assert_eq!((r.exit_code, r.drained), (0, false), "{state}: {r:?}");
        assert!(
            r.not_drained.as_deref().is_some_and(|w| w.contains(state)),
            "{state}: {r:?}"
        );
        assert_eq!(node.updates(), "", "{state}");
    }
}

#[test]
fn open_breaker_keeps_the_node_up_and_the_job_running() {
    let node = Node::new();
    node.fault(2, |g| g.ecc.volatile_uncorrected = 2);
    // 12 nodes, breaker 25% (limit 3), 3 already held by sgpu
    let mut config = node.config.clone();
    config.breaker.max_fraction = 0.25;
    node.slurm_nodes(&cluster_lines("IDLE", "(null)", 11, 3));
    for mode in [HealthMode::Strict, HealthMode::Warn] {
        let r = prolog(&config, &node.job(70, "0", mode));
        // the verdict stands, but the prolog does not fail: Slurm would drain the node
        assert_eq!(
            r.verdict,
            Some(sgpu_nodelib::checks::Verdict::Drain),
            "{r:?}"
        );
        assert_eq!((r.exit_code, r.drained), (0, false), "{mode}: {r:?}");
        let why = r.not_drained.clone().unwrap_or_default();
        assert!(
            why.contains("circuit breaker open: cluster: 3 of 12 nodes"),
            "{why}"
        );
        assert!(
            r.log
                .iter()
                .any(|l| l.contains("runs on a node that failed"))
        );
    }
    let r = epilog(&config, &node.job(70, "0", HealthMode::Strict));
    assert_eq!((r.exit_code, r.drained), (0, false), "{r:?}");
    assert!(r.breaker_open, "{r:?}");
    assert_eq!(node.updates(), "", "nothing drained");
    // with room (2 held): drained, and the recount keeps it (the fake shows no new drain)
    node.slurm_nodes(&cluster_lines("IDLE", "(null)", 11, 2));
    let r = prolog(&config, &node.job(71, "0", HealthMode::Strict));
    assert_eq!((r.exit_code, r.drained), (1, true), "{r:?}");
    assert_eq!(node.updates().lines().count(), 1);
}

/// Observe-only rollout (`enforce = false`): a drain-worthy fault is logged as "would
/// drain", the prolog passes and the node is left alone; a check's own `enforce = true`
/// still drains.
#[test]
fn observe_only_mode_reports_would_drain_and_touches_nothing() {
    let mut node = Node::new();
    node.fault(2, |g| g.ecc.volatile_uncorrected = 2);
    let observing = |extra: &str| {
        let mut c = node.config.clone();
        let parsed =
            Config::parse(&format!("enforce = false\n{extra}"), Path::new("sgpu.toml")).unwrap();
        c.enforce = parsed.enforce;
        c.checks = parsed.checks;
        c
    };
    let config = observing("");
    let r = prolog(&config, &node.job(21, "0", HealthMode::Strict));
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(!r.drained && r.drain_reason.is_none(), "{r:?}");
    assert!(
        r.would_drain
            .as_deref()
            .is_some_and(|w| w.starts_with("sgpu: gpu.ecc_uncorrectable gpu2:")),
        "{r:?}"
    );
    assert!(
        r.log
            .iter()
            .any(|l| l.starts_with("would drain (enforce = false): sgpu: gpu.ecc")),
        "{:?}",
        r.log
    );
    assert_eq!(node.updates(), "", "nothing drained");
    let e = epilog(&config, &node.job(21, "0", HealthMode::Strict));
    assert_eq!((e.exit_code, e.drained), (0, false), "{e:?}");
    assert_eq!(node.updates(), "", "nothing drained");
    // the check's own enforce wins over the node's
    node.config = observing("[checks.\"gpu.ecc_uncorrectable\"]\nenforce = true\n");
    let r = prolog(&node.config, &node.job(22, "0", HealthMode::Strict));
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert!(node.updates().contains("State=DRAIN"), "{}", node.updates());
}

#[test]
fn xids_stay_unreported_while_the_breaker_keeps_the_node_up() {
    let node = Node::new();
    let mut config = node.config.clone();
    config.breaker.max_fraction = 0.25;
    {
        let mut store = XidStore::open(&config.state_dir).unwrap();
        store.record([XidEvent {
            id: 0,
            gpu_index: Some(2),
            gpu_uuid: None,
            code: 79,
            time: nvml_sim::unix_now(),
        }]);
        store.save().unwrap();
    }
    // breaker open: not drained, the XID stays for healthd (or the next gate) to act on
    node.slurm_nodes(&cluster_lines("IDLE", "(null)", 11, 3));
    let r = epilog(&config, &node.job(80, "0", HealthMode::Strict));
    assert!(r.breaker_open && !r.drained, "{r:?}");
    assert_eq!(
        XidStore::open(&config.state_dir)
            .unwrap()
            .unreported()
            .len(),
        1
    );
    // the breaker closed: the next gate drains for it and marks it reported
    node.slurm_nodes(&cluster_lines("IDLE", "(null)", 11, 0));
    let r = prolog(&config, &node.job(81, "0", HealthMode::Strict));
    assert!(r.drained, "{r:?}");
    assert!(
        XidStore::open(&config.state_dir)
            .unwrap()
            .unreported()
            .is_empty()
    );
}

/// Serves `doc` once on a socket in a directory of `node`'s, as healthd would (root's, 0700).
fn fake_healthd(
    node: &Node,
    doc: sgpu_wire::gate::GateReadings<sgpu_nodelib::gpu::NodeSnapshot>,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = node.dir.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.join("healthd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut line = String::new();
            let _ = std::io::BufReader::new(&stream).read_line(&mut line);
            let _ = (&stream).write_all(&serde_json::to_vec(&doc).unwrap());
        }
    });
    (socket, server)
}

/// The prolog judges healthd's readings with the same checks (a fault only healthd's answer
/// shows drains the node with the same reason), and reads NVML itself when the answer is
/// too old. Needs root: the gate trusts only a root-owned socket with a root peer.
#[test]
fn the_prolog_judges_healthds_readings_and_falls_back_when_they_are_too_old() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the gate trusts only a root peer, so this needs root");
        return;
    }
    use sgpu_nodelib::gpu::{NvmlOptions, Reading, Session};
    use sgpu_prolog_epilog::gate::Readings;
    use sgpu_wire::gate::{GateReadings, VERSION};
    let mut node = Node::new();
    // healthd's snapshot of the (healthy) simulated node, with an uncorrectable ECC error on
    // gpu2 that only healthd's answer shows
    let mut snap = Session::open(&NvmlOptions::from_config(&node.config))
        .unwrap()
        .snapshot()
        .unwrap();
    snap.gpus[2].ecc_volatile_uncorrected = Reading::Value(2);
    let now = sgpu_spool::now_ms();
    let doc = |taken: u64| GateReadings {
        version: Some(VERSION),
        node: "n1".into(),
        answered_at_ms: taken,
        snapshot_taken_at_ms: taken,
        fresh_gpus: vec![0, 1, 2, 3],
        snapshot: Some(snap.clone()),
        error: None,
    };
    let (socket, server) = fake_healthd(&node, doc(now));
    node.config.gate.socket = Some(socket.clone());
    node.config.gate.timeout = std::time::Duration::from_secs(10);
    let r = prolog(&node.config, &node.job(40, "0", HealthMode::Strict));
    server.join().unwrap();
    assert_eq!(r.readings, Some(Readings::Healthd), "{r:?}");
    assert_eq!(r.exit_code, 1, "{r:?}");
    let calls = node.updates();
    assert!(
        calls
            .starts_with("update NodeName=n1 State=DRAIN Reason=sgpu: gpu.ecc_uncorrectable gpu2:"),
        "{calls}"
    );
    let note = JobStartState::load(&node.config.state_dir, 40, 0)
        .unwrap()
        .unwrap();
    assert_eq!(note.readings.as_deref(), Some("healthd"));

    // an answer older than gate_max_age_ms: the gate reads the (healthy) simulator itself
    std::fs::remove_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::remove_file(node.dir.path().join("scontrol.log")).unwrap();
    let stale = now.saturating_sub(60_000);
    let (_, server) = fake_healthd(&node, doc(stale));
    let r = prolog(&node.config, &node.job(41, "0", HealthMode::Strict));
    server.join().unwrap();
    assert_eq!(r.readings, Some(Readings::Nvml), "{r:?}");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(node.updates(), "", "the simulator is healthy");
    assert!(
        r.log
            .iter()
            .any(|l| l.starts_with("readings: nvml (healthd: the snapshot is ")),
        "{:?}",
        r.log
    );
}
