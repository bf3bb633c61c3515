//! The simulated library as product code sees it: through `nvml-wrapper` only (plus
//! `nvml.lib()` for the one call the wrapper does not wrap, `nvmlDeviceGetRemappedRows`).

mod common;

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Sim, SimNvml, lock, open, set_state_env};
use nvml_sim::{
    EccCounters, Process, ProcessKind, RemappedRows, RetiredPage, RetiredPages, State,
    ThrottleReason,
};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

const MIB: u64 = 1024 * 1024;

/// A node whose GPU 1 carries every kind of fault at once.
fn faulty_node() -> State {
    let mut s = State::healthy(2);
    let g = s.gpu_mut(1).unwrap();
    g.memory_used_mib = 40_000;
    g.power_usage_mw = Some(412_000);
    g.temperature_c = Some(88);
    g.utilization_gpu = Some(97);
    g.utilization_memory = Some(41);
    g.persistence_mode = Some(false);
    g.pcie_gen_current = Some(3);
    g.pcie_width_current = Some(8);
    g.throttle_reasons = Some(vec![
        ThrottleReason::HwSlowdown,
        ThrottleReason::SwPowerCap,
        ThrottleReason::HwPowerBrake,
        ThrottleReason::HwThermalSlowdown,
    ]);
    g.ecc = EccCounters {
        volatile_corrected: 3,
        volatile_uncorrected: 1,
        aggregate_corrected: 120,
        aggregate_uncorrected: 2,
    };
    g.retired_pages = Some(RetiredPages {
        pending: true,
        single_bit: vec![
            RetiredPage {
                address: 0x1f_2e3d,
                timestamp: 1_700_000_000,
            },
            RetiredPage {
                address: 0x2f_2e3d,
                timestamp: 1_700_000_100,
            },
        ],
        double_bit: vec![RetiredPage {
            address: 0xabc_000,
            timestamp: 1_700_000_200,
        }],
    });
    g.remapped_rows = Some(RemappedRows {
        correctable: 2,
        uncorrectable: 1,
        pending: true,
        failure: false,
    });
    g.accounting_mode = Some(true);
    g.processes = vec![
        Process {
            pid: 4242,
            used_memory_mib: Some(30_000),
            kind: ProcessKind::Compute,
        },
        Process {
            pid: 4243,
            used_memory_mib: None,
            kind: ProcessKind::ComputeGraphics,
        },
        Process {
            pid: 4244,
            used_memory_mib: Some(10),
            kind: ProcessKind::Graphics,
        },
    ];
    s
}

fn remapped_rows(nvml: &Nvml, device: &Device) -> Result<(u32, u32, u32, u32), u32> {
    let (mut corr, mut unc, mut pending, mut failure) = (0, 0, 0, 0);
    let sym = nvml
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .expect("nvmlDeviceGetRemappedRows exported");
    // SAFETY: a valid handle from the wrapper and four valid output pointers.
    let rc = unsafe {
        sym(
            device.handle(),
            &mut corr,
            &mut unc,
            &mut pending,
            &mut failure,
        )
    };
    if rc == sys::nvmlReturn_enum_NVML_SUCCESS {
        Ok((corr, unc, pending, failure))
    } else {
        Err(rc)
    }
}

