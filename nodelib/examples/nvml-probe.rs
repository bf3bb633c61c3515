//! What this node's NVML answers to every reading sgpu makes, and how long each takes: the
//! record behind `docs/gpu-validation.md` on a real GPU node, and the source of simulator
//! fixes where the driver answers otherwise. Read-only: no call here changes a GPU.
//!
//! `cargo run --release -p sgpu-nodelib --example nvml-probe [-- LIBRARY] > probe.json`
//! (without LIBRARY: the system's `libnvidia-ml.so.1`);
//! `... --example nvml-probe -- --breakdown [LIBRARY]`: where a fresh process's first
//! reading spends its time (dlopen, init, each query), from one process per run;
//! `... --example nvml-probe -- --watch SECONDS [LIBRARY]`: one line a second of what the
//! sampler and the process checks read (run it beside a GPU load);
//! `... --example nvml-probe -- --concurrency N [LIBRARY]`: 10 snapshots on 1 thread, then
//! 10 on each of N threads at once: whether the driver answers concurrent readers in
//! parallel (what reading an 8-GPU node's GPUs on threads of their own would gain).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sgpu_nodelib::gpu::{NvmlOptions, NvmlWorker, Session, collect};

/// Milliseconds of `d`, three decimals.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Minimum, median and maximum of `runs` timings of `f`, in ms.
fn timings<T>(runs: usize, mut f: impl FnMut() -> T) -> serde_json::Value {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let _ = f();
            ms(start.elapsed())
        })
        .collect();
    t.sort_by(f64::total_cmp);
    serde_json::json!({
        "runs": runs,
        "min_ms": t.first(),
        "median_ms": t.get(t.len() / 2),
        "max_ms": t.last(),
    })
}

fn probe(library: Option<std::path::PathBuf>) -> Result<serde_json::Value, String> {
    let opts = NvmlOptions {
        library,
        timeout: Duration::from_secs(20),
        nvlink_counters: false,
    };
    let full = NvmlOptions {
        nvlink_counters: true,
        ..opts.clone()
    };
    // what a gate does: init, snapshot and XID drain, in a fresh process-like sequence
    let started = Instant::now();
    let first = collect(&opts, true).map_err(|e| format!("collect: {e}"))?;
    let first_collect = ms(started.elapsed());
    let collect_runs = timings(10, || collect(&opts, true));

    let started = Instant::now();
    let session = Session::open(&full).map_err(|e| format!("Session::open: {e}"))?;
    let session_open = ms(started.elapsed());
    let snapshot = session.snapshot().map_err(|e| format!("snapshot: {e}"))?;
    let snapshot_runs = timings(20, || session.snapshot());
    let identities_runs = timings(20, || session.identities());
    let indices: Vec<u32> = (0..u32::try_from(snapshot.gpus.len()).unwrap_or(0)).collect();
    let energy_runs = timings(20, || session.energy(&indices));
    let energy = session.energy(&indices);
    drop(session);

    // the daemon's worker: samples and the XID event watch
    let mut worker = NvmlWorker::start(&opts).map_err(|e| format!("NvmlWorker::start: {e}"))?;
    let samples = worker.sample().map_err(|e| format!("sample: {e}"))?;
    let sample_runs = timings(20, || worker.sample());
    let started = Instant::now();
    let unwatched = worker.watch_xids();
    let watch_ms = ms(started.elapsed());
    let started = Instant::now();
    let drained = worker.drain_xids(Duration::from_millis(500));
    let drain_ms = ms(started.elapsed());

    Ok(serde_json::json!({
        "first_collect_ms": first_collect,
        "first_collect_xids": format!("{:?}", first.xids),
        "collect": collect_runs,
        "session_open_ms": session_open,
        "snapshot_with_nvlink_counters": snapshot_runs,
        "identities": identities_runs,
        "energy": energy_runs,
        "energy_values": format!("{energy:?}"),
        "sample": sample_runs,
        "samples": format!("{samples:?}"),
        "watch_xids": format!("{unwatched:?}"),
        "watch_xids_ms": watch_ms,
        "drain_xids_500ms": format!("{drained:?}"),
        "drain_xids_ms": drain_ms,
        "snapshot": snapshot,
    }))
}

