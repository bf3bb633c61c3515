//! The state-file API tests use to describe GPUs and inject faults (no library loaded).

use std::collections::BTreeSet;
use std::path::Path;

use nvml_sim::{PciAddress, State, StateError, ThrottleReason, Xid};

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../example-state.toml");
    let s = State::from_toml_str(text, Path::new("example-state.toml")).unwrap();
    assert_eq!(s.gpus.len(), 3);
    let mig = s.gpu(2).unwrap().mig_instances();
    assert_eq!(mig.len(), 2);
    assert_eq!(mig[0].processes[0].pid, 5151);
    assert_eq!(mig[1].profile, "1g.10gb");
    assert_eq!(s.cuda_driver_version, Some(12040));
    let g = s.gpu(1).unwrap();
    assert_eq!(g.pci_address().unwrap().bus_id(), "00000000:2A:00.0");
    assert_eq!(g.throttle_mask(), 0x8 | 0x4 | 0x80 | 0x40);
    assert_eq!(g.ecc.aggregate_uncorrected, 2);
    let rp = g.retired_pages.as_ref().unwrap();
    assert_eq!(rp.single_bit[1].timestamp, 0);
    assert_eq!(g.processes.len(), 2);
    assert_eq!(g.processes[1].used_memory_mib, None);
    assert_eq!(s.xids[0].code, 79);
    // It survives a round trip.
    let again = State::from_toml_str(&s.to_toml_string().unwrap(), Path::new("x")).unwrap();
    assert_eq!(again, s);
}

#[test]
fn healthy_nodes_have_unique_identities() {
    let a = State::healthy(16);
    let b = State::healthy(16);
    let uuids: BTreeSet<_> = a.gpus.iter().chain(&b.gpus).map(|g| &g.uuid).collect();
    assert_eq!(uuids.len(), 32);
    let serials: BTreeSet<_> = a.gpus.iter().map(|g| g.serial.clone()).collect();
    assert_eq!(serials.len(), 16);
    let pcis: BTreeSet<_> = a.gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
    assert_eq!(pcis.len(), 16);
    for g in &a.gpus {
        assert!(
            g.uuid.starts_with("GPU-") && g.uuid.len() == 40,
            "{}",
            g.uuid
        );
    }
    a.validate().unwrap();
    assert_eq!(
        State::healthy_seeded(2, 7).gpus[1].uuid,
        State::healthy_seeded(2, 7).gpus[1].uuid
    );
    let round = State::from_toml_str(&a.to_toml_string().unwrap(), Path::new("x")).unwrap();
    assert_eq!(round, a);
}

