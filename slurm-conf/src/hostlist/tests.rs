//! Unit tests; the expected values were taken from `scontrol` 22.05.8, and for
//! the rules of later releases from `scontrol` 26.05.3 and 25.11.7.

use super::*;

fn ex(e: &str) -> Vec<String> {
    expand(e).unwrap_or_else(|err| panic!("{e}: {err}"))
}

fn cx(e: &str) -> String {
    compress_expr(e).unwrap_or_else(|err| panic!("{e}: {err}"))
}

#[test]
fn simple_ranges() {
    assert_eq!(
        ex("node[01-04,07]"),
        ["node01", "node02", "node03", "node04", "node07"]
    );
    assert_eq!(ex("n1,n2 n3"), ["n1", "n2", "n3"]);
    assert_eq!(ex(" n1 , n2"), ["n1", "n2"]);
    assert_eq!(ex("n[1-2]  ,  m"), ["n1", "n2", "m"]);
    assert_eq!(ex("n[1-3],"), ["n1", "n2", "n3"]);
    assert_eq!(ex(",n1"), ["n1"]);
    assert!(ex("").is_empty());
    assert!(ex("  ").is_empty());
    assert_eq!(ex("a\tb"), ["a", "b"]);
    assert_eq!(ex("a\nb"), ["a", "b"]);
}

#[test]
fn zero_padding_follows_first_number() {
    assert_eq!(ex("n[1-010]").len(), 10);
    assert_eq!(ex("n[1-010]")[9], "n10");
    assert_eq!(ex("n[08-12]"), ["n08", "n09", "n10", "n11", "n12"]);
    assert_eq!(ex("n[9-10]"), ["n9", "n10"]);
    assert_eq!(ex("n[001-3]"), ["n001", "n002", "n003"]);
    assert_eq!(ex("n[00-00]"), ["n00"]);
}

#[test]
fn strtoul_quirks() {
    assert_eq!(ex("n[ 1]"), ["n01"]);
    assert_eq!(ex("n[1 -2]"), ["n01", "n02"]);
    assert_eq!(ex("n[+1-2]"), ["n01", "n02"]);
    assert_eq!(ex("n[1-+2]"), ["n1", "n2"]);
    assert_eq!(ex("n[1-]"), ["n1"]);
    assert_eq!(ex("n[1a-2]"), ["n01", "n02"]);
    assert_eq!(ex("n[0- -0]"), ["n0"]);
}

#[test]
fn several_bracket_groups_in_slurm_order() {
    assert_eq!(
        ex("rack[1-2]-gpu[01-03]"),
        [
            "rack1-gpu01",
            "rack1-gpu02",
            "rack1-gpu03",
            "rack2-gpu01",
            "rack2-gpu02",
            "rack2-gpu03"
        ]
    );
    assert_eq!(
        ex("a[1-2]b[1-2]c[1-2]"),
        [
            "a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2", "a1b2c1", "a1b2c2", "a2b2c1", "a2b2c2"
        ]
    );
    let four = ex("a[1-2]b[1-2]c[1-2]d[1-2]");
    assert_eq!(&four[..4], ["a1b1c1d1", "a1b1c1d2", "a2b1c1d1", "a2b1c1d2"]);
    assert_eq!(four[8], "a1b1c2d1");
    assert_eq!(ex("a[1-2][3-4]"), ["a13", "a14", "a23", "a24"]);
    assert_eq!(
        ex("n[1-3]a[1-2],b"),
        ["n1a1", "n1a2", "n2a1", "n2a2", "n3a1", "n3a2", "b"]
    );
    assert_eq!(ex("a1-[1-2]"), ["a1-1", "a1-2"]);
}

fn ex22(e: &str) -> Vec<String> {
    expand_for(e, Syntax::Slurm22_05).unwrap_or_else(|err| panic!("{e}: {err}"))
}

