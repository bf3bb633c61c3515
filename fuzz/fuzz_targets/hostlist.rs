//! Fuzzes hostlist expansion and compression: no panic, no unbounded
//! allocation, and round trips hold for whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sgpu_slurm_conf::hostlist::{self, Hostlist, Limits};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let limits = Limits {
        max_names: 1 << 16,
        max_bytes: 16 << 20,
    };
    if let Ok(hl) = Hostlist::parse_with_limits(&s, limits) {
        let names = hl.to_vec();
        assert_eq!(names.len(), hl.len());
        for n in names.iter().take(8) {
            assert!(hl.contains(n), "{n:?} not in {s:?}");
        }
        // The compressed form of names without separators, brackets or C
        // whitespace must expand back to the same names. (Slurm compares
        // prefixes with strnatcmp, which ignores whitespace, so `\n4,0`
        // compresses to `\n[4,0]`; scontrol does exactly the same.)
        let clean = names.iter().all(|n| {
            !n.is_empty()
                && !n.contains([',', '[', ']', '\0'])
                && !n.bytes().any(|c| c.is_ascii_whitespace() || c == 0x0b)
        });
        if clean {
            let c = hostlist::compress(&names);
            assert_eq!(hostlist::expand_with_limits(&c, limits).ok(), Some(names));
        }
    }
    let _ = hostlist::compress_expr(&s);
});
