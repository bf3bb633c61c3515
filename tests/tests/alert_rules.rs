//! The Prometheus alerting rules shipped in `dashboards/sgpu-alerts.yml` (issue 16 §1):
//! `promtool check rules` accepts them, `promtool test rules` runs their unit tests
//! (`dashboards/sgpu-alerts.test.yml`: series in, alerts out), and every metric they read is
//! one `sgpu-healthd` exports (named in `healthd/src/metrics.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Runs `promtool ARGS` in `dashboards/`; its output on failure.
fn promtool(args: &[&str]) -> TestResult {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .map_err(|e| {
            format!(
                "cannot run promtool: {e} (Debian: apt-get install prometheus; .ci/run installs it)"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "promtool {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

#[test]
fn promtool_checks_the_alert_rules() -> TestResult {
    promtool(&["check", "rules", "sgpu-alerts.yml"])
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() -> TestResult {
    promtool(&["test", "rules", "sgpu-alerts.test.yml"])
}

#[test]
fn the_rules_read_only_metrics_healthd_exports() -> TestResult {
    let rules = std::fs::read_to_string(dashboards().join("sgpu-alerts.yml"))?;
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../healthd/src/metrics.rs"),
    )?;
    let mut names = Vec::new();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let mut rest = line;
        while let Some(i) = rest.find("sgpu_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{name} is not a metric healthd exports (healthd/src/metrics.rs)"
        );
    }
    Ok(())
}