/// Milliseconds `f` takes, and its result.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let r = f();
    (ms(start.elapsed()), r)
}

/// Every call a snapshot makes, each timed, on GPU 0 (`calls`: name -> ms and answer).
fn pass(nvml: &nvml_wrapper::Nvml) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use nvml_wrapper::enum_wrappers::device::TemperatureThreshold;
    use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
    let mut calls = serde_json::Map::new();
    let mut note = |name: &str, t: f64, r: String| {
        calls.insert(name.to_string(), serde_json::json!({"ms": t, "answer": r}));
    };
    let (t, n) = timed(|| nvml.device_count());
    note("device_count", t, format!("{n:?}"));
    let (t, d) = timed(|| nvml.device_by_index(0));
    note(
        "device_by_index(0)",
        t,
        format!("{:?}", d.as_ref().map(|_| ())),
    );
    let d = d.map_err(|e| format!("device 0: {e}"))?;
    let (t, r) = timed(|| d.uuid());
    note("uuid", t, format!("{r:?}"));
    let (t, r) = timed(|| d.name());
    note("name", t, format!("{r:?}"));
    let (t, r) = timed(|| d.pci_info().map(|p| p.bus_id));
    note("pci_info", t, format!("{r:?}"));
    let (t, r) = timed(|| d.minor_number());
    note("minor_number", t, format!("{r:?}"));
    let (t, r) = timed(|| d.temperature(TemperatureSensor::Gpu));
    note("temperature", t, format!("{r:?}"));
    let (t, r) = timed(|| d.temperature_threshold(TemperatureThreshold::Slowdown));
    note("temperature_threshold(slowdown)", t, format!("{r:?}"));
    let (t, r) = timed(|| d.power_usage());
    note("power_usage", t, format!("{r:?}"));
    let (t, r) = timed(|| d.total_energy_consumption());
    note("total_energy_consumption", t, format!("{r:?}"));
    let (t, r) = timed(|| d.utilization_rates().map(|u| (u.gpu, u.memory)));
    note("utilization_rates", t, format!("{r:?}"));
    let (t, r) = timed(|| d.memory_info().map(|m| (m.total, m.used)));
    note("memory_info", t, format!("{r:?}"));
    let (t, r) = timed(|| d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile));
    note(
        "total_ecc_errors(uncorrected, volatile)",
        t,
        format!("{r:?}"),
    );
    let (t, r) = timed(|| d.are_pages_pending_retired());
    note("are_pages_pending_retired", t, format!("{r:?}"));
    let (t, r) = timed(|| d.current_throttle_reasons().map(|b| b.bits()));
    note("current_throttle_reasons", t, format!("{r:?}"));
    let (t, r) = timed(|| d.current_pcie_link_gen());
    note("current_pcie_link_gen", t, format!("{r:?}"));
    let (t, r) = timed(|| d.pcie_replay_counter());
    note("pcie_replay_counter", t, format!("{r:?}"));
    let (t, r) = timed(|| d.mig_mode().map(|m| (m.current, m.pending)));
    note("mig_mode", t, format!("{r:?}"));
    let (t, r) = timed(|| d.is_in_persistent_mode());
    note("is_in_persistent_mode", t, format!("{r:?}"));
    let (t, r) = timed(|| d.running_compute_processes().map(|p| p.len()));
    note("running_compute_processes", t, format!("{r:?}"));
    let (t, r) = timed(|| d.link_wrapper_for(0).is_active());
    note("nvlink(0).is_active", t, format!("{r:?}"));
    let (t, r) = timed(|| nvml.sys_driver_version());
    note("sys_driver_version", t, format!("{r:?}"));
    // the rest of what a snapshot reads, so the simulator's latency table has no guesses
    let (t, r) = timed(|| d.max_pcie_link_gen());
    note("max_pcie_link_gen", t, format!("{r:?}"));
    let (t, r) = timed(|| d.current_pcie_link_width());
    note("current_pcie_link_width", t, format!("{r:?}"));
    let (t, r) = timed(|| d.max_pcie_link_width());
    note("max_pcie_link_width", t, format!("{r:?}"));
    let (t, r) = timed(|| d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile));
    note("total_ecc_errors(corrected, volatile)", t, format!("{r:?}"));
    let (t, r) = timed(|| {
        d.retired_pages(nvml_wrapper::enum_wrappers::device::RetirementCause::DoubleBitEccError)
            .map(|p| p.len())
    });
    note("retired_pages(double bit)", t, format!("{r:?}"));
    let (t, r) = timed(|| d.temperature_threshold(TemperatureThreshold::Shutdown));
    note("temperature_threshold(shutdown)", t, format!("{r:?}"));
    let (t, r) = timed(|| nvml.device_by_index(0).map(|_| ()));
    note("device_by_index(0) again", t, format!("{r:?}"));
    let (t, r) = timed(|| raw_remapped_rows(nvml, &d));
    note("nvmlDeviceGetRemappedRows", t, r);
    let (t, r) = timed(|| raw_fabric(nvml, &d));
    note("nvmlDeviceGetGpuFabricInfo", t, r);
    let (t, r) = timed(|| {
        nvml.create_event_set().and_then(|set| {
            d.register_events(
                nvml_wrapper::bitmasks::event::EventTypes::CRITICAL_XID_ERROR,
                set,
            )
            .map(|_| ())
            .map_err(|e| e.error)
        })
    });
    note(
        "create_event_set + register_events(XID)",
        t,
        format!("{r:?}"),
    );
    Ok(calls)
}