#[test]
fn reads_every_value_the_state_sets() {
    let state = faulty_node();
    let sim = Sim::start(&state);
    let nvml = sim.nvml();

    assert_eq!(nvml.sys_driver_version().unwrap(), "550.54.15");
    assert_eq!(nvml.sys_nvml_version().unwrap(), "12.550.54.15");
    assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 12040);
    assert_eq!(nvml.device_count().unwrap(), 2);

    for want in &state.gpus {
        let d = nvml.device_by_index(want.index).unwrap();
        assert_eq!(d.index().unwrap(), want.index);
        assert_eq!(d.name().unwrap(), "NVIDIA H100 80GB HBM3");
        assert_eq!(d.uuid().unwrap(), want.uuid);
        assert_eq!(&d.serial().unwrap(), want.serial.as_ref().unwrap());
        assert_eq!(d.minor_number().unwrap(), want.index);
        let pci = d.pci_info().unwrap();
        assert_eq!(pci.bus_id, want.pci_bus_id);
        assert_eq!(pci.domain, 0);
        assert_eq!(pci.device, 0);
        assert_eq!(pci.pci_device_id, 0x2330_10DE);
        assert_eq!(pci.pci_sub_system_id, Some(0x16C1_10DE));

        // Look-ups by identity find the same device.
        assert_eq!(
            nvml.device_by_uuid(want.uuid.as_str())
                .unwrap()
                .index()
                .unwrap(),
            want.index
        );
        let legacy = &want.pci_bus_id[4..]; // "0000:18:00.0"
        assert_eq!(
            nvml.device_by_pci_bus_id(legacy).unwrap().index().unwrap(),
            want.index
        );
        let serial = want.serial.as_deref().unwrap();
        #[allow(deprecated)] // fine on single-GPU boards such as these
        let by_serial = nvml.device_by_serial(serial).unwrap();
        assert_eq!(by_serial.index().unwrap(), want.index);

        let mem = d.memory_info().unwrap();
        assert_eq!(mem.total, 81_559 * MIB);
        assert_eq!(mem.used, want.memory_used_mib * MIB);
        assert_eq!(mem.free, (81_559 - want.memory_used_mib) * MIB);
        assert_eq!(mem.reserved, 0);

        assert_eq!(d.power_usage().unwrap(), want.power_usage_mw.unwrap());
        assert_eq!(d.power_management_limit().unwrap(), 700_000);
        assert_eq!(d.enforced_power_limit().unwrap(), 700_000);
        assert_eq!(
            d.temperature(TemperatureSensor::Gpu).unwrap(),
            want.temperature_c.unwrap()
        );
        assert_eq!(
            d.temperature_threshold(TemperatureThreshold::Slowdown)
                .unwrap(),
            90
        );
        assert_eq!(
            d.temperature_threshold(TemperatureThreshold::Shutdown)
                .unwrap(),
            92
        );
        assert_eq!(
            d.temperature_threshold(TemperatureThreshold::GpuMax)
                .unwrap(),
            87
        );
        assert_eq!(
            d.temperature_threshold(TemperatureThreshold::MemoryMax)
                .unwrap(),
            95
        );
        let u = d.utilization_rates().unwrap();
        assert_eq!(u.gpu, want.utilization_gpu.unwrap());
        assert_eq!(u.memory, want.utilization_memory.unwrap());
        assert_eq!(
            d.is_in_persistent_mode().unwrap(),
            want.persistence_mode.unwrap()
        );
        let ecc = d.is_ecc_enabled().unwrap();
        assert!(ecc.currently_enabled && ecc.pending_enabled);
        assert_eq!(d.max_pcie_link_gen().unwrap(), 5);
        assert_eq!(d.max_pcie_link_width().unwrap(), 16);
        assert_eq!(
            d.current_pcie_link_gen().unwrap(),
            want.pcie_gen_current.unwrap()
        );
        assert_eq!(
            d.current_pcie_link_width().unwrap(),
            want.pcie_width_current.unwrap()
        );
        assert!(d.total_energy_consumption().unwrap() >= 1_000_000_000);
        assert!(
            d.supported_event_types()
                .unwrap()
                .contains(EventTypes::CRITICAL_XID_ERROR)
        );
    }

    // GPU 0: healthy.
    let d0 = nvml.device_by_index(0).unwrap();
    assert_eq!(
        d0.current_throttle_reasons().unwrap(),
        ThrottleReasons::GPU_IDLE
    );
    assert_eq!(
        d0.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .unwrap(),
        0
    );
    assert_eq!(remapped_rows(&nvml, &d0), Ok((0, 0, 0, 0)));
    assert!(d0.running_compute_processes().unwrap().is_empty());
    assert!(d0.running_graphics_processes().unwrap().is_empty());
    // Like a real H100: rows are remapped, pages are not retired.
    assert!(matches!(
        d0.retired_pages(RetirementCause::DoubleBitEccError),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        d0.are_pages_pending_retired(),
        Err(NvmlError::NotSupported)
    ));
    assert!(!d0.is_accounting_enabled().unwrap());
    assert!(matches!(d0.accounting_pids(), Err(NvmlError::NotSupported)));

    // GPU 1: every fault.
    let d1 = nvml.device_by_index(1).unwrap();
    assert_eq!(
        d1.current_throttle_reasons_strict().unwrap(),
        ThrottleReasons::HW_SLOWDOWN
            | ThrottleReasons::SW_POWER_CAP
            | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN
            | ThrottleReasons::HW_THERMAL_SLOWDOWN
    );
    let ecc = |e, c| d1.total_ecc_errors(e, c).unwrap();
    assert_eq!(ecc(MemoryError::Corrected, EccCounter::Volatile), 3);
    assert_eq!(ecc(MemoryError::Uncorrected, EccCounter::Volatile), 1);
    assert_eq!(ecc(MemoryError::Corrected, EccCounter::Aggregate), 120);
    assert_eq!(ecc(MemoryError::Uncorrected, EccCounter::Aggregate), 2);
    let sbe = d1
        .retired_pages(RetirementCause::MultipleSingleBitEccErrors)
        .unwrap();
    assert_eq!(
        sbe.iter()
            .map(|p| (p.address, p.timestamp))
            .collect::<Vec<_>>(),
        vec![(0x1f_2e3d, 1_700_000_000), (0x2f_2e3d, 1_700_000_100)]
    );
    let dbe = d1
        .retired_pages(RetirementCause::DoubleBitEccError)
        .unwrap();
    assert_eq!(dbe.len(), 1);
    assert_eq!(dbe[0].address, 0xabc_000);
    assert!(d1.are_pages_pending_retired().unwrap());
    assert_eq!(remapped_rows(&nvml, &d1), Ok((2, 1, 1, 0)));

    let compute = d1.running_compute_processes().unwrap();
    assert_eq!(compute.len(), 2);
    assert_eq!(compute[0].pid, 4242);
    assert_eq!(
        compute[0].used_gpu_memory,
        UsedGpuMemory::Used(30_000 * MIB)
    );
    assert_eq!(compute[0].gpu_instance_id, None);
    assert_eq!(compute[1].pid, 4243);
    assert_eq!(compute[1].used_gpu_memory, UsedGpuMemory::Unavailable);
    assert_eq!(d1.running_compute_processes_count().unwrap(), 2);
    let graphics = d1.running_graphics_processes().unwrap();
    assert_eq!(
        graphics.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![4243, 4244]
    );
    assert!(d1.is_accounting_enabled().unwrap());
    assert_eq!(d1.accounting_pids().unwrap(), vec![4242, 4243, 4244]);
}

