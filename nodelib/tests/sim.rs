//! The checks end to end against the simulated `libnvidia-ml.so.1`: every fault the
//! simulator supports produces the right failing check, severity and drain reason.

mod common;

use std::time::{Duration, Instant};

use common::{Sim, context, failures, lock, options, run, set_state_env};
use nvml_sim::{Process, RetiredPages, State, ThrottleReason};
use sgpu_nodelib::catalogue::{Catalogue, Profile, Severity};
use sgpu_nodelib::checks::CheckContext;
use sgpu_nodelib::checks::{self, Status, Verdict};
use sgpu_nodelib::gpu::{self, InitFailure, NvmlFailure, NvmlOptions, NvmlWorker};
use sgpu_nodelib::xid::XidStore;

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
        "gpu.fabric",
    ] {
        let n = results
            .iter()
            .filter(|r| r.check == id && r.status == Status::Pass)
            .count();
        assert_eq!(n, 8, "{id}");
    }
    // An idle GPU's PCIe link is not judged without a baseline (see the PCIe tests).
    assert!(
        results
            .iter()
            .filter(|r| r.check == "gpu.pcie_link")
            .all(|r| r.status == Status::Unknown && r.message.contains("idle")),
        "{results:#?}"
    );
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
        &["page retirement pending: reset GPU after the running job"],
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
        &["row remap pending: reset GPU after the running job"],
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

/// One collect-and-evaluate run that reads and updates the node history in `dir`.
fn run_remembering(ctx: &CheckContext, dir: &std::path::Path) -> Vec<checks::CheckResult> {
    let cat = Catalogue::default();
    let mut ctx = ctx.clone();
    match gpu::collect(&options(common::TIMEOUT), true) {
        Ok(c) => checks::evaluate_remembering(&c.snapshot, &mut ctx, &cat, dir, true).0,
        Err(f) => checks::evaluate_failure(&f, &ctx, &cat),
    }
}

#[test]
fn hw_slowdown_warns_first_and_drains_when_it_persists() {
    // One reading: a warning (the H100 and Dell V100 captures show HW power brake on a
    // single reading; a BMC can assert it for a moment).
    fault(
        |s| {
            s.gpus[0].throttle_reasons =
                Some(vec![ThrottleReason::HwSlowdown, ThrottleReason::SwPowerCap])
        },
        Profile::Quick,
        "gpu.throttle",
        0,
        Severity::Warn,
        &["hw_slowdown", "check 1 of 3 before drain"],
    );
    // Three checks in a row: drain.
    let sim = Sim::start(&State::healthy(2));
    let dir = tempfile::tempdir().unwrap();
    sim.update(|s| s.gpus[1].throttle_reasons = Some(vec![ThrottleReason::HwPowerBrake]));
    let ctx = context(Profile::Full, 2);
    let verdicts: Vec<Verdict> = (0..3)
        .map(|_| Verdict::of(&run_remembering(&ctx, dir.path())))
        .collect();
    assert_eq!(verdicts, [Verdict::Warn, Verdict::Warn, Verdict::Drain]);
    // A check without it resets the streak.
    sim.update(|s| s.gpus[1].throttle_reasons = Some(vec![ThrottleReason::GpuIdle]));
    assert_eq!(
        Verdict::of(&run_remembering(&ctx, dir.path())),
        Verdict::Healthy
    );
    sim.update(|s| s.gpus[1].throttle_reasons = Some(vec![ThrottleReason::HwPowerBrake]));
    let r = run_remembering(&ctx, dir.path());
    assert_eq!(Verdict::of(&r), Verdict::Warn, "{:#?}", failures(&r));
}