#[test]
fn unbalanced_brackets_like_slurm_22_05() {
    assert_eq!(ex22("n[1-3"), ["n]"]);
    assert_eq!(ex22("ab[12"), ["ab]"]);
    assert_eq!(ex22("[12"), ["12"]);
    assert_eq!(ex22("a["), ["a]"]);
    assert_eq!(ex22("a]"), ["a]"]);
    assert_eq!(ex22("a]1"), ["a]1"]);
    assert_eq!(ex22("a[1]b[2"), ["a[1]b]"]);
    assert_eq!(ex22("a[1-2],b[3"), ["a1", "a2", "b]"]);
    assert_eq!(ex22("x[1-2] y[3"), ["x1", "x2", "y]"]);
    // a newline is part of a name before 23.02
    assert_eq!(ex22("a\nb"), ["a\nb"]);
}

#[test]
fn a_missing_bracket_is_an_error_since_23_02() {
    for syntax in [Syntax::Slurm23_02, Syntax::Slurm23_11] {
        for e in ["n[1-3", "ab[12", "[12", "a[", "a[1]b[2", "a[1-2],b[3"] {
            let err = expand_for(e, syntax).unwrap_err();
            assert!(
                matches!(err, HostlistError::MissingBracket { .. }),
                "{e}: {err}"
            );
            assert!(err.to_string().contains("without a closing `]`"), "{err}");
        }
        // a `]` alone is an ordinary character
        assert_eq!(expand_for("a]1", syntax).unwrap(), ["a]1"]);
        assert_eq!(expand_for("a\nb", syntax).unwrap(), ["a", "b"]);
    }
    // the default follows the current releases
    assert!(expand("n[1-3").is_err());
}

#[test]
fn a_suffix_after_the_bracket_since_23_11() {
    let s = Syntax::Slurm23_11;
    assert_eq!(expand_for("n[1-2]-ib", s).unwrap(), ["n1-ib", "n2-ib"]);
    assert_eq!(
        expand_for("node[0001-0002,7]-int", s).unwrap(),
        ["node0001-int", "node0002-int", "node7-int"]
    );
    assert_eq!(expand_for("a[1]]", s).unwrap(), ["a1]"]);
    assert_eq!(
        expand_for("a[1-2]b[3-4]c", s).unwrap(),
        ["a1b3c", "a1b4c", "a2b3c", "a2b4c"]
    );
    // suffixed names stay whole when compressed (scontrol 26.05.3: n1x3,n2x3,n3x3)
    assert_eq!(
        compress_expr_for("n[1-2]x3,n3x3", s).unwrap(),
        "n1x3,n2x3,n3x3"
    );
    assert_eq!(compress_expr_for("n[1-2]-ib", s).unwrap(), "n1-ib,n2-ib");
    assert_eq!(expand("n[1-2]-ib").unwrap(), ["n1-ib", "n2-ib"]);
    for old in [Syntax::Slurm22_05, Syntax::Slurm23_02] {
        let err = expand_for("n[1-2]-ib", old).unwrap_err();
        assert!(err.to_string().contains("before 23.11"), "{err}");
    }
    // still no box ranges or a bad range before the suffix
    assert!(expand_for("n[5-1]-ib", s).is_err());
}

#[test]
fn syntax_follows_the_release() {
    assert_eq!(Syntax::for_release(22, 5), Syntax::Slurm22_05);
    assert_eq!(Syntax::for_release(23, 2), Syntax::Slurm23_02);
    assert_eq!(Syntax::for_release(23, 11), Syntax::Slurm23_11);
    assert_eq!(Syntax::for_release(26, 5), Syntax::Slurm23_11);
    assert_eq!(
        Syntax::for_version("slurm 22.05.8"),
        Some(Syntax::Slurm22_05)
    );
    assert_eq!(
        Syntax::for_version("slurm 25.11.7\n"),
        Some(Syntax::Slurm23_11)
    );
    assert_eq!(Syntax::for_version("slurm"), None);
    assert_eq!(Syntax::default(), Syntax::Slurm23_11);
}

