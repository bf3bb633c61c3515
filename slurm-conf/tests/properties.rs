//! Property tests: hostlist round trips, and no parser panics on any input.
//! The seed is fixed so every run checks the same cases.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use sgpu_slurm_conf::hostlist::{self, Hostlist, Limits};
use sgpu_slurm_conf::{ConfFile, GresConf, PlugstackConf, SlurmConf};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5690_c0f1),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A prefix made of characters that survive a round trip through hostlist
/// syntax (no separators, brackets or blanks).
fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z][a-z0-9_.-]{0,6}",
        "[a-z]{1,3}[0-9]{1,2}-",
    ]
}

/// One `lo` or `lo-hi` range with optional zero padding.
fn range() -> impl Strategy<Value = String> {
    (0u64..300, 0u64..12, 0usize..3, any::<bool>()).prop_map(|(lo, span, pad, single)| {
        let w = lo.to_string().len() + pad;
        if single {
            format!("{lo:0w$}")
        } else {
            format!("{lo:0w$}-{}", lo + span)
        }
    })
}

fn bracket() -> impl Strategy<Value = String> {
    prop::collection::vec(range(), 1..4).prop_map(|r| format!("[{}]", r.join(",")))
}

/// A valid hostlist token: a plain name or a prefix with 1-3 bracket groups.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        (prefix(), proptest::option::of(0u64..2000)).prop_map(|(p, n)| {
            let mut s = if p.is_empty() { "x".to_string() } else { p };
            if let Some(n) = n {
                s.push_str(&n.to_string());
            }
            s
        }),
        (
            prefix(),
            bracket(),
            proptest::option::of((prefix(), bracket()))
        )
            .prop_map(|(p, b, more)| match more {
                None => format!("{p}{b}"),
                Some((p2, b2)) => format!("{p}{b}{p2}{b2}"),
            }),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (token(), prop::sample::select(vec![",", " ", "\t", ", "])),
        1..5,
    )
    .prop_map(|v| {
        let mut s = String::new();
        for (i, (t, sep)) in v.into_iter().enumerate() {
            if i > 0 {
                s.push_str(sep);
            }
            s.push_str(&t);
        }
        s
    })
}

/// Literal host names such as `node007` or `login`.
fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (prefix(), proptest::option::of((0u64..60, 0usize..3))).prop_map(|(p, n)| {
            let p = if p.is_empty() { "n".to_string() } else { p };
            match n {
                Some((v, pad)) => format!("{p}{v:0w$}", w = v.to_string().len() + pad),
                None => p,
            }
        }),
        0..40,
    )
}