#[test]
fn unset_values_are_not_supported() {
    let mut state = State::healthy(1);
    let g = state.gpu_mut(0).unwrap();
    g.name = None;
    g.serial = None;
    g.temperature_c = None;
    g.temp_gpu_max_c = None;
    g.power_usage_mw = None;
    g.energy_mj_at_epoch = None;
    g.utilization_memory = None;
    g.throttle_reasons = None;
    g.remapped_rows = None;
    g.persistence_mode = None;
    g.pcie_width_current = None;
    g.ecc_enabled = Some(false);
    g.ecc.volatile_uncorrected = 7;
    state.driver_version = None;
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let d = nvml.device_by_index(0).unwrap();
    let ns = |r: Result<(), NvmlError>, what: &str| {
        assert!(
            matches!(r, Err(NvmlError::NotSupported)),
            "{what}: expected NotSupported, got {r:?}"
        )
    };
    ns(d.name().map(drop), "name");
    ns(d.serial().map(drop), "serial");
    ns(
        d.temperature(TemperatureSensor::Gpu).map(drop),
        "temperature",
    );
    ns(
        d.temperature_threshold(TemperatureThreshold::GpuMax)
            .map(drop),
        "gpu max",
    );
    ns(
        d.temperature_threshold(TemperatureThreshold::AcousticMin)
            .map(drop),
        "acoustic min",
    );
    ns(d.power_usage().map(drop), "power");
    ns(d.total_energy_consumption().map(drop), "energy");
    ns(d.utilization_rates().map(drop), "utilization");
    ns(d.current_throttle_reasons().map(drop), "throttle");
    ns(d.is_in_persistent_mode().map(drop), "persistence");
    ns(d.current_pcie_link_width().map(drop), "pcie width");
    ns(
        d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .map(drop),
        "ecc counters with ECC off",
    );
    ns(nvml.sys_driver_version().map(drop), "driver version");
    assert!(!d.is_ecc_enabled().unwrap().currently_enabled);
    assert_eq!(
        remapped_rows(&nvml, &d),
        Err(sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED)
    );
    // Still answered.
    assert_eq!(d.uuid().unwrap(), state.gpus[0].uuid);
    assert_eq!(d.current_pcie_link_gen().unwrap(), 5);
}

