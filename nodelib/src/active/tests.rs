use std::time::Duration;

use super::dcgmi::{self, DcgmiError, TestStatus};
use super::*;

fn check(format: OutputFormat) -> ActiveCheck {
    ActiveCheck {
        name: "diag".into(),
        command: vec!["/bin/true".into()],
        interval: Duration::from_secs(24 * 3600),
        stagger: Duration::from_secs(24 * 3600),
        deadline: Duration::from_secs(30),
        format,
        severity: Severity::Drain,
    }
}

fn exited<'a>(code: i32, stdout: &'a str, stderr: &'a str) -> Ended<'a> {
    Ended::Exited {
        code: Some(code),
        stdout: stdout.as_bytes(),
        stderr: stderr.as_bytes(),
    }
}

/// `dcgmi diag -r 3 -j` of DCGM 3.x on one GPU, in the shape NVIDIA/DCGM issue #139
/// ("dcgmi diag multiple tests skipped", 2023-12-08, a T400 on CentOS 7) shows it: the
/// result key `gpu_id` as a string, tests the GPU does not support `Skip`; the deployment
/// tests' GPU ids comma-separated as DCGM's `JsonOutput.cpp` documents; preceded by the line
/// dcgmi prints first. Written for this test after that report, not copied.
const DCGM3_SKIPPED: &str = r#"Successfully ran diagnostic for group.
{
	"DCGM GPU Diagnostic" :
	{
		"test_categories" :
		[
			{
				"category" : "Deployment",
				"tests" :
				[
					{ "name" : "Denylist", "results" : [ { "gpu_ids" : "0", "status" : "Pass" } ] },
					{ "name" : "NVML Library", "results" : [ { "gpu_ids" : "0", "status" : "Pass" } ] },
					{ "name" : "Persistence Mode", "results" : [ { "gpu_ids" : "0", "status" : "Pass" } ] }
				]
			},
			{
				"category" : "Integration",
				"tests" : [ { "name" : "PCIe", "results" : [ { "gpu_id" : "0", "status" : "Skip" } ] } ]
			},
			{
				"category" : "Hardware",
				"tests" :
				[
					{ "name" : "GPU Memory", "results" : [ { "gpu_id" : "0", "status" : "Skip" } ] },
					{ "name" : "Diagnostic", "results" : [ { "gpu_id" : "0", "status" : "Skip" } ] }
				]
			},
			{
				"category" : "Stress",
				"tests" : [ { "name" : "Targeted Stress", "results" : [ { "gpu_id" : "0", "status" : "Skip" } ] } ]
			}
		],
		"version" : "3.3.0"
	}
}
"#;

/// DCGM 3.x with a failing memory test on GPU 1 of four: warnings as objects
/// `{"warning", "error_id"}` (the shape of `JsonOutput::AppendError` in NVIDIA/DCGM's
/// `nvvs/src/JsonOutput.cpp`), the deployment tests' `gpu_ids` a list of all GPUs, the
/// per-GPU ids numbers as that file writes them; DCGM's message for faulty memory
/// (`DCGM_FR_FAULTY_MEMORY`, "Found %d faulty memory elements on GPU %u").
const DCGM3_MEMORY_FAIL: &str = r#"{
  "DCGM GPU Diagnostic" : {
    "test_categories" : [
      { "category" : "Deployment", "tests" : [
          { "name" : "Denylist", "results" : [ { "gpu_ids" : "0,1,2,3", "status" : "PASS" } ] },
          { "name" : "Page Retirement/Row Remap", "results" : [ { "gpu_ids" : "0,1,2,3", "status" : "PASS" } ] } ] },
      { "category" : "Hardware", "tests" : [
          { "name" : "GPU Memory", "results" : [
              { "gpu_ids" : 0, "status" : "PASS" },
              { "gpu_ids" : 1, "status" : "FAIL",
                "warnings" : [ { "warning" : "GPU 1 Found 12 faulty memory elements on GPU 1", "error_id" : 30 } ] },
              { "gpu_ids" : 2, "status" : "PASS" },
              { "gpu_ids" : 3, "status" : "PASS" } ] } ] }
    ],
    "version" : "3.3.9"
  }
}"#;

