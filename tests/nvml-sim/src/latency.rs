//! A cost model of the real driver's calls, for benchmarks: without it the simulator answers
//! in microseconds where NVIDIA's library takes milliseconds, and a benchmark of the gates
//! measures sgpu's own code only.
//!
//! Off unless `SGPU_NVML_SIM_LATENCY` names a model when the first `nvmlInit` runs (tests
//! leave it unset and stay fast). The one model, `h200-580`, is what one NVIDIA H200 under
//! driver 580.159.04 took (`docs/gpu-validation.md`, `nodelib/examples/nvml-probe.rs
//! --breakdown`, median of three fresh processes): `nvmlInit` 10.7 ms, attaching a GPU (its
//! first handle) 6.6 ms, the first reading of each kind per GPU 0.002-3.2 ms, repeated
//! readings mostly microseconds (the driver keeps them), energy 3-4.5 ms every time,
//! `nvmlShutdown` 3.4 ms. The real cost is CPU time inside the library and concurrent callers
//! of one GPU were answered one at a time, so the model spins (it does not sleep) while
//! holding one process-wide lock. A call counts as "first" for the first `gpus` calls of its
//! function after the first `nvmlInit` (a snapshot asks each GPU once, in order); functions
//! the table does not name cost nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The variable naming the model (`h200-580`, or `none`).
pub const LATENCY_ENV: &str = "SGPU_NVML_SIM_LATENCY";

/// Microseconds of one call: its first calls (one per GPU) and the later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    first_us: u64,
    warm_us: u64,
}

/// One model: the fixed costs and the per-function table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    init_us: u64,
    shutdown_us: u64,
    calls: &'static [(&'static str, Cost)],
}

const fn c(first_us: u64, warm_us: u64) -> Cost {
    Cost { first_us, warm_us }
}

/// NVIDIA H200, driver 580.159.04, measured 2026-12-04 (see the module's documentation).
const H200_580: Model = Model {
    init_us: 10_700,
    shutdown_us: 3_400,
    calls: &[
        ("nvmlDeviceGetHandleByIndex_v2", c(6_566, 1)),
        ("nvmlDeviceGetHandleByIndex", c(6_566, 1)),
        ("nvmlDeviceGetTotalEnergyConsumption", c(3_206, 4_505)),
        ("nvmlDeviceGetTemperatureThreshold", c(3_139, 1)),
        ("nvmlDeviceGetTotalEccErrors", c(2_292, 3)),
        ("nvmlDeviceGetTemperature", c(1_838, 1)),
        ("nvmlDeviceGetUtilizationRates", c(1_738, 3)),
        ("nvmlDeviceGetPowerUsage", c(1_521, 2)),
        ("nvmlDeviceRegisterEvents", c(1_217, 1_624)),
        ("nvmlDeviceGetCurrPcieLinkGeneration", c(246, 1)),
        ("nvmlDeviceGetRetiredPagesPendingStatus", c(211, 247)),
        ("nvmlDeviceGetCurrentClocksThrottleReasons", c(197, 2)),
        ("nvmlDeviceGetCurrentClocksEventReasons", c(197, 2)),
        ("nvmlDeviceGetPcieReplayCounter", c(193, 193)),
        ("nvmlDeviceGetMigMode", c(161, 2_032)),
        ("nvmlDeviceGetCurrPcieLinkWidth", c(78, 53)),
        ("nvmlDeviceGetMaxPcieLinkWidth", c(32, 1)),
        ("nvmlDeviceGetComputeRunningProcesses_v3", c(28, 15)),
        ("nvmlDeviceGetComputeRunningProcesses_v2", c(28, 15)),
        ("nvmlDeviceGetComputeRunningProcesses", c(28, 15)),
        ("nvmlDeviceGetPersistenceMode", c(17, 13)),
        ("nvmlDeviceGetPciInfo_v3", c(17, 3)),
        ("nvmlDeviceGetPciInfo_v2", c(17, 3)),
        ("nvmlDeviceGetNvLinkState", c(13, 10)),
        ("nvmlDeviceGetMemoryInfo", c(12, 16)),
        ("nvmlDeviceGetMemoryInfo_v2", c(12, 16)),
        ("nvmlDeviceGetUUID", c(11, 2)),
        ("nvmlDeviceGetGpuFabricInfo", c(10, 11)),
        ("nvmlDeviceGetMinorNumber", c(6, 1)),
        ("nvmlDeviceGetName", c(6, 1)),
        ("nvmlSystemGetDriverVersion", c(6, 2)),
        ("nvmlDeviceGetCount_v2", c(4, 1)),
        ("nvmlDeviceGetCount", c(4, 1)),
        ("nvmlDeviceGetMaxPcieLinkGeneration", c(2, 1)),
        ("nvmlDeviceGetRemappedRows", c(2, 2)),
        ("nvmlDeviceGetRetiredPages", c(1, 1)),
    ],
};