/// Reads the energy counter, with the wall-clock interval (Unix s) the read happened in.
fn timed_energy(d: &Device) -> (u64, f64, f64) {
    let before = nvml_sim::unix_now();
    let e = d.total_energy_consumption().unwrap();
    (e, before, nvml_sim::unix_now())
}

/// Asserts `v` lies in `[lo, hi]` give or take rounding.
fn assert_between(v: f64, lo: f64, hi: f64, what: &str) {
    assert!(
        v >= lo - 2.0 && v <= hi + 2.0,
        "{what}: {v:.0} not in [{lo:.0}, {hi:.0}]"
    );
}

#[test]
fn energy_advances_with_power_and_time_and_stays_continuous() {
    let mut state = State::healthy(2);
    state.gpus[0].power_usage_mw = Some(500_000); // 500 W = 500 J/s
    state.gpus[1].power_usage_mw = Some(100_000);
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();

    // The counter is what the file says, now: any process computes the same value.
    let file = sim.load();
    let epoch = file.epoch.unwrap();
    for (d, g) in [(&d0, &file.gpus[0]), (&d1, &file.gpus[1])] {
        let (e, t0, t1) = timed_energy(d);
        let lo = g.energy_mj(epoch, t0).unwrap() as f64;
        let hi = g.energy_mj(epoch, t1).unwrap() as f64;
        assert_between(e as f64, lo, hi, "counter vs file");
    }

    // It grows at 500 W: bounded by the time between the reads.
    let (e1, a0, a1) = timed_energy(&d0);
    std::thread::sleep(Duration::from_millis(300));
    let (e2, b0, b1) = timed_energy(&d0);
    assert_between(
        (e2 - e1) as f64,
        500_000.0 * (b0 - a1),
        500_000.0 * (b1 - a0),
        "energy delta at 500 W",
    );
    assert!(e2 - e1 >= 140_000, "less than 0.28 s worth of 500 W");

    // Cut the power: the counter continues from where it was, then grows slower.
    let (e3, c0, _) = timed_energy(&d0);
    sim.update(|s| s.gpus[0].power_usage_mw = Some(50_000));
    let (e4, d0t, d1t) = timed_energy(&d0);
    assert_between(
        (e4 - e3) as f64,
        0.0,
        500_000.0 * (d1t - c0),
        "no jump when the power changes",
    );
    std::thread::sleep(Duration::from_millis(300));
    // The file was replaced before the read of e4: from there on it is 50 W.
    let (e5, f0, f1) = timed_energy(&d0);
    assert_between(
        (e5 - e4) as f64,
        50_000.0 * (f0 - d1t),
        50_000.0 * (f1 - d0t),
        "energy delta at 50 W",
    );

    // The other GPU kept its own rate.
    let file = sim.load();
    let (e, t0, t1) = timed_energy(&d1);
    let g = &file.gpus[1];
    let lo = g.energy_mj(file.epoch.unwrap(), t0).unwrap() as f64;
    let hi = g.energy_mj(file.epoch.unwrap(), t1).unwrap() as f64;
    assert_between(e as f64, lo, hi, "GPU 1 after the rewrite");
}

