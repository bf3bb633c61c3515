//! Prints the simulator state a real `nvidia-smi -q [-x]` capture turns into:
//! `cargo run -q -p nvml-sim --example capture -- FILE > state.toml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: capture FILE   (output of nvidia-smi -q -x, or nvidia-smi -q)");
        return ExitCode::from(2);
    };
    match nvml_sim::Capture::load(&path).and_then(|c| {
        for n in &c.notes {
            eprintln!("note: {n}");
        }
        c.state
            .to_toml_string()
            .map_err(|e| nvml_sim::CaptureError::Format {
                path: path.clone().into(),
                message: e.to_string(),
            })
    }) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