/// The model named by `name`, `None` for `none`/empty, or an error naming the known ones.
fn model(name: &str) -> Result<Option<&'static Model>, String> {
    match name.trim() {
        "" | "none" => Ok(None),
        "h200-580" => Ok(Some(&H200_580)),
        other => Err(format!(
            "{LATENCY_ENV}={other:?}: no such latency model (known: h200-580, none)"
        )),
    }
}

/// What the process's calls have cost so far.
struct Ledger {
    model: Option<&'static Model>,
    gpus: u64,
    calls: HashMap<&'static str, u64>,
}

/// The ledger, and the lock concurrent callers queue on while a cost is paid.
static LEDGER: Mutex<Option<Ledger>> = Mutex::new(None);

/// Spins for `us` microseconds (the real driver's time is CPU time).
fn spin(us: u64) {
    if us == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// The first `nvmlInit` of a process (or after the last shutdown): reads the model from the
/// environment and pays its init cost. An unknown model name is an error (init fails).
pub(crate) fn on_first_init(gpus: usize) -> Result<(), String> {
    let name = std::env::var(LATENCY_ENV).unwrap_or_default();
    let model = model(&name)?;
    let mut g = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    *g = Some(Ledger {
        model,
        gpus: gpus.max(1) as u64,
        calls: HashMap::new(),
    });
    if let Some(m) = model {
        spin(m.init_us);
    }
    Ok(())
}

/// The last `nvmlShutdown`: pays the model's shutdown cost.
pub(crate) fn on_last_shutdown() {
    let g = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = g.as_ref().and_then(|l| l.model) {
        spin(m.shutdown_us);
    }
}

/// Pays the cost of one call of `function` (nothing without a model).
pub(crate) fn pay(function: &'static str) {
    let mut g = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ledger) = g.as_mut() else { return };
    let Some(model) = ledger.model else { return };
    let Some((_, cost)) = model.calls.iter().find(|(n, _)| *n == function) else {
        return;
    };
    let n = ledger.calls.entry(function).or_insert(0);
    *n += 1;
    let us = if *n <= ledger.gpus {
        cost.first_us
    } else {
        cost.warm_us
    };
    // spin while holding the lock: concurrent callers wait, as they did on the real driver
    spin(us);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_by_name() {
        assert_eq!(model("").ok().flatten(), None);
        assert_eq!(model("none").ok().flatten(), None);
        assert_eq!(model("h200-580").ok().flatten(), Some(&H200_580));
        let e = model("a100").err().unwrap_or_default();
        assert!(e.contains("a100") && e.contains("h200-580"), "{e}");
    }

    #[test]
    fn every_function_appears_once() {
        let mut names: Vec<&str> = H200_580.calls.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a function listed twice");
        // every name is a function the simulator exports (a typo would cost nothing)
        let exported = [
            include_str!("ffi.rs"),
            include_str!("mig.rs"),
            include_str!("nvlink.rs"),
        ]
        .concat();
        for n in names {
            assert!(
                exported.contains(&format!("fn {n}(")),
                "{n} is not exported"
            );
        }
    }
}