#[test]
fn lost_gpu_returns_gpu_lost() {
    let sim = Sim::start(&State::healthy(2));
    let nvml = sim.nvml();
    let d1 = nvml.device_by_index(1).unwrap();
    let uuid1 = d1.uuid().unwrap();
    sim.update(|s| s.gpus[1].lost = true);

    assert!(matches!(d1.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(
        d1.temperature(TemperatureSensor::Gpu),
        Err(NvmlError::GpuLost)
    ));
    assert!(matches!(d1.memory_info(), Err(NvmlError::GpuLost)));
    assert!(matches!(nvml.device_by_index(1), Err(NvmlError::GpuLost)));
    assert!(matches!(
        nvml.device_by_uuid(uuid1.as_str()),
        Err(NvmlError::GpuLost)
    ));
    assert_eq!(
        remapped_rows(&nvml, &d1),
        Err(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST)
    );
    // The count still includes it; the other GPU is fine.
    assert_eq!(nvml.device_count().unwrap(), 2);
    assert!(nvml.device_by_index(0).unwrap().uuid().is_ok());

    // Back on the bus.
    sim.update(|s| s.gpus[1].lost = false);
    assert_eq!(d1.uuid().unwrap(), uuid1);
}

/// Runs `f` on a detached thread and returns its result channel: if the call under test
/// never returns, the test fails on a timeout instead of hanging (the thread is leaked).
fn detached<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

#[test]
fn hang_blocks_until_cleared() {
    let sim = Sim::start(&State::healthy(2));
    let nvml = Arc::new(sim.nvml());
    let d1 = nvml.device_by_index(1).unwrap();

    // A hung GPU blocks its own calls only.
    sim.update(|s| s.gpus[0].hang = true);
    let n = Arc::clone(&nvml);
    let rx = detached(move || {
        let t = Instant::now();
        let r = n
            .device_by_index(0)
            .and_then(|d| d.temperature(TemperatureSensor::Gpu));
        (r, t.elapsed())
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(400)).is_err(),
        "a call on a hung GPU returned"
    );
    assert!(d1.temperature(TemperatureSensor::Gpu).is_ok());
    sim.update(|s| s.gpus[0].hang = false);
    let (r, took) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the call stayed blocked after the hang was cleared");
    assert_eq!(r.unwrap(), 31);
    assert!(took >= Duration::from_millis(400));

    // A hung driver blocks everything.
    sim.update(|s| s.hang = true);
    let n = Arc::clone(&nvml);
    let rx = detached(move || n.device_count());
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    sim.update(|s| s.hang = false);
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("still blocked");
    assert_eq!(r.unwrap(), 2);
}

#[test]
fn hung_driver_blocks_init_until_cleared() {
    let mut state = State::healthy(1);
    state.hang = true;
    let sim = Sim::start(&state);
    let rx = detached(|| open().map(|nvml| nvml.device_count()));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nvmlInit returned on a hung driver"
    );
    sim.update(|s| s.hang = false);
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("init stayed blocked");
    assert_eq!(r.unwrap().unwrap(), 1);
}

#[test]
fn rewritten_file_is_seen_by_a_live_nvml() {
    let sim = Sim::start(&State::healthy(1));
    let nvml = sim.nvml();
    let d = nvml.device_by_index(0).unwrap();
    assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), 31);
    for t in [50, 51, 95] {
        sim.update(|s| {
            s.gpus[0].temperature_c = Some(t);
            s.gpus[0].throttle_reasons = Some(vec![ThrottleReason::HwThermalSlowdown]);
        });
        assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), t);
        assert_eq!(
            d.current_throttle_reasons().unwrap(),
            ThrottleReasons::HW_THERMAL_SLOWDOWN
        );
    }

    let good = sim.load().to_toml_string().unwrap();
    assert!(good.contains("temperature_c = 95"), "{good}");
    // A broken rewrite keeps the last good state.
    std::fs::write(&sim.state_path, "this is = not [valid").unwrap();
    assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), 95);
    // A typo'd key is just as broken.
    let typo = good.replace("temperature_c = 95", "temprature_c = 20");
    std::fs::write(&sim.state_path, typo).unwrap();
    assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), 95);
}