/// DCGM 4.x: the document renamed `"DCGM Diagnostic"` and a per-test `test_summary` (the
/// breaking change named in DCGM's 4.0 release notes and read by facebookresearch/gcm pull
/// request #38, "Add support for output from DCGM v4.x"), lower-case test names as DCGM
/// 4.2.3 prints them (NVIDIA/DCGM issue #253), results per entity; a PCIe warning on GPU 2.
/// The version is in the document's `metadata`, as in the real 4.2.3 and 4.5.2 reports of
/// `nodelib/tests/dcgmi-reports/` (this fixture first had it inside `"DCGM Diagnostic"`).
const DCGM4_WARN: &str = r#"{
  "DCGM Diagnostic" : {
    "test_categories" : [
      { "category" : "Deployment", "tests" : [
          { "name" : "software", "test_summary" : { "status" : "Pass" },
            "results" : [ { "entity_group" : "GPU", "entity_group_id" : 1, "entity_id" : 0, "status" : "Pass" },
                          { "entity_group" : "GPU", "entity_group_id" : 1, "entity_id" : 2, "status" : "Pass" } ] } ] },
      { "category" : "Integration", "tests" : [
          { "name" : "pcie", "test_summary" : { "status" : "Warn" },
            "results" : [ { "entity_group" : "GPU", "entity_group_id" : 1, "entity_id" : 0, "status" : "Pass" },
                          { "entity_group" : "GPU", "entity_group_id" : 1, "entity_id" : 2, "status" : "Warn",
                            "warnings" : [ { "warning" : "GPU 2 PCIe replay count 312 exceeds 160", "error_id" : 50 } ] } ] } ] }
    ]
  },
  "metadata" : { "Driver Version Detected" : "580.82.09", "version" : "4.2.3" }
}"#;

#[test]
fn dcgm3_with_skipped_tests_passes_and_counts_them() {
    let r = dcgmi::parse(DCGM3_SKIPPED.as_bytes()).unwrap();
    assert_eq!(r.version.as_deref(), Some("3.3.0"));
    assert_eq!(r.results.len(), 7);
    assert_eq!(r.results[3].test, "PCIe");
    assert_eq!(r.results[3].gpu, Some(0));
    assert_eq!(r.results[3].status, TestStatus::Skip);
    let j = r.judge();
    assert_eq!(j.outcome, Outcome::Pass);
    assert_eq!(j.message, "dcgmi: 3 results passed, 4 skipped (DCGM 3.3.0)");
}

#[test]
fn dcgm3_memory_failure_names_the_test_the_gpu_and_dcgms_message() {
    let r = dcgmi::parse(DCGM3_MEMORY_FAIL.as_bytes()).unwrap();
    // "0,1,2,3" names no single GPU
    assert_eq!(r.results[0].gpu, None);
    let j = r.judge();
    assert_eq!(j.outcome, Outcome::Fail);
    assert_eq!(j.gpu, Some(1));
    assert_eq!(
        j.message,
        "dcgmi GPU Memory gpu1 failed: GPU 1 Found 12 faulty memory elements on GPU 1"
    );
    // through the contract: a failure whatever dcgmi's exit code says
    let judged = judge(
        &check(OutputFormat::Dcgmi),
        &exited(226, DCGM3_MEMORY_FAIL, ""),
    );
    assert_eq!(judged, j);
}