/// A fresh process's first reading, call by call, through nvml-wrapper directly (the same
/// calls the gates' snapshot makes, in its order).
fn breakdown(library: Option<std::path::PathBuf>) -> Result<serde_json::Value, String> {
    use nvml_wrapper::Nvml;
    let lib = library.unwrap_or_else(|| "libnvidia-ml.so.1".into());
    let path = std::ffi::CString::new(lib.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("library path: {e}"))?;
    // SAFETY: dlopen with a NUL-terminated path; the handle is kept open (NVML's own
    // dlopen below then finds the library loaded, as nvml-wrapper's would).
    let (dlopen_ms, handle) = timed(|| unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) });
    if handle.is_null() {
        return Err(format!("dlopen {} failed", lib.display()));
    }
    let (init_ms, nvml) = timed(|| Nvml::builder().lib_path(lib.as_os_str()).init());
    let nvml = nvml.map_err(|e| format!("init: {e}"))?;
    let calls = pass(&nvml)?;
    // the same calls again in the same process: what a warm session (healthd) pays
    let warm = pass(&nvml)?;
    let (shutdown_ms, r) = timed(|| nvml.shutdown());
    Ok(serde_json::json!({
        "dlopen_ms": dlopen_ms,
        "init_ms": init_ms,
        "calls": calls,
        "warm": warm,
        "shutdown_ms": shutdown_ms,
        "shutdown": format!("{r:?}"),
    }))
}