#[test]
fn xid_is_delivered_once_per_event_set() {
    let mut state = State::healthy(2);
    // An XID from before this process started: never delivered.
    state.xids.push(nvml_sim::Xid {
        id: 1,
        gpu: 0,
        code: 13,
        timestamp: Some(1_000_000.0),
    });
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();

    let set = nvml.create_event_set().unwrap();
    let set = d0
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .unwrap();
    assert!(matches!(set.wait(0), Err(NvmlError::Timeout)));

    // GPU 1 is not registered: its XIDs are not delivered.
    sim.update(|s| {
        s.inject_xid(1, 31);
    });
    let t = Instant::now();
    assert!(matches!(set.wait(150), Err(NvmlError::Timeout)));
    assert!(t.elapsed() >= Duration::from_millis(140));

    sim.update(|s| {
        s.inject_xid(0, 79);
    });
    let ev = set.wait(1000).unwrap();
    assert_eq!(ev.event_type, EventTypes::CRITICAL_XID_ERROR);
    assert_eq!(ev.event_data, Some(XidError::Value(79)));
    assert_eq!(ev.device.uuid().unwrap(), d0.uuid().unwrap());
    // Exactly once.
    assert!(matches!(set.wait(100), Err(NvmlError::Timeout)));

    // A wait that is already blocked picks up an XID written meanwhile.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            sim.update(|s| {
                s.inject_xid(0, 48);
            });
        });
        let ev = set.wait(3000).unwrap();
        assert_eq!(ev.event_data, Some(XidError::Value(48)));
    });

    // A set created now gets none of the earlier XIDs; a second set registered on GPU 1
    // gets the next one there, and the first set does not.
    let set2 = nvml.create_event_set().unwrap();
    let set2 = d1
        .register_events(EventTypes::CRITICAL_XID_ERROR, set2)
        .unwrap();
    assert!(matches!(set2.wait(50), Err(NvmlError::Timeout)));
    sim.update(|s| {
        s.inject_xid(1, 94);
    });
    let ev = set2.wait(1000).unwrap();
    assert_eq!(ev.event_data, Some(XidError::Value(94)));
    assert_eq!(ev.device.index().unwrap(), 1);
    assert!(matches!(set.wait(50), Err(NvmlError::Timeout)));
    assert!(matches!(set2.wait(50), Err(NvmlError::Timeout)));

    // An XID whose timestamp is after the set's creation is delivered even if this process
    // saw the entry first (another process may have created the set earlier).
    let set3 = nvml.create_event_set().unwrap();
    let set3 = d0
        .register_events(EventTypes::CRITICAL_XID_ERROR, set3)
        .unwrap();
    let future = nvml_sim::unix_now() + 0.5;
    sim.update(|s| {
        s.xids.push(nvml_sim::Xid {
            id: 7_000_000_000_000_000,
            gpu: 0,
            code: 63,
            timestamp: Some(future),
        });
    });
    assert_eq!(
        set3.wait(1000).unwrap().event_data,
        Some(XidError::Value(63))
    );
    assert_eq!(
        set.wait(1000).unwrap().event_data,
        Some(XidError::Value(63))
    );

    // Unsupported event types are refused (and the wrapper frees the set).
    let set4 = nvml.create_event_set().unwrap();
    assert!(
        d0.register_events(EventTypes::POWER_SOURCE_CHANGE, set4)
            .is_err()
    );

    // A lost, registered GPU ends the wait.
    sim.update(|s| s.gpus[0].lost = true);
    assert!(matches!(set.wait(1000), Err(NvmlError::GpuLost)));
    drop((set, set2, set3));
}