/// The reproduction: an idle L40S-like board at PCIe gen 1 of 4 with SW power cap
/// active was drained for `gpu.pcie_link`. Idle it is healthy, in the gate and the daemon;
/// a lower generation while busy still drains.
#[test]
fn idle_board_at_gen1_is_healthy_and_a_busy_one_drains() {
    let sim = Sim::start(&State::healthy(2));
    let dir = tempfile::tempdir().unwrap();
    sim.update(|s| {
        for g in &mut s.gpus {
            g.pcie_gen_current = Some(1);
            g.pcie_gen_max = Some(4);
            g.utilization_gpu = Some(0);
            g.throttle_reasons = Some(vec![ThrottleReason::SwPowerCap]);
        }
    });
    for profile in [Profile::Quick, Profile::Full] {
        for _ in 0..2 {
            let r = run_remembering(&context(profile, 2), dir.path());
            assert_eq!(
                failures(&r),
                Vec::<&checks::CheckResult>::new(),
                "{profile:?}"
            );
        }
    }
    sim.update(|s| s.gpus[1].utilization_gpu = Some(95));
    let r = run_remembering(&context(Profile::Full, 2), dir.path());
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].check, f[0].gpu), ("gpu.pcie_link", Some(1)));
    assert!(f[0].drains());
    assert!(
        f[0].drain_reason()
            .contains("PCIe link gen1 x16, expected gen4 (busy)"),
        "{}",
        f[0].drain_reason()
    );
}

#[test]
fn narrowed_pcie_link_drains_against_the_nodes_baseline() {
    let sim = Sim::start(&State::healthy(4));
    // No baseline (a first check, or a capture): x8 of x16 is not judged, busy or not (an
    // x8 slot looks the same as a degraded link).
    sim.update(|s| {
        s.gpus[3].pcie_width_current = Some(8);
        s.gpus[3].utilization_gpu = Some(90);
    });
    let r = run(&context(Profile::Full, 4));
    assert_eq!(Verdict::of(&r), Verdict::Healthy, "{:#?}", failures(&r));
    // The node saw x16 on this GPU.
    let dir = tempfile::tempdir().unwrap();
    sim.update(|s| {
        s.gpus[3].pcie_width_current = Some(16);
        s.gpus[3].utilization_gpu = Some(0);
    });
    run_remembering(&context(Profile::Quick, 4), dir.path());
    // x8 while idle is not judged (a board may lower its link when idle) ...
    sim.update(|s| s.gpus[3].pcie_width_current = Some(8));
    let r = run_remembering(&context(Profile::Quick, 4), dir.path());
    assert_eq!(Verdict::of(&r), Verdict::Healthy, "{:#?}", failures(&r));
    let pcie = r
        .iter()
        .find(|x| x.check == "gpu.pcie_link" && x.gpu == Some(3))
        .unwrap();
    assert!(
        pcie.threshold.contains("any width (idle; x16 seen)"),
        "{pcie:?}"
    );
    // ... x8 while busy is a degraded link.
    sim.update(|s| s.gpus[3].utilization_gpu = Some(90));
    let r = run_remembering(&context(Profile::Full, 4), dir.path());
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].check, f[0].gpu, f[0].severity),
        ("gpu.pcie_link", Some(3), Severity::Drain)
    );
    assert!(
        f[0].drain_reason()
            .contains("gen5 x8, expected gen5 (busy), x16 (best seen on this node)"),
        "{}",
        f[0].drain_reason()
    );
    // ... and stays degraded: the baseline is the widest ever seen.
    let r = run_remembering(&context(Profile::Full, 4), dir.path());
    assert_eq!(Verdict::of(&r), Verdict::Drain);
    // expected_width set by the admin judges without a baseline, idle or busy.
    sim.update(|s| s.gpus[3].utilization_gpu = Some(0));
    let mut o = std::collections::BTreeMap::new();
    o.insert(
        "gpu.pcie_link".to_string(),
        sgpu_nodelib::catalogue::CheckOverride {
            thresholds: [("expected_width".to_string(), 16.0)].into_iter().collect(),
            ..Default::default()
        },
    );
    let cat = Catalogue::effective(&o);
    let c = gpu::collect(&options(common::TIMEOUT), false).unwrap();
    let r = checks::evaluate(&c.snapshot, &context(Profile::Quick, 4), &cat);
    assert_eq!(Verdict::of(&r), Verdict::Drain);
}

#[test]
fn fabric_not_completed_drains() {
    fault(
        |s| {
            s.gpus[2].fabric = Some(nvml_sim::Fabric {
                state: nvml_sim::FabricState::InProgress,
                status: "Success".into(),
                clique_id: 0,
            })
        },
        Profile::Quick,
        "gpu.fabric",
        2,
        Severity::Drain,
        &["fabric in progress"],
    );
    fault(
        |s| s.gpus[1].fabric.as_mut().unwrap().status = "Insufficient Resources".into(),
        Profile::Quick,
        "gpu.fabric",
        1,
        Severity::Drain,
        &["fabric completed, status unknown error"],
    );
}

