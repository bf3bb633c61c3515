//! Installation for a real cluster (issue 7 §2): the top-level `Makefile`'s `install`,
//! `install-node`, `install-head` and `deb` targets, run into temporary directories with the
//! binaries this test's cargo profile built, and the packages installed with the real `dpkg`
//! into a temporary root (`dpkg --root`, scripts run with `DPKG_ROOT`, its own log): nothing
//! outside the temporary directories changes. The units are checked with the real
//! `systemd-analyze verify` against the installed tree, the example `sgpu.toml` with healthd's
//! own configuration parser, `sgpu-acctd` inside the sandbox its unit asks for (read-only file
//! system but its state directory, no capabilities) with the system munged. Only that test
//! needs the test cluster (for munged).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sgpu_nodelib::config::Config;
use sgpu_tests::cluster::repo_root;

const PACKAGES: &[&str] = &["sgpu-common", "sgpu-node", "sgpu-head"];
/// What the packages depend on besides each other: taken from this machine's dpkg database.
const DEPENDENCIES: &[&str] = &["libc6", "libgcc-s1", "libmunge2", "munge", "slurmd"];

/// The cargo output directory of this test's profile, with every installed file built in it
/// (built once per test binary, a no-op when fresh).
fn built() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap();
        let dir = if dir.ends_with("deps") {
            dir.parent().unwrap()
        } else {
            dir
        };
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(repo_root()).args([
            "build",
            "--quiet",
            // the whole workspace: the feature set of every other test's build, so the
            // binaries are shared on disk instead of built again with other features
            "--workspace",
            "--bins",
            "--lib",
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.to_path_buf()
    })
}

/// Runs `cmd`, returning its output whether it succeeded or not.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is its Debian package installed?)"))
}

/// Runs `cmd` and fails the test unless it succeeds; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files `make install`/`make deb` take from the build directory.
const BUILT_FILES: &[&str] = &[
    "sgpu",
    "sgpu-prolog",
    "sgpu-epilog",
    "sgpu-healthd",
    "sgpu-acctd",
    "libspank_sgpu.so",
    "libnvml_sim.so",
];

/// A private build directory for one test: hard links to the built files, so that another
/// cargo build replacing them meanwhile (other tests run in parallel) cannot change what this
/// test installs and compares. Removed on drop.
fn snapshot() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(built()).unwrap();
    for f in BUILT_FILES {
        let (src, dst) = (built().join(f), dir.path().join(f));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    dir
}

/// `make -C <repo> BUILD_DIR=<build> <args>`.
fn make(build: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(repo_root())
        .arg("--no-print-directory")
        .arg(format!("BUILD_DIR={}", build.path().display()))
        .args(args);
    cmd
}

/// Every path under `root` (relative, with a leading `/`) with its permission bits.
fn tree(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            out.insert(rel, meta.permissions().mode() & 0o7777);
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The files (not directories) of `tree` with their modes.
fn files(root: &Path) -> BTreeMap<String, u32> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| root.join(&p[1..]).is_file())
        .collect()
}

/// The `KEY=` values of a unit file, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The program of a unit's `ExecStart=`, which must exist and be executable under `root`.
fn check_exec_start(root: &Path, unit_path: &str, want: &str) {
    let unit = std::fs::read_to_string(root.join(&unit_path[1..])).unwrap();
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "{unit_path}: one ExecStart= line: {exec:?}");
    let program = exec[0].split_whitespace().next().unwrap();
    assert_eq!(program, want, "{unit_path}: ExecStart");
    let mode = std::fs::metadata(root.join(&program[1..]))
        .unwrap_or_else(|e| panic!("{unit_path}: ExecStart {program} not in the tree: {e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{program} is not executable");
}

/// `systemd-analyze verify` of `units` inside `root` (with this machine's systemd units
/// copied in, so dependencies such as munge.service resolve): unknown keys, bad values and
/// missing or non-executable `ExecStart=` programs fail.
fn verify_units(root: &Path, units: &[&str]) {
    let sys = root.join("lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    for e in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let e = e.unwrap();
        let dst = sys.join(e.file_name());
        if e.file_type().unwrap().is_file() && !dst.exists() {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
    let out = run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["--man=no", "verify"])
        .args(units));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {units:?} in {}: {}\n{stderr}",
        root.display(),
        out.status
    );
}

