//! `sgpu conf check` as a process: a consistent node configuration passes, and each
//! inconsistency an admin can make is reported with its id, its file:line and a fix.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nvml_sim::{STATE_ENV, State};
use serde_json::Value;

/// The installed Slurm's version as the tests pretend it to be.
const SLURM_VERSION: &str = "22.05.8";
/// SLURM_VERSION_NUMBER of 22.05.8.
const PLUGIN_22_05: u32 = (22 << 16) | (5 << 8) | 8;

/// A node's configuration in a temporary directory, written by [`Site::write`].
struct Site {
    dir: tempfile::TempDir,
    /// slurm.conf lines after the common ones.
    slurm: Vec<String>,
    gres: String,
    plugstack: Option<String>,
    sgpu_toml_extra: String,
    /// GPUs the simulated NVML shows.
    nvml_gpus: u32,
    plugin_version: u32,
    /// What `--slurm-version` says runs.
    slurm_version: &'static str,
}

impl Site {
    /// A node `n1` with 2 GPUs, configured as install.md says.
    fn good() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        Site {
            slurm: vec![
                "GresTypes=gpu".into(),
                format!("Prolog={d}/bin/sgpu-prolog"),
                format!("Epilog={d}/hooks/epilog"),
                "SchedulerParameters=bf_continue,nohold_on_prolog_fail".into(),
                "NodeName=n1 CPUs=2 Gres=gpu:2".into(),
                "PartitionName=gpu Nodes=n1 Default=YES".into(),
            ],
            gres: format!("NodeName=n1 Name=gpu File={d}/dev/nvidia[0-1]\n"),
            plugstack: Some(format!(
                "optional {d}/lib/spank_sgpu.so default_health=WARN config={d}/sgpu.toml report=always\n"
            )),
            sgpu_toml_extra: String::new(),
            nvml_gpus: 2,
            plugin_version: PLUGIN_22_05,
            slurm_version: SLURM_VERSION,
            dir,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self) {
        let d = self.dir.path();
        for sub in ["bin", "hooks", "lib", "dev", "state", "spool"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for sub in ["state", "spool"] {
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        exe(&d.join("bin/sgpu-prolog"), "#!/bin/sh\nexit 0\n");
        exe(
            &d.join("hooks/epilog"),
            &format!("#!/bin/sh\nexec {}/bin/sgpu-epilog\n", d.display()),
        );
        let mut slurm = format!(
            "ClusterName=test\nSlurmctldHost=h\nPlugStackConfig={}/plugstack.conf\n",
            d.display()
        );
        for l in &self.slurm {
            slurm.push_str(l);
            slurm.push('\n');
        }
        std::fs::write(d.join("slurm.conf"), slurm).unwrap();
        std::fs::write(d.join("gres.conf"), &self.gres).unwrap();
        if let Some(p) = &self.plugstack {
            std::fs::write(d.join("plugstack.conf"), p).unwrap();
        }
        build_plugin(&d.join("lib/spank_sgpu.so"), self.plugin_version);
        let lib = nvml_sim::install_library(d).unwrap();
        std::fs::write(
            d.join("sgpu.toml"),
            format!(
                "nvml_library = {:?}\nnvml_timeout_ms = 3000\nstate_dir = {:?}\nspool_dir = {:?}\n{}",
                lib.display().to_string(),
                d.join("state").display().to_string(),
                d.join("spool").display().to_string(),
                self.sgpu_toml_extra
            ),
        )
        .unwrap();
        State::healthy(self.nvml_gpus)
            .save(d.join("nvml.toml"))
            .unwrap();
    }

    /// Writes the site, runs `sgpu conf check --json`; (exit code, findings).
    fn check(&self) -> (i32, Vec<Value>) {
        self.write();
        self.run()
    }

    /// Runs `sgpu conf check --json` on the site as it is; (exit code, findings).
    fn run(&self) -> (i32, Vec<Value>) {
        let d = self.dir.path();
        let out = Command::new(env!("CARGO_BIN_EXE_sgpu"))
            .args(["--config"])
            .arg(d.join("sgpu.toml"))
            .args([
                "conf",
                "check",
                "--json",
                "--node",
                "n1",
                "--slurm-version",
                self.slurm_version,
            ])
            .arg("--slurm-conf")
            .arg(d.join("slurm.conf"))
            .env(STATE_ENV, d.join("nvml.toml"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        let findings = v["findings"].as_array().cloned().unwrap_or_default();
        (out.status.code().unwrap(), findings)
    }
}

fn exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A shared library exporting `plugin_version` (what Slurm's plugin loader reads).
fn build_plugin(path: &Path, version: u32) {
    let src = path.with_extension("c");
    std::fs::write(
        &src,
        format!(
            "const char plugin_name[] = \"test\";\nconst char plugin_type[] = \"spank\";\n\
             const unsigned int plugin_version = {version}u;\n"
        ),
    )
    .unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(path)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed");
}

/// The ids of the findings at warn or error level (notes and the owner warning, which
/// depends on who runs the tests, left out).
fn ids(findings: &[Value]) -> BTreeSet<String> {
    findings
        .iter()
        .filter(|f| f["level"] != "note" && f["id"] != "dir.owner")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(findings: &'a [Value], id: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {findings:#?}"))
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_consistent_node_has_no_findings() {
    let _lock = nvml_sim::testing::lock();
    let site = Site::good();
    let (code, findings) = site.check();
    assert_eq!(ids(&findings), set(&[]), "{findings:#?}");
    if nix_root() {
        assert_eq!(code, 0, "{findings:#?}");
    }
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn missing_prolog_is_an_error_with_the_line_to_add() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.slurm.retain(|l| !l.starts_with("Prolog="));
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["prolog.missing"]));
    let f = find(&findings, "prolog.missing");
    assert_eq!(f["fix"], "Prolog=/usr/local/sbin/sgpu-prolog");
}

#[test]
fn epilog_that_does_not_run_sgpu_is_found_at_its_line() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    let other = site.path("bin/site-epilog");
    std::fs::create_dir_all(site.path("bin")).unwrap();
    exe(&other, "#!/bin/sh\nlogger done\n");
    for l in site.slurm.iter_mut() {
        if l.starts_with("Epilog=") {
            *l = format!("Epilog={}", other.display());
        }
    }
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["epilog.not_sgpu"]));
    let at = find(&findings, "epilog.not_sgpu")["at"]
        .as_str()
        .unwrap()
        .to_string();
    // ClusterName, SlurmctldHost, PlugStackConfig, GresTypes, Prolog, then Epilog: line 6.
    assert!(at.ends_with("slurm.conf:6"), "{at}");
}

#[test]
fn prolog_held_jobs_are_a_warning() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    for l in site.slurm.iter_mut() {
        if l.starts_with("SchedulerParameters=") {
            *l = "SchedulerParameters=bf_continue".into();
        }
    }
    let (_, findings) = site.check();
    assert_eq!(ids(&findings), set(&["scheduler.hold_on_prolog_fail"]));
    assert_eq!(
        find(&findings, "scheduler.hold_on_prolog_fail")["fix"],
        "SchedulerParameters=bf_continue,nohold_on_prolog_fail"
    );
}

#[test]
fn gres_conf_listing_more_gpus_than_slurm_conf_is_an_error() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.gres = format!(
        "NodeName=n1 Name=gpu File={}/dev/nvidia[0-2]\n",
        site.dir.path().display()
    );
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["gres.inconsistent"]));
}