#[test]
fn counters_warn_by_rate_not_by_count() {
    let sim = Sim::start(&State::healthy(2));
    // A large count on its own (A40: 10289 corrected, healthy H100: 120 replays) is fine.
    sim.update(|s| {
        s.gpus[0].ecc.volatile_corrected = 10_289;
        s.gpus[1].pcie_replay_counter = Some(120);
    });
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(Profile::Full, 2);
    let r = run_remembering(&ctx, dir.path());
    assert_eq!(Verdict::of(&r), Verdict::Healthy, "{:#?}", failures(&r));
    // Ten minutes later: 10 more corrected errors is 60/h (fine); 200 more replays is
    // 20/min (a warning).
    sim.update(|s| {
        s.gpus[0].ecc.volatile_corrected = 10_299;
        s.gpus[1].pcie_replay_counter = Some(320);
    });
    ctx.now += 600.0;
    let r = run_remembering(&ctx, dir.path());
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].check, f[0].gpu, f[0].severity),
        ("gpu.pcie_replay_rate", Some(1), Severity::Warn)
    );
    assert!(
        f[0].message.contains("20.0 PCIe replays/min (max 8)"),
        "{}",
        f[0].message
    );
    // 1000 more corrected errors within the hour: a warning.
    sim.update(|s| s.gpus[0].ecc.volatile_corrected = 11_299);
    ctx.now += 600.0;
    let r = run_remembering(&ctx, dir.path());
    assert!(
        failures(&r)
            .iter()
            .any(|f| f.check == "gpu.ecc_correctable_rate"
                && f.gpu == Some(0)
                && f.severity == Severity::Warn),
        "{:#?}",
        failures(&r)
    );
}

#[test]
fn retired_pages_warn_and_drain_at_the_rma_count() {
    let page = |a: u64| nvml_sim::RetiredPage {
        address: a,
        timestamp: 0,
    };
    fault(
        |s| {
            s.gpus[1].retired_pages = Some(RetiredPages {
                single_bit: vec![page(0x1000)],
                ..Default::default()
            })
        },
        Profile::Full,
        "gpu.retired_pages",
        1,
        Severity::Warn,
        &["1 retired pages"],
    );
    fault(
        |s| {
            s.gpus[1].retired_pages = Some(RetiredPages {
                double_bit: (1..=60).map(|i| page(i * 0x1000)).collect(),
                ..Default::default()
            })
        },
        Profile::Full,
        "gpu.retired_pages",
        1,
        Severity::Drain,
        &["60 retired pages"],
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
fn persistence_off_is_reported_not_warned() {
    // A setting, not a fault: healthy A10G, T4 and V100 captures run with it off.
    let _sim = Sim::start(&{
        let mut s = State::healthy(4);
        s.gpus[2].persistence_mode = Some(false);
        s
    });
    let r = run(&context(Profile::Full, 4));
    let f = failures(&r);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(
        (f[0].check, f[0].severity),
        ("gpu.persistence_mode", Severity::Info)
    );
    assert_eq!(Verdict::of(&r), Verdict::Healthy);
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
            nvlink_counters: false,
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

#[test]
fn a_session_reads_names_and_energy_and_serves_a_later_reading() {
    let sim = Sim::start(&State::healthy(3));
    let session = gpu::Session::open(&options(common::TIMEOUT)).unwrap();
    let snap = session.identities().unwrap();
    assert_eq!(snap.gpus.len(), 3);
    let state = sim.load();
    for (g, s) in snap.gpus.iter().zip(&state.gpus) {
        assert_eq!(g.uuid(), Some(s.uuid.as_str()));
        assert_eq!(g.minor_number.value().copied(), s.minor_number);
        assert!(g.energy_mj.value().is_some());
        // only what names a GPU and its energy is read
        assert!(g.temperature_c.value().is_none());
    }
    // the same session, later: the step's GPUs only, counters that did not go backwards
    let end = session.energy(&[2, 0, 7]);
    let idx: Vec<u32> = end.iter().map(|e| e.0).collect();
    assert_eq!(idx, [2, 0], "a GPU the driver does not have is left out");
    for (i, uuid, energy) in &end {
        let start = &snap.gpus[*i as usize];
        assert_eq!(Some(uuid.as_str()), start.uuid());
        assert!(energy.unwrap() >= *start.energy_mj.value().unwrap());
    }
    drop(session);
}