#[test]
fn malformed_expressions_are_errors() {
    for e in ["n[1,3-4]x", "n[1-3]x", "a[1]]", "a[[1]]", "a[1-2]b[3-4]c"] {
        assert!(
            expand_for(e, Syntax::Slurm22_05).is_err(),
            "{e} should be rejected by 22.05's rules"
        );
    }
    for e in [
        "n[5-1]",
        "n[a-b]",
        "n[,1]",
        "n[1,]",
        "n[]",
        "n[1--2]",
        "n[-1]",
        "n[0x1]",
        "n[1a]",
        "n[1-65537]",
        "a[x]b[1-2]c[1]",
        "n[99999999999999999999]",
        "n[1-2 ]",
    ] {
        assert!(expand(e).is_err(), "{e} should be rejected");
    }
}

#[test]
fn error_messages_say_what_is_wrong() {
    let e = expand("n[5-1]").unwrap_err().to_string();
    assert!(e.contains("reversed"), "{e}");
    assert!(e.contains("n[5-1]"), "{e}");
    let e = expand_for("n[1-3]x", Syntax::Slurm22_05)
        .unwrap_err()
        .to_string();
    assert!(e.contains("after `]`"), "{e}");
}

#[test]
fn limits_are_checked_before_allocating() {
    let huge = "a[0-65535]b[0-65535]c[0-65535]d[0-65535]";
    let err = expand(huge).unwrap_err();
    assert!(matches!(err, HostlistError::TooLarge { .. }), "{err}");
    let small = Limits {
        max_names: 10,
        ..Limits::default()
    };
    assert!(expand_with_limits("n[1-10]", small).is_ok());
    assert!(expand_with_limits("n[1-11]", small).is_err());
    assert!(expand_with_limits("n[1-5],m[1-6]", small).is_err());
    assert_eq!(expand("n[1-65536]").map(|v| v.len()), Ok(65536));
    // Many groups: the product saturates instead of overflowing.
    let many = "a[1-2]".repeat(200) + "[1-2]";
    assert!(expand(&many).is_err());
    let bytes = Limits {
        max_bytes: 100,
        ..Limits::default()
    };
    assert!(expand_with_limits("averyveryverylongprefix[1-10]", bytes).is_err());
}

#[test]
fn nul_is_rejected() {
    assert!(expand("a\0b").is_err());
}

#[test]
fn compress_matches_scontrol() {
    assert_eq!(compress(&["n3", "n1", "n2"]), "n[3,1-2]");
    assert_eq!(compress(&["n1", "n1", "n2"]), "n[1,1-2]");
    assert_eq!(compress(&["a1", "b1", "a2"]), "a1,b1,a2");
    assert_eq!(
        compress(&["n01", "n1", "n001", "n02", "n2"]),
        "n[01,1,001,02,2]"
    );
    assert_eq!(compress(&["n9", "n10", "n08"]), "n[9-10,08]");
    assert_eq!(compress(&["x", "y", "x"]), "x,y,x");
    assert_eq!(
        compress(&["a1b2", "a1b3", "a2b2", "a2b3"]),
        "a1b[2-3],a2b[2-3]"
    );
    assert_eq!(compress(&["n-1", "n-2"]), "n-[1-2]");
    assert_eq!(compress(&["a", "a1", "a2"]), "a,a[1-2]");
    assert_eq!(compress(&["a1", "a", "a2"]), "a1,a,a2");
    assert_eq!(compress(&["a1", "a2", "a"]), "a[1-2],a");
    assert_eq!(compress(&["1", "2", "3", "a"]), "[1-3],a");
    assert_eq!(compress::<&str>(&[]), "");
}

