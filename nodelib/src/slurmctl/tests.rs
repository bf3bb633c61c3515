use super::*;
use std::time::Instant;

#[test]
fn parses_state_and_reason() {
    let s = parse_node_line(
        "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN ThreadsPerCore=1 Reason=sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus [root@2026-11-23T09:45:10] Comment=(null)",
    );
    assert_eq!(s.state, "IDLE+DRAIN");
    assert_eq!(
        s.reason.as_deref(),
        Some("sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus")
    );
    assert!(s.drained() && s.drained_by_sgpu());

    let admin = parse_node_line("NodeName=n State=MIXED+DRAIN Reason=bad dimm [admin@now]");
    assert!(admin.drained() && !admin.drained_by_sgpu());

    let idle = parse_node_line("NodeName=n State=IDLE");
    assert_eq!(idle.reason, None);
    assert!(!idle.drained());
    assert!(!idle.held_by_others());
}

#[test]
fn admin_states_are_held_by_others() {
    let held = |line: &str| parse_node_line(line).held_by_others();
    // an admin's DOWN, FAIL and drain, and a node slurmctld marked DOWN
    assert!(held(
        "NodeName=n State=DOWN Reason=x [root@2026-11-23T09:45:10]"
    ));
    assert!(held(
        "NodeName=n State=DOWN+NOT_RESPONDING Reason=Not responding"
    ));
    assert!(held("NodeName=n State=IDLE+FAIL Reason=psu [root@now]"));
    assert!(held("NodeName=n State=MIXED+FAILING Reason=psu [root@now]"));
    assert!(held(
        "NodeName=n State=IDLE+DRAIN Reason=bad dimm [admin@now]"
    ));
    // DOWN wins over an sgpu reason: slurmd died on a node sgpu drained
    let down = parse_node_line("NodeName=n State=DOWN+DRAIN Reason=sgpu: gpu.xid x [root@t]");
    assert!(down.drained_by_sgpu() && down.held_by_others());
    // sgpu's own drain and a node in service are not
    assert!(!held(
        "NodeName=n State=IDLE+DRAIN Reason=sgpu: gpu.xid gpu0: x [root@t]"
    ));
    assert!(!held("NodeName=n State=MIXED"));
    assert!(!held("NodeName=n State=ALLOCATED+COMPLETING"));
}

#[test]
fn parses_node_info_for_the_breaker() {
    let n = parse_node_info(
        "NodeName=node1 Arch=x86_64 State=IDLE+DRAIN Partitions=gpu,debug Reason=sgpu: gpu.xid gpu2: xid 79 [root@2026-11-23T09:45:10] Comment=(null)",
    )
    .unwrap();
    assert_eq!(n.name, "node1");
    assert_eq!(n.partitions, vec!["gpu", "debug"]);
    assert!(n.state.drained_by_sgpu());
    assert_eq!(n.reason_time, parse_slurm_time("2026-11-23T09:45:10"));
    assert!(n.reason_time.is_some());
    let up = parse_node_info("NodeName=node2 State=IDLE Partitions=gpu").unwrap();
    assert_eq!((up.reason_time, up.state.drained()), (None, false));
    assert_eq!(parse_node_info("garbage"), None);
    let a = parse_slurm_time("2026-11-23T09:45:10").unwrap();
    let b = parse_slurm_time("2026-11-23T10:45:10").unwrap();
    assert_eq!(b - a, 3600);
    assert_eq!(parse_slurm_time("2026-11-23 09:45"), None);
    assert_eq!(parse_slurm_time("yesterday"), None);
}

#[test]
fn refuses_odd_node_names() {
    let sc = Scontrol {
        path: "/bin/false".into(),
        timeout: Duration::from_secs(1),
        max_output: MAX_OUTPUT,
    };
    for bad in ["", "a b", "n1 State=DOWN", "x;rm", "n\n"] {
        assert!(matches!(
            sc.drain(bad, "sgpu: x"),
            Err(SlurmctlError::BadNodeName(_))
        ));
    }
}