#[test]
fn dcgm4_summary_and_entity_ids_are_read() {
    let r = dcgmi::parse(DCGM4_WARN.as_bytes()).unwrap();
    assert_eq!(r.version.as_deref(), Some("4.2.3"));
    let j = r.judge();
    assert_eq!(j.outcome, Outcome::Warn);
    assert_eq!(j.gpu, Some(2));
    assert_eq!(
        j.message,
        "dcgmi pcie gpu2 warned: GPU 2 PCIe replay count 312 exceeds 160"
    );
    // a summary that fails a test whose lines all pass still fails it
    let failed = DCGM4_WARN.replace(
        r#""test_summary" : { "status" : "Pass" }"#,
        r#""test_summary" : { "status" : "Fail" }"#,
    );
    let j = dcgmi::parse(failed.as_bytes()).unwrap().judge();
    assert_eq!(j.outcome, Outcome::Fail);
    assert_eq!(j.message, "dcgmi software failed");
    assert_eq!(j.gpu, None);
    // a CPU entity's id is not a GPU index
    let cpu = DCGM4_WARN.replace(
        r#""entity_group" : "GPU", "entity_group_id" : 1, "entity_id" : 2, "status" : "Warn""#,
        r#""entity_group" : "CPU", "entity_group_id" : 7, "entity_id" : 2, "status" : "Warn""#,
    );
    let j = dcgmi::parse(cpu.as_bytes()).unwrap().judge();
    assert_eq!((j.outcome, j.gpu), (Outcome::Warn, None));
    assert_eq!(
        j.message,
        "dcgmi pcie warned: GPU 2 PCIe replay count 312 exceeds 160"
    );
}

#[test]
fn dcgmi_output_that_is_not_a_report_is_an_error_not_a_pass() {
    assert_eq!(
        dcgmi::parse(b"Error: unable to establish a connection to the specified host"),
        Err(DcgmiError::NoJson)
    );
    assert!(matches!(
        dcgmi::parse(b"{\"something\": 1}"),
        Err(DcgmiError::Invalid(_))
    ));
    assert_eq!(
        dcgmi::parse(b"{\"DCGM GPU Diagnostic\": {\"test_categories\": []}}"),
        Err(DcgmiError::Empty)
    );
    let c = check(OutputFormat::Dcgmi);
    // exit 226 is DCGM_ST_NVVS_ERROR (-30 as unsigned): the tool failed, not the GPU
    let j = judge(
        &c,
        &exited(
            226,
            "",
            "Error: Unable to complete diagnostic for group 2147483647.",
        ),
    );
    assert_eq!(j.outcome, Outcome::Error);
    assert!(
        j.message
            .starts_with("exit 226 without a diagnostic report"),
        "{}",
        j.message
    );
    let j = judge(&c, &exited(0, "ok", ""));
    assert_eq!(j.outcome, Outcome::Error);
    // a report without failures and a failing exit is not a pass
    let j = judge(&c, &exited(1, DCGM3_SKIPPED, "boom"));
    assert_eq!(j.outcome, Outcome::Fail);
    assert_eq!(
        j.message,
        "exit 1, though its JSON reports no failed test: boom"
    );
}

#[test]
fn exit_codes_follow_the_contract() {
    let c = check(OutputFormat::Exit);
    let cases = [
        (
            0,
            "all 8 GPUs at 640 TFLOPS\n",
            Outcome::Pass,
            "all 8 GPUs at 640 TFLOPS",
        ),
        (
            1,
            "gpu0 ok\nmatmul 312 TFLOPS on gpu3, expected at least 600\n\n",
            Outcome::Fail,
            "exit 1: matmul 312 TFLOPS on gpu3, expected at least 600",
        ),
        (2, "fan at 95%\n", Outcome::Warn, "exit 2: fan at 95%"),
        (127, "", Outcome::Error, "exit 127: not found"),
        (126, "", Outcome::Error, "exit 126: not found"),
        (3, "", Outcome::Fail, "exit 3: not found"),
        (0, "", Outcome::Pass, "passed (exit 0)"),
    ];
    for (code, out, outcome, message) in cases {
        let j = judge(&c, &exited(code, out, "not found\n"));
        assert_eq!(
            (j.outcome, j.message.as_str()),
            (outcome, message),
            "exit {code}"
        );
    }
    let j = judge(
        &c,
        &Ended::Exited {
            code: None,
            stdout: b"",
            stderr: b"",
        },
    );
    assert_eq!(
        (j.outcome, j.message.as_str()),
        (Outcome::Fail, "killed by a signal")
    );
    let j = judge(&c, &Ended::Timeout);
    assert_eq!(j.outcome, Outcome::Timeout);
    assert_eq!(
        j.message,
        "no answer within 30 s (deadline_s); its process group was killed"
    );
}

