//! The checks end to end against the simulated `libnvidia-ml.so.1`: every fault the
//! simulator supports produces the right failing check, severity and drain reason.

mod common;

use std::time::{Duration, Instant};

use common::{Sim, context, failures, lock, options, run, set_state_env};
use nvml_sim::{Process, RetiredPages, State, ThrottleReason};
use sgpu_healthd::catalogue::{Catalogue, Profile, Severity};
use sgpu_healthd::checks::{self, Status, Verdict};
use sgpu_healthd::gpu::{self, InitFailure, NvmlFailure, NvmlOptions, NvmlWorker};
use sgpu_healthd::xid::XidStore;

#[test]
fn healthy_node_passes_everything() {
    let sim = Sim::start(&State::healthy(8));
    let mut ctx = context(Profile::Full, 8);
    ctx.pinned_driver_version = Some("550.54.15".into());
    let results = run(&ctx);
    assert_eq!(failures(&results), Vec::<&checks::CheckResult>::new());
    assert_eq!(Verdict::of(&results), Verdict::Healthy);
    // Every per-GPU check of the full profile answered for every GPU.
    for id in [
        "gpu.lost",
        "gpu.ecc_uncorrectable",
        "gpu.temperature",
        "gpu.pcie_link",
    ] {
        let n = results
            .iter()
            .filter(|r| r.check == id && r.status == Status::Pass)
            .count();
        assert_eq!(n, 8, "{id}");
    }
    // H100s do not report retired pages: unknown, not failed.
    let rp: Vec<_> = results
        .iter()
        .filter(|r| r.check == "gpu.retired_pages_pending")
        .collect();
    assert!(rp.iter().all(|r| r.status == Status::Unknown), "{rp:?}");
    let state = nvml_sim::State::load(&sim.state_path).unwrap();
    let r0 = results
        .iter()
        .find(|r| r.check == "gpu.lost" && r.gpu == Some(0))
        .unwrap();
    assert_eq!(r0.uuid.as_deref(), Some(state.gpus[0].uuid.as_str()));

    // The quick profile with a job also passes.
    let mut ctx = context(Profile::Quick, 8);
    ctx.job_gpus = Some(vec![0, 1]);
    let results = run(&ctx);
    assert_eq!(Verdict::of(&results), Verdict::Healthy, "{results:#?}");
    assert!(results.iter().any(|r| r.check == "gpu.leftover_processes"));
}

/// Injects a fault on a healthy 4-GPU node and checks the one failure it causes.
fn fault(
    change: impl FnOnce(&mut State),
    profile: Profile,
    check: &str,
    gpu: u32,
    severity: Severity,
    reason_has: &[&str],
) {
    let sim = Sim::start(&State::healthy(4));
    sim.update(change);
    let results = run(&context(profile, 4));
    let fails = failures(&results);
    assert_eq!(fails.len(), 1, "one failure expected: {fails:#?}");
    let f = fails[0];
    assert_eq!(
        (f.check, f.gpu, f.severity),
        (check, Some(gpu), severity),
        "{f:#?}"
    );
    let reason = f.drain_reason();
    assert!(
        reason.starts_with(&format!("sgpu: {check} gpu{gpu}: ")),
        "{reason}"
    );
    for want in reason_has {
        assert!(reason.contains(want), "{reason:?} lacks {want:?}");
    }
    let verdict = if severity == Severity::Drain {
        Verdict::Drain
    } else {
        Verdict::Warn
    };
    assert_eq!(Verdict::of(&results), verdict);
    if verdict == Verdict::Drain {
        assert_eq!(checks::drain_reason(&results), Some(reason));
    }
}

#[test]
fn uncorrectable_ecc_drains() {
    fault(
        |s| s.gpus[1].ecc.volatile_uncorrected = 3,
        Profile::Quick,
        "gpu.ecc_uncorrectable",
        1,
        Severity::Drain,
        &["3 uncorrectable ECC errors"],
    );
}

#[test]
fn retired_pages_pending_drains() {
    fault(
        |s| {
            s.gpus[2].retired_pages = Some(RetiredPages {
                pending: true,
                ..Default::default()
            })
        },
        Profile::Quick,
        "gpu.retired_pages_pending",
        2,
        Severity::Drain,
        &["retired pages pending"],
    );
}

#[test]
fn row_remap_pending_drains() {
    fault(
        |s| s.gpus[3].remapped_rows.as_mut().unwrap().pending = true,
        Profile::Quick,
        "gpu.row_remap_pending",
        3,
        Severity::Drain,
        &["row remap pending"],
    );
}

#[test]
fn row_remap_failure_drains() {
    fault(
        |s| s.gpus[0].remapped_rows.as_mut().unwrap().failure = true,
        Profile::Quick,
        "gpu.row_remap_failure",
        0,
        Severity::Drain,
        &["row remap failure"],
    );
}

