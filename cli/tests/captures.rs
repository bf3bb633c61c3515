//! The capture corpus (`tests/gpu-captures/`) through `sgpu check --capture`: every real
//! capture gets the verdict, and the deciding rule, its README row names. Healthy real
//! machines must come out healthy, without a single warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu-captures")
}

/// `file -> (verdict, rule)` from the README's table.
fn expectations() -> BTreeMap<String, (String, String)> {
    let readme = std::fs::read_to_string(corpus().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (
                cells[0].trim_matches('`').to_string(),
                (cells[3].to_string(), cells[4].to_string()),
            )
        })
        .collect()
}

fn files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, base, out);
        } else if p.file_name().is_some_and(|n| n != "README.md") {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// What `sgpu check --capture --json` said: verdict, exit code and the rule that decided
/// (`check (gpuA,B)` over the GPUs at the overall verdict; `-` when healthy).
fn judge(file: &Path, config: &Path) -> (String, i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sgpu"))
        .arg("--config")
        .arg(config)
        .args(["check", "--json", "--capture"])
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}): {stdout}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let verdict = v["verdict"].as_str().unwrap_or("?").to_string();
    let gpus = v["gpus"].as_array().cloned().unwrap_or_default();
    let deciding: Vec<&serde_json::Value> = gpus
        .iter()
        .filter(|g| g["verdict"] == v["verdict"] && verdict != "healthy")
        .collect();
    let rule = if deciding.is_empty() {
        "-".to_string()
    } else {
        let mut checks: Vec<&str> = deciding
            .iter()
            .filter_map(|g| g["check"].as_str())
            .collect();
        checks.dedup();
        let idx: Vec<String> = deciding.iter().map(|g| g["gpu"].to_string()).collect();
        format!("{} (gpu{})", checks.join(", "), idx.join(","))
    };
    (verdict, out.status.code().unwrap_or(-1), rule, stdout)
}

#[test]
fn every_capture_gets_the_verdict_its_readme_row_names() {
    let dir = tempfile::tempdir().unwrap();
    // the default catalogue; state under the temporary directory
    let config = dir.path().join("sgpu.toml");
    std::fs::write(
        &config,
        format!("state_dir = {:?}\n", dir.path().join("state")),
    )
    .unwrap();
    let want = expectations();
    let mut found = Vec::new();
    files(&corpus(), &corpus(), &mut found);
    found.sort();
    let mut wrong = Vec::new();
    for f in &found {
        let Some((verdict, rule)) = want.get(f) else {
            wrong.push(format!("{f}: no row in tests/gpu-captures/README.md"));
            continue;
        };
        let (got, code, got_rule, out) = judge(&corpus().join(f), &config);
        let code_want = match verdict.as_str() {
            "healthy" => 0,
            "warn" => 1,
            _ => 2,
        };
        if (&got, &got_rule, code) != (verdict, rule, code_want) {
            wrong.push(format!(
                "{f}: got {got} by {got_rule} (exit {code}), README says {verdict} by {rule}\n{out}"
            ));
        }
        if verdict == "healthy" && out.contains("\"severity\":\"warn\",\"status\":\"fail\"") {
            wrong.push(format!("{f}: a warning on a healthy machine: {out}"));
        }
    }
    for f in want.keys().filter(|f| !found.contains(f)) {
        wrong.push(format!("{f}: in the README but not in tests/gpu-captures/"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(found.len() >= 38, "{} captures", found.len());
}

#[test]
fn the_table_output_names_each_gpu_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sgpu"))
        .arg("--config")
        .arg(&config)
        .args(["check", "--capture"])
        .arg(corpus().join("faults/a100-sxm4-80gb-x4-remap-pending-dram-correctable.txt"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(
            "gpu1 00000000:9E:00.0 NVIDIA A100-SXM4-80GB: drain (gpu.row_remap_pending: row remap \
         pending: reset GPU after the running job)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("gpu0 00000000:68:00.0 NVIDIA A100-SXM4-80GB: healthy"),
        "{stdout}"
    );
    assert!(
        stdout.contains("drain reason: sgpu: gpu.row_remap_pending gpu1:"),
        "{stdout}"
    );
}

#[test]
fn bad_captures_exit_3_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sgpu.toml");
    std::fs::write(&config, "").unwrap();
    let bad = dir.path().join("node7.xml");
    std::fs::write(&bad, "<nvidia_smi_log><gpu id=\"0000:01:00.0\">").unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_sgpu"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--capture".as_ref(), bad.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("node7.xml: XML line"), "{stderr}");
    let good = corpus().join("thamada-gls/L4.nvidia-smi-q.txt");
    let out = run(&[
        "--capture".as_ref(),
        good.as_os_str(),
        "--nvml-sim".as_ref(),
        "/nonexistent/libnvml_sim.so".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--nvml-sim /nonexistent/libnvml_sim.so: no such file"),
        "{stderr}"
    );
}
