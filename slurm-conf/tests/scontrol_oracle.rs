//! Compares `sgpu_slurm_conf::hostlist` with the real `scontrol` (Slurm's own
//! hostlist code) on many deterministic pseudo-random expressions and name
//! sets, plus a list of malformed expressions.
//!
//! Every Slurm found is asked, each with the rules of its own release
//! ([`Syntax::for_version`] of its `scontrol --version`): the `scontrol` in
//! `PATH` (Debian's 22.05 in CI), the one of `SGPU_SLURM_PREFIX` (CI's second
//! leg: 26.05.3) and every `/opt/sgpu-slurm/VERSION/bin/scontrol` that
//! `scripts/build-slurm` left (`SGPU_SLURM_ROOT` moves that folder).
//!
//! `scontrol show hostnames` / `show hostlist` need no daemon when
//! `SLURM_CONF` points to a minimal configuration, which this test writes into
//! a temporary directory. The test fails (it does not skip) when `scontrol`
//! is missing: install `slurm-wlm` (or `slurm-client`), as CI does.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use sgpu_slurm_conf::hostlist::{
    Hostlist, Limits, Syntax, compress, compress_expr_for, expand_for,
};

/// Number of random expressions checked with `show hostnames` and `show hostlist`.
const EXPR_CASES: usize = 1500;
/// Number of random name sets checked with `show hostlist`.
const NAME_SET_CASES: usize = 600;
/// Fixed seed: every run checks the same cases.
const SEED: u64 = 0x5a_0c_0d_e5_1c_a5_e5;

/// Small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The `scontrol` of every Slurm here: `PATH`'s first, then the built releases.
fn all_scontrols() -> Vec<PathBuf> {
    let mut out = vec![find_scontrol()];
    let mut built = Vec::new();
    if let Some(prefix) = std::env::var_os("SGPU_SLURM_PREFIX").filter(|p| !p.is_empty()) {
        built.push(PathBuf::from(prefix).join("bin/scontrol"));
    }
    let root = std::env::var_os("SGPU_SLURM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sgpu-slurm"));
    if let Ok(dir) = std::fs::read_dir(&root) {
        let mut found: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin/scontrol"))
            .collect();
        found.sort();
        built.extend(found);
    }
    for sc in built {
        let canon = std::fs::canonicalize(&sc).unwrap_or(sc.clone());
        if sc.is_file()
            && !out
                .iter()
                .any(|o| std::fs::canonicalize(o).unwrap_or(o.clone()) == canon)
        {
            out.push(sc);
        }
    }
    out
}

fn find_scontrol() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
    {
        let cand = dir.join("scontrol");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "scontrol not found in PATH: this test compares the hostlist code with Slurm's own. \
         Install slurm-wlm (Debian/Ubuntu: `apt-get install slurm-wlm` or `slurm-client`); CI installs it."
    );
}

struct Oracle {
    scontrol: PathBuf,
    conf: PathBuf,
    /// What `scontrol --version` printed.
    version: String,
    /// The hostlist rules of that release.
    syntax: Syntax,
    _dir: tempfile::TempDir,
}

/// What scontrol printed: `Ok(stdout)` when stderr was empty.
type Outcome = Result<String, String>;

impl Oracle {
    /// One oracle per Slurm found ([`all_scontrols`]).
    fn all() -> Vec<Self> {
        all_scontrols().into_iter().map(Oracle::new).collect()
    }

    fn new(scontrol: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("slurm.conf");
        std::fs::write(&conf, "ClusterName=oracle\nSlurmctldHost=localhost\n")
            .expect("write slurm.conf");
        let out = Command::new(&scontrol)
            .arg("--version")
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap_or_else(|e| panic!("running {} --version: {e}", scontrol.display()));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let syntax = Syntax::for_version(&version).unwrap_or_else(|| {
            panic!(
                "{} --version printed {version:?}, no release",
                scontrol.display()
            )
        });
        eprintln!(
            "oracle: {} ({version}): hostlist rules {syntax:?}",
            scontrol.display()
        );
        let o = Oracle {
            scontrol,
            conf,
            version,
            syntax,
            _dir: dir,
        };
        let probe = o.run("hostnames", "n[1-2]");
        assert_eq!(
            probe,
            Ok("n1\nn2\n".to_string()),
            "scontrol does not work with a minimal SLURM_CONF ({})",
            o.scontrol.display()
        );
        o
    }

