use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/sgpu/sgpu.toml"))
}

#[test]
fn empty_file_is_defaults() {
    let c = parse("").unwrap();
    assert_eq!(
        c.nvml_timeout,
        Duration::from_millis(DEFAULT_NVML_TIMEOUT_MS)
    );
    assert!(!c.fail_closed && c.nvml_library.is_none() && c.pinned_driver_version.is_none());
    assert!(c.slurm_job_times);
    assert_eq!(c.catalogue(), Catalogue::default());
}

#[test]
fn full_file() {
    let c = parse(
        r#"
nvml_library = "/opt/nvidia/libnvidia-ml.so.1"
nvml_timeout_ms = 1500
pinned_driver_version = "550.54.15"
fail_closed = true
slurm_job_times = false
state_dir = "/tmp/sgpu-state"

[checks."gpu.temperature"]
severity = "warn"
margin_c = 5

[checks."gpu.leftover_processes"]
max_memory_used_mib = 2048.5

[checks."gpu.persistence_mode"]
enabled = false

[checks."gpu.pcie_link"]
enforce = true
"#,
    )
    .unwrap();
    assert_eq!(
        c.nvml_library.as_deref(),
        Some(Path::new("/opt/nvidia/libnvidia-ml.so.1"))
    );
    assert_eq!(c.nvml_timeout, Duration::from_millis(1500));
    assert_eq!(c.pinned_driver_version.as_deref(), Some("550.54.15"));
    assert!(c.fail_closed);
    assert!(!c.slurm_job_times);
    assert_eq!(c.state_dir, PathBuf::from("/tmp/sgpu-state"));
    let cat = c.catalogue();
    let t = cat.get("gpu.temperature").unwrap();
    assert_eq!((t.severity, t.threshold("margin_c")), (Severity::Warn, 5.0));
    assert_eq!(
        cat.get("gpu.leftover_processes")
            .unwrap()
            .threshold("max_memory_used_mib"),
        2048.5
    );
    assert!(!cat.get("gpu.persistence_mode").unwrap().enabled);
    assert!(c.enforce && cat.get("gpu.lost").unwrap().enforce);
    // observe-only: the node's default, and one check's own setting over it
    let c = parse("enforce = false\n[checks.\"gpu.pcie_link\"]\nenforce = true\n").unwrap();
    let cat = c.catalogue();
    assert!(!c.enforce && !cat.get("gpu.lost").unwrap().enforce);
    assert!(cat.get("gpu.pcie_link").unwrap().enforce);
    let e = parse("[checks.\"gpu.lost\"]\nenforce = \"no\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2: checks.\"gpu.lost\".enforce"), "{e}");
}