#[test]
fn nvml_seeing_fewer_gpus_than_gres_conf_is_an_error() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.slurm = site
        .slurm
        .iter()
        .map(|l| l.replace("Gres=gpu:2", "Gres=gpu:8"))
        .collect();
    site.gres = format!(
        "NodeName=n1 Name=gpu File={}/dev/nvidia[0-7]\n",
        site.dir.path().display()
    );
    site.nvml_gpus = 7;
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["gpu.count"]));
    let p = find(&findings, "gpu.count")["problem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        p.contains("NVML sees 7 GPU(s)") && p.contains("give n1 8"),
        "{p}"
    );
}

#[test]
fn plugin_built_for_another_slurm_is_an_error() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.plugin_version = (21 << 16) | (8 << 8) | 6;
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["plugin.version"]));
    let p = find(&findings, "plugin.version")["problem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        p.contains("built for Slurm 21.08 but Slurm 22.05 runs here"),
        "{p}"
    );
    // listed `optional`: Slurm skips it without a word, and users lose its options
    assert!(p.contains("optional: silently skipped"), "{p}");
    assert!(p.contains("--gpu-health"), "{p}");
    // a plugin built for a newer Slurm (26.05) under 22.05 is the same error
    site.plugin_version = (26 << 16) | (5 << 8) | 3;
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    let p = find(&findings, "plugin.version")["problem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        p.contains("built for Slurm 26.05 but Slurm 22.05 runs here"),
        "{p}"
    );
    let fix = find(&findings, "plugin.version")["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix.contains("SLURM_INCLUDE_DIR"), "{fix}");
}

