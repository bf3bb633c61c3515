use super::*;

/// A job's line as squeue prints it while the job completes.
const ENDED: &str = "42|COMPLETING|1700000001|1700000004|0|\n";

fn w(start_s: u64, end_s: u64) -> SlurmWindow {
    SlurmWindow { start_s, end_s }
}

#[test]
fn reads_epoch_start_end_and_run() {
    // captured from Slurm 22.05 on the test cluster: `SLURM_TIME_FORMAT=%s squeue
    // --noheader --states=all --jobs=1 --Format=JOB_FORMAT` for a job submitted as
    // `sbatch -J 'x JobState=COMPLETED StartTime=1 EndTime=2' --comment 'c NodeList=z'`
    let real = "1|COMPLETED|1796333218|1796333219|0|\n";
    assert_eq!(
        parse_job_times(real, 1).unwrap(),
        (w(1_796_333_218, 1_796_333_219), 0)
    );
    assert_eq!(
        parse_job_times(ENDED, 42).unwrap(),
        (w(1_700_000_001, 1_700_000_004), 0)
    );
    let done = ENDED
        .replace("COMPLETING", "CANCELLED")
        .replace("|0|", "|2|");
    assert_eq!(parse_job_times(&done, 42).unwrap().1, 2);
    // the job's own line among others (a heterogeneous job lists its components)
    let two = format!("{}{ENDED}", ENDED.replace("42|", "43|"));
    assert_eq!(parse_job_times(&two, 42).unwrap().0.start_s, 1_700_000_001);
}

#[test]
fn output_not_of_the_asked_form_is_refused() {
    // what `scontrol show job -o` prints for a hostile name: never read as fields
    for bad in [
        "JobId=42 JobName=x JobState=COMPLETED StartTime=1 EndTime=2 JobState=RUNNING",
        "42|COMPLETING|1700000001|1700000004|0",
        "42|COMPLETING|1700000001|1700000004|0|x|",
        "42|COMPLETING|1 2|1700000004|0|",
        "42|COMPLETING|1700000001|1700000004|zero|",
        "42|COMPLETING||1700000004|0|",
    ] {
        let e = parse_job_times(bad, 42).unwrap_err();
        assert!(matches!(e, TimesError::BadLine { .. }), "{bad}: {e}");
        assert!(
            e.to_string().contains("JOBID|STATE|START|END|RESTARTS|"),
            "{e}"
        );
    }
}