#[test]
fn failures_and_timeouts_are_errors() {
    let sc = Scontrol::locate(Some(Path::new("/bin/false"))).unwrap();
    assert!(matches!(
        sc.drain("node1", "sgpu: x"),
        Err(SlurmctlError::Failed { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("scontrol");
    std::fs::write(&slow, "#!/bin/sh\nsleep 5\n").unwrap();
    let mut perm = std::fs::metadata(&slow).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&slow, perm).unwrap();
    let sc = Scontrol::locate(Some(&slow))
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let t = Instant::now();
    assert!(matches!(
        sc.resume("node1"),
        Err(SlurmctlError::Timeout { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
    let missing = Scontrol::locate(Some(Path::new("/nonexistent/scontrol"))).unwrap();
    assert!(matches!(
        missing.resume("node1"),
        Err(SlurmctlError::Spawn { .. })
    ));
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).unwrap();
    path
}

#[test]
fn a_reason_slurmctld_appended_to_has_no_drain_time() {
    // measured on 26.05.3: slurmd stopped under an sgpu drain (SlurmdTimeout=5)
    let line = "NodeName=node1 State=DOWN+DRAIN+NOT_RESPONDING Partitions=gpu \
                Reason=sgpu: gpu.xid gpu0: xid 79 test : Not responding \
                [root@2026-12-04T00:39:07]";
    let n = parse_node_info(line).unwrap();
    assert!(n.state.drained_by_sgpu());
    assert_eq!(
        n.state.reason.as_deref(),
        Some("sgpu: gpu.xid gpu0: xid 79 test : Not responding")
    );
    assert_eq!(n.reason_time, None);
    assert_eq!(
        split_appended(n.state.reason.as_deref().unwrap()),
        ("sgpu: gpu.xid gpu0: xid 79 test", Some("Not responding"))
    );
    // 22.05 leaves the reason and its time alone
    let old = parse_node_info(
        "NodeName=node1 State=DOWN+DRAIN+NOT_RESPONDING \
         Reason=sgpu: gpu.xid gpu0: xid 79 test [root@2026-12-04T00:40:12]",
    )
    .unwrap();
    assert_eq!(old.reason_time, parse_slurm_time("2026-12-04T00:40:12"));
    assert_eq!(split_appended("sgpu: gpu.xid gpu0: x").1, None);
}

#[test]
fn resume_clears_the_drain_only_with_undrain() {
    let dir = tempfile::tempdir().unwrap();
    let args = dir.path().join("args");
    let fake = script(
        dir.path(),
        "scontrol",
        &format!("echo \"$*\" > {}", args.display()),
    );
    Scontrol::locate(Some(&fake))
        .unwrap()
        .resume("node7")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&args).unwrap().trim(),
        "update NodeName=node7 State=UNDRAIN"
    );
}

#[test]
fn jobs_are_read_with_squeue_and_trusted_fields_only() {
    let dir = tempfile::tempdir().unwrap();
    let scontrol = script(dir.path(), "scontrol", "exit 1");
    script(
        dir.path(),
        "squeue",
        "echo \"TimeFormat=$SLURM_TIME_FORMAT Queue=$SQUEUE_FORMAT2 Args=$*\"",
    );
    // a caller's SQUEUE_*/SLURM_TIME_FORMAT never reach the child
    // SAFETY: tests in this module do not read these variables concurrently.
    unsafe { std::env::set_var("SQUEUE_FORMAT2", "name") };
    let out = Scontrol::locate(Some(&scontrol))
        .unwrap()
        .show_job_trusted(42)
        .unwrap();
    assert_eq!(
        out.trim(),
        format!(
            "TimeFormat=%s Queue= Args=--noheader --states=all --jobs=42 --Format={JOB_FORMAT}"
        )
    );
}

#[test]
fn node_list_of_a_large_cluster_is_read_while_scontrol_runs() {
    // 10,000 nodes of ~600 bytes: 6 MB through a 64 KiB pipe
    let dir = tempfile::tempdir().unwrap();
    let line = format!("State=IDLE Partitions=gpu {}", "X=y ".repeat(140));
    let fake = script(
        dir.path(),
        "scontrol",
        &format!("i=0; while [ $i -lt 10000 ]; do i=$((i+1)); echo \"NodeName=n$i {line}\"; done"),
    );
    let nodes = Scontrol::locate(Some(&fake)).unwrap().nodes().unwrap();
    assert_eq!(nodes.len(), 10_000);
    assert_eq!(nodes[9999].name, "n10000");
    // past the cap: an error naming the command, not a truncated list
    let e = Scontrol::locate(Some(&fake))
        .unwrap()
        .with_max_output(1 << 20)
        .nodes()
        .unwrap_err();
    assert!(matches!(e, SlurmctlError::Output(_)), "{e}");
    assert!(e.to_string().contains("show node -o"), "{e}");
}

#[test]
fn admin_text_cannot_stand_in_for_node_fields() {
    // captured from Slurm 22.05 (`scontrol show node -o`), with an admin's hostile reason
    let real = "NodeName=node1 Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 \
        CPULoad=0.79 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:h100:2 \
        NodeAddr=127.0.0.1 NodeHostName=vm Port=17118 Version=22.05.8 OS=Linux \
        6.18.44-fc-v1252 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=1000 AllocMem=0 FreeMem=21210 \
        Sockets=2 Boards=1 State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A \
        MCS_label=N/A Partitions=gpu  BootTime=2026-12-03T21:19:17 \
        SlurmdStartTime=2026-12-03T21:26:55 LastBusyTime=2026-12-03T21:26:59 \
        CfgTRES=cpu=2,mem=1000M,billing=2 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 \
        ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s \
        Reason=fans State=IDLE Partitions=x NodeName=evil [root@2026-12-03T21:30:00] \
        Comment=Reason=sgpu: fake Extra=none";
    let f = node_fields(real);
    let get = |k: &str| f.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("NodeName"), Some("node1"));
    assert_eq!(get("State"), Some("IDLE+DRAIN"));
    assert_eq!(
        get("OS"),
        Some("Linux 6.18.44-fc-v1252 #1 SMP PREEMPT_DYNAMIC @0")
    );
    assert_eq!(
        get("Reason"),
        Some("fans State=IDLE Partitions=x NodeName=evil [root@2026-12-03T21:30:00]")
    );
    assert_eq!(get("Comment"), Some("Reason=sgpu: fake"));
    assert_eq!(get("Extra"), Some("none"));
    let n = parse_node_info(real).unwrap();
    assert_eq!(
        (n.name.as_str(), n.partitions.clone()),
        ("node1", vec!["gpu".to_string()])
    );
    assert!(n.state.drained() && !n.state.drained_by_sgpu());
    assert_eq!(n.reason_time, parse_slurm_time("2026-12-03T21:30:00"));

    // a line break in a reason continues its record; one imitating a record is refused
    let out = "NodeName=a State=IDLE+DRAIN Reason=two\nlines [root@2026-12-03T21:30:00]\n\
               NodeName=b State=IDLE\n";
    let r = node_records(out).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(parse_node_line(&r[0]).reason.as_deref(), Some("two\nlines"));
    let forged =
        "NodeName=a State=IDLE+DRAIN Reason=x\nNodeName=b State=IDLE\nNodeName=b State=DOWN\n";
    let e = node_records(forged).unwrap_err().to_string();
    assert!(e.contains("NodeName=b twice"), "{e}");
    assert!(node_records("junk\nNodeName=a").is_err());
    assert_eq!(node_records("").unwrap().len(), 0);
}

use proptest::strategy::Strategy;

proptest::proptest! {
    /// Any text at all: no panic, and every record found starts with `NodeName=`.
    #[test]
    fn node_parsers_take_any_text(text in "(?s).{0,400}") {
        if let Ok(records) = node_records(&text) {
            for r in &records {
                proptest::prop_assert!(r.starts_with("NodeName="));
                let _ = parse_node_info(r);
                let _ = parse_node_line(r);
            }
        }
    }

    /// Whatever an admin writes in the free-text tail (`=`, spaces, keys, line breaks,
    /// non-ASCII), the node's name, state and partitions are Slurm's.
    #[test]
    fn admin_text_never_changes_name_state_or_partitions(
        reason in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(" State=IDLE".to_string()),
                proptest::strategy::Just(" Partitions=evil".to_string()),
                proptest::strategy::Just(" NodeName=evil".to_string()),
                proptest::strategy::Just("Reason=".to_string()),
                proptest::strategy::Just(" Comment=".to_string()),
                proptest::strategy::Just("\n".to_string()),
                proptest::strategy::Just("=".to_string()),
                proptest::strategy::Just(" [x@y]".to_string()),
                "[ -~\u{e9}\u{2603}]{0,12}",
            ],
            0..12,
        ).prop_map(|v| v.concat()),
        comment in "[ -~\u{e9}]{0,40}",
    ) {
        proptest::prop_assume!(!reason.contains("\nNodeName="));
        let line = format!(
            "NodeName=node7 Arch=x86_64 CPUTot=2 OS=Linux 6.1 #1 SMP State=MIXED+DRAIN \
             ThreadsPerCore=1 Partitions=gpu,debug BootTime=None \
             Reason={reason} [root@2026-12-03T21:30:00] Comment={comment}\n"
        );
        let records = node_records(&line)
            .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
        proptest::prop_assert_eq!(records.len(), 1);
        let n = parse_node_info(&records[0]).ok_or_else(|| proptest::test_runner::TestCaseError::fail("no node"))?;
        proptest::prop_assert_eq!(n.name.as_str(), "node7");
        proptest::prop_assert_eq!(n.state.state.as_str(), "MIXED+DRAIN");
        proptest::prop_assert_eq!(n.partitions, vec!["gpu".to_string(), "debug".to_string()]);
    }
}