#[test]
fn daemon_keys() {
    let c = parse("").unwrap();
    assert_eq!(c.node_name, None);
    assert_eq!(c.check_interval, Duration::from_secs(30));
    assert_eq!(c.resume_after, 3);
    assert_eq!(c.breaker, BreakerConfig::default());
    assert_eq!((c.breaker.max_fraction, c.breaker.min_nodes), (0.10, 1));
    let c = parse(
        "node_name = \"gpu-07\"\ncheck_interval_s = 2\nresume_after = 0\n\
         breaker_max_fraction = 0.25\nbreaker_min_nodes = 2\n",
    )
    .unwrap();
    assert_eq!(c.node_name.as_deref(), Some("gpu-07"));
    assert_eq!(c.check_interval, Duration::from_secs(2));
    assert_eq!(c.resume_after, 0);
    assert_eq!(
        c.breaker,
        BreakerConfig {
            max_fraction: 0.25,
            min_nodes: 2,
        }
    );
    assert_eq!(c.sample_interval, Duration::from_secs(10));
    assert_eq!(c.status_listen, "127.0.0.1:9411".parse().ok());
    let c = parse("sample_interval_s = 1\nstatus_listen = \"127.0.0.1:19411\"\n").unwrap();
    assert_eq!(c.sample_interval, Duration::from_secs(1));
    assert_eq!(c.status_listen, "127.0.0.1:19411".parse().ok());
    assert_eq!(
        parse("status_listen = \"off\"").unwrap().status_listen,
        None
    );
    let e = err("\nsample_interval_s = 0\n");
    assert!(
        e.contains(":2: sample_interval_s: 0 is out of range"),
        "{e}"
    );
    let e = err("status_listen = \"localhost\"\n");
    assert!(
        e.contains(":1: status_listen: \"localhost\" is not an address"),
        "{e}"
    );
    let e = err("check_interval_s = 0\n");
    assert!(e.contains(":1: check_interval_s: 0 is out of range"), "{e}");
    let e = err("\nbreaker_max_fraction = 1.5\n");
    assert!(
        e.contains(":2: breaker_max_fraction: 1.5 is out of range"),
        "{e}"
    );
    let e = err("breaker_window_s = 3600\n");
    assert!(e.contains(":1: breaker_window_s: is no longer read"), "{e}");
    let e = err("node_name = \"a b\"\n");
    assert!(
        e.contains("node_name: \"a b\" is not a Slurm node name"),
        "{e}"
    );
    let e = err("resume_after = -1\n");
    assert!(e.contains(":1: "), "{e}");
    let e = err("breaker_fraction = 0.1\n");
    assert!(e.contains("breaker_fraction"), "{e}");
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_top_level_key_names_file_line_and_key() {
    let e = err("fail_closed = true\nnvml_timeout = 3\n");
    assert!(e.starts_with("/etc/sgpu/sgpu.toml:2: "), "{e}");
    assert!(e.contains("nvml_timeout"), "{e}");
}

#[test]
fn unknown_check_id_lists_valid_ids() {
    let e = err("\n[checks.\"gpu.temp\"]\nseverity = \"warn\"\n");
    assert!(
        e.starts_with("/etc/sgpu/sgpu.toml:2: checks.\"gpu.temp\": unknown check id"),
        "{e}"
    );
    assert!(
        e.contains("gpu.temperature") && e.contains("gpu.xid"),
        "{e}"
    );
}

#[test]
fn unknown_threshold_lists_valid_keys() {
    let e = err("[checks.\"gpu.temperature\"]\nmargin = 5\n");
    assert!(
        e.starts_with("/etc/sgpu/sgpu.toml:2: checks.\"gpu.temperature\".margin"),
        "{e}"
    );
    assert!(e.contains("severity, enabled, enforce, margin_c"), "{e}");
}

#[test]
fn bad_values() {
    let e = err("[checks.\"gpu.xid\"]\n\nseverity = \"panic\"\n");
    assert!(
        e.starts_with("/etc/sgpu/sgpu.toml:3: checks.\"gpu.xid\".severity"),
        "{e}"
    );
    assert!(e.contains("\"drain\", \"warn\", \"info\", \"off\""), "{e}");
    let e = err("[checks.\"gpu.xid\"]\nenabled = \"yes\"\n");
    assert!(e.contains(":2: ") && e.contains("not a boolean"), "{e}");
    let e = err("[checks.\"gpu.temperature\"]\nmargin_c = \"5\"\n");
    assert!(e.contains(":2: ") && e.contains("not a number"), "{e}");
    let e = err("[checks.\"gpu.temperature\"]\nmargin_c = -1\n");
    assert!(e.contains("negative"), "{e}");
    let e = err("nvml_timeout_ms = 0\n");
    assert!(e.contains(":1: nvml_timeout_ms: 0 is out of range"), "{e}");
    let e = err("fail_closed = 1\n");
    assert!(e.contains(":1: ") && e.contains("bool"), "{e}");
    let e = err("pinned_driver_version = \" \"\n");
    assert!(e.contains("pinned_driver_version: empty"), "{e}");
    let e = err("[checks\n");
    assert!(e.starts_with("/etc/sgpu/sgpu.toml:1: "), "{e}");
}

#[test]
fn locate_prefers_explicit_then_env_then_default() {
    let (p, required) = Config::locate(Some(Path::new("/x.toml")));
    assert_eq!((p, required), (PathBuf::from("/x.toml"), true));
    // The environment is not touched here (tests run in parallel); with it unset the
    // default applies and may be absent.
    if std::env::var_os(CONFIG_ENV).is_none() {
        assert_eq!(Config::locate(None), (PathBuf::from(DEFAULT_PATH), false));
    }
}

#[test]
fn untrusted_config_or_library_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::write(&lib, "").unwrap();
    let conf = dir.path().join("sgpu.toml");
    std::fs::write(&conf, format!("nvml_library = \"{}\"\n", lib.display())).unwrap();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(&conf, 0o644);
    mode(&lib, 0o755);
    assert!(Config::load(&conf).is_ok());
    mode(&conf, 0o666);
    let e = Config::load(&conf).unwrap_err().to_string();
    assert!(
        e.contains("sgpu.toml: the file is group- or world-writable (mode 666)"),
        "{e}"
    );
    mode(&conf, 0o644);
    mode(&lib, 0o775);
    let e = Config::load(&conf).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("refusing {}: ", conf.display())),
        "{e}"
    );
    assert!(
        e.contains("libnvidia-ml.so.1: the file is group- or world-writable"),
        "{e}"
    );
    // a library that is not there is left to NVML's own error
    std::fs::remove_file(&lib).unwrap();
    assert!(Config::load(&conf).is_ok());
}

#[test]
fn discover_applies_the_same_trust_checks_as_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::write(&lib, "").unwrap();
    let conf = dir.path().join("sgpu.toml");
    std::fs::write(&conf, format!("nvml_library = \"{}\"\n", lib.display())).unwrap();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(&conf, 0o644);
    mode(&lib, 0o755);
    let c = Config::discover(Some(&conf)).unwrap();
    assert_eq!(c.nvml_library.as_deref(), Some(lib.as_path()));
    // a group-writable configuration
    mode(&conf, 0o664);
    let e = Config::discover(Some(&conf)).unwrap_err();
    assert!(matches!(e, ConfigError::Untrusted { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("sgpu.toml: the file is group- or world-writable (mode 664)"),
        "{e}"
    );
    // a trusted configuration naming a group-writable NVML library
    mode(&conf, 0o644);
    mode(&lib, 0o775);
    let e = Config::discover(Some(&conf)).unwrap_err();
    assert!(matches!(e, ConfigError::Untrusted { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("libnvidia-ml.so.1: the file is group- or world-writable"),
        "{e}"
    );
    // both trusted again
    mode(&lib, 0o755);
    assert!(Config::discover(Some(&conf)).is_ok());
}

#[test]
fn discover_missing_explicit_file_is_an_error() {
    let e = Config::discover(Some(Path::new("/nonexistent/sgpu.toml"))).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/sgpu.toml: "), "{e}");
}