    fn run(&self, what: &str, arg: &str) -> Outcome {
        let out = Command::new(&self.scontrol)
            .args(["show", what, arg])
            .env("SLURM_CONF", &self.conf)
            .env("POSIXLY_CORRECT", "1")
            .env_remove("SLURM_JOB_NODELIST")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.scontrol.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.trim().is_empty() && out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stderr}{stdout}"))
        }
    }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

fn gen_prefix(rng: &mut Rng, allow_empty: bool) -> String {
    let parts = [
        "n", "node", "gpu", "a", "b", "rack1-", "c2n", "x_", "z.", "r", "-", "q0",
    ];
    let mut s = String::new();
    let k = if allow_empty {
        rng.below(3)
    } else {
        1 + rng.below(2)
    };
    for _ in 0..k {
        s.push_str(rng.pick(&parts));
    }
    s
}

fn gen_num(rng: &mut Rng) -> (u64, String) {
    let v = if rng.pct(85) {
        rng.below(25)
    } else {
        rng.below(1200)
    };
    let pad = if rng.pct(60) {
        0
    } else {
        rng.below(4) as usize
    };
    (v, format!("{}{v}", "0".repeat(pad)))
}

fn gen_range(rng: &mut Rng, bad: bool) -> String {
    if bad && rng.pct(8) {
        return rng
            .pick(&[
                "5-1", "", "a", "1-", "-1", "1--2", "1-2x", " 1", "+1", "1a-2", "1-a", "0x3",
                "2- 3", "1-2-3", "3-03",
            ])
            .to_string();
    }
    let (lo, lo_s) = gen_num(rng);
    if rng.pct(35) {
        return lo_s;
    }
    let hi = lo + rng.below(6);
    let hi_s = if rng.pct(70) {
        format!("{hi:0w$}", w = lo_s.len())
    } else {
        hi.to_string()
    };
    format!("{lo_s}-{hi_s}")
}

fn gen_bracket(rng: &mut Rng, bad: bool) -> String {
    let n = 1 + rng.below(3);
    let ranges: Vec<String> = (0..n).map(|_| gen_range(rng, bad)).collect();
    format!("[{}]", ranges.join(","))
}

fn gen_token(rng: &mut Rng, bad: bool) -> String {
    if rng.pct(30) {
        let mut s = gen_prefix(rng, false);
        if rng.pct(70) {
            s.push_str(&gen_num(rng).1);
        }
        return s;
    }
    let mut s = gen_prefix(rng, true);
    s.push_str(&gen_bracket(rng, bad));
    let extra = rng.below(3);
    for i in 0..extra {
        if i == 0 || rng.pct(70) {
            s.push_str(&gen_prefix(rng, true));
        }
        s.push_str(&gen_bracket(rng, bad));
    }
    if bad && rng.pct(6) {
        s.push_str(rng.pick(&["x", "]", "-a", "[", "[1"]));
    }
    if bad && rng.pct(4) {
        s.pop();
    }
    s
}

fn gen_expr(rng: &mut Rng) -> String {
    let bad = rng.pct(25);
    let n = 1 + rng.below(4);
    let seps = [",", " ", ", ", "\t", ",,"];
    let mut s = String::new();
    if rng.pct(5) {
        s.push_str(rng.pick(&seps));
    }
    for i in 0..n {
        if i > 0 {
            s.push_str(rng.pick(&seps));
        }
        s.push_str(&gen_token(rng, bad));
    }
    if rng.pct(5) {
        s.push_str(rng.pick(&seps));
    }
    if s.trim_start_matches([',', ' ', '\t']).starts_with('-') || s.starts_with('/') {
        s.insert(0, 'x');
    }
    s
}