proptest! {
    #![proptest_config(config(512))]

    /// compress(expand(x)) expands to the same names in the same order.
    #[test]
    fn compress_of_expand_round_trips(e in expression()) {
        let names = hostlist::expand(&e).map_err(|err| TestCaseError::fail(format!("{e}: {err}")))?;
        let compressed = hostlist::compress(&names);
        prop_assert_eq!(&hostlist::expand(&compressed).unwrap(), &names, "compressed: {}", compressed);
        // Re-compressing the expression itself (scontrol show hostlist) may
        // split prefixes differently (`a0[0-1]` vs `a[00-01]`), but names
        // the same hosts.
        let recompressed = hostlist::compress_expr(&e).unwrap();
        prop_assert_eq!(&hostlist::expand(&recompressed).unwrap(), &names, "recompressed: {}", recompressed);
    }

    /// expand(compress(names)) gives back the names: scontrol keeps order
    /// and duplicates, so no sorting is involved.
    #[test]
    fn expand_of_compress_is_identity(names in names()) {
        let c = hostlist::compress(&names);
        prop_assert_eq!(hostlist::expand(&c).unwrap(), names);
    }

    /// uniq() is the sorted set of the names, and its compressed form too.
    #[test]
    fn uniq_is_a_set(names in names()) {
        let mut hl = Hostlist::from_names(&names);
        hl.uniq();
        let got = hl.to_vec();
        let mut want = names.clone();
        want.sort();
        want.dedup();
        let mut sorted = got.clone();
        sorted.sort();
        prop_assert_eq!(&sorted, &want);
        prop_assert_eq!(hl.len(), want.len());
        let again = hostlist::expand(&hl.to_ranged_string()).unwrap();
        prop_assert_eq!(again, got);
    }

    /// contains() agrees with expansion.
    #[test]
    fn contains_agrees_with_expand(e in expression(), probe in names()) {
        let hl = Hostlist::parse(&e).unwrap();
        let all = hl.to_vec();
        for n in all.iter().take(5).chain(probe.iter()) {
            prop_assert_eq!(hl.contains(n), all.contains(n), "{} in {}", n, e);
        }
        prop_assert_eq!(hl.len(), all.len());
    }

    /// Hostlist parsing never panics and honours its limits.
    #[test]
    fn hostlist_never_panics(s in "[-a-c0-9\\[\\], \t+x]{0,40}") {
        let limits = Limits { max_names: 5000, ..Limits::default() };
        if let Ok(v) = hostlist::expand_with_limits(&s, limits) {
            prop_assert!(v.len() <= 5000);
        }
        let _ = hostlist::compress_expr(&s);
        let _ = hostlist::contains(&s, "a1");
    }

    #[test]
    fn hostlist_never_panics_on_any_string(s in any::<String>()) {
        let _ = hostlist::expand(&s);
        let _ = hostlist::compress(&[s.as_str()]);
    }

    #[test]
    fn hostlist_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = String::from_utf8_lossy(&b);
        let _ = hostlist::expand(&s);
        let _ = hostlist::compress_expr(&s);
    }
}

/// Text that looks like Slurm configuration: keys, values, brackets, quotes,
/// backslashes, comments and line breaks in random order.
fn conf_like() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "NodeName=",
        "PartitionName=",
        "Name=gpu",
        "Gres=",
        "gpu:a100:4",
        "File=/dev/nvidia[0-3]",
        "Count=",
        "NodeName=DEFAULT",
        "Nodes=ALL",
        "n[1-4]",
        "CPUs=",
        "0x1f",
        "AutoDetect=",
        "nvml",
        "Include ",
        "required ",
        "optional ",
        "include ",
        "/x.so",
        "\"",
        "\\",
        "#",
        "\n",
        " ",
        "\t",
        "=",
        ",",
        "[",
        "]",
        "(",
        ")",
        ":",
        "-",
        "4",
        "K",
        "Type=",
        "Links=-1,0",
        "Cores=0-3",
        "MultipleFiles=a,b",
        "NodeSet=",
        "Feature=",
        "Default=YES",
        "Port=[1-2]",
        "NodeAddr=",
        "%c",
        "é",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

fn parse_all(s: &str) {
    // The origin is a directory that does not exist, so relative includes fail fast.
    let origin = "/nonexistent-sgpu-proptest/x.conf";
    let _ = SlurmConf::parse_str_lenient(s, origin);
    let _ = GresConf::parse_str_lenient(s, origin);
    let _ = PlugstackConf::parse_str_lenient(s, origin);
    if let Ok(g) = GresConf::parse_str(s, origin) {
        let sc = SlurmConf::parse_str_lenient(s, origin).0;
        let _ = g.expected_gpus("n1", Some(&sc));
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn conf_parsers_never_panic_on_conf_like_text(s in conf_like()) {
        parse_all(&s);
        let (sc, _) = SlurmConf::parse_str_lenient(&s, "/nonexistent-sgpu-proptest/x.conf");
        if let Some(n) = sc.nodes.first() {
            let _ = sc.partitions_of(&n.name);
            let _ = GresConf::default().expected_gpus(&n.name, Some(&sc));
        }
    }

    #[test]
    fn conf_parsers_never_panic_on_any_string(s in any::<String>()) {
        parse_all(&s);
    }

    #[test]
    fn conf_parsers_never_panic_on_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_all(&String::from_utf8_lossy(&b));
    }
}