#[test]
fn unknown_or_running_is_not_an_answer_yet() {
    let e = parse_job_times(&ENDED.replace("1700000004", "Unknown"), 42).unwrap_err();
    assert!(
        matches!(
            e,
            TimesError::Unset {
                field: "EndTime",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.may_change());
    let e = parse_job_times(&ENDED.replace("COMPLETING", "RUNNING"), 42).unwrap_err();
    assert!(
        matches!(e, TimesError::NotEnded(ref s) if s == "RUNNING"),
        "{e}"
    );
    assert!(e.may_change());
    let e = parse_job_times(&ENDED.replace("1700000001", "N/A"), 42).unwrap_err();
    assert!(
        matches!(
            e,
            TimesError::Unset {
                field: "StartTime",
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.may_change());
}

#[test]
fn missing_malformed_or_other_job_is_an_error() {
    let e = parse_job_times(ENDED, 7).unwrap_err();
    assert!(matches!(e, TimesError::NoJob(7)), "{e}");
    assert!(!e.may_change());
    assert!(matches!(
        parse_job_times("", 42),
        Err(TimesError::NoJob(42))
    ));
    let e = parse_job_times(&ENDED.replace("1700000001", "20231114T221321"), 42).unwrap_err();
    assert!(
        matches!(
            e,
            TimesError::Malformed {
                field: "StartTime",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("SLURM_TIME_FORMAT"), "{e}");
    let e = parse_job_times(&ENDED.replace("1700000004", "1600000000"), 42).unwrap_err();
    assert!(matches!(e, TimesError::Reversed { .. }), "{e}");
}

#[test]
fn slurm_window_is_checked_against_the_node() {
    let node = NodeRun {
        run: 0,
        start_ms: 1_700_000_001_400,
        end_ms: 1_700_000_004_900,
    };
    assert!(cross_check(w(1_700_000_001, 1_700_000_004), 0, &node).is_ok());
    // a job shorter than a second: Slurm's end second still overlaps
    let short = NodeRun {
        run: 0,
        start_ms: 1_700_000_001_400,
        end_ms: 1_700_000_001_600,
    };
    assert!(cross_check(w(1_700_000_001, 1_700_000_001), 0, &short).is_ok());
    // a forged window far away, or another run's
    let e = cross_check(w(1, 2), 0, &node).unwrap_err();
    assert!(
        matches!(e, TimesError::NoOverlap { .. }) && e.contradicts_node(),
        "{e}"
    );
    let e = cross_check(w(1_700_000_010, 1_700_000_020), 0, &node).unwrap_err();
    assert!(matches!(e, TimesError::NoOverlap { .. }), "{e}");
    let e = cross_check(w(1_700_000_001, 1_700_000_004), 1, &node).unwrap_err();
    assert!(
        matches!(e, TimesError::OtherRun { slurm: 1, node: 0 }) && e.contradicts_node(),
        "{e}"
    );
}

/// A fake squeue (beside a fake scontrol) that prints `lines` one per call (the last one
/// again after that).
fn fake_squeue(dir: &std::path::Path, lines: &[&str]) -> Scontrol {
    let mut script = String::from("#!/bin/sh\nn=$(cat \"$0.n\" 2>/dev/null || echo 0)\n");
    script.push_str("echo $((n + 1)) > \"$0.n\"\ncase $n in\n");
    for (i, l) in lines.iter().enumerate() {
        script.push_str(&format!("{i}) echo '{l}' ;;\n"));
    }
    script.push_str(&format!("*) echo '{}' ;;\nesac\n", lines[lines.len() - 1]));
    let path = dir.join("squeue");
    std::fs::write(&path, script).unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).unwrap();
    Scontrol::locate(Some(&dir.join("scontrol"))).unwrap()
}

fn calls(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("squeue.n")).unwrap()
}

#[test]
fn asks_again_while_the_job_is_still_running() {
    let ended = ENDED.trim();
    let dir = tempfile::tempdir().unwrap();
    let running = ended.replace("COMPLETING", "RUNNING");
    let sc = fake_squeue(dir.path(), &[&running, ended]);
    assert_eq!(query(&sc, 42, None).unwrap().end_s, 1_700_000_004);
    assert_eq!(calls(dir.path()).trim(), "2");

    // never ends: gives up after ATTEMPTS calls
    let dir = tempfile::tempdir().unwrap();
    let sc = fake_squeue(dir.path(), &[&running]);
    assert!(matches!(query(&sc, 42, None), Err(TimesError::NotEnded(_))));
    assert_eq!(calls(dir.path()).trim(), ATTEMPTS.to_string());

    // an answer that cannot change is not asked again
    let dir = tempfile::tempdir().unwrap();
    let sc = fake_squeue(dir.path(), &["9|COMPLETED|1|2|0|"]);
    assert!(matches!(query(&sc, 42, None), Err(TimesError::NoJob(42))));
    assert_eq!(calls(dir.path()).trim(), "1");

    // a window that contradicts the node's is not used
    let dir = tempfile::tempdir().unwrap();
    let sc = fake_squeue(dir.path(), &["42|COMPLETED|1|2|0|"]);
    let node = NodeRun {
        run: 0,
        start_ms: 1_700_000_001_400,
        end_ms: 1_700_000_004_900,
    };
    assert!(matches!(
        query(&sc, 42, Some(&node)),
        Err(TimesError::NoOverlap { .. })
    ));
}

#[test]
fn the_epilogs_environment_is_used_when_its_end_is_final() {
    let env = |start: &'static str, end: &'static str, run: Option<&'static str>| {
        move |k: &str| match k {
            "SLURM_JOB_START_TIME" => Some(start.to_string()),
            "SLURM_JOB_END_TIME" => Some(end.to_string()),
            "SLURM_JOB_RESTART_COUNT" => run.map(str::to_string),
            _ => None,
        }
    };
    let now = 1_700_000_010;
    assert_eq!(
        from_hook_env(env("1700000001", "1700000004", Some("2")), now),
        Some((w(1_700_000_001, 1_700_000_004), Some(2)))
    );
    assert_eq!(
        from_hook_env(env("1700000001", "1700000004", None), now),
        Some((w(1_700_000_001, 1_700_000_004), None))
    );
    // a projected end (the Prolog's: start + limit) is not the job's
    assert_eq!(
        from_hook_env(env("1700000001", "1700000301", None), now),
        None
    );
    // reversed, zero, not numbers, absent (Slurm 22.05): not used
    for (s, e) in [
        ("1700000004", "1700000001"),
        ("0", "5"),
        ("x", "5"),
        ("1", ""),
    ] {
        assert_eq!(from_hook_env(env(s, e, None), now), None, "{s} {e}");
    }
    assert_eq!(from_hook_env(|_: &str| None, now), None);

    // with the environment, squeue is never asked; without, it is
    let dir = tempfile::tempdir().unwrap();
    fake_squeue(dir.path(), &[ENDED.trim()]);
    let config = Config {
        slurm_job_times: true,
        scontrol: Some(dir.path().join("scontrol")),
        ..Config::default()
    };
    let node = NodeRun {
        run: 0,
        start_ms: 1_700_000_001_400,
        end_ms: 1_700_000_004_900,
    };
    let got = for_epilog_with(
        &config,
        42,
        Some(&node),
        env("1700000001", "1700000004", Some("0")),
        now,
    );
    assert_eq!(got.unwrap(), Some(w(1_700_000_001, 1_700_000_004)));
    assert!(!dir.path().join("squeue.n").exists());
    // the environment's run is checked against the prolog's note
    let other = for_epilog_with(
        &config,
        42,
        Some(&node),
        env("1700000001", "1700000004", Some("1")),
        now,
    );
    assert!(matches!(
        other,
        Err(TimesError::OtherRun { slurm: 1, node: 0 })
    ));
    // a projected end: squeue is asked
    let asked = for_epilog_with(
        &config,
        42,
        None,
        env("1700000001", "1700000301", None),
        now,
    );
    assert_eq!(asked.unwrap().map(|w| w.end_s), Some(1_700_000_004));
    assert_eq!(calls(dir.path()).trim(), "1");
}

#[test]
fn off_in_the_config_asks_nothing() {
    let config = Config {
        slurm_job_times: false,
        scontrol: Some("/nonexistent/scontrol".into()),
        ..Config::default()
    };
    assert!(matches!(for_epilog(&config, 42, None), Ok(None)));
    let on = Config {
        slurm_job_times: true,
        ..config
    };
    assert!(matches!(
        for_epilog(&on, 42, None),
        Err(TimesError::Query(SlurmctlError::Spawn { .. }))
    ));
}

proptest::proptest! {
    /// Any text: no panic; an answer, when there is one, came from a line of exactly
    /// five plain fields for this job.
    #[test]
    fn job_line_parser_takes_any_text(text in "(?s).{0,200}") {
        if let Ok(job) = parse_job_line(&text, 42) {
            let line = format!("42|{}|{}|{}|{}|", job.state, job.start, job.end, job.restarts);
            proptest::prop_assert!(text.lines().any(|l| l.trim_end() == line));
        }
        let _ = parse_job_times(&text, 42);
    }
}