#[test]
fn lost_gpu_drains() {
    fault(
        |s| s.gpus[2].lost = true,
        Profile::Full,
        "gpu.lost",
        2,
        Severity::Drain,
        &["GPU lost"],
    );
}

#[test]
fn hot_gpu_drains() {
    fault(
        |s| s.gpus[1].temperature_c = Some(91),
        Profile::Quick,
        "gpu.temperature",
        1,
        Severity::Drain,
        &["temperature 91 C >= 90 C"],
    );
}

#[test]
fn hw_slowdown_drains() {
    fault(
        |s| {
            s.gpus[0].throttle_reasons =
                Some(vec![ThrottleReason::HwSlowdown, ThrottleReason::SwPowerCap])
        },
        Profile::Quick,
        "gpu.throttle",
        0,
        Severity::Drain,
        &["hw_slowdown"],
    );
}

#[test]
fn degraded_pcie_link_drains() {
    fault(
        |s| s.gpus[3].pcie_width_current = Some(8),
        Profile::Quick,
        "gpu.pcie_link",
        3,
        Severity::Drain,
        &["gen5 x8, max gen5 x16"],
    );
}

#[test]
fn leftover_process_drains_at_job_start() {
    fault(
        |s| {
            s.gpus[1].processes = vec![Process {
                pid: 4242,
                used_memory_mib: Some(30_000),
                kind: Default::default(),
            }];
            s.gpus[1].memory_used_mib = 30_000;
        },
        Profile::Quick,
        "gpu.leftover_processes",
        1,
        Severity::Drain,
        &["pid 4242", "30000 MiB"],
    );
}

#[test]
fn leftover_process_on_another_jobs_gpu_is_fine() {
    let sim = Sim::start(&State::healthy(4));
    sim.update(|s| {
        s.gpus[3].processes = vec![Process {
            pid: 77,
            used_memory_mib: Some(100),
            kind: Default::default(),
        }]
    });
    let mut ctx = context(Profile::Quick, 4);
    ctx.job_gpus = Some(vec![0, 1]);
    let results = run(&ctx);
    assert_eq!(
        Verdict::of(&results),
        Verdict::Healthy,
        "{:#?}",
        failures(&results)
    );
}

#[test]
fn persistence_off_warns() {
    fault(
        |s| s.gpus[2].persistence_mode = Some(false),
        Profile::Full,
        "gpu.persistence_mode",
        2,
        Severity::Warn,
        &["persistence mode off"],
    );
}

#[test]
fn gpu_count_job_gpus_and_driver_pin() {
    let _sim = Sim::start(&State::healthy(7));
    let mut ctx = context(Profile::Quick, 8);
    ctx.job_gpus = Some(vec![6, 7]);
    ctx.pinned_driver_version = Some("535.104.05".into());
    let results = run(&ctx);
    let fails: Vec<_> = failures(&results)
        .into_iter()
        .map(|r| r.drain_reason())
        .collect();
    assert_eq!(
        fails,
        vec![
            "sgpu: gpu.count: 7 GPUs visible, gres.conf expects 8",
            "sgpu: gpu.job_gpus_exist: job GPU gpu7 not present (7 GPUs visible)",
            "sgpu: driver.version: driver 550.54.15, pinned 535.104.05",
        ]
    );
}

/// Watches XIDs with a long-lived worker (as the daemon does), injects one, and evaluates
/// what the node's XID store has not reported yet.
fn xid_run(code: u64, gpu: u32) -> (Vec<checks::CheckResult>, Vec<checks::CheckResult>) {
    let sim = Sim::start(&State::healthy(4));
    let mut worker = NvmlWorker::start(&options(common::TIMEOUT)).unwrap();
    assert_eq!(worker.watch_xids().unwrap(), Vec::<u32>::new());
    sim.update(|s| {
        s.inject_xid(gpu, code);
    });
    let seen = worker.drain_xids(Duration::from_millis(1000)).unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].gpu_index, seen[0].code), (Some(gpu), code));

    let state_dir = sim.dir.path().join("state");
    let snapshot = worker.snapshot().unwrap();
    let cat = Catalogue::default();
    let first = {
        let mut store = XidStore::open(&state_dir).unwrap();
        store.record(seen);
        let mut ctx = context(Profile::Quick, 4);
        ctx.xids = store.unreported();
        let results = checks::evaluate(&snapshot, &ctx, &cat);
        // The gate acted on them: advance the cursor.
        if let Some(last) = ctx.xids.last() {
            store.mark_reported(last.id);
        }
        store.save().unwrap();
        results
    };
    // The next run (another process, say) does not report the same XID again.
    let store = XidStore::open(&state_dir).unwrap();
    let mut ctx = context(Profile::Quick, 4);
    ctx.xids = store.unreported();
    let second = checks::evaluate(&snapshot, &ctx, &cat);
    (first, second)
}