#[test]
fn compress_expr_matches_scontrol() {
    assert_eq!(cx("n[1-3],n2"), "n[1-3,2]");
    assert_eq!(cx("n[1-2]-[3-4]"), "n1-[3-4],n2-[3-4]");
    assert_eq!(cx("n[01-3,5]"), "n[01-03,5]");
    assert_eq!(cx("n[1-3],n[2-5]"), "n[1-3,2-5]");
    assert_eq!(cx("a1,a2,a[3-4],a5"), "a[1-5]");
    assert_eq!(
        cx("a[1-2]b[1-2]c[1-2]"),
        "a1b1c[1-2],a2b1c[1-2],a1b2c[1-2],a2b2c[1-2]"
    );
    assert_eq!(cx("n1,n 2,n3"), "n1,n,2,n3");
    assert_eq!(cx("[1-3]"), "[1-3]");
    assert_eq!(cx("nx"), "nx");
    assert_eq!(cx(""), "");
}

#[test]
fn huge_suffix_is_kept_verbatim() {
    assert_eq!(
        compress(&["n99999999999999999999"]),
        "n99999999999999999999"
    );
    assert_eq!(ex("n99999999999999999999"), ["n99999999999999999999"]);
}

#[test]
fn contains_without_expanding() {
    assert_eq!(contains("node[0001-9999]", "node0042"), Ok(true));
    assert_eq!(contains("node[0001-9999]", "node42"), Ok(false));
    assert_eq!(contains("node[0001-9999]", "node10000"), Ok(false));
    assert_eq!(contains("node[1-10]", "node10"), Ok(true));
    assert_eq!(contains("gpu,cpu[1-2]", "gpu"), Ok(true));
    assert_eq!(contains("a[0-65535]b[0-63]", "a65535b63"), Ok(true));
    assert!(contains("n[5-1]", "n1").is_err());
}

#[test]
fn uniq_sorts_and_dedups() {
    let mut hl = Hostlist::parse("n3,n1,n2,n1,b,a[1-4],a2").unwrap();
    hl.uniq();
    assert_eq!(hl.to_ranged_string(), "a[1-4],b,n[1-3]");
    assert_eq!(hl.len(), 8);
    assert_eq!(hl.to_vec(), ["a1", "a2", "a3", "a4", "b", "n1", "n2", "n3"]);
    let mut hl = Hostlist::parse("n10,n9,n2").unwrap();
    hl.uniq();
    assert_eq!(hl.to_vec(), ["n2", "n9", "n10"]);
}

#[test]
fn display_and_from_str() {
    let hl: Hostlist = "n[1-3]".parse().unwrap();
    assert_eq!(hl.to_string(), "n[1-3]");
    assert_eq!(hl.len(), 3);
    assert!(!hl.is_empty());
    assert_eq!((&hl).into_iter().count(), 3);
}

#[test]
fn tokenizer_keeps_bracket_content_together() {
    assert_eq!(tokenize("a[1,2],b c\td", false), ["a[1,2]", "b", "c", "d"]);
    assert_eq!(tokenize("x[1 2] y", false), ["x[1 2]", "y"]);
    assert_eq!(tokenize(",,, ", false), Vec::<&str>::new());
}