fn gen_names(rng: &mut Rng) -> Vec<String> {
    let prefixes = ["n", "node", "gpu-", "a1b", "rack1-n", "", "x", "n0"];
    let n = 1 + rng.below(30);
    let mut names: Vec<String> = Vec::new();
    for _ in 0..n {
        if rng.pct(10) && !names.is_empty() {
            let dup = names[rng.below(names.len() as u64) as usize].clone();
            names.push(dup);
            continue;
        }
        let p = rng.pick(&prefixes);
        if rng.pct(25) {
            // A run of consecutive numbers, sometimes crossing a digit boundary.
            let start = rng.below(14);
            let w = rng.below(3) as usize;
            for v in start..start + 1 + rng.below(6) {
                names.push(format!("{p}{v:0w$}"));
            }
            continue;
        }
        let name = if rng.pct(8) {
            format!("{p}login")
        } else {
            let (v, s) = gen_num(rng);
            let v = if rng.pct(50) { v % 12 } else { v };
            if s.starts_with('0') && s.len() > 1 {
                format!("{p}{v:0w$}", w = s.len())
            } else {
                format!("{p}{v}")
            }
        };
        names.push(name);
    }
    names
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

/// Runs `f` over `cases` on a few threads; returns the failure messages.
fn par_check<T: Sync>(cases: &[T], f: impl Fn(&T) -> Option<String> + Sync) -> Vec<String> {
    let threads = 4;
    let chunk = cases.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().filter_map(&f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

fn check_expr(o: &Oracle, e: &str) -> Option<String> {
    let mut fails = Vec::new();
    let v = &o.version;
    match (o.run("hostnames", e), expand_for(e, o.syntax)) {
        (Ok(out), Ok(ours)) if lines(&out) == ours => {}
        (Err(_), Err(_)) => {}
        (theirs, ours) => fails.push(format!(
            "expand({e:?}): scontrol ({v}) {theirs:?}, ours {ours:?}"
        )),
    }
    // membership and positions without expanding, against scontrol's names
    if let (Ok(out), Ok(hl)) = (
        o.run("hostnames", e),
        Hostlist::parse_with(e, o.syntax, Limits::default()),
    ) {
        let names = lines(&out);
        for n in names.iter().take(40) {
            let first = names.iter().position(|x| x == n);
            let near = format!("{n}0");
            if !hl.contains(n)
                || hl.position(n) != first
                || hl.contains(&near) != names.contains(&near)
            {
                fails.push(format!(
                    "contains/position({e:?}, {n:?}): scontrol ({v}) at {first:?}, ours {:?}",
                    hl.position(n)
                ));
                break;
            }
        }
    }
    match (o.run("hostlist", e), compress_expr_for(e, o.syntax)) {
        (Ok(out), Ok(ours)) if out.trim_end_matches('\n') == ours => {}
        (Err(_), Err(_)) => {}
        (theirs, ours) => fails.push(format!(
            "compress_expr({e:?}): scontrol ({v}) {theirs:?}, ours {ours:?}"
        )),
    }
    (!fails.is_empty()).then(|| fails.join("\n"))
}

#[test]
fn hostlists_match_scontrol() {
    for o in Oracle::all() {
        hostlists_match(&o);
    }
}

fn hostlists_match(o: &Oracle) {
    let start = Instant::now();
    let mut rng = Rng(SEED);
    let exprs: Vec<String> = (0..EXPR_CASES).map(|_| gen_expr(&mut rng)).collect();
    let rejected = exprs
        .iter()
        .filter(|e| expand_for(e, o.syntax).is_err())
        .count();
    let mut fails = par_check(&exprs, |e| check_expr(o, e));

    let sets: Vec<Vec<String>> = (0..NAME_SET_CASES).map(|_| gen_names(&mut rng)).collect();
    fails.extend(par_check(&sets, |names| {
        let joined = names.join(",");
        let ours = compress(names);
        let theirs = o.run("hostlist", &joined);
        if theirs.as_deref().map(|s| s.trim_end_matches('\n')) != Ok(ours.as_str()) {
            return Some(format!(
                "compress({names:?}): scontrol {theirs:?}, ours {ours:?}"
            ));
        }
        // Slurm reads back what we print as the same names, in the same order.
        match o.run("hostnames", &ours) {
            Ok(out) if lines(&out) == *names => None,
            other => Some(format!(
                "scontrol show hostnames {ours:?} gave {other:?}, expected {names:?}"
            )),
        }
    }));

    let total = EXPR_CASES * 2 + NAME_SET_CASES * 2;
    eprintln!(
        "scontrol oracle ({}): {total} comparisons ({rejected} of {EXPR_CASES} expressions malformed) in {:.1?}",
        o.version,
        start.elapsed()
    );
    assert!(
        rejected > EXPR_CASES / 20 && rejected < EXPR_CASES / 2,
        "generator balance is off: {rejected} rejected"
    );
    assert!(
        fails.is_empty(),
        "{} mismatches with scontrol:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// Refused by every release.
#[test]
fn malformed_expressions_rejected_like_scontrol() {
    let cases = [
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
        "n[1-2 ]",
        "n[1-a]",
    ];
    for o in Oracle::all() {
        let fails = par_check(&cases, |e| {
            match (o.run("hostnames", e), expand_for(e, o.syntax)) {
                (Err(_), Err(_)) => None,
                (theirs, ours) => Some(format!(
                    "{e:?}: scontrol ({}) {theirs:?}, ours {ours:?}",
                    o.version
                )),
            }
        });
        assert!(fails.is_empty(), "{}", fails.join("\n"));
    }
}

/// What changed between releases: a missing `]` (refused since 23.02) and text after
/// the last `]` (a shared suffix since 23.11). Each Slurm is compared with its own
/// release's rules, and each rule is seen to be that release's.
#[test]
fn release_dependent_expressions_match_scontrol() {
    let missing = ["n[1-3", "[12", "a[1]b[2", "a[1-2],b[3"];
    let suffixed = [
        "n[1,3-4]x",
        "n[1-3]x",
        "a[1]]",
        "a[[1]]",
        "a[1-2]b[3-4]c",
        "n[1-2]]",
        "n[1]-x",
        "node[0001-0003]-int",
        "rack[1-2]-gpu[01-02]-ib",
        "n[1-2]x3,n3x3",
    ];
    for o in Oracle::all() {
        let cases: Vec<&str> = missing.iter().chain(&suffixed).copied().collect();
        let fails = par_check(&cases, |e| check_expr(&o, e));
        assert!(fails.is_empty(), "{}", fails.join("\n"));
        // the rules the release is said to have are the ones its scontrol has
        let refused = |e: &str| o.run("hostnames", e).is_err();
        assert_eq!(
            missing.iter().all(|e| refused(e)),
            o.syntax >= Syntax::Slurm23_02,
            "{}: a missing ] refused?",
            o.version
        );
        assert_eq!(
            suffixed.iter().all(|e| refused(e)),
            o.syntax < Syntax::Slurm23_11,
            "{}: a suffix after ] refused?",
            o.version
        );
    }
}

/// Valid on every release.
#[test]
fn quirky_but_valid_expressions_match_scontrol() {
    let cases = [
        "n[1-010]",
        "n[08-12]",
        "n[9-10]",
        "n[ 1]",
        "n[1 -2]",
        "n[+1-2]",
        "n[1-+2]",
        "n[1-]",
        "n[1a-2]",
        "n[0- -0]",
        "a]1",
        "a[1-2][3-4]",
        "rack[1-2]-gpu[01-08]",
        "a[1-2]b[1-2]c[1-2]d[1-2]",
        "n[1-65536]",
        "a[1-1025]b[1-3]",
        "n9,n10,n08,n[07-11]",
        "a,a1,a2,a b",
        "x[1-3],x[4-6],x[07-9]",
        "n[001-3],n4,n005",
    ];
    for o in Oracle::all() {
        let fails = par_check(&cases, |e| check_expr(&o, e));
        assert!(fails.is_empty(), "{}", fails.join("\n"));
    }
}

#[test]
fn uniq_is_a_sorted_set() {
    // Not an scontrol command; checked against a plain set here.
    let mut rng = Rng(SEED ^ 1);
    for _ in 0..300 {
        let names = gen_names(&mut rng);
        let mut hl = Hostlist::from_names(&names);
        hl.uniq();
        let got = hl.to_vec();
        let mut want = names.clone();
        want.sort();
        want.dedup();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want, "uniq({names:?})");
        assert_eq!(hl.len(), got.len());
    }
}

#[test]
#[ignore = "prints generator samples"]
fn print_samples() {
    let mut rng = Rng(SEED);
    for _ in 0..40 {
        println!("{:?}", gen_expr(&mut rng));
    }
    for _ in 0..5 {
        println!("{:?}", gen_names(&mut rng));
    }
}