#[test]
fn the_json_format_reads_status_message_and_gpu() {
    let c = check(OutputFormat::Json);
    let j = judge(
        &c,
        &exited(
            1,
            r#"{"status": "fail", "message": "nccl allreduce 41 GB/s, expected 180", "gpu": 5}"#,
            "",
        ),
    );
    assert_eq!(j.outcome, Outcome::Fail);
    assert_eq!(j.message, "nccl allreduce 41 GB/s, expected 180");
    assert_eq!(j.gpu, Some(5));
    let j = judge(&c, &exited(0, r#"{"status": "maybe"}"#, ""));
    assert_eq!(j.outcome, Outcome::Error);
    assert!(
        j.message.contains("\"status\" is \"maybe\""),
        "{}",
        j.message
    );
    let j = judge(&c, &exited(1, "not json", ""));
    assert_eq!(j.outcome, Outcome::Fail);
}

#[test]
fn stagger_is_deterministic_and_spread_over_the_window() {
    let day = Duration::from_secs(86_400);
    let a = offset_ms("gpu-001", "dcgm-r2", day);
    assert_eq!(
        a,
        offset_ms("gpu-001", "dcgm-r2", day),
        "same node, same offset"
    );
    assert!(a < 86_400_000);
    assert_ne!(a, offset_ms("gpu-002", "dcgm-r2", day));
    assert_ne!(a, offset_ms("gpu-001", "matmul", day));
    assert_eq!(offset_ms("gpu-001", "dcgm-r2", Duration::ZERO), 0);
    // 1,000 nodes over 24 one-hour buckets: every hour gets some, none gets a crowd
    let mut buckets = [0u32; 24];
    for i in 0..1000 {
        let o = offset_ms(&format!("gpu-{i:04}"), "dcgm-r2", day);
        buckets[(o / 3_600_000) as usize] += 1;
    }
    assert!(buckets.iter().all(|n| (15..=70).contains(n)), "{buckets:?}");
}

#[test]
fn slots_are_anchored_to_the_epoch_and_due_once_each() {
    let hour = Duration::from_secs(3600);
    let off = 600_000; // 10 minutes into each hour
    assert_eq!(slot_at_or_before(599_999, hour, off), None);
    assert_eq!(slot_at_or_before(600_000, hour, off), Some(600_000));
    assert_eq!(slot_at_or_before(4_199_999, hour, off), Some(600_000));
    assert_eq!(slot_at_or_before(4_200_000, hour, off), Some(4_200_000));
    // handled slot 600_000: nothing due until the next one
    assert_eq!(due_slot(4_000_000, 600_000, hour, off), None);
    assert_eq!(due_slot(4_200_001, 600_000, hour, off), Some(4_200_000));
    // a node that was busy for three slots runs once, for the newest
    assert_eq!(due_slot(11_000_000, 600_000, hour, off), Some(7_800_000));
}

#[test]
fn results_become_check_results_through_the_policy_types() {
    let mut c = check(OutputFormat::Exit);
    c.name = "matmul".into();
    let r = ActiveResult {
        check: "matmul".into(),
        node: "node1".into(),
        outcome: Outcome::Fail,
        message: "matmul 312 TFLOPS on gpu3, expected at least 600".into(),
        gpu: None,
        exit_code: Some(1),
        started_at_ms: 1_764_842_400_000,
        finished_at_ms: 1_764_842_412_300,
        job_id: Some(42),
    };
    let cr = to_check_result(&c, &r, true);
    assert_eq!(cr.check, "active.matmul");
    assert!(std::ptr::eq(cr.check, intern_id("matmul")), "interned once");
    assert!(cr.drains());
    assert_eq!(
        cr.drain_reason(),
        "sgpu: active.matmul: matmul 312 TFLOPS on gpu3, expected at least 600"
    );
    assert_eq!(cr.observed, "fail at 2025-12-04T10:00:12Z (job 42, 12.3 s)");
    let warn = to_check_result(
        &c,
        &ActiveResult {
            outcome: Outcome::Warn,
            ..r.clone()
        },
        true,
    );
    assert!(!warn.drains() && warn.severity == Severity::Warn);
    let err = to_check_result(
        &c,
        &ActiveResult {
            outcome: Outcome::Error,
            ..r.clone()
        },
        true,
    );
    assert_eq!(err.status, Status::Unknown);
    let timeout = to_check_result(
        &c,
        &ActiveResult {
            outcome: Outcome::Timeout,
            ..r.clone()
        },
        false,
    );
    assert!(timeout.would_drain(), "enforce = false observes only");

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load_result(dir.path(), "matmul").unwrap(), None);
    save_result(dir.path(), &r).unwrap();
    assert_eq!(load_result(dir.path(), "matmul").unwrap(), Some(r));
    std::fs::write(result_path(dir.path(), "matmul"), "{").unwrap();
    let e = load_result(dir.path(), "matmul").unwrap_err().to_string();
    assert!(
        e.contains("active/matmul.json") && e.contains("delete it"),
        "{e}"
    );
}

#[test]
fn the_runner_kills_a_hung_check_with_its_children_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut c = check(OutputFormat::Exit);
    // long enough for the shell to write its pids on a loaded 2-CPU CI machine
    c.deadline = Duration::from_secs(3);
    // a shell that starts a child and waits on it forever
    c.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "sleep 1000 & echo $$ $! > {}; wait",
            shell_quote(&pids.to_string_lossy())
        ),
    ];
    let r = run(&c, "node1", None);
    assert_eq!(r.outcome, Outcome::Timeout, "{r:?}");
    assert_eq!(r.exit_code, None);
    let text = std::fs::read_to_string(&pids).unwrap();
    let state_of = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone")
            .to_string()
    };
    for pid in text.split_whitespace() {
        // SIGKILL is delivered when the process next runs: on a loaded machine a killed
        // process can still read as sleeping for a moment, so wait (bounded) for it to die.
        let mut state = state_of(pid);
        for _ in 0..200 {
            if matches!(state.as_str(), "gone" | "Z" | "X") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            state = state_of(pid);
        }
        assert!(
            matches!(state.as_str(), "gone" | "Z" | "X"),
            "pid {pid} is {state}"
        );
    }
}