fn parse_err(text: &str) -> String {
    match State::from_toml_str(text, Path::new("/some/state.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mistakes_are_rejected_with_the_file_and_key() {
    let text = State::healthy(2).to_toml_string().unwrap();

    let e = parse_err(&text.replace("ecc_enabled", "ecc_enable"));
    assert!(
        e.contains("/some/state.toml") && e.contains("ecc_enable"),
        "{e}"
    );
    let e = parse_err(&format!("hnag = true\n{text}"));
    assert!(e.contains("hnag"), "{e}");
    let e = parse_err(&text.replace("\"gpu_idle\"", "\"gpu_idel\""));
    assert!(e.contains("gpu_idel"), "{e}");
    let e = parse_err(&text.replace("[gpu.remapped_rows]", "[gpu.remaped_rows]"));
    assert!(e.contains("remaped_rows"), "{e}");

    let mut s = State::healthy(2);
    s.gpus[1].index = 0;
    let e = parse_err(&s.to_toml_string().unwrap());
    assert!(e.contains("duplicate index"), "{e}");
    let mut s = State::healthy(2);
    s.gpus[1].index = 5;
    assert!(parse_err(&s.to_toml_string().unwrap()).contains("indices must be 0..2"));
    let mut s = State::healthy(1);
    s.gpus[0].pci_bus_id = "0000:zz:00.0".into();
    assert!(parse_err(&s.to_toml_string().unwrap()).contains("pci_bus_id"));
    let mut s = State::healthy(1);
    s.gpus[0].utilization_gpu = Some(101);
    assert!(parse_err(&s.to_toml_string().unwrap()).contains("percentage"));
    let mut s = State::healthy(1);
    s.inject_xid(3, 79);
    assert!(parse_err(&s.to_toml_string().unwrap()).contains("gpu 3 does not exist"));

    // save refuses an invalid state rather than writing it.
    let dir = tempfile::tempdir().unwrap();
    let mut s = State::healthy(2);
    s.gpus[1].uuid = s.gpus[0].uuid.clone();
    assert!(matches!(
        s.save(dir.path().join("s.toml")),
        Err(StateError::Invalid { .. })
    ));
}

#[test]
fn gpus_may_be_listed_in_any_order() {
    let mut s = State::healthy(3);
    s.gpus.reverse();
    let parsed = State::from_toml_str(&s.to_toml_string().unwrap(), Path::new("x")).unwrap();
    assert_eq!(
        parsed.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[test]
fn save_is_atomic_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.toml");
    for n in 1..5 {
        State::healthy(n).save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap().gpus.len(), n as usize);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.toml")]);
}

#[test]
fn energy_is_continuous_across_power_changes() {
    let mut s = State::healthy(1);
    let epoch = 1_000.0;
    s.epoch = Some(epoch);
    s.gpus[0].energy_mj_at_epoch = Some(5_000);
    s.gpus[0].power_usage_mw = Some(200_000);
    let g = &s.gpus[0];
    assert_eq!(g.energy_mj(epoch, epoch), Some(5_000));
    assert_eq!(g.energy_mj(epoch, epoch + 2.0), Some(405_000));
    assert_eq!(
        g.energy_mj(epoch, epoch - 5.0),
        Some(5_000),
        "never below the offset"
    );

    s.rebase_energy(epoch + 2.0);
    assert_eq!(s.epoch, Some(epoch + 2.0));
    assert_eq!(s.gpus[0].energy_mj_at_epoch, Some(405_000));
    s.gpus[0].power_usage_mw = Some(100_000);
    assert_eq!(s.gpus[0].energy_mj(epoch + 2.0, epoch + 3.0), Some(505_000));

    // Against a file: the energy accumulated under the old file's power is kept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.toml");
    let mut s = State::healthy(2);
    let start = nvml_sim::unix_now() - 10.0;
    s.epoch = Some(start);
    s.gpus[0].energy_mj_at_epoch = Some(0);
    s.gpus[0].power_usage_mw = Some(300_000);
    s.save(&path).unwrap();
    let updated = State::update(&path, |s| s.gpus[0].power_usage_mw = Some(1_000)).unwrap();
    let e = updated.gpus[0].energy_mj_at_epoch.unwrap();
    // About 10 s at 300 W = 3,000,000 mJ.
    assert!((2_990_000..3_100_000).contains(&e), "{e}");
    assert!(updated.epoch.unwrap() > start + 9.0);
    assert_eq!(State::load(&path).unwrap(), updated);
}

#[test]
fn injected_xids_get_fresh_ids() {
    let mut s = State::healthy(2);
    s.xids.push(Xid {
        id: u64::MAX / 2,
        gpu: 0,
        code: 13,
        timestamp: None,
    });
    let a = s.inject_xid(1, 79);
    let b = s.inject_xid(0, 48);
    assert!(a > u64::MAX / 2 && b > a);
    let mut t = State::healthy(1);
    let c = t.inject_xid(0, 79);
    let d = t.inject_xid(0, 79);
    assert!(
        c > 1_600_000_000_000_000 && d > c,
        "time-based ids: {c} {d}"
    );
    assert!(t.xids[0].timestamp.is_some());
}

#[test]
fn pci_addresses_parse_in_nvidias_spellings() {
    let want = PciAddress {
        domain: 0,
        bus: 0x2a,
        device: 0,
        function: 0,
    };
    for s in ["00000000:2A:00.0", "0000:2a:00.0", "2a:00.0", "0000:2A:00"] {
        assert_eq!(PciAddress::parse(s), Some(want), "{s}");
    }
    assert_eq!(want.bus_id(), "00000000:2A:00.0");
    assert_eq!(want.bus_id_legacy(), "0000:2A:00.0");
    for bad in ["", "2a", "0000:100:00.0", "0000:2a:20.0", "x:y:z.0"] {
        assert_eq!(PciAddress::parse(bad), None, "{bad}");
    }
}

#[test]
fn throttle_reason_bits_are_nvmls() {
    use nvml_wrapper::bitmasks::device::ThrottleReasons as T;
    let pairs = [
        (ThrottleReason::GpuIdle, T::GPU_IDLE),
        (
            ThrottleReason::ApplicationsClocksSetting,
            T::APPLICATIONS_CLOCKS_SETTING,
        ),
        (ThrottleReason::SwPowerCap, T::SW_POWER_CAP),
        (ThrottleReason::HwSlowdown, T::HW_SLOWDOWN),
        (ThrottleReason::SyncBoost, T::SYNC_BOOST),
        (ThrottleReason::SwThermalSlowdown, T::SW_THERMAL_SLOWDOWN),
        (ThrottleReason::HwThermalSlowdown, T::HW_THERMAL_SLOWDOWN),
        (ThrottleReason::HwPowerBrake, T::HW_POWER_BRAKE_SLOWDOWN),
        (
            ThrottleReason::DisplayClockSetting,
            T::DISPLAY_CLOCK_SETTING,
        ),
    ];
    for (r, t) in pairs {
        assert_eq!(r.bit(), t.bits(), "{r:?}");
    }
    assert_eq!(pairs.len(), ThrottleReason::ALL.len());
}