#[test]
fn init_fails_clearly() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();

    set_state_env(None);
    assert!(matches!(open(), Err(NvmlError::DriverNotLoaded)));

    let missing = dir.path().join("missing.toml");
    set_state_env(Some(&missing));
    assert!(matches!(open(), Err(NvmlError::DriverNotLoaded)));

    let typo = dir.path().join("typo.toml");
    let text = State::healthy(1)
        .to_toml_string()
        .unwrap()
        .replace("ecc_enabled = true", "ecc_enabeld = true");
    std::fs::write(&typo, text).unwrap();
    set_state_env(Some(&typo));
    assert!(matches!(open(), Err(NvmlError::Unknown)));

    let bad = dir.path().join("bad.toml");
    let mut s = State::healthy(2);
    s.gpus[1].uuid = s.gpus[0].uuid.clone();
    std::fs::write(&bad, s.to_toml_string().unwrap()).unwrap();
    set_state_env(Some(&bad));
    assert!(matches!(open(), Err(NvmlError::Unknown)));
    set_state_env(None);
}

#[test]
fn init_is_reference_counted() {
    let sim = Sim::start(&State::healthy(1));
    let a = sim.nvml();
    let b = sim.nvml();
    drop(a);
    assert_eq!(b.device_count().unwrap(), 1);
    assert!(b.device_by_index(0).unwrap().uuid().is_ok());

    // One shutdown too many: calls report Uninitialized (then init again for b's drop).
    let lib = b.lib();
    // SAFETY: plain NVML calls without arguments.
    unsafe {
        assert_eq!(lib.nvmlShutdown(), sys::nvmlReturn_enum_NVML_SUCCESS);
    }
    assert!(matches!(b.device_count(), Err(NvmlError::Uninitialized)));
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            lib.nvmlShutdown(),
            sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
        );
        assert_eq!(lib.nvmlInit_v2(), sys::nvmlReturn_enum_NVML_SUCCESS);
    }
    assert_eq!(b.device_count().unwrap(), 1);
}

#[test]
fn list_queries_report_the_needed_size() {
    let sim = Sim::start(&faulty_node());
    let nvml = sim.nvml();
    let d1 = nvml.device_by_index(1).unwrap();
    let lib = nvml.lib();
    let procs = lib
        .nvmlDeviceGetComputeRunningProcesses_v3
        .as_ref()
        .unwrap();
    let mut buf: Vec<sys::nvmlProcessInfo_t> = vec![
        sys::nvmlProcessInfo_t {
            pid: 0,
            usedGpuMemory: 0,
            gpuInstanceId: 0,
            computeInstanceId: 0
        };
        4
    ];
    // SAFETY: a valid handle, count and buffer of at least `count` entries (or NULL).
    unsafe {
        let mut count = 0;
        let rc = procs(d1.handle(), &mut count, std::ptr::null_mut());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(count, 2);
        let mut count = 1;
        let rc = procs(d1.handle(), &mut count, buf.as_mut_ptr());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(count, 2);
        let mut count = 4;
        let rc = procs(d1.handle(), &mut count, buf.as_mut_ptr());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_SUCCESS);
        assert_eq!(count, 2);
        assert_eq!(buf[1].pid, 4243);
        // A NULL buffer with a non-zero count is an invalid argument.
        let mut count = 4;
        let rc = procs(d1.handle(), &mut count, std::ptr::null_mut());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);

        let pages = lib.nvmlDeviceGetRetiredPages_v2.as_ref().unwrap();
        let mut count = 0;
        let rc = pages(
            d1.handle(),
            sys::nvmlPageRetirementCause_enum_NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
            &mut count,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(count, 2);

        let pids = lib.nvmlDeviceGetAccountingPids.as_ref().unwrap();
        let mut count = 0;
        let rc = pids(d1.handle(), &mut count, std::ptr::null_mut());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(count, 3);

        // A handle that is not a device.
        let mut count = 0;
        let bogus = 0x10 as sys::nvmlDevice_t;
        let rc = procs(bogus, &mut count, std::ptr::null_mut());
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
    }
    // Out-of-range index.
    assert!(matches!(
        nvml.device_by_index(2),
        Err(NvmlError::InvalidArg)
    ));
    assert!(matches!(
        nvml.device_by_uuid("GPU-00000000-0000-0000-0000-000000000000"),
        Err(NvmlError::NotFound)
    ));
}