#[test]
fn the_runner_gives_the_contracts_environment() {
    let mut c = check(OutputFormat::Exit);
    c.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo \"$SGPU_ACTIVE_CHECK $SGPU_NODE $SLURM_JOB_ID $SLURM_JOB_PARTITION $PATH $HOME\"; \
         exit 1"
            .into(),
    ];
    let r = run(&c, "node7", Some((99, "maint")));
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(r.exit_code, Some(1));
    assert_eq!(r.job_id, Some(99));
    assert_eq!(
        r.message,
        format!("exit 1: diag node7 99 maint {CHECK_PATH}")
    );
    c.command = vec!["/nonexistent/check".into()];
    let r = run(&c, "node7", None);
    assert_eq!(r.outcome, Outcome::Error);
    assert!(r.message.contains("could not start"), "{}", r.message);
}

#[test]
fn the_job_asks_slurm_for_the_node_alone_in_the_maintenance_partition() {
    let settings = ActiveSettings {
        partition: Some("maint".into()),
        qos: Some("low".into()),
        ..ActiveSettings::default()
    };
    let mut c = check(OutputFormat::Dcgmi);
    c.deadline = Duration::from_secs(600);
    let args = sbatch_args(
        &settings,
        &c,
        "gpu-07",
        Some(8),
        Path::new("/var/lib/sgpu/active/diag.out"),
        Path::new("/var/lib/sgpu/active/diag.sbatch"),
    );
    assert_eq!(
        args,
        [
            "--parsable",
            "--job-name=sgpu-active-diag",
            "--nodelist=gpu-07",
            "--nodes=1",
            "--exclusive",
            "--no-requeue",
            "--time=11",
            "--output=/var/lib/sgpu/active/diag.out",
            "--chdir=/",
            "--export=NONE",
            "--partition=maint",
            "--qos=low",
            "--gres=gpu:8",
            "/var/lib/sgpu/active/diag.sbatch",
        ]
    );
    assert_eq!(
        job_script(
            Path::new("/usr/sbin/sgpu-healthd"),
            "diag",
            Some(Path::new("/etc/sgpu/it's.toml"))
        ),
        "#!/bin/sh\n# sgpu active check diag (written by sgpu-healthd)\n\
         exec '/usr/sbin/sgpu-healthd' --run-active 'diag' --config '/etc/sgpu/it'\\''s.toml'\n"
    );
}