#[test]
fn xid_79_drains_naming_the_gpu_and_code_once() {
    let (first, second) = xid_run(79, 2);
    assert_eq!(Verdict::of(&first), Verdict::Drain);
    let reason = checks::drain_reason(&first).unwrap();
    assert_eq!(
        reason,
        "sgpu: gpu.xid gpu2: xid 79 GPU has fallen off the bus"
    );
    let r = first.iter().find(|r| r.check == "gpu.xid").unwrap();
    assert!(
        r.uuid.as_deref().is_some_and(|u| u.starts_with("GPU-")),
        "{r:?}"
    );
    assert_eq!(Verdict::of(&second), Verdict::Healthy, "{second:#?}");
}

#[test]
fn xid_13_is_an_application_error_and_does_not_drain() {
    let (first, _) = xid_run(13, 1);
    assert_eq!(Verdict::of(&first), Verdict::Healthy);
    let r = first.iter().find(|r| r.check == "gpu.xid").unwrap();
    assert_eq!(
        (r.gpu, r.status, r.severity),
        (Some(1), Status::Fail, Severity::Info)
    );
    assert!(r.message.contains("xid 13"), "{r:?}");
}

#[test]
fn driver_hang_is_reported_within_the_deadline() {
    let sim = Sim::start(&State::healthy(2));
    sim.update(|s| s.hang = true);
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = gpu::collect(&options(deadline), true);
    let took = started.elapsed();
    // Unblock the abandoned thread before asserting, whatever happens.
    sim.update(|s| s.hang = false);
    assert!(
        took < deadline + Duration::from_millis(250),
        "took {took:?}"
    );
    let failure = outcome.unwrap_err();
    assert!(
        matches!(&failure, NvmlFailure::Hung { during, .. } if during == "init"),
        "{failure:?}"
    );
    let mut ctx = context(Profile::Quick, 2);
    ctx.nvml_timeout = deadline;
    let results = checks::evaluate_failure(&failure, &ctx, &Catalogue::default());
    let reason = checks::drain_reason(&results).unwrap();
    assert!(
        reason.starts_with("sgpu: nvml.responsive: nvml hung after "),
        "{reason}"
    );
    // Let the released thread finish its init and shut down before the next test.
    std::thread::sleep(Duration::from_millis(150));
}

#[test]
fn one_hung_gpu_is_named_and_the_worker_recovers_its_thread() {
    let sim = Sim::start(&State::healthy(4));
    let deadline = Duration::from_millis(300);
    let mut worker = NvmlWorker::start(&options(deadline)).unwrap();
    sim.update(|s| s.gpus[3].hang = true);
    let started = Instant::now();
    let failure = worker.snapshot().unwrap_err();
    let took = started.elapsed();
    sim.update(|s| s.gpus[3].hang = false);
    assert!(
        took < deadline + Duration::from_millis(250),
        "took {took:?}"
    );
    assert!(
        matches!(&failure, NvmlFailure::Hung { during, .. } if during == "reading gpu3"),
        "{failure:?}"
    );
    // Later calls on the abandoned worker fail at once, without a second stuck thread.
    let again = Instant::now();
    assert!(matches!(worker.snapshot(), Err(NvmlFailure::Hung { .. })));
    assert!(again.elapsed() < Duration::from_millis(50));
    // Once the driver call returns, the worker says so (the daemon may then start anew).
    let wait = Instant::now();
    while worker.is_hung() {
        assert!(
            wait.elapsed() < Duration::from_secs(5),
            "thread never came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn init_failures_are_distinct() {
    let _guard = lock();
    // No state file: the simulated driver is "not loaded".
    set_state_env(None);
    let f = gpu::collect(&options(common::TIMEOUT), false).unwrap_err();
    assert!(
        matches!(
            f,
            NvmlFailure::Init {
                kind: InitFailure::DriverNotLoaded,
                ..
            }
        ),
        "{f:?}"
    );
    // No library at the configured path.
    let f = gpu::collect(
        &NvmlOptions {
            library: Some("/nonexistent/libnvidia-ml.so.1".into()),
            timeout: common::TIMEOUT,
        },
        false,
    )
    .unwrap_err();
    assert!(
        matches!(&f, NvmlFailure::Init { kind: InitFailure::LibraryNotFound, message } if message.contains("/nonexistent/")),
        "{f:?}"
    );
    let results = checks::evaluate_failure(&f, &context(Profile::Quick, 1), &Catalogue::default());
    assert!(
        checks::drain_reason(&results)
            .unwrap()
            .starts_with("sgpu: nvml.init: nvml init failed: library not loadable")
    );
}
