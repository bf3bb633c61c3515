//! `conf-bench`: what reading slurm.conf and gres.conf costs one node's sgpu (the SPANK
//! plugin at every GPU step start, the prolog/epilog, healthd) as the cluster grows.
//!
//! It writes generated configurations of N nodes (default 16, 4,000 and 16,000) into a
//! temporary directory, in two layouts: *ranged* (a few `NodeName=gpu[0001-1000]` lines,
//! partitions `Nodes=ALL` twice and two ranges; gres.conf lines by range) and *per-line*
//! (one `NodeName=` line per node with its `NodeAddr`, as generated configurations often
//! are). For each it times, interleaved round by round, the lookups a node makes: read
//! slurm.conf, take `ClusterName`, read gres.conf, and compute the node's expected GPUs
//! (`GresConf::expected_gpus`, as `NodeLayout::of` does), once with the full reads
//! (`load_lenient`, the baseline: every host list expanded) and once with the reads for one
//! node (`load_lenient_for_node`). It prints medians and p90 and the ratio of the medians
//! (scoped/full) and checks that both give the same answer. Timings are printed, never
//! judged.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sgpu_slurm_conf::{ConfFile, GresConf, NodeGpus, SlurmConf};

/// Times slurm.conf + gres.conf lookups for one node, full reads vs reads for the node.
#[derive(Parser, Debug)]
#[command(name = "conf-bench")]
struct Args {
    /// Cluster sizes (nodes).
    #[arg(long, value_delimiter = ',', default_value = "16,4000,16000")]
    nodes: Vec<usize>,
    /// Rounds per size and layout (one full and one scoped lookup each).
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

/// How the node lines are written.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// A few lines with host ranges.
    Ranged,
    /// One line per node.
    PerLine,
}

/// The node measured: in the middle of the cluster.
fn node_of(n: usize) -> String {
    format!("gpu{:04}", n / 2 + 1)
}

/// slurm.conf and gres.conf of `n` nodes.
fn files(n: usize, layout: Layout) -> (String, String) {
    let mut slurm = String::from(
        "ClusterName=bench\nSlurmUser=slurm\nGresTypes=gpu\n\
         NodeName=DEFAULT CPUs=64 RealMemory=512000 State=UNKNOWN\n",
    );
    let mut gres = String::from("AutoDetect=off\n");
    let half = n / 2;
    match layout {
        Layout::Ranged => {
            let chunk = n.div_ceil(4).max(1);
            let mut lo = 1;
            while lo <= n {
                let hi = (lo + chunk - 1).min(n);
                let t = if lo <= half { "a100" } else { "h100" };
                let _ = writeln!(
                    slurm,
                    "NodeName=gpu[{lo:04}-{hi:04}] Gres=gpu:{t}:8 Feature={t}"
                );
                let _ = writeln!(
                    gres,
                    "NodeName=gpu[{lo:04}-{hi:04}] Name=gpu Type={t} File=/dev/nvidia[0-7]"
                );
                lo = hi + 1;
            }
        }
        Layout::PerLine => {
            for i in 1..=n {
                let t = if i <= half { "a100" } else { "h100" };
                let _ = writeln!(
                    slurm,
                    "NodeName=gpu{i:04} NodeAddr=10.{}.{}.{} Gres=gpu:{t}:8 Feature={t}",
                    i / 65536,
                    (i / 256) % 256,
                    i % 256
                );
            }
            let _ = writeln!(
                gres,
                "NodeName=gpu[0001-{half:04}] Name=gpu Type=a100 File=/dev/nvidia[0-7]"
            );
            let _ = writeln!(
                gres,
                "NodeName=gpu[{:04}-{n:04}] Name=gpu Type=h100 File=/dev/nvidia[0-7]",
                half + 1
            );
        }
    }
    let _ = writeln!(slurm, "PartitionName=all Nodes=ALL Default=YES");
    let _ = writeln!(slurm, "PartitionName=batch Nodes=ALL");
    let _ = writeln!(slurm, "PartitionName=a100 Nodes=gpu[0001-{half:04}]");
    let _ = writeln!(
        slurm,
        "PartitionName=h100 Nodes=gpu[{:04}-{n:04}]",
        half + 1
    );
    (slurm, gres)
}

/// What a node looks up: the cluster's name and its expected GPUs (and the notes' count).
fn lookup(slurm_conf: &Path, node: &str, scoped: bool) -> (Option<String>, NodeGpus, usize) {
    let (slurm, errors) = if scoped {
        SlurmConf::load_lenient_for_node(slurm_conf, node)
    } else {
        SlurmConf::load_lenient(slurm_conf)
    };
    let cluster = slurm.cluster();
    let gres_path = slurm.gres_conf_path();
    let (gres, gres_errors) = if scoped {
        GresConf::load_lenient_for_node(&gres_path, node)
    } else {
        GresConf::load_lenient(&gres_path)
    };
    let gpus = gres.expected_gpus(node, Some(&slurm));
    (cluster, gpus, errors.len() + gres_errors.len())
}

/// Median and 90th percentile in ms.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.9))
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    println!(
        "{:>6} {:>8} {:>15} {:>15} {:>7} {:>9}",
        "nodes", "layout", "full med/p90", "node med/p90", "ratio", "kept"
    );
    for &n in &args.nodes {
        for layout in [Layout::Ranged, Layout::PerLine] {
            let (slurm, gres) = files(n, layout);
            let slurm_path = dir.path().join("slurm.conf");
            std::fs::write(&slurm_path, slurm)?;
            std::fs::write(dir.path().join("gres.conf"), gres)?;
            let node = node_of(n);
            let full_answer = lookup(&slurm_path, &node, false);
            let scoped_answer = lookup(&slurm_path, &node, true);
            if full_answer != scoped_answer {
                return Err(format!(
                    "{n} nodes {layout:?}: the reads disagree: {full_answer:?} vs {scoped_answer:?}"
                )
                .into());
            }
            let kept = SlurmConf::load_lenient_for_node(&slurm_path, &node)
                .0
                .nodes
                .len();
            let (mut full, mut scoped) = (Vec::new(), Vec::new());
            for round in 0..args.rounds {
                // alternate which goes first, so neither always finds a warm cache
                for first_scoped in [round % 2 == 0, round % 2 != 0] {
                    let t = Instant::now();
                    std::hint::black_box(lookup(&slurm_path, &node, first_scoped));
                    let d = t.elapsed();
                    if first_scoped {
                        scoped.push(d);
                    } else {
                        full.push(d);
                    }
                }
            }
            let (fm, f9) = stats(full);
            let (sm, s9) = stats(scoped);
            println!(
                "{n:>6} {:>8} {:>7.3}/{:<7.3} {:>7.3}/{:<7.3} {:>7.3} {kept:>9}",
                match layout {
                    Layout::Ranged => "ranged",
                    Layout::PerLine => "per-line",
                },
                fm,
                f9,
                sm,
                s9,
                if fm > 0.0 { sm / fm } else { 0.0 },
            );
        }
    }
    println!(
        "(ms per lookup: slurm.conf + ClusterName + gres.conf + the node's expected GPUs; \
         ratio = node/full medians; kept = nodes the read for one node kept)"
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conf-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
