//! Prints the state file of a healthy node: `cargo run -p nvml-sim --example healthy -- 8`.

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    match nvml_sim::State::healthy(n).to_toml_string() {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