/// `nvmlDeviceGetRemappedRows` (not wrapped by nvml-wrapper 0.13), its return code and values.
fn raw_remapped_rows(nvml: &nvml_wrapper::Nvml, d: &nvml_wrapper::Device<'_>) -> String {
    let Ok(sym) = nvml.lib().nvmlDeviceGetRemappedRows.as_ref() else {
        return "symbol missing".into();
    };
    let (mut corr, mut unc, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the handle is the wrapper's and valid while `nvml` lives; the four output
    // pointers are valid, distinct locals.
    let rc = unsafe { sym(d.handle(), &mut corr, &mut unc, &mut pending, &mut failure) };
    format!("rc {rc}: corr {corr} unc {unc} pending {pending} failure {failure}")
}

/// `nvmlDeviceGetGpuFabricInfo` (not wrapped by nvml-wrapper 0.13), its return code.
fn raw_fabric(nvml: &nvml_wrapper::Nvml, d: &nvml_wrapper::Device<'_>) -> String {
    let Ok(sym) = nvml.lib().nvmlDeviceGetGpuFabricInfo.as_ref() else {
        return "symbol missing".into();
    };
    let mut info = nvml_wrapper_sys::bindings::nvmlGpuFabricInfo_t {
        clusterUuid: [0; 16],
        status: 0,
        cliqueId: 0,
        state: 0,
    };
    // SAFETY: the handle is the wrapper's and valid while `nvml` lives; `info` is a valid,
    // writable struct of the type the function fills.
    let rc = unsafe { sym(d.handle(), &mut info) };
    format!("rc {rc}: state {} status {}", info.state, info.status)
}

/// One line a second for `seconds` seconds: what the sampler reads and the processes the
/// leftover-process check sees, per GPU.
fn watch(seconds: u64, library: Option<std::path::PathBuf>) -> Result<serde_json::Value, String> {
    let opts = NvmlOptions {
        library,
        timeout: Duration::from_secs(20),
        nvlink_counters: false,
    };
    let session = Session::open(&opts).map_err(|e| format!("Session::open: {e}"))?;
    let started = Instant::now();
    let mut lines = Vec::new();
    for _ in 0..seconds {
        let snap = session.snapshot().map_err(|e| format!("snapshot: {e}"))?;
        let t = started.elapsed().as_secs_f64();
        for g in &snap.gpus {
            lines.push(serde_json::json!({
                "t_s": (t * 1000.0).round() / 1000.0,
                "gpu": g.index,
                "util_gpu_pct": g.utilization_gpu_pct,
                "util_mem_pct": g.utilization_memory_pct,
                "power_mw": g.power_mw,
                "energy_mj": g.energy_mj,
                "temperature_c": g.temperature_c,
                "throttle_reasons": g.throttle_reasons,
                "memory": g.memory,
                "compute_processes": g.compute_processes,
            }));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(serde_json::Value::Array(lines))
}

/// Wall time of 10 snapshots on one thread against 10 on each of `threads` threads at once.
fn concurrency(
    threads: usize,
    library: Option<std::path::PathBuf>,
) -> Result<serde_json::Value, String> {
    let opts = NvmlOptions {
        library,
        timeout: Duration::from_secs(20),
        nvlink_counters: false,
    };
    let session = Session::open(&opts).map_err(|e| format!("Session::open: {e}"))?;
    let _ = session.snapshot();
    let (one, _) = timed(|| (0..10).for_each(|_| drop(session.snapshot())));
    let (many, _) = timed(|| {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| (0..10).for_each(|_| drop(session.snapshot())));
            }
        })
    });
    Ok(serde_json::json!({
        "snapshots_1_thread_ms": one,
        "threads": threads,
        "snapshots_n_threads_ms": many,
        "slowdown": many / one,
        "reading": "1.0: concurrent readers are answered in parallel; N: one at a time",
    }))
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let result = match args.first().and_then(|a| a.to_str()) {
        Some("--breakdown") => breakdown(args.get(1).map(Into::into)),
        Some("--watch") => match args.get(1).and_then(|a| a.to_str()?.parse().ok()) {
            Some(n) => watch(n, args.get(2).map(Into::into)),
            None => Err("--watch needs a number of seconds".into()),
        },
        Some("--concurrency") => match args.get(1).and_then(|a| a.to_str()?.parse().ok()) {
            Some(n) => concurrency(n, args.get(2).map(Into::into)),
            None => Err("--concurrency needs a number of threads".into()),
        },
        _ => probe(args.pop().map(Into::into)),
    };
    match result.and_then(|v| serde_json::to_string_pretty(&v).map_err(|e| e.to_string())) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nvml-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
