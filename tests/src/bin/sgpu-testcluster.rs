//! `sgpu-testcluster`: brings up the test cluster (`tests/cluster/up`) and installs sgpu
//! into it with healthy simulated GPUs, exactly as the Rust tests do; and changes the
//! simulated GPUs and the nodes' healthd by hand, for the demo and for trying things.

use std::process::ExitCode;

use sgpu_tests::{Cluster, ClusterError, sgpu};

const USAGE: &str = "usage (as root; stop the cluster with tests/cluster/down):
  sgpu-testcluster up                          bring the cluster up with sgpu installed
  sgpu-testcluster gpu NODE xid GPU CODE       inject an XID into NODE's simulated GPU
  sgpu-testcluster gpu NODE ecc GPU COUNT      set GPU's volatile uncorrectable ECC errors
  sgpu-testcluster gpu NODE util PERCENT       set every GPU's utilization
  sgpu-testcluster gpu NODE nvlink GPU N [L,..] GPU gets N NVLink links (0: none), links L.. down
  sgpu-testcluster gpu NODE heal               healthy GPUs again, XID history cleared
  sgpu-testcluster gpu NODE capture FILE       NODE's GPUs become those of a real capture
                                               (nvidia-smi -q -x or nvidia-smi -q output)
  sgpu-testcluster healthd start|stop NODE     start or stop NODE's sgpu-healthd
  sgpu-testcluster acctd start|stop            the cluster's sgpu-acctd (MUNGE, 127.0.0.1:16830),
                                               with every node's healthd forwarding to it";

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{what} must be a number, got {s:?}"))
}

fn run(args: &[&str]) -> Result<(), String> {
    let err = |e: ClusterError| e.to_string();
    match args {
        ["up"] => {
            let cluster = Cluster::up().map_err(err)?;
            let dir = sgpu::sgpu_dir(&cluster);
            println!("test cluster up with sgpu installed in {}", dir.display());
            println!("  talk to it:       source {}/env", cluster.dir().display());
            println!(
                "  simulated GPUs:   {}/nodes/<node>/nvml.toml",
                dir.display()
            );
            println!(
                "  job records:      {}/nodes/<node>/spool/new/",
                dir.display()
            );
            Ok(())
        }
        ["gpu", node, change @ ..] => {
            let cluster = Cluster::existing().map_err(err)?;
            match change {
                ["xid", gpu, code] => {
                    let (gpu, code) = (number("GPU", gpu)?, number("XID", code)?);
                    sgpu::update_gpus(&cluster, node, |s| {
                        s.inject_xid(gpu, code);
                    })
                    .map_err(err)
                }
                ["ecc", gpu, count] => {
                    let (gpu, count): (u32, u64) = (number("GPU", gpu)?, number("COUNT", count)?);
                    let mut found = false;
                    sgpu::update_gpus(&cluster, node, |s| {
                        for g in s.gpus.iter_mut().filter(|g| g.index == gpu) {
                            g.ecc.volatile_uncorrected = count;
                            found = true;
                        }
                    })
                    .map_err(err)?;
                    found
                        .then_some(())
                        .ok_or(format!("{node} has no GPU {gpu}"))
                }
                ["util", pct] => {
                    let pct: u32 = number("PERCENT", pct)?;
                    sgpu::update_gpus(&cluster, node, |s| {
                        for g in &mut s.gpus {
                            g.utilization_gpu = Some(pct.min(100));
                        }
                    })
                    .map_err(err)
                }
                ["nvlink", gpu, links, down @ ..] if down.len() <= 1 => {
                    let (gpu, links): (u32, u32) = (number("GPU", gpu)?, number("N", links)?);
                    let mut inactive = Vec::new();
                    for l in down.iter().flat_map(|d| d.split(',')) {
                        inactive.push(number::<u32>("link", l)?);
                    }
                    let nv = (links > 0).then(|| nvml_sim::nvlink::NvLink {
                        links,
                        inactive,
                        errors: Vec::new(),
                    });
                    if let Some(e) = nv.as_ref().map(|n| n.validate()).and_then(Result::err) {
                        return Err(e);
                    }
                    let mut found = false;
                    sgpu::update_gpus(&cluster, node, |s| {
                        if let Some(g) = s.gpu_mut(gpu) {
                            g.nvlink = nv;
                            found = true;
                        }
                    })
                    .map_err(err)?;
                    found
                        .then_some(())
                        .ok_or(format!("{node} has no GPU {gpu}"))
                }
                ["heal"] => sgpu::reset_gpus(&cluster, node).map_err(err),
                ["capture", file] => {
                    let capture = nvml_sim::Capture::load(file).map_err(|e| e.to_string())?;
                    let mut state = capture.state;
                    // the energy counters start now (no capture has them)
                    state.epoch = Some(nvml_sim::unix_now());
                    // the test node's gres.conf names /dev/nvidia0..N-1: the minor numbers
                    // follow the capture's GPU order (the real machine's may differ)
                    for g in &mut state.gpus {
                        g.minor_number = Some(g.index);
                    }
                    let path = sgpu::node_files(&cluster, node).nvml_state;
                    state.save(&path).map_err(|e| e.to_string())?;
                    for n in &capture.notes {
                        println!("note: {n}");
                    }
                    let (have, want) = (state.gpus.len(), sgpu::gpus_of(&cluster, node));
                    println!("{node}: {have} GPUs from {file} ({})", path.display());
                    if have != want as usize {
                        println!(
                            "note: gres.conf declares {want} GPUs on {node}: gpu.count will fail \
                             (bring up a cluster with SGPU_CLUSTER_GPUS={have})"
                        );
                    }
                    Ok(())
                }
                _ => Err(USAGE.into()),
            }
        }
        ["healthd", "start", node] => {
            let cluster = Cluster::existing().map_err(err)?;
            sgpu::start_healthd(&cluster, node).map_err(err)
        }
        ["healthd", "stop", node] => {
            let cluster = Cluster::existing().map_err(err)?;
            sgpu::stop_healthd(&cluster, node).map_err(err)
        }
        ["acctd", "start"] => {
            let cluster = Cluster::existing().map_err(err)?;
            sgpu_tests::cluster_acctd::start(&cluster).map_err(err)?;
            println!(
                "sgpu-acctd listening on {} (log: {}/log/sgpu-acctd.log); nodes forward to it",
                sgpu_tests::cluster_acctd::url(),
                cluster.dir().display()
            );
            Ok(())
        }
        ["acctd", "stop"] => {
            let cluster = Cluster::existing().map_err(err)?;
            sgpu_tests::cluster_acctd::stop(&cluster).map_err(err)
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sgpu-testcluster: {e}");
            ExitCode::from(2)
        }
    }
}
