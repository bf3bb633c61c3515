//! Prints the time of one MUNGE encode and one decode against the local munged (the cost
//! acctd and its clients pay per request): `cargo run --release -p sgpu-munge --example latency`.

use std::time::Instant;

fn main() {
    let opts = sgpu_munge::Options::default();
    let n = 2000;
    let payload = b"GET /v1/report?start=2024-03-01&end=2024-04-01&group_by=account";
    let mut creds = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        match sgpu_munge::encode(payload, &opts) {
            Ok(c) => creds.push(c),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    let enc = t.elapsed();
    let t = Instant::now();
    for c in &creds {
        if let Err(e) = sgpu_munge::decode(c, &opts) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    let dec = t.elapsed();
    println!(
        "munge encode: {:.1} µs/credential, decode: {:.1} µs/credential ({n} each)",
        enc.as_secs_f64() * 1e6 / n as f64,
        dec.as_secs_f64() * 1e6 / n as f64
    );
}
