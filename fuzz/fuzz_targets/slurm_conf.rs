//! Fuzzes the slurm.conf, gres.conf and plugstack.conf parsers: no panic on
//! any input. Inputs with include directives are skipped so the fuzzer does
//! not wander through the host's file system.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sgpu_slurm_conf::{ConfFile, GresConf, PlugstackConf, SlurmConf};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if s.to_ascii_lowercase().contains("include") {
        return;
    }
    let origin = "/nonexistent-sgpu-fuzz/slurm.conf";
    let (sc, _) = SlurmConf::parse_str_lenient(&s, origin);
    let (gc, _) = GresConf::parse_str_lenient(&s, origin);
    let _ = PlugstackConf::parse_str_lenient(&s, origin);
    for n in sc.nodes.iter().take(4) {
        let _ = sc.partitions_of(&n.name);
        let _ = gc.expected_gpus(&n.name, Some(&sc));
    }
    let _ = gc.expected_gpus("n1", None);
});
