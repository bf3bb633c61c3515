//! The NVLink rules over every healthy real capture (`tests/gpu-captures/`): no capture
//! shows link states (`nvidia-smi -q` has no NVLink section), so each board is given what it
//! would report healthy (an SXM/HBM board every link active: V100 6, A100 12, H100/H200/GH200
//! 18, NVIDIA's figures; every other board the harsher case of a bridge-capable board without
//! a bridge, 12 links all inactive as an A100 PCIe reports them, NVIDIA/NVSentinel#1481), and
//! run twice through the simulator with the node's history. None may fail or warn. Then one
//! fault: links 3 and 5 down on one V100-SXM2 (Azure/azhpc-diagnostics#73) drains it.

mod common;

use std::path::{Path, PathBuf};

use common::{Sim, TIMEOUT, options};
use nvml_sim::Capture;
use nvml_sim::nvlink::NvLink;
use sgpu_nodelib::catalogue::{self as cat, Catalogue, Profile};
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Status};
use sgpu_nodelib::gpu;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu-captures")
}

/// The files the corpus README calls healthy.
fn healthy_captures() -> Vec<String> {
    let readme = std::fs::read_to_string(corpus().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells.get(3) == Some(&"healthy")).then(|| cells[0].trim_matches('`').to_string())
        })
        .collect()
}

/// What a healthy board of this name reports: every link of an SXM/HBM part active, or
/// (any other board) 12 links all inactive.
fn healthy_links(name: &str) -> NvLink {
    let sxm = ["SXM", "HBM3", "H200", "GH200"]
        .iter()
        .any(|k| name.contains(k));
    let links = if name.contains("V100") {
        6
    } else if name.contains("A100") {
        12
    } else {
        18
    };
    if sxm {
        NvLink::all_active(links)
    } else {
        NvLink {
            links: 12,
            inactive: (0..12).collect(),
            errors: Vec::new(),
        }
    }
}

/// Two full runs, 10 minutes apart, remembering in `state_dir`; the second run's results.
fn two_runs(state_dir: &Path, n: u32) -> Vec<CheckResult> {
    let cat = Catalogue::default();
    let mut last = Vec::new();
    for now in [1_000_000.0, 1_000_600.0] {
        let mut ctx = common::context(Profile::Full, n);
        ctx.now = now;
        let c = gpu::collect(&options(TIMEOUT), false).unwrap();
        let (r, note) = checks::evaluate_remembering(&c.snapshot, &mut ctx, &cat, state_dir, true);
        assert_eq!(note, None);
        last = r;
    }
    last
}

fn nvlink_results(r: &[CheckResult]) -> Vec<&CheckResult> {
    r.iter()
        .filter(|r| r.check == cat::GPU_NVLINK || r.check == cat::GPU_NVLINK_ERRORS)
        .collect()
}

#[test]
fn healthy_captures_with_nvlink_are_not_failed() {
    let files = healthy_captures();
    assert!(files.len() >= 20, "{} healthy captures", files.len());
    let mut wrong = Vec::new();
    let mut judged_links = 0;
    for f in &files {
        let capture = Capture::load(corpus().join(f)).unwrap();
        // as converted: no NVLink anywhere, gpu.nvlink unknown
        let mut state = capture.state.clone();
        state.epoch = Some(nvml_sim::unix_now());
        let n = state.gpus.len() as u32;
        {
            let sim = Sim::start(&state);
            let r = two_runs(&sim.dir.path().join("state"), n);
            for x in nvlink_results(&r) {
                if x.status != Status::Unknown {
                    wrong.push(format!("{f} as captured: {x:?}"));
                }
            }
        }
        // with the links a healthy board of its kind reports
        for g in &mut state.gpus {
            g.nvlink = Some(healthy_links(g.name.as_deref().unwrap_or("")));
        }
        let sim = Sim::start(&state);
        let r = two_runs(&sim.dir.path().join("state"), n);
        for x in nvlink_results(&r) {
            if x.status == Status::Fail {
                wrong.push(format!("{f} with NVLink: {x:?}"));
            }
            if x.check == cat::GPU_NVLINK && x.status == Status::Pass {
                judged_links += 1;
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        judged_links >= 8,
        "{judged_links} GPUs had their links judged"
    );
}

#[test]
fn two_links_down_on_a_v100_sxm2_drain_it() {
    let capture = Capture::load(corpus().join("faults/v100-sxm2-x8-sbe-retired-page.txt")).unwrap();
    let mut state = capture.state.clone();
    state.epoch = Some(nvml_sim::unix_now());
    for g in &mut state.gpus {
        g.nvlink = Some(NvLink::all_active(6));
    }
    if let Some(nv) = state.gpu_mut(3).and_then(|g| g.nvlink.as_mut()) {
        nv.inactive = vec![3, 5];
    }
    let sim = Sim::start(&state);
    let mut ctx = CheckContext::new(Profile::Quick);
    ctx.nvml_timeout = TIMEOUT;
    let cat = Catalogue::default();
    let c = gpu::collect(&options(TIMEOUT), false).unwrap();
    let (r, _) = checks::evaluate_remembering(
        &c.snapshot,
        &mut ctx,
        &cat,
        &sim.dir.path().join("state"),
        true,
    );
    let failing: Vec<String> = r
        .iter()
        .filter(|r| r.drains())
        .map(CheckResult::drain_reason)
        .collect();
    assert_eq!(
        failing,
        [
            "sgpu: gpu.nvlink gpu3: NVLink 4 of 6 links active (inactive: 3,5), expected 6 active \
          (every link of the board)"
        ]
    );
}

#[test]
fn only_full_runs_read_the_error_counters() {
    let mut state = nvml_sim::State::healthy(1);
    if let Some(g) = state.gpu_mut(0) {
        g.nvlink = Some(NvLink {
            links: 2,
            inactive: Vec::new(),
            errors: vec![nvml_sim::nvlink::LinkErrors {
                link: 1,
                crc_flit: 9,
                ..Default::default()
            }],
        });
    }
    let _sim = Sim::start(&state);
    let links = |counters: bool| {
        let opts = gpu::NvmlOptions {
            nvlink_counters: counters,
            ..options(TIMEOUT)
        };
        let c = gpu::collect(&opts, false).unwrap();
        match &c.snapshot.gpus[0].nvlink {
            sgpu_nodelib::gpu::Reading::Value(l) => l.clone(),
            other => panic!("{other:?}"),
        }
    };
    // the gates (nvlink_counters false): states only
    let gate = links(false);
    assert_eq!(gate.len(), 2);
    assert!(gate.iter().all(|l| l.active && l.errors.is_empty()));
    // healthd and sgpu check: four counters per active link
    let full = links(true);
    assert_eq!(full[1].errors["crc_flit"], 9);
    assert_eq!(full[1].errors.len(), 4);
    assert_eq!(full[0].errors["replay"], 0);
}
