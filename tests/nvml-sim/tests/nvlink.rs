//! NVLink through `nvml-wrapper`: link states, error counters, NOT_SUPPORTED without NVLink,
//! and the state file's checks.

#[allow(unused_imports)] // the shared set-up exports more than these tests use
mod common;

use common::{Sim, SimNvml};
use nvml_sim::State;
use nvml_sim::nvlink::{LinkErrors, NvLink};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::error::NvmlError;

#[test]
fn links_and_counters_read_as_the_state_sets_them() {
    let mut state = State::healthy(2);
    // GPU 0: a V100-SXM2 with links 3 and 5 down (Azure/azhpc-diagnostics#73), one link
    // with errors; GPU 1: no NVLink.
    state.gpu_mut(0).unwrap().nvlink = Some(NvLink {
        links: 6,
        inactive: vec![3, 5],
        errors: vec![LinkErrors {
            link: 2,
            crc_flit: 120,
            crc_data: 7,
            replay: 4,
            recovery: 1,
        }],
    });
    let sim = Sim::start(&state);
    let nvml = sim.nvml();
    let d = nvml.device_by_index(0).unwrap();
    let active: Vec<bool> = (0..6)
        .map(|l| d.link_wrapper_for(l).is_active().unwrap())
        .collect();
    assert_eq!(active, [true, true, true, false, true, false]);
    assert!(
        matches!(
            d.link_wrapper_for(6).is_active(),
            Err(NvmlError::InvalidArg)
        ),
        "past the board's links"
    );
    let l2 = d.link_wrapper_for(2);
    assert_eq!(l2.error_counter(ErrorCounter::DlCrcFlit).unwrap(), 120);
    assert_eq!(l2.error_counter(ErrorCounter::DlCrcData).unwrap(), 7);
    assert_eq!(l2.error_counter(ErrorCounter::DlReplay).unwrap(), 4);
    assert_eq!(l2.error_counter(ErrorCounter::DlRecovery).unwrap(), 1);
    assert_eq!(
        d.link_wrapper_for(0)
            .error_counter(ErrorCounter::DlReplay)
            .unwrap(),
        0,
        "a link without an entry counts 0"
    );

    let pcie = nvml.device_by_index(1).unwrap();
    assert!(matches!(
        pcie.link_wrapper_for(0).is_active(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        pcie.link_wrapper_for(0)
            .error_counter(ErrorCounter::DlCrcFlit),
        Err(NvmlError::NotSupported)
    ));

    // a rewrite is seen by the next call: the link comes back
    sim.update(|s| {
        if let Some(nv) = s.gpu_mut(0).and_then(|g| g.nvlink.as_mut()) {
            nv.inactive.clear();
        }
    });
    assert!(d.link_wrapper_for(3).is_active().unwrap());
}

#[test]
fn bad_nvlink_tables_are_refused_naming_the_gpu() {
    for (nv, what) in [
        ("links = 0", "1 to 18"),
        ("links = 19", "1 to 18"),
        ("links = 6\ninactive = [6]", "link 6"),
        ("links = 6\ninactive = [1, 1]", "link 1"),
        (
            "links = 4\n[[gpu.nvlink.errors]]\nlink = 4\ncrc_flit = 1",
            "link 4",
        ),
    ] {
        let text = format!(
            "[[gpu]]\nindex = 0\nuuid = \"GPU-a\"\npci_bus_id = \"0000:18:00.0\"\n\
             [gpu.nvlink]\n{nv}\n"
        );
        let err = State::from_toml_str(&text, std::path::Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gpu index 0") && err.contains(what),
            "{nv}: {err}"
        );
    }
    let typo = "[[gpu]]\nindex = 0\nuuid = \"GPU-a\"\npci_bus_id = \"0000:18:00.0\"\n\
                [gpu.nvlink]\nlinks = 4\ninactiv = [1]\n";
    let err = State::from_toml_str(typo, std::path::Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("inactiv"), "{err}");
}