#[test]
fn several_prolog_lines_all_run_since_slurm_24_05() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    // the site's own prolog on a line after sgpu's
    let own = site.path("hooks/site-prolog");
    std::fs::create_dir_all(site.path("hooks")).unwrap();
    exe(&own, "#!/bin/sh\nexit 0\n");
    site.slurm.insert(2, format!("Prolog={}", own.display()));
    // 22.05: the last Prolog= wins, so sgpu-prolog never runs
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["prolog.not_sgpu"]));
    // 26.05 runs both lines: nothing to report
    site.slurm_version = "26.05.3";
    site.plugin_version = (26 << 16) | (5 << 8) | 3;
    let (code, findings) = site.check();
    assert_eq!(code, 0, "{findings:?}");
    // and sgpu-prolog on no line is still an error there
    site.slurm.remove(1);
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["prolog.not_sgpu"]));
}

#[test]
fn plugin_not_listed_or_missing_or_misconfigured() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.plugstack = Some("# nothing\n".into());
    assert_eq!(ids(&site.check().1), set(&["plugstack.no_plugin"]));

    let d = site.dir.path().display().to_string();
    site.plugstack = Some(format!("required {d}/lib/nope/spank_sgpu.so\n"));
    assert_eq!(ids(&site.check().1), set(&["plugin.missing"]));

    site.plugstack = Some(format!(
        "optional {d}/lib/spank_sgpu.so default_health=bogus config={d}/missing.toml reprot=always\n"
    ));
    assert_eq!(
        ids(&site.check().1),
        set(&[
            "plugin.config_missing",
            "plugin.default_health",
            "plugin.argument"
        ])
    );
}

#[test]
fn bad_sgpu_toml_names_its_line_and_key() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.sgpu_toml_extra = "check_intervall_s = 5\n".into();
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    // The node's sgpu.toml is also the plugin's config=, so both say so.
    assert_eq!(
        ids(&findings),
        set(&["sgpu_toml.invalid", "plugin.config_invalid"])
    );
    let p = find(&findings, "sgpu_toml.invalid")["problem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        p.contains("sgpu.toml:5") && p.contains("check_intervall_s"),
        "{p}"
    );
}

#[test]
fn world_writable_spool_is_an_error() {
    let _lock = nvml_sim::testing::lock();
    let site = Site::good();
    site.write();
    std::fs::set_permissions(site.path("spool"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, findings) = site.run();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["dir.world_writable"]));
    // group-writable: refused by the spool too, so an error as well
    std::fs::set_permissions(site.path("spool"), std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, findings) = site.run();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["dir.group_writable"]));
}

#[test]
fn gpus_without_gres_types_gpu_is_an_error() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.slurm.retain(|l| l != "GresTypes=gpu");
    let (code, findings) = site.check();
    assert_eq!(code, 2);
    assert_eq!(ids(&findings), set(&["gres.inconsistent"]));
    assert_eq!(find(&findings, "gres.inconsistent")["fix"], "GresTypes=gpu");
}

#[test]
fn autodetect_values_of_current_slurm_are_not_errors() {
    let _lock = nvml_sim::testing::lock();
    // nvidia (24.11), nrt and full (26.05): valid gres.conf, whatever the release here
    for value in ["nvidia", "nrt", "full"] {
        let mut site = Site::good();
        let d = site.dir.path().display().to_string();
        site.gres = format!("AutoDetect={value}\nNodeName=n1 Name=gpu File={d}/dev/nvidia[0-1]\n");
        let (_, findings) = site.check();
        let errors: Vec<&Value> = findings.iter().filter(|f| f["level"] == "error").collect();
        assert!(errors.is_empty(), "AutoDetect={value}: {errors:?}");
    }
    // a value no release knows is still an error
    let mut site = Site::good();
    let d = site.dir.path().display().to_string();
    site.gres = format!("AutoDetect=bogus\nNodeName=n1 Name=gpu File={d}/dev/nvidia[0-1]\n");
    let (code, findings) = site.check();
    assert_eq!(code, 2, "{findings:?}");
    assert!(
        findings.iter().any(|f| f["level"] == "error"
            && f["problem"]
                .as_str()
                .is_some_and(|p| p.contains("unknown AutoDetect value `bogus`"))),
        "{findings:?}"
    );
}