#[test]
fn every_run_becomes_a_line_of_the_nodes_history() {
    let passed = ActiveResult {
        check: "dcgm-r1".into(),
        node: "node1".into(),
        outcome: Outcome::Pass,
        message: "dcgmi: 17 results passed, 0 skipped (DCGM 3.1.0)".into(),
        gpu: None,
        exit_code: Some(0),
        started_at_ms: 1_764_842_400_000,
        finished_at_ms: 1_764_842_441_000,
        job_id: Some(812),
    };
    assert_eq!(
        history_reason(&passed),
        "active.dcgm-r1 pass in 41.0 s (job 812): dcgmi: 17 results passed, 0 skipped (DCGM 3.1.0)"
    );
    // by hand, a message with control characters and longer than a reason may be
    let by_hand = ActiveResult {
        outcome: Outcome::Fail,
        message: format!("bad\tline\u{1b}[31m {}", "é".repeat(800)),
        job_id: None,
        ..passed.clone()
    };
    let line = history_reason(&by_hand);
    assert!(
        line.starts_with("active.dcgm-r1 fail in 41.0 s (by hand): bad line [31m é"),
        "{line}"
    );
    assert!(line.len() <= sgpu_spool::event::MAX_REASON_BYTES && line.len() > 1000);
    assert!(!line.chars().any(char::is_control));

    // both land in the spool as active_check events that acctd accepts
    let dir = tempfile::tempdir().unwrap();
    record_run(dir.path(), &passed, "healthd").unwrap();
    record_run(dir.path(), &by_hand, "sgpu-admin").unwrap();
    let mut events: Vec<sgpu_spool::NodeEvent> = sgpu_spool::EventSpool::open(dir.path())
        .unwrap()
        .pending()
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    events.sort_by(|a, b| a.source.cmp(&b.source));
    let seen: Vec<(&str, sgpu_spool::NodeAction, &str)> = events
        .iter()
        .map(|e| (e.node.as_str(), e.action, e.source.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("node1", sgpu_spool::NodeAction::ActiveCheck, "healthd"),
            ("node1", sgpu_spool::NodeAction::ActiveCheck, "sgpu-admin"),
        ]
    );
    assert_eq!(events[0].reason, history_reason(&passed));
    assert!(
        events
            .iter()
            .all(|e| e.validate().is_ok() && e.job.is_none())
    );
}