#[test]
fn error_strings_are_nvidias() {
    let sim = Sim::start(&State::healthy(1));
    let nvml = sim.nvml();
    let f = nvml.lib().nvmlErrorString.as_ref().unwrap();
    let s = |code| {
        // SAFETY: nvmlErrorString returns a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(f(code)) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        s(sys::nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST),
        "GPU is lost"
    );
    assert_eq!(s(sys::nvmlReturn_enum_NVML_SUCCESS), "Success");
    assert_eq!(s(12345), "Unknown Error");
}

/// Set in the child process of `energy_is_coherent_across_processes`: where to write.
const PROBE_ENV: &str = "NVML_SIM_TEST_PROBE_OUT";

#[test]
fn energy_is_coherent_across_processes() {
    let mut state = State::healthy(1);
    state.gpus[0].power_usage_mw = Some(500_000);
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let d0 = nvml.device_by_index(0).unwrap();
    let out = sim.dir.path().join("probe.out");

    // Like a prolog and a later epilog: another process reads the same counter.
    let before = d0.total_energy_consumption().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "probe_child", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, &out)
        .env(nvml_sim::STATE_ENV, &sim.state_path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let after = d0.total_energy_consumption().unwrap();
    let child: u64 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        before <= child && child <= after,
        "parent read {before}, then the child {child}, then the parent {after}"
    );
}

/// Runs only as the child of `energy_is_coherent_across_processes`.
#[test]
fn probe_child() {
    let Some(out) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    let nvml = open().expect("child: Nvml init");
    let e = nvml
        .device_by_index(0)
        .unwrap()
        .total_energy_consumption()
        .unwrap();
    std::fs::write(out, e.to_string()).unwrap();
}

#[test]
fn calls_are_cheap() {
    let sim = Sim::start(&State::healthy(8));
    let nvml = sim.nvml();
    let t = Instant::now();
    let mut calls = 0;
    for i in 0..8 {
        let d = nvml.device_by_index(i).unwrap();
        for _ in 0..25 {
            d.temperature(TemperatureSensor::Gpu).unwrap();
            d.power_usage().unwrap();
            d.memory_info().unwrap();
            d.total_energy_consumption().unwrap();
            calls += 4;
        }
    }
    let per_call = t.elapsed() / calls;
    eprintln!("{calls} NVML calls, {per_call:?} per call");
    assert!(per_call < Duration::from_millis(2), "{per_call:?} per call");
}

unsafe extern "C" {
    fn fork() -> i32;
    fn _exit(code: i32) -> !;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

/// A real `fork()` (Rust's `Command` may use `posix_spawn`, which runs no fork handlers);
/// the child exits at once.
fn fork_and_reap() {
    // SAFETY: the child only calls `_exit`; the parent reaps it.
    unsafe {
        let pid = fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            _exit(0);
        }
        let mut status = 0;
        waitpid(pid, &mut status, 0);
    }
}

#[test]
fn a_slow_init_and_the_forks_made_during_it_are_recorded() {
    let mut state = State::healthy(1);
    state.init_delay_ms = 1000;
    let sim = Sim::start(&state);
    let log = sim.dir.path().join("forks.log");
    sim.update(|s| s.fork_log = Some(log.clone()));
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let n = open().map(|n| n.device_count());
        let _ = tx.send(started.elapsed());
        n.map(|c| c.ok())
    });
    // the other thread is inside nvmlInit's second now
    std::thread::sleep(Duration::from_millis(300));
    fork_and_reap();
    let took = rx.recv().unwrap();
    assert!(took >= Duration::from_millis(1000), "init took {took:?}");
    assert_eq!(t.join().unwrap().ok().flatten(), Some(1));
    fork_and_reap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let pid = std::process::id();
    assert!(
        lines[0].starts_with(&format!("fork pid={pid} prog=")),
        "{text}"
    );
    assert!(lines[0].ends_with(" in_flight=1"), "{text}");
    assert!(lines[1].ends_with(" in_flight=0"), "{text}");
}