#[test]
fn mig_slices_count_as_slurm_counts_them() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    site.slurm = site
        .slurm
        .iter()
        .map(|l| l.replace("Gres=gpu:2", "Gres=gpu:1g.10gb:2,gpu:h100:1"))
        .collect();
    let d = site.dir.path().display().to_string();
    // GPU 0 split into GPU instances 7 and 8 (capability minors 3 + 9 x id), GPU 1 whole
    site.gres = format!(
        "NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles={d}/dev/nvidia0,{d}/dev/nvidia-caps/nvidia-cap66\n\
         NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles={d}/dev/nvidia0,{d}/dev/nvidia-caps/nvidia-cap75\n\
         NodeName=n1 Name=gpu Type=h100 File={d}/dev/nvidia1\n"
    );
    site.write();
    let split = |profiles: &'static [(&'static str, u32)]| {
        State::update(site.path("nvml.toml"), |s| {
            s.gpu_mut(0).unwrap().set_mig(profiles).unwrap();
        })
        .unwrap();
    };
    split(&[("1g.10gb", 7), ("1g.10gb", 8)]);
    let (_, findings) = site.run();
    assert!(!ids(&findings).contains("gpu.count"), "{findings:#?}");
    // a third slice made on the node, not in gres.conf: 4 devices for Slurm's 3
    split(&[("1g.10gb", 7), ("1g.10gb", 8), ("1g.10gb", 9)]);
    let (_, findings) = site.run();
    let p = find(&findings, "gpu.count")["problem"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        p.contains("NVML sees 4 GPU(s) and MIG slices (2 GPUs)") && p.contains("give n1 3"),
        "{p}"
    );
}

#[test]
fn active_checks_need_their_partition_time_limit_and_program() {
    let _lock = nvml_sim::testing::lock();
    let mut site = Site::good();
    let d = site.dir.path().display().to_string();
    std::fs::create_dir_all(site.path("bin")).unwrap();
    exe(&site.path("bin/site-check"), "#!/bin/sh\nexit 0\n");
    site.sgpu_toml_extra = format!(
        "[active]\npartition = \"maint\"\n[[active.check]]\nname = \"diag\"\n\
         command = [\"{d}/bin/site-check\"]\ninterval_h = 24\ndeadline_s = 600\n\
         [[active.check]]\nname = \"dcgm\"\ncommand = [\"{d}/bin/dcgmi\", \"diag\"]\n\
         interval_h = 24\ndeadline_s = 60\n"
    );
    // no maintenance partition, and dcgmi is not installed
    let (_, findings) = site.check();
    assert_eq!(
        ids(&findings),
        set(&["active.partition", "active.command"]),
        "{findings:#?}"
    );
    assert!(
        find(&findings, "active.command")["problem"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "active check dcgm: {d}/bin/dcgmi is not an executable"
            ))
    );
    // a partition of the same tier as the users', too short for the 600 s check
    exe(&site.path("bin/dcgmi"), "#!/bin/sh\nexit 0\n");
    site.slurm
        .push("PartitionName=maint Nodes=n1 MaxTime=10 Hidden=YES OverSubscribe=EXCLUSIVE".into());
    let (_, findings) = site.check();
    assert_eq!(
        ids(&findings),
        set(&["active.priority", "active.max_time"]),
        "{findings:#?}"
    );
    assert_eq!(
        find(&findings, "active.max_time")["fix"],
        "MaxTime=11 or more"
    );
    // as docs/operations.md says: no findings
    site.slurm.pop();
    site.slurm.push(
        "PartitionName=maint Nodes=n1 MaxTime=0-00:11:00 Hidden=YES PriorityTier=0 \
         OverSubscribe=EXCLUSIVE AllowGroups=root"
            .into(),
    );
    let (_, findings) = site.check();
    assert_eq!(ids(&findings), set(&[]), "{findings:#?}");
}
