//! The parser on real `dcgmi diag -j` reports (`nodelib/tests/dcgmi-reports/`, README there).

use std::path::{Path, PathBuf};

use super::*;
use crate::active::{ActiveCheck, Ended, OutputFormat, Severity, judge};

fn reports() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dcgmi-reports")
}

fn report(name: &str) -> Vec<u8> {
    std::fs::read(reports().join(name)).unwrap()
}

fn parsed(name: &str) -> Report {
    parse(&report(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `(test, gpu, status)` of every result, in report order.
fn lines(r: &Report) -> Vec<(&str, Option<u32>, TestStatus)> {
    r.results
        .iter()
        .map(|t| (t.test.as_str(), t.gpu, t.status))
        .collect()
}

/// The README's rows: `(file, verdict word)`.
fn readme_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(reports().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let file = cells[1].trim_matches('`').to_string();
            let verdict = cells[cells.len() - 2]
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("")
                .to_string();
            (file, verdict)
        })
        .collect()
}

#[test]
fn every_real_report_is_listed_and_judged_as_its_row_says() {
    let rows = readme_rows();
    assert!(rows.len() >= 7, "{rows:?}");
    for entry in std::fs::read_dir(reports()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name != "README.md" {
            assert!(
                rows.iter().any(|(f, _)| *f == name),
                "{name} has no README row (source, version, verdict)"
            );
        }
    }
    for (file, verdict) in &rows {
        let j = parsed(file).judge();
        assert_eq!(j.outcome.as_str(), verdict, "{file}: {}", j.message);
    }
}

#[test]
fn dcgm4_gb10_persistence_finding_fails_naming_the_test_gpu_and_dcgms_message() {
    let want = "dcgmi software gpu0 failed: Persistence Mode: Persistence mode for GPU 0 is \
                disabled. Enable persistence mode by running \"nvidia-smi -i <gpuId> -pm 1 \" \
                as root.";
    for (file, version) in [
        ("dcgm-4.2.3-gb10-r1.json", "4.2.3"),
        ("dcgm-4.2.3-gb10-r2-skipped.json", "4.2.3"),
        ("dcgm-4.5.2-gb10-r2.json", "4.5.2"),
        ("dcgm-4.5.2-gb10-r2-gated.json", "4.5.2"),
    ] {
        let r = parsed(file);
        // DCGM 4's version is in the document's metadata
        assert_eq!(r.version.as_deref(), Some(version), "{file}");
        let j = r.judge();
        assert_eq!(
            (j.outcome, j.gpu, j.message.as_str()),
            (Outcome::Fail, Some(0), want),
            "{file}"
        );
    }
    // level 1 is the software test alone; its Fail summary adds nothing to its Fail line
    let r = parsed("dcgm-4.2.3-gb10-r1.json");
    assert_eq!(lines(&r), [("software", Some(0), TestStatus::Fail)]);
    // level 2 adds memory and pcie: gated off (skipped) or run (passed)
    for (file, then) in [
        ("dcgm-4.2.3-gb10-r2-skipped.json", TestStatus::Skip),
        ("dcgm-4.5.2-gb10-r2-gated.json", TestStatus::Skip),
        ("dcgm-4.5.2-gb10-r2.json", TestStatus::Pass),
    ] {
        assert_eq!(
            lines(&parsed(file)),
            [
                ("software", Some(0), TestStatus::Fail),
                ("memory", Some(0), then),
                ("pcie", Some(0), then),
            ],
            "{file}"
        );
    }
}

#[test]
fn dcgm4_multi_gpu_pass_reads_every_entity() {
    let r = parsed("dcgm-4-8gpu-diagnostic-fragment.json");
    let gpus: Vec<Option<u32>> = r.results.iter().map(|t| t.gpu).collect();
    assert_eq!(gpus, (0..8).map(Some).collect::<Vec<_>>());
    assert!(r.results.iter().all(|t| t.test == "diagnostic"));
    let j = r.judge();
    assert_eq!(
        (j.outcome, j.message.as_str()),
        (Outcome::Pass, "dcgmi: 8 results passed, 0 skipped (DCGM ?)")
    );
}

#[test]
fn dcgm31_with_nulls_between_tests_and_a_line_before_passes() {
    let out = report("dcgm-3.1.0-8gpu.out");
    let r = parse(&out).unwrap();
    assert_eq!(r.version.as_deref(), Some("3.1.0"));
    assert_eq!(r.results.len(), 17);
    // deployment results name all eight GPUs: no single one
    assert_eq!(r.results[0].test, "Denylist");
    assert_eq!(r.results[0].gpu, None);
    assert_eq!(r.results[9].test, "software");
    assert_eq!(r.results[16].gpu, Some(7));
    let j = r.judge();
    assert_eq!(
        (j.outcome, j.message.as_str()),
        (
            Outcome::Pass,
            "dcgmi: 17 results passed, 0 skipped (DCGM 3.1.0)"
        )
    );
    // through the contract, with dcgmi's exit 0
    let check = ActiveCheck {
        name: "dcgm-r1".into(),
        command: vec!["/usr/bin/dcgmi".into()],
        interval: std::time::Duration::from_secs(86400),
        stagger: std::time::Duration::from_secs(86400),
        deadline: std::time::Duration::from_secs(120),
        format: OutputFormat::Dcgmi,
        severity: Severity::Drain,
    };
    let ended = Ended::Exited {
        code: Some(0),
        stdout: &out,
        stderr: b"",
    };
    assert_eq!(judge(&check, &ended), j);
}

#[test]
fn dcgm13_one_result_for_all_gpus_fails_with_the_first_warning() {
    let r = parsed("dcgm-1.3-4gpu-sm-stress-fail.json");
    assert_eq!(r.version.as_deref(), Some("1.3"));
    let stress = r.results.iter().find(|t| t.test == "sm_stress").unwrap();
    assert_eq!((stress.gpu, stress.status), (None, TestStatus::Fail));
    // "warnings": null reads as none
    let power = r
        .results
        .iter()
        .find(|t| t.test == "targeted_power")
        .unwrap();
    assert_eq!(
        (power.status, power.warning.as_deref()),
        (TestStatus::Skip, None)
    );
    // GPU 0's memory test skipped (ECC off) is neither a pass nor a failure
    let memory: Vec<_> = r.results.iter().filter(|t| t.test == "memory").collect();
    assert_eq!(
        (memory[0].gpu, memory[0].status),
        (Some(0), TestStatus::Skip)
    );
    let j = r.judge();
    assert_eq!(
        (j.outcome, j.gpu, j.message.as_str()),
        (
            Outcome::Fail,
            None,
            "dcgmi sm_stress failed: Max stress level of 2128.7 did not exceed desired stress \
             level of 3000.0 for GPU 0"
        )
    );
}

#[test]
fn dcgm4_summary_warning_and_runtime_error() {
    // a summary that fails a test whose lines pass shows the summary's own warning
    let doc = r#"{"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [
        {"name": "memory", "results": [{"entity_group": "GPU", "entity_id": 1, "status": "Pass"}],
         "test_summary": {"status": "Fail", "warnings": [null, 7,
            {"warning": "GPU 1 memory test timed out", "error_id": 95}]}}]}]},
        "metadata": {"version": "4.5.2"}}"#;
    let j = parse(doc.as_bytes()).unwrap().judge();
    assert_eq!(
        (j.outcome, j.message.as_str()),
        (
            Outcome::Fail,
            "dcgmi memory failed: GPU 1 memory test timed out"
        )
    );
    // DCGM that ran nothing says why: an error, not an empty pass
    let doc = r#"{"DCGM Diagnostic": {"runtime_error": "Unable to run diagnostic on unsupported GPU 0."}}"#;
    assert_eq!(
        parse(doc.as_bytes()),
        Err(DcgmiError::Runtime(
            "Unable to run diagnostic on unsupported GPU 0.".into()
        ))
    );
}
