//! `sgpu check` as a process, against the simulated NVML.

use std::path::Path;
use std::process::{Command, Output};

use nvml_sim::{STATE_ENV, State};

/// Runs `sgpu check ARGS` with a config pointing at the simulated library and `state`.
fn sgpu_check(dir: &Path, state: &State, args: &[&str]) -> Output {
    let lib = nvml_sim::install_library(dir).expect("install the simulated NVML");
    let state_path = dir.join("state.toml");
    state.save(&state_path).expect("save state");
    let config = dir.join("sgpu.toml");
    std::fs::write(
        &config,
        format!(
            "nvml_library = {:?}\nnvml_timeout_ms = 3000\nstate_dir = {:?}\n",
            lib.display().to_string(),
            dir.join("state").display().to_string()
        ),
    )
    .expect("write config");
    Command::new(env!("CARGO_BIN_EXE_sgpu"))
        .arg("check")
        .args(args)
        .env("SGPU_CONFIG", &config)
        .env(STATE_ENV, &state_path)
        .env("SLURM_CONF", dir.join("no-slurm.conf"))
        .output()
        .expect("run sgpu")
}

#[test]
fn healthy_node_exits_0_with_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = sgpu_check(dir.path(), &State::healthy(2), &["--expected-gpus", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("CHECK "), "{stdout}");
    assert!(stdout.contains("gpu.count "), "{stdout}");
    assert!(stdout.contains("verdict: healthy"), "{stdout}");
}

#[test]
fn lost_gpu_exits_2_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::healthy(4);
    state.gpus[2].lost = true;
    let out = sgpu_check(dir.path(), &state, &["--json", "--expected-gpus", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.starts_with("{\"verdict\":\"drain\",\"exit_code\":2,\"drain_reason\":\"sgpu: gpu.lost gpu2: GPU lost"),
        "{stdout}"
    );
}

#[test]
fn warning_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::healthy(2);
    // a HW throttle seen once warns (it drains only when it persists)
    state.gpus[0].throttle_reasons = Some(vec![nvml_sim::ThrottleReason::HwPowerBrake]);
    let out = sgpu_check(dir.path(), &state, &["--expected-gpus", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict: warn"), "{stdout}");
}

#[test]
fn bad_config_exits_3_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "[checks.\"gpu.tmp\"]\nseverity = \"warn\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sgpu"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("sgpu.toml:1: checks.\"gpu.tmp\": unknown check id"),
        "{stderr}"
    );
}
