//! Property tests over what admins and users type (issue 11 §5): `sgpu.toml` and the CLI's
//! time specs. They run under `cargo test` (256 cases each, bounded); a failing case is kept
//! in `tests/fuzz_inputs.proptest-regressions` and replayed.

use std::path::Path;

use proptest::prelude::*;
use sgpu_cli::timespec::{format_time, parse_time};
use sgpu_nodelib::config::Config;

/// Lines an sgpu.toml has, and some it should not.
fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[accounting]".to_string()),
        Just("[checks.gpu.ecc_uncorrectable]".to_string()),
        Just("[breaker]".to_string()),
        Just("url = \"http://head:6830\"".to_string()),
        Just("forward_interval_s = 0".to_string()),
        Just("check_interval_s = -1".to_string()),
        Just("nvml_timeout_ms = 18446744073709551615".to_string()),
        Just("state_dir = \"/var/lib/sgpu\"".to_string()),
        Just("severity = \"drain\"".to_string()),
        Just("enabled = false".to_string()),
        Just("fraction = 1.5".to_string()),
        "[a-z_]{1,12} = [0-9]{1,5}",
        "[a-z_]{1,12} = \"[ -~]{0,12}\"",
        "\\PC{0,30}",
    ]
}

proptest! {
    /// Any sgpu.toml: parsed and validated, or refused with an error naming the file.
    #[test]
    fn sgpu_toml_never_panics(lines in proptest::collection::vec(toml_line(), 0..10)) {
        let text = lines.join("\n");
        if let Err(e) = Config::parse(&text, Path::new("/etc/sgpu/sgpu.toml")) {
            prop_assert!(e.to_string().contains("sgpu.toml"), "{e}");
        }
    }

    /// Any time spec: a time or an error, never a panic (whatever `now` is).
    #[test]
    fn time_specs_never_panic(s in "\\PC{0,40}", now in any::<i64>()) {
        let _ = parse_time(&s, now);
    }

    /// Slurm-like specs built from parts, near and far from now.
    #[test]
    fn composed_time_specs_never_panic(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("now".to_string()),
                Just("today".to_string()),
                Just("midnight".to_string()),
                Just("+".to_string()),
                Just("-".to_string()),
                Just("T".to_string()),
                Just(":".to_string()),
                "[0-9]{1,20}",
                "(days|hours|minutes|weeks|seconds)",
            ],
            0..6,
        ),
        now in -100_000_000_000i64..100_000_000_000,
    ) {
        let _ = parse_time(&parts.concat(), now);
    }

    /// What `sgpu` prints, it reads back.
    #[test]
    fn printed_times_parse_back(t in 0i64..253_402_300_799) {
        prop_assert_eq!(parse_time(&format_time(t), 0).ok(), Some(t));
    }
}
