//! MIG through `nvml-wrapper`: mode, MIG device handles and their parent, per-instance
//! memory, processes and attributes, what the parent stops answering under MIG, and the
//! state file's checks.

#[allow(unused_imports)] // the shared set-up exports more than these tests use
mod common;

use common::{Sim, SimNvml};
use nvml_sim::{Process, State};
use nvml_wrapper::error::NvmlError;

const NOT_SUPPORTED: u32 = nvml_wrapper_sys::bindings::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;

/// `nvmlDeviceGetRemappedRows`' return code (`nvml-wrapper` does not wrap the call).
fn remapped_rows_rc(nvml: &nvml_wrapper::Nvml, d: &nvml_wrapper::Device<'_>) -> u32 {
    let sym = nvml.lib().nvmlDeviceGetRemappedRows.as_ref().unwrap();
    let (mut a, mut b, mut c, mut e) = (0, 0, 0, 0);
    // SAFETY: a handle from the wrapper, four distinct writable locals.
    unsafe { sym(d.handle(), &mut a, &mut b, &mut c, &mut e) }
}

/// GPU 0 of an H100 node split into 3g.40gb + 2g.20gb + 1g.10gb ×2; GPU 1 MIG-capable but
/// off; GPU 2 no MIG at all.
fn split_node() -> State {
    let mut state = State::healthy_seeded(3, 18);
    let g0 = state.gpu_mut(0).unwrap();
    g0.split_mig(&["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
        .unwrap();
    let mig = g0.mig.as_mut().unwrap();
    mig.instances[1].memory_used_mib = 5000;
    mig.instances[1].processes.push(Process {
        pid: 4242,
        used_memory_mib: Some(4900),
        kind: Default::default(),
    });
    state.gpu_mut(2).unwrap().mig_mode = None;
    state
}

#[test]
fn mig_devices_answer_as_the_state_sets_them() {
    let state = split_node();
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let g0 = nvml.device_by_index(0).unwrap();
    let mode = g0.mig_mode().unwrap();
    assert_eq!((mode.current, mode.pending), (1, 1));
    assert_eq!(g0.mig_device_count().unwrap(), 7);
    assert!(!g0.mig_is_mig_device_handle().unwrap());

    let want = &state.gpus[0].mig.as_ref().unwrap().instances;
    let mut seen = Vec::new();
    for i in 0..4 {
        let m = g0.mig_device_by_index(i).unwrap();
        assert!(m.mig_is_mig_device_handle().unwrap());
        let uuid = m.uuid().unwrap();
        assert_eq!(uuid, want[i as usize].uuid);
        assert!(uuid.starts_with("MIG-"));
        let parent = m.mig_parent_device().unwrap();
        assert_eq!(parent.uuid().unwrap(), state.gpus[0].uuid);
        assert_eq!(parent.index().unwrap(), 0);
        let name = m.name().unwrap();
        assert_eq!(
            name,
            format!("NVIDIA H100 80GB HBM3 MIG {}", want[i as usize].profile)
        );
        let a = m.attributes().unwrap();
        seen.push((
            want[i as usize].gpu_instance_id,
            a.gpu_instance_slice_count,
            a.compute_instance_slice_count,
            a.multiprocessor_count,
            m.memory_info().unwrap().total / (1024 * 1024),
        ));
    }
    // in GPU instance order; memory = 81559 MiB x eighths / 8; H100 SMs per profile
    assert_eq!(
        seen,
        [
            (1, 3, 3, 60, 40779),
            (3, 2, 2, 32, 20389),
            (7, 1, 1, 16, 10194),
            (8, 1, 1, 16, 10194),
        ]
    );
    // NVML: past the maximum is an invalid argument, a free index is "not found"
    assert!(matches!(
        g0.mig_device_by_index(7),
        Err(NvmlError::InvalidArg)
    ));
    assert!(matches!(
        g0.mig_device_by_index(4),
        Err(NvmlError::NotFound)
    ));

    // the 2g.20gb's memory and process, with its instance ids on the parent's list
    let m1 = g0.mig_device_by_index(1).unwrap();
    let mem = m1.memory_info().unwrap();
    assert_eq!(mem.used / (1024 * 1024), 5000);
    let procs = m1.running_compute_processes().unwrap();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].pid, 4242);
    assert_eq!(procs[0].gpu_instance_id, Some(3));
    assert_eq!(procs[0].compute_instance_id, Some(0));
    let parent_procs = g0.running_compute_processes().unwrap();
    assert_eq!(parent_procs.len(), 1);
    assert_eq!(parent_procs[0].gpu_instance_id, Some(3));
    assert!(
        m1.running_graphics_processes().unwrap().is_empty(),
        "a compute process is on no graphics list"
    );
    assert!(
        m1.mig_device_count().is_err(),
        "whole-GPU queries on a MIG handle"
    );
    assert!(matches!(
        m1.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu),
        Err(NvmlError::NotSupported)
    ));

    // under MIG the parent's utilization and remapped rows are N/A; the rest answers
    assert!(matches!(
        g0.utilization_rates(),
        Err(NvmlError::NotSupported)
    ));
    assert_eq!(remapped_rows_rc(&nvml, &g0), NOT_SUPPORTED);
    assert!(
        g0.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
            .is_ok()
    );
    assert!(g0.memory_info().is_ok());
    assert!(matches!(g0.attributes(), Err(NvmlError::NotSupported)));

    // MIG off: count 0, no handles; utilization answers
    let g1 = nvml.device_by_index(1).unwrap();
    assert_eq!(g1.mig_mode().unwrap().current, 0);
    assert_eq!(g1.mig_device_count().unwrap(), 0);
    assert!(matches!(
        g1.mig_device_by_index(0),
        Err(NvmlError::NotSupported)
    ));
    assert!(g1.utilization_rates().is_ok());
    assert_eq!(remapped_rows_rc(&nvml, &g1), 0);
    // no MIG on the board
    let g2 = nvml.device_by_index(2).unwrap();
    assert!(matches!(g2.mig_mode(), Err(NvmlError::NotSupported)));
    assert!(matches!(
        g2.mig_device_count(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(g2.mig_parent_device(), Err(NvmlError::InvalidArg)));
}

#[test]
fn a_lost_parent_loses_its_mig_devices_and_a_pending_mode_reads_back() {
    let mut state = split_node();
    state.gpu_mut(0).unwrap().mig.as_mut().unwrap().pending = Some(false);
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let g0 = nvml.device_by_index(0).unwrap();
    let mode = g0.mig_mode().unwrap();
    assert_eq!((mode.current, mode.pending), (1, 0));
    let m = g0.mig_device_by_index(0).unwrap();
    assert!(m.uuid().is_ok());
    sim.update(|s| s.gpu_mut(0).unwrap().lost = true);
    assert!(matches!(m.uuid(), Err(NvmlError::GpuLost)));
    assert!(matches!(m.memory_info(), Err(NvmlError::GpuLost)));
    // the instances go away (MIG turned off): the old handle is no longer valid
    sim.update(|s| {
        let g = s.gpu_mut(0).unwrap();
        g.lost = false;
        g.mig_mode = Some(false);
        g.mig = None;
    });
    assert!(matches!(m.uuid(), Err(NvmlError::InvalidArg)));
}

#[test]
fn the_h200_and_a100_tables() {
    let mut state = State::healthy_seeded(2, 7);
    let h200 = state.gpu_mut(0).unwrap();
    h200.name = Some("NVIDIA H200".into());
    h200.memory_total_mib = Some(143_771);
    h200.split_mig(&["7g.141gb"]).unwrap();
    assert!(
        h200.split_mig(&["1g.10gb"])
            .unwrap_err()
            .contains("1g.18gb")
    );
    h200.split_mig(&["1g.18gb"; 7]).unwrap();
    assert!(
        h200.split_mig(&["1g.18gb"; 8]).is_err(),
        "eight 1g slices do not fit in seven"
    );
    h200.split_mig(&["1g.35gb", "1g.35gb", "2g.35gb"]).unwrap();
    let a100 = state.gpu_mut(1).unwrap();
    a100.name = Some("NVIDIA A100-SXM4-40GB".into());
    a100.memory_total_mib = Some(40_960);
    a100.split_mig(&["3g.20gb", "3g.20gb"]).unwrap();
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let m = nvml
        .device_by_index(1)
        .unwrap()
        .mig_device_by_index(1)
        .unwrap();
    assert_eq!(m.attributes().unwrap().multiprocessor_count, 42);
    assert_eq!(m.name().unwrap(), "NVIDIA A100-SXM4-40GB MIG 3g.20gb");
    let h = nvml.device_by_index(0).unwrap();
    // what the real H200 driver reports for its profiles (nvidia-smi mig -lgip, 2026-12-04):
    // 1g.35gb 32.5 GiB, 2g.35gb the same memory
    let mib = |i: u32| {
        h.mig_device_by_index(i)
            .unwrap()
            .memory_info()
            .unwrap()
            .total
            >> 20
    };
    assert_eq!((mib(0), mib(1), mib(2)), (33280, 33280, 33280));
    assert_eq!(
        h.mig_device_by_index(2)
            .unwrap()
            .attributes()
            .unwrap()
            .gpu_instance_slice_count,
        2
    );
}

#[test]
fn bad_mig_tables_are_refused_naming_the_gpu_and_instance() {
    let head = "[[gpu]]\nindex = 0\nname = \"NVIDIA H100 80GB HBM3\"\nuuid = \"GPU-a\"\n\
                pci_bus_id = \"0000:18:00.0\"\nmemory_total_mib = 81559\n";
    let inst = |p: &str, gi: u32, uuid: &str| {
        format!(
            "[[gpu.mig.instance]]\nprofile = \"{p}\"\ngpu_instance_id = {gi}\nuuid = \"{uuid}\"\n"
        )
    };
    for (body, what) in [
        (
            format!("[gpu.mig]\n{}", inst("1g.10gb", 7, "MIG-a")),
            "needs mig_mode",
        ),
        (
            format!(
                "mig_mode = false\n[gpu.mig]\n{}",
                inst("1g.10gb", 7, "MIG-a")
            ),
            "only while mig_mode = true",
        ),
        (
            format!("mig_mode = true\n[gpu.mig]\n{}", inst("1g.5gb", 7, "MIG-a")),
            "not one of the H100 80GB's",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}",
                inst("1g.10gb", 7, "GPU-b")
            ),
            "must start with \"MIG-\"",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}",
                inst("1g.10gb", 7, "GPU-a").replace("GPU-a", "MIG-x")
                    + &inst("1g.10gb", 8, "MIG-x")
            ),
            "duplicate uuid",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}{}",
                inst("1g.10gb", 7, "MIG-a"),
                inst("1g.10gb", 7, "MIG-b")
            ),
            "listed twice",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}{}",
                inst("4g.40gb", 1, "MIG-a"),
                inst("4g.40gb", 2, "MIG-b")
            ),
            "use 8 compute slices",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}",
                inst("1g.10gb", 15, "MIG-a")
            ),
            "gpu_instance_id is 0 to 14",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}",
                inst("4c.3g.40gb", 1, "MIG-a")
            ),
            "1 to 3 compute slices",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}memory_used_mib = 99999\n",
                inst("1g.10gb", 7, "MIG-a")
            ),
            "memory_used_mib 99999",
        ),
        (
            format!(
                "mig_mode = true\n[gpu.mig]\n{}",
                inst("1g.10gb", 7, "MIG-a").replace("uuid", "uid")
            ),
            "uid",
        ),
    ] {
        let err = State::from_toml_str(&format!("{head}{body}"), std::path::Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{body}\n=> {err}");
        assert!(err.contains("x.toml"), "{err}");
    }
    // a GPU instance split into compute instances
    let ok = format!(
        "{head}mig_mode = true\n[gpu.mig]\n{}{}",
        inst("1c.3g.40gb", 1, "MIG-a"),
        inst("2c.3g.40gb", 1, "MIG-b").replace(
            "gpu_instance_id = 1",
            "gpu_instance_id = 1\ncompute_instance_id = 1"
        )
    );
    let s = State::from_toml_str(&ok, std::path::Path::new("x.toml")).unwrap();
    assert_eq!(s.gpus[0].mig_instances().len(), 2);
}
