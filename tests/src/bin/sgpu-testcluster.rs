//! `sgpu-testcluster up`: brings up the test cluster (`tests/cluster/up`) and installs sgpu
//! into it with healthy simulated GPUs, exactly as the Rust tests do; for the quick start
//! and for trying things by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => match sgpu_tests::Cluster::up() {
            Ok(cluster) => {
                let dir = sgpu_tests::sgpu::sgpu_dir(&cluster);
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
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sgpu-testcluster: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: sgpu-testcluster up   (as root; stop it with tests/cluster/down)");
            ExitCode::from(2)
        }
    }
}
