//! sgpu installed in the test cluster, as an admin would install it on every node.
//!
//! The cluster's `Prolog=`/`Epilog=` hooks (written by `tests/cluster/up`) run
//! `$SGPU_CLUSTER_DIR/sgpu/bin/sgpu-{prolog,epilog}` with the node's own
//! `sgpu/nodes/<node>/sgpu.toml` and simulated GPUs (`nvml.toml`, read by the simulated
//! `libnvidia-ml.so.1` in `sgpu/lib`). [`install`] builds and copies the binaries and writes
//! those files; every node starts with healthy GPUs.

use std::path::{Path, PathBuf};
use std::process::Command;

use nvml_sim::State;

use crate::cluster::{Cluster, ClusterError};

/// GPUs per node in the test cluster (as `tests/cluster/up` configures it by default).
pub const GPUS_PER_NODE: u32 = 4;

/// The binaries installed into the cluster.
pub const BINARIES: &[&str] = &["sgpu-prolog", "sgpu-epilog"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cargo target directory and profile this test binary was built in
/// (`target/<profile>/deps/<test>` -> (`target/<profile>`, `<profile>`)).
fn target_profile_dir() -> Result<(PathBuf, String), ClusterError> {
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .ok_or_else(|| ClusterError::Parse {
            cmd: "current_exe".into(),
            detail: format!("cannot find the target directory from {}", exe.display()),
        })?;
    let profile = dir
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    Ok((dir.to_path_buf(), profile))
}

/// Builds the sgpu binaries with the same cargo and profile as this test (a no-op when they
/// are fresh) and returns the directory holding them.
fn build_binaries() -> Result<PathBuf, ClusterError> {
    let (dir, profile) = target_profile_dir()?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(crate::cluster::repo_root()).args([
        "build",
        "--quiet",
        "-p",
        "sgpu-prolog-epilog",
        "--bins",
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
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| ClusterError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(dir)
}

/// Copies `src` to `dst` so that a process executing the old `dst` is never disturbed.
fn replace_file(src: &Path, dst: &Path) -> Result<(), ClusterError> {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dst).map_err(io(dst))
}

/// Where sgpu lives in the cluster.
pub fn sgpu_dir(cluster: &Cluster) -> PathBuf {
    cluster.dir().join("sgpu")
}

/// One node's sgpu files.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node's directory.
    pub dir: PathBuf,
    /// Its `sgpu.toml`.
    pub config: PathBuf,
    /// Its simulated GPUs.
    pub nvml_state: PathBuf,
    /// Its `state_dir` (XID store, job notes).
    pub state_dir: PathBuf,
    /// Its spool.
    pub spool_dir: PathBuf,
}

/// The files of `node`.
pub fn node_files(cluster: &Cluster, node: &str) -> NodeFiles {
    let dir = sgpu_dir(cluster).join("nodes").join(node);
    NodeFiles {
        config: dir.join("sgpu.toml"),
        nvml_state: dir.join("nvml.toml"),
        state_dir: dir.join("state"),
        spool_dir: dir.join("spool"),
        dir,
    }
}

/// A stable seed per node name, so UUIDs are the same on every run.
fn seed_for(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Installs sgpu into the cluster: binaries, the simulated NVML library, and for every node a
/// configuration and healthy simulated GPUs. Call with no test running (inside `up`'s lock).
pub fn install(cluster: &Cluster) -> Result<(), ClusterError> {
    let built = build_binaries()?;
    let root = sgpu_dir(cluster);
    let bin = root.join("bin");
    let lib = root.join("lib");
    for d in [&bin, &lib] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    for b in BINARIES {
        replace_file(&built.join(b), &bin.join(b))?;
    }
    // stage the library, then rename it into place: a process that has the old file mapped
    // keeps its copy intact
    let stage = built.join("sgpu-nvml-sim");
    std::fs::create_dir_all(&stage).map_err(io(&stage))?;
    let staged = nvml_sim::install_library(&stage).map_err(|e| ClusterError::Parse {
        cmd: "nvml_sim::install_library".into(),
        detail: e.to_string(),
    })?;
    let library = lib.join(nvml_sim::LIBRARY_NAME);
    replace_file(&staged, &library)?;

    for node in cluster.nodes()? {
        let f = node_files(cluster, &node);
        for d in [&f.dir, &f.state_dir, &f.spool_dir] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let config = format!(
            "# sgpu on test-cluster node {node} (written by sgpu_tests::sgpu::install)\n\
             nvml_library = \"{}\"\n\
             nvml_timeout_ms = 2000\n\
             state_dir = \"{}\"\n\
             spool_dir = \"{}\"\n",
            library.display(),
            f.state_dir.display(),
            f.spool_dir.display(),
        );
        std::fs::write(&f.config, config).map_err(io(&f.config))?;
        reset_gpus(cluster, &node)?;
    }
    Ok(())
}

/// Gives `node` healthy simulated GPUs again (same UUIDs as before) and forgets its XIDs.
pub fn reset_gpus(cluster: &Cluster, node: &str) -> Result<(), ClusterError> {
    let f = node_files(cluster, node);
    let state = State::healthy_seeded(GPUS_PER_NODE, seed_for(node));
    state.save(&f.nvml_state).map_err(|e| ClusterError::Parse {
        cmd: "nvml_sim::State::save".into(),
        detail: e.to_string(),
    })?;
    let store = f.state_dir.join("xid-state.toml");
    match std::fs::remove_file(&store) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&store)(e)),
    }
}

/// Changes `node`'s simulated GPUs (energy counters stay continuous).
pub fn update_gpus(
    cluster: &Cluster,
    node: &str,
    edit: impl FnOnce(&mut State),
) -> Result<(), ClusterError> {
    let f = node_files(cluster, node);
    State::update(&f.nvml_state, edit)
        .map(|_| ())
        .map_err(|e| ClusterError::Parse {
            cmd: "nvml_sim::State::update".into(),
            detail: e.to_string(),
        })
}