#[test]
fn pathological_inputs_stay_fast() {
    // Each of these was quadratic in a straight port of Slurm's code; at
    // these sizes quadratic would take minutes, linear takes milliseconds.
    let start = std::time::Instant::now();
    let many: Vec<String> = (0..200_000).map(|i| format!("a{i}")).collect();
    let expr = many.join(",") + ",x[1]";
    assert_eq!(expand(&expr).map(|v| v.len()), Ok(200_001));
    let opens = "[,".repeat(200_000);
    assert!(expand_for(&opens, Syntax::Slurm22_05).is_ok());
    assert!(expand(&opens).is_err());
    let groups = "a".repeat(200_000) + &"[1]x".repeat(20_000) + "[1]";
    assert_eq!(expand(&groups).map(|v| v.len()), Ok(1));
    let digits = format!("a[{}1]b[1-2]", "0".repeat(100_000));
    assert_eq!(compress_expr(&digits).map(|s| s.len() > 100_000), Ok(true));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn byte_limit_counts_name_lengths_not_expression_length() {
    // One bracket with many entries: each name is short even though the
    // expression is long.
    let names: Vec<String> = (0..20_000).map(|i| format!("n{}", i * 2)).collect();
    let c = compress(&names);
    let limits = Limits {
        max_names: 1 << 16,
        max_bytes: 1 << 20,
    };
    assert_eq!(expand_with_limits(&c, limits).map(|v| v.len()), Ok(20_000));
}

/// Membership, positions and set questions answered without expanding, checked against
/// the expansion on generated patterns: zero padding, several brackets, comma lists,
/// suffixes, digits in prefixes and invalid patterns.
mod without_expanding {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::super::*;

    /// One bracket range as written: `lo[-hi]`, `lo` with some leading zeros.
    fn range() -> impl Strategy<Value = String> {
        (0u64..130, 0u64..40, 0usize..3, any::<bool>()).prop_map(|(lo, span, zeros, single)| {
            let lo_s = format!("{}{lo}", "0".repeat(zeros));
            if single {
                lo_s
            } else {
                format!("{lo_s}-{}", lo + span)
            }
        })
    }

    fn bracket() -> impl Strategy<Value = String> {
        proptest::collection::vec(range(), 1..4).prop_map(|v| format!("[{}]", v.join(",")))
    }

    /// One token: prefix, one or two bracket groups, optional suffix; or a plain name.
    fn token() -> impl Strategy<Value = String> {
        let prefix = prop::sample::select(vec!["", "a", "n", "gpu", "a1", "n0", "r1-g"]);
        let mid = prop::sample::select(vec!["", "-", "x", "0"]);
        let suffix = prop::sample::select(vec!["", "", "-ib", "b"]);
        prop_oneof![
            (prefix.clone(), bracket(), suffix.clone()).prop_map(|(p, b, s)| format!("{p}{b}{s}")),
            (prefix.clone(), bracket(), mid, bracket())
                .prop_map(|(p, b1, m, b2)| format!("{p}{b1}{m}{b2}")),
            (prefix, 0u64..200, 0usize..3).prop_map(|(p, n, z)| format!("{p}{}{n}", "0".repeat(z))),
            prop::sample::select(vec!["login", "a", "n", "gpu"]).prop_map(String::from),
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(token(), 1..4).prop_map(|v| v.join(","))
    }

    /// Names to ask about: some of the pattern's own, near misses and others.
    fn probes(names: &[String], other: &[String]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().take(60).cloned().collect();
        v.extend(other.iter().take(60).cloned());
        for n in names.iter().take(20) {
            v.push(format!("{n}0"));
            v.push(format!("0{n}"));
            if let Some(stripped) = n.strip_suffix('0') {
                v.push(stripped.to_string());
            }
            let (stem, digits) = split_digits(n);
            if let Ok(x) = digits.parse::<u64>() {
                v.push(format!("{stem}{x}"));
                v.push(format!("{stem}0{digits}"));
            }
        }
        v.extend(["", "a", "n1", "n01", "n001", "gpu1", "gpu01", "a10", "a010"].map(String::from));
        v
    }

    fn check(expr: &str, other_expr: &str) -> Result<(), TestCaseError> {
        let expanded = expand(expr);
        let parsed = Hostlist::parse(expr);
        let (names, hl) = match (expanded, parsed) {
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                return Ok(());
            }
            (Ok(names), Ok(hl)) => (names, hl),
            (a, b) => return Err(TestCaseError::fail(format!("{expr}: {a:?} vs {b:?}"))),
        };
        prop_assert_eq!(hl.len(), names.len());
        let other = expand(other_expr).unwrap_or_default();
        for p in probes(&names, &other) {
            prop_assert_eq!(hl.contains(&p), names.contains(&p), "{} in {}", p, expr);
            prop_assert_eq!(
                hl.position(&p),
                names.iter().position(|n| *n == p),
                "position of {} in {}",
                p,
                expr
            );
            prop_assert_eq!(contains(expr, &p).ok(), Some(names.contains(&p)));
        }
        for i in [
            0,
            1,
            names.len() / 2,
            names.len().saturating_sub(1),
            names.len(),
        ] {
            prop_assert_eq!(hl.nth(i), names.get(i).cloned(), "nth {} of {}", i, expr);
        }
        // set questions on spans
        let Ok(other_hl) = Hostlist::parse(other_expr) else {
            return Ok(());
        };
        let (Some(mine), Some(theirs)) = (hl.spans(), other_hl.spans()) else {
            return Ok(());
        };
        let own: HashSet<&String> = names.iter().collect();
        let dup_inside = own.len() != names.len();
        let mut alone = mine.clone();
        prop_assert_eq!(
            spans_overlap(&mut alone),
            dup_inside,
            "duplicates in {}",
            expr
        );
        let shared = other.iter().any(|n| own.contains(n));
        let dup_other = other.iter().collect::<HashSet<_>>().len() != other.len();
        let mut both: Vec<Span> = mine.iter().chain(theirs.iter()).cloned().collect();
        prop_assert_eq!(
            spans_overlap(&mut both),
            shared || dup_inside || dup_other,
            "{} and {}",
            expr,
            other_expr
        );
        let set = SpanSet::new(theirs);
        let all_in = mine.iter().all(|s| set.covers(s));
        let other_names: HashSet<&String> = other.iter().collect();
        prop_assert_eq!(
            all_in,
            names.iter().all(|n| other_names.contains(n)),
            "{} within {}",
            expr,
            other_expr
        );
        for s in &mine {
            prop_assert!(own.contains(&s.name(s.lo)) && own.contains(&s.name(s.hi)));
        }
        Ok(())
    }

    proptest! {
        // a fixed seed: every run checks the same cases
        #![proptest_config(ProptestConfig {
            cases: 1000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x14e0_4057),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn agrees_with_expansion(expr in pattern(), other in pattern()) {
            check(&expr, &other)?;
        }

        #[test]
        fn agrees_with_expansion_on_any_text(expr in "[an0-9\\[\\],-]{0,16}", other in pattern()) {
            check(&expr, &other)?;
        }
    }

    #[test]
    fn zero_padding_and_digits_in_prefixes() {
        for (expr, other) in [
            ("gpu[001-100]", "gpu[1-100]"),
            ("gpu[001-100]", "gpu[0001-0100]"),
            ("a[5-10]", "a[08-13]"),
            ("a1[0-9]", "a[10-19]"),
            ("n0[1-9]", "n[01-09]"),
            ("r[1-2]-g[01-80]", "r1-g[01-80],r2-g[01-79]"),
            ("n[1-3,2]", "n9"),
            ("n[0001-4000]-ib", "n[0001-4000]"),
            ("n[1-010]", "n[9-10]"),
            ("gpu[0001-4000]", "gpu[0001-2000],gpu[2001-4000]"),
        ] {
            check(expr, other).unwrap_or_else(|e| panic!("{expr} / {other}: {e}"));
            check(other, expr).unwrap_or_else(|e| panic!("{other} / {expr}: {e}"));
        }
        let hl = Hostlist::parse("gpu[001-100]").unwrap();
        assert!(!hl.contains("gpu1"));
        assert!(hl.contains("gpu001"));
        assert_eq!(hl.position("gpu100"), Some(99));
    }

    #[test]
    fn errors_are_those_of_the_expansion() {
        for expr in [
            "n[3-1]",
            "n[1-2",
            "n[a]",
            "n[1-99999999]",
            "n[0-65535][0-65535]",
        ] {
            assert_eq!(
                Hostlist::parse(expr).map(|h| h.len()),
                expand(expr).map(|v| v.len()),
                "{expr}"
            );
        }
    }
}