/// The symbols a shared library exports.
fn exported(so: &Path) -> Vec<String> {
    ok(Command::new("nm").args(["-D", "--defined-only"]).arg(so))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

/// The Slurm release (`major.minor`) of the installed headers, which the plugin is built with.
fn slurm_headers_release() -> (u32, u32) {
    let h = std::fs::read_to_string("/usr/include/slurm/slurm_version.h").unwrap();
    let hex = h
        .lines()
        .find_map(|l| l.strip_prefix("#define SLURM_VERSION_NUMBER"))
        .unwrap()
        .trim()
        .trim_start_matches("0x");
    let n = u32::from_str_radix(hex, 16).unwrap();
    ((n >> 16) & 0xff, (n >> 8) & 0xff)
}

/// The workspace version, as the packages carry it.
fn version() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let ws = text.split("[workspace.package]").nth(1).unwrap();
    ws.lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn make_install_lays_out_node_and_head_parts_with_units_pointing_at_prefix() {
    let build = snapshot();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(&mut make(
        &build,
        &[
            "install",
            "PROFILE=debug",
            &format!("DESTDIR={}", root.display()),
        ],
    ));

    let got = files(root);
    let want: BTreeMap<String, u32> = [
        ("/usr/local/sbin/sgpu-prolog", 0o755),
        ("/usr/local/sbin/sgpu-epilog", 0o755),
        ("/usr/local/sbin/sgpu-healthd", 0o755),
        ("/usr/local/sbin/sgpu-acctd", 0o755),
        ("/usr/local/bin/sgpu", 0o755),
        ("/usr/local/lib/sgpu/libnvml_sim.so", 0o644),
        ("/usr/local/lib/slurm/spank_sgpu.so", 0o644),
        ("/etc/sgpu/sgpu.toml", 0o644),
        ("/etc/systemd/system/sgpu-healthd.service", 0o644),
        ("/etc/systemd/system/sgpu-acctd.service", 0o644),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    assert_eq!(got, want, "installed files and modes");
    let all = tree(root);
    for (dir, mode) in [
        ("/var/lib/sgpu", 0o700),
        ("/var/spool/sgpu", 0o700),
        ("/etc/sgpu", 0o755),
    ] {
        assert_eq!(all.get(dir), Some(&mode), "{dir}: mode {:o}", mode);
    }

    // the installed files are the built ones, the plugin under the name plugstack.conf uses
    for (built_name, installed) in [
        ("sgpu-healthd", "usr/local/sbin/sgpu-healthd"),
        ("sgpu-acctd", "usr/local/sbin/sgpu-acctd"),
        ("sgpu", "usr/local/bin/sgpu"),
        ("libspank_sgpu.so", "usr/local/lib/slurm/spank_sgpu.so"),
    ] {
        assert_eq!(
            std::fs::read(build.path().join(built_name)).unwrap(),
            std::fs::read(root.join(installed)).unwrap(),
            "{installed} differs from the built {built_name}"
        );
    }
    let syms = exported(&root.join("usr/local/lib/slurm/spank_sgpu.so"));
    for s in [
        "plugin_version",
        "plugin_name",
        "plugin_type",
        "slurm_spank_init",
    ] {
        assert!(syms.iter().any(|x| x == s), "spank_sgpu.so exports {s}");
    }
    assert_eq!(
        std::fs::read(root.join("etc/sgpu/sgpu.toml")).unwrap(),
        std::fs::read(repo_root().join("packaging/sgpu.toml")).unwrap()
    );

    check_exec_start(
        root,
        "/etc/systemd/system/sgpu-healthd.service",
        "/usr/local/sbin/sgpu-healthd",
    );
    check_exec_start(
        root,
        "/etc/systemd/system/sgpu-acctd.service",
        "/usr/local/sbin/sgpu-acctd",
    );
    verify_units(
        root,
        &[
            "/etc/systemd/system/sgpu-healthd.service",
            "/etc/systemd/system/sgpu-acctd.service",
        ],
    );
}

#[test]
fn make_install_node_and_head_with_another_prefix() {
    let build = snapshot();
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("node");
    let out = ok(&mut make(
        &build,
        &[
            "install-node",
            "PROFILE=debug",
            "PREFIX=/opt/sgpu",
            &format!("DESTDIR={}", node.display()),
        ],
    ));
    // it tells the admin the lines for this PREFIX
    for line in [
        "Prolog=/opt/sgpu/sbin/sgpu-prolog",
        "Epilog=/opt/sgpu/sbin/sgpu-epilog",
        "optional /opt/sgpu/lib/slurm/spank_sgpu.so",
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }
    let got: Vec<String> = files(&node).into_keys().collect();
    assert_eq!(
        got,
        [
            "/etc/sgpu/sgpu.toml",
            "/etc/systemd/system/sgpu-healthd.service",
            "/opt/sgpu/bin/sgpu",
            "/opt/sgpu/lib/sgpu/libnvml_sim.so",
            "/opt/sgpu/lib/slurm/spank_sgpu.so",
            "/opt/sgpu/sbin/sgpu-epilog",
            "/opt/sgpu/sbin/sgpu-healthd",
            "/opt/sgpu/sbin/sgpu-prolog",
        ],
        "install-node: node files only"
    );
    check_exec_start(
        &node,
        "/etc/systemd/system/sgpu-healthd.service",
        "/opt/sgpu/sbin/sgpu-healthd",
    );

    let head = tmp.path().join("head");
    ok(&mut make(
        &build,
        &[
            "install-head",
            "PROFILE=debug",
            "PREFIX=/opt/sgpu",
            &format!("DESTDIR={}", head.display()),
        ],
    ));
    let got: Vec<String> = files(&head).into_keys().collect();
    assert_eq!(
        got,
        [
            "/etc/sgpu/sgpu.toml",
            "/etc/systemd/system/sgpu-acctd.service",
            "/opt/sgpu/bin/sgpu",
            "/opt/sgpu/lib/sgpu/libnvml_sim.so",
            "/opt/sgpu/sbin/sgpu-acctd",
        ],
        "install-head: head files only"
    );
    assert_eq!(tree(&head).get("/var/lib/sgpu"), Some(&0o700));
    assert_eq!(
        tree(&head).get("/var/spool/sgpu"),
        None,
        "no spool on the head"
    );
    check_exec_start(
        &head,
        "/etc/systemd/system/sgpu-acctd.service",
        "/opt/sgpu/sbin/sgpu-acctd",
    );
    verify_units(&head, &["/etc/systemd/system/sgpu-acctd.service"]);
}

#[test]
fn make_install_keeps_an_existing_config_and_says_what_to_build() {
    let build = snapshot();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let conf = root.join("etc/sgpu/sgpu.toml");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "nvml_timeout_ms = 1234\n").unwrap();
    let out = ok(&mut make(
        &build,
        &[
            "install-node",
            "PROFILE=debug",
            &format!("DESTDIR={}", root.display()),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "nvml_timeout_ms = 1234\n",
        "an existing sgpu.toml is never overwritten"
    );
    assert!(out.contains("kept the existing"), "says so: {out}");

    // a reinstall replaces files by renaming new ones over them (a new inode): a running
    // healthd, a prolog being started or a plugin slurmstepd has mapped keep the old file
    // intact instead of seeing it truncated and rewritten
    use std::os::unix::fs::MetadataExt;
    let watched = [
        "usr/local/sbin/sgpu-healthd",
        "usr/local/sbin/sgpu-prolog",
        "usr/local/lib/slurm/spank_sgpu.so",
    ];
    let inodes = || -> Vec<u64> {
        watched
            .iter()
            .map(|f| std::fs::metadata(root.join(f)).unwrap().ino())
            .collect()
    };
    let before = inodes();
    ok(&mut make(
        &build,
        &[
            "install-node",
            "PROFILE=debug",
            &format!("DESTDIR={}", root.display()),
        ],
    ));
    let after = inodes();
    for (f, (b, a)) in watched.iter().zip(before.iter().zip(&after)) {
        assert_ne!(b, a, "{f} was rewritten in place");
    }
    assert!(
        files(root)
            .keys()
            .all(|f| !f.ends_with(".new") && !f.ends_with(".tmp")),
        "no temporary files left"
    );

    // nothing built there: no half-done install, and the message says what to run
    let empty = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let out = run(Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .arg(format!("BUILD_DIR={}", empty.path().display()))
        .arg(format!("DESTDIR={}", dest.path().display()))
        .arg("install-head"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "install without a build must fail");
    assert!(
        stderr.contains("sgpu is missing: run 'make build PROFILE=release'"),
        "{stderr}"
    );
    assert!(files(dest.path()).is_empty(), "nothing installed");
}

#[test]
fn example_config_is_valid_and_documents_every_key() {
    let example = repo_root().join("packaging/sgpu.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    // as installed, it changes nothing
    let mut parsed = Config::load(&example).unwrap();
    parsed.source = None;
    assert_eq!(parsed, Config::default(), "every key is commented out");

    // uncommented, every key is one the parser knows, with a valid value
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.starts_with('"')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .fold(String::new(), |acc, l| acc + l + "\n");
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("sgpu.toml");
    std::fs::write(&full, &uncommented).unwrap();
    let c = Config::load(&full)
        .unwrap_or_else(|e| panic!("packaging/sgpu.toml uncommented: {e}\n{uncommented}"));
    assert_eq!(c.accounting.url.as_deref(), Some("http://head:6830"));
    assert!(
        !c.prices.configured,
        "prices are acctd's (packaging/acctd.toml)"
    );
    assert_eq!(c.node_name.as_deref(), Some("gpu01"));
    assert!(c.checks.contains_key("gpu.temperature"));
    assert!(c.idle.policy_for(Some("gpu")).is_some_and(|p| p.mail));
    assert!(
        c.active
            .check("dcgm-r2")
            .is_some_and(|d| d.format == sgpu_nodelib::active::OutputFormat::Dcgmi)
    );

    // every key of docs/install.md's sgpu.toml table is in the example
    let docs = std::fs::read_to_string(repo_root().join("docs/install.md")).unwrap();
    let section = docs.split("## 6. sgpu.toml").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let keys: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| !k.starts_with('['))
        .collect();
    assert!(keys.len() >= 10, "docs table keys: {keys:?}");
    for k in keys {
        assert!(
            text.contains(&format!("# {k} = ")),
            "docs/install.md documents {k}, packaging/sgpu.toml does not"
        );
    }
}

/// packaging/acctd.toml: as shipped it sets nothing; uncommented, acctd's parser takes every
/// key (a time zone, two price periods, coordinators).
#[test]
fn example_acctd_config_is_valid() {
    use sgpu_accounting::site::SiteConfig;
    let example = repo_root().join("packaging/acctd.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let shipped = SiteConfig::parse(&example, &text).unwrap();
    assert!(shipped.prices.is_none() && shipped.coordinators.accounts.is_empty());
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .fold(String::new(), |acc, l| acc + l + "\n");
    let c = SiteConfig::parse(&example, &uncommented)
        .unwrap_or_else(|e| panic!("packaging/acctd.toml uncommented: {e}\n{uncommented}"));
    assert_eq!(c.zone.name(), "Europe/Berlin");
    let prices = c.prices.expect("prices");
    assert_eq!(prices.periods.len(), 2);
    assert_eq!(
        prices.periods[0]
            .1
            .gpu_hour_micro("gpu", "NVIDIA H100 80GB HBM3"),
        4_000_000
    );
    assert!(c.coordinators.slurm);
    assert!(c.coordinators.accounts["physics"].contains("alice"));
}

/// A dpkg database in `root` that knows this machine's installed versions of the packages
/// sgpu's depend on (their records from `dpkg-query -s`, no files), with `edit` applied.
fn fake_dpkg_root(root: &Path, edit: impl Fn(String) -> String) {
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    let mut status = String::new();
    for p in DEPENDENCIES {
        let record = ok(Command::new("dpkg-query").args(["-s", p]));
        let arch = ok(Command::new("dpkg-query").args(["-W", "-f=${Architecture}", p]));
        std::fs::write(admin.join(format!("info/{p}.list")), "").unwrap();
        std::fs::write(admin.join(format!("info/{p}:{arch}.list")), "").unwrap();
        status.push_str(record.trim_end());
        status.push_str("\n\n");
    }
    std::fs::write(admin.join("status"), edit(status)).unwrap();
}

/// `dpkg --root=<root>` with its log inside the root and maintainer scripts run from this
/// machine with `DPKG_ROOT` set (ours touch only `$DPKG_ROOT` then).
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    // dpkg wants ldconfig and start-stop-daemon in PATH, which a user's PATH may lack
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin"))
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .args(["--force-script-chrootless", "--force-confold"]);
    cmd
}

#[test]
fn deb_packages_declare_contents_and_install_with_dpkg() {
    let build = snapshot();
    let out_dir = tempfile::tempdir().unwrap();
    ok(&mut make(
        &build,
        &[
            "deb",
            "PROFILE=debug",
            "DEB_COMPRESS=none",
            &format!("DEB_OUT={}", out_dir.path().display()),
        ],
    ));
    let ver = version();
    let arch = ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_string();
    // sgpu-node carries the SPANK plugin: its version names the Slurm release it was built for
    let (major, minor) = slurm_headers_release();
    let node_ver = format!("{ver}+slurm{major}.{minor:02}");
    let pkg_ver = |p: &str| {
        if p == "sgpu-node" {
            node_ver.clone()
        } else {
            ver.clone()
        }
    };
    let debs: BTreeMap<&str, PathBuf> = PACKAGES
        .iter()
        .map(|p| {
            let file = format!("{p}_{}_{arch}.deb", pkg_ver(p));
            (*p, out_dir.path().join(file))
        })
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = debs
        .values()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(names, want, "make deb leaves the packages and nothing else");

    let field = |p: &str, f: &str| {
        ok(Command::new("dpkg-deb").arg("--field").arg(&debs[p]).arg(f))
            .trim()
            .to_string()
    };
    let node_depends = field("sgpu-node", "Depends");
    assert!(
        node_depends.contains(&format!(
            "slurmd (>= {major}.{minor:02}) | slurm-smd-slurmd (>= {major}.{minor:02}), \
             slurmd (<< {major}.{:02}) | slurm-smd-slurmd (<< {major}.{:02})",
            minor + 1,
            minor + 1
        )),
        "sgpu-node pins the Slurm release of the headers the plugin was built with: {node_depends}"
    );
    for p in ["sgpu-node", "sgpu-head"] {
        assert!(
            field(p, "Depends").contains(&format!("sgpu-common (= {ver})")),
            "{p} depends on the same sgpu-common"
        );
        assert!(field(p, "Depends").contains("libmunge2"));
    }
    assert!(field("sgpu-head", "Depends").contains("munge"));
    assert_eq!(field("sgpu-common", "Version"), ver);
    assert_eq!(field("sgpu-head", "Version"), ver);
    assert_eq!(field("sgpu-node", "Version"), node_ver);
    assert!(
        field("sgpu-node", "Description").contains(&format!("+slurm{major}.{minor:02}")),
        "the description explains the version suffix"
    );

    // data: paths and modes, owned by root; state directories come from postinst
    let contents = |p: &str| -> BTreeMap<String, String> {
        ok(Command::new("dpkg-deb").arg("--contents").arg(&debs[p]))
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(cols[1], "root/root", "{p}: {l}");
                (
                    cols[5].trim_start_matches('.').to_string(),
                    cols[0].to_string(),
                )
            })
            .collect()
    };
    let as_map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        contents("sgpu-common"),
        as_map(&[
            ("/etc/sgpu/sgpu.toml", "-rw-r--r--"),
            ("/usr/bin/sgpu", "-rwxr-xr-x"),
            ("/usr/lib/sgpu/libnvml_sim.so", "-rw-r--r--")
        ])
    );
    assert_eq!(
        contents("sgpu-node"),
        as_map(&[
            ("/lib/systemd/system/sgpu-healthd.service", "-rw-r--r--"),
            ("/usr/lib/slurm/spank_sgpu.so", "-rw-r--r--"),
            ("/usr/sbin/sgpu-epilog", "-rwxr-xr-x"),
            ("/usr/sbin/sgpu-healthd", "-rwxr-xr-x"),
            ("/usr/sbin/sgpu-prolog", "-rwxr-xr-x"),
        ])
    );
    assert_eq!(
        contents("sgpu-head"),
        as_map(&[
            ("/lib/systemd/system/sgpu-acctd.service", "-rw-r--r--"),
            ("/usr/sbin/sgpu-acctd", "-rwxr-xr-x"),
        ])
    );
    let info = |p: &str| ok(Command::new("dpkg-deb").arg("--info").arg(&debs[p]));
    assert!(info("sgpu-common").contains("conffiles"));
    for p in ["sgpu-node", "sgpu-head"] {
        let i = info(p);
        for s in ["postinst", "prerm", "postrm"] {
            assert!(i.contains(&format!("*  {s}")), "{p}: executable {s}: {i}");
        }
    }

    // install into an empty root whose dpkg database knows this machine's slurmd, munge...
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path();
    fake_dpkg_root(root, |s| s);
    ok(dpkg(root).arg("-i").args(debs.values()));
    let listed = ok(dpkg(root).args(["-l"]).args(PACKAGES));
    for p in PACKAGES {
        assert!(
            listed.lines().any(|l| l.starts_with("ii") && l.contains(p)),
            "{p} installed and configured: {listed}"
        );
    }
    let t = tree(root);
    assert_eq!(t.get("/var/lib/sgpu"), Some(&0o700), "postinst made it");
    assert_eq!(t.get("/var/spool/sgpu"), Some(&0o700), "postinst made it");
    assert_eq!(
        ok(dpkg(root).args(["-S", "/etc/sgpu/sgpu.toml"])).trim(),
        "sgpu-common: /etc/sgpu/sgpu.toml"
    );
    let status = ok(dpkg(root).args(["-s", "sgpu-common"]));
    assert!(
        status.contains("Conffiles:\n /etc/sgpu/sgpu.toml "),
        "{status}"
    );
    let syms = exported(&root.join("usr/lib/slurm/spank_sgpu.so"));
    assert!(
        syms.iter().any(|s| s == "plugin_version"),
        "stripped plugin keeps its exports"
    );
    check_exec_start(
        root,
        "/lib/systemd/system/sgpu-healthd.service",
        "/usr/sbin/sgpu-healthd",
    );
    check_exec_start(
        root,
        "/lib/systemd/system/sgpu-acctd.service",
        "/usr/sbin/sgpu-acctd",
    );
    verify_units(
        root,
        &[
            "/lib/systemd/system/sgpu-healthd.service",
            "/lib/systemd/system/sgpu-acctd.service",
        ],
    );
    // the acctd unit's flags as the unit expands them are ones sgpu-acctd accepts
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/sgpu-acctd.service")).unwrap();
    let mut exec = unit_values(&unit, "ExecStart").remove(0);
    for env in unit_values(&unit, "Environment") {
        let (k, v) = env.trim_matches('"').split_once('=').unwrap();
        exec = exec
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    let mut words = exec.split_whitespace();
    let program = root.join(&words.next().unwrap()[1..]);
    let args: Vec<&str> = words.collect();
    assert!(args.contains(&"--ingest-uid"), "{args:?}");
    ok(Command::new(&program).args(&args).arg("--help"));

    // an admin's edit of the conffile survives reinstalling; removing keeps config and data
    let conf = root.join("etc/sgpu/sgpu.toml");
    std::fs::write(&conf, "nvml_timeout_ms = 1234\n").unwrap();
    std::fs::write(root.join("var/spool/sgpu/record"), "x").unwrap();
    ok(dpkg(root).arg("-i").args(debs.values()));
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "nvml_timeout_ms = 1234\n"
    );
    ok(dpkg(root).args(["--purge", "sgpu-node", "sgpu-head"]));
    ok(dpkg(root).args(["--remove", "sgpu-common"]));
    assert!(!root.join("usr/sbin/sgpu-healthd").exists());
    assert!(!root.join("usr/bin/sgpu").exists());
    assert!(conf.exists(), "remove (not purge) keeps the conffile");
    assert!(
        root.join("var/spool/sgpu/record").exists(),
        "records not yet forwarded survive even a purge"
    );

    // SchedMD's packages (slurm-smd-slurmd) of the plugin's release satisfy sgpu-node too
    let smd_dir = tempfile::tempdir().unwrap();
    let smd = smd_dir.path();
    fake_dpkg_root(smd, |s| {
        s.replace("Package: slurmd\n", "Package: slurm-smd-slurmd\n")
    });
    let out = run(dpkg(smd).arg("-i").args(debs.values()));
    assert!(
        out.status.success(),
        "slurm-smd-slurmd {major}.{minor:02} satisfies sgpu-node: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a machine whose slurmd is another Slurm release: sgpu-node refuses to configure
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path();
    let next = format!("{major}.{:02}.1-1", minor + 1);
    fake_dpkg_root(other, |s| {
        let mut out = String::new();
        let mut in_slurmd = false;
        for l in s.lines() {
            if let Some(p) = l.strip_prefix("Package: ") {
                in_slurmd = p == "slurmd";
            }
            if in_slurmd && l.starts_with("Version: ") {
                out.push_str(&format!("Version: {next}\n"));
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    });
    let out = run(dpkg(other).arg("-i").args(debs.values()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "slurmd {next} must not satisfy sgpu-node"
    );
    assert!(
        stderr.contains(&format!(
            "sgpu-node depends on slurmd (<< {major}.{:02})",
            minor + 1
        )),
        "{stderr}"
    );
}

/// Kills the sandboxed acctd when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acctd_works_inside_its_units_sandbox() {
    // munged (the system's, which the test cluster uses) must answer and stay up
    let cluster = sgpu_tests::Cluster::up().unwrap();
    let _lock = cluster.lock_shared().unwrap();
    let build = snapshot();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&mut make(
        &build,
        &[
            "install-head",
            "PROFILE=debug",
            &format!("DESTDIR={}", root.display()),
        ],
    ));
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/sgpu-acctd.service")).unwrap();
    // the sandbox this test recreates is the one the unit asks for
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("StateDirectory", "sgpu"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(unit_values(&unit, key), [want], "{key}= in the unit");
    }

    // the unit's command line, expanded as systemd would, on a free port and a private
    // state directory standing in for /var/lib/sgpu
    let mut exec = unit_values(&unit, "ExecStart").remove(0);
    for env in unit_values(&unit, "Environment") {
        let (k, v) = env.trim_matches('"').split_once('=').unwrap();
        exec = exec
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut words = exec.split_whitespace().map(str::to_owned);
    let program = root.join(&words.next().unwrap()[1..]);
    let mut args: Vec<String> = words.collect();
    for (flag, value) in [
        ("--listen", format!("127.0.0.1:{port}")),
        ("--db", state.join("acctd.sled").display().to_string()),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value;
    }

    // ProtectSystem=strict + the state directory: everything read-only but the state
    // directory; CapabilityBoundingSet= and NoNewPrivileges=yes: no capabilities at all
    let script = r#"
        set -e
        mount --bind "$1" "$1"
        mount -o remount,bind,ro /
        if touch /usr/.sgpu-sandbox-probe 2>/dev/null; then
            rm -f /usr/.sgpu-sandbox-probe; echo "/usr is writable: no sandbox" >&2; exit 97
        fi
        shift
        exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all --ambient-caps=-all "$@"
    "#;
    let log = tmp.path().join("acctd.log");
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&state)
        .arg(&program)
        .args(&args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("acctd.err")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "sgpu-acctd in the sandbox exited ({status}): {}",
                std::fs::read_to_string(tmp.path().join("acctd.err")).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    for line in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(line), "acctd runs with {line}: {status}");
    }

    // root sends a record with a MUNGE credential (munged's socket reachable from the
    // read-only /run) and acctd stores it (its database writable)
    let client = sgpu_acct_client::Client::new(
        &format!("http://{addr}"),
        sgpu_acct_client::ClientAuth::Munge { socket: None },
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let (start_ms, end_ms) = (1_709_254_800_000u64, 1_709_262_000_000u64);
    let body = sgpu_spool::JobEnd {
        user: "root".into(),
        uid: 0,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start_ms,
        end_time: end_ms,
        gpus: vec![sgpu_spool::GpuEnd {
            index: 0,
            uuid: "GPU-node1-0".into(),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            energy_start_mj: Some(0),
            energy_end_mj: Some(1000),
            energy_delta_mj: Some(1000),
            mig: None,
        }],
        allocated_gpu_ms: end_ms - start_ms,
        exit: None,
        slurm_window: None,
    };
    let id =
        sgpu_spool::RecordId::new("sgpu-pkg", 7, None, "node1", sgpu_spool::RecordKind::JobEnd)
            .unwrap();
    let record = sgpu_spool::Record::new(id, end_ms, sgpu_spool::RecordBody::JobEnd(body)).unwrap();
    let reply = client
        .post_records(&serde_json::to_vec(&[record]).unwrap())
        .unwrap();
    assert_eq!(reply.accepted, 1, "{:?}", reply.results);
    let job = client.get_json("/v1/jobs/sgpu-pkg/7").unwrap();
    assert!(job.to_string().contains("physics"), "{job}");
    assert!(
        std::fs::read_dir(state.join("acctd.sled")).unwrap().count() > 0,
        "the database is in the state directory"
    );
}
