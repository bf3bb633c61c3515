//! Architecture invariants (docs/architecture.md, "Architecture invariants") read from the
//! dependency graph: what runs inside slurmstepd (`spank_sgpu.so`, crate `sgpu-spank`) and as
//! slurmd's Prolog/Epilog (`sgpu-prolog`, `sgpu-epilog`: crate `sgpu-prolog-epilog`), and the
//! node library both are built on (`sgpu-nodelib`), link no async runtime, HTTP server or
//! client, embedded database or metrics library, and not the daemon crate.
//!
//! Each check runs `cargo tree -e normal -p CRATE --prefix none --offline --locked` (normal
//! dependencies of every target of the crate, dev-dependencies excluded) with the cargo that
//! runs this test; a forbidden crate fails the test with `cargo tree -i`'s answer, which names
//! the chain of crates that pulled it in. It needs no cluster and no build.

use std::collections::BTreeSet;
use std::process::Command;

use sgpu_tests::cluster::repo_root;

/// Crates that must not be under slurmstepd or the gates, and what each one is.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("async-std", "an async runtime"),
    ("smol", "an async runtime"),
    ("mio", "an async I/O event loop"),
    ("axum", "an HTTP server"),
    ("actix-web", "an HTTP server"),
    ("warp", "an HTTP server"),
    ("tower", "an HTTP service stack"),
    ("tower-http", "an HTTP service stack"),
    ("hyper", "an HTTP server/client"),
    ("hyper-util", "an HTTP server/client"),
    ("h2", "an HTTP/2 implementation"),
    ("reqwest", "an HTTP client"),
    ("ureq", "an HTTP client"),
    ("ureq-proto", "an HTTP client"),
    ("isahc", "an HTTP client"),
    ("curl", "an HTTP client"),
    ("attohttpc", "an HTTP client"),
    ("sgpu-acct-client", "sgpu's HTTP client for acctd"),
    ("sled", "an embedded database"),
    ("rusqlite", "an embedded database"),
    ("rocksdb", "an embedded database"),
    ("redb", "an embedded database"),
    ("heed", "an embedded database"),
    ("prometheus-client", "a metrics library"),
    ("prometheus", "a metrics library"),
    ("metrics", "a metrics library"),
    ("sgpu-healthd", "the daemon crate"),
    ("sgpu-accounting", "the accounting service"),
];

/// Runs `cargo tree --offline --locked ARGS` in the workspace and returns its output.
fn cargo_tree(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO"))
        .arg("tree")
        .args(["--offline", "--locked", "-e", "normal"])
        .args(args)
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("cannot run {} tree: {e}", env!("CARGO")))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("cargo tree printed non-UTF-8: {e}"))
}

/// The names of every crate in `krate`'s normal dependency graph, itself included.
fn dependencies(krate: &str) -> BTreeSet<String> {
    let text = match cargo_tree(&["-p", krate, "--prefix", "none"]) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    // each line is `name vX.Y.Z[ (path)][ (*)]`
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The forbidden crates in `krate`'s graph, each with the chain that pulled it in.
fn violations(krate: &str) -> Vec<String> {
    let deps = dependencies(krate);
    assert!(
        deps.contains(krate),
        "cargo tree -p {krate} did not list {krate} itself: the output format changed, fix \
         dependencies() in {}",
        file!()
    );
    FORBIDDEN
        .iter()
        .filter(|(name, _)| deps.contains(*name))
        .map(|(name, what)| {
            let chain = cargo_tree(&["-p", krate, "-i", name]).unwrap_or_else(|e| e);
            format!(
                "{krate} links {name} ({what}); pulled in by (cargo tree -e normal -p {krate} \
                 -i {name}):\n{chain}"
            )
        })
        .collect()
}

fn assert_clean(krate: &str) {
    let found = violations(krate);
    assert!(
        found.is_empty(),
        "{krate} runs inside slurmstepd or the prolog/epilog, or is the node library they \
         share, and must link no async runtime, HTTP server/client, embedded database, \
         metrics library or the daemon crate (docs/architecture.md, \"Architecture \
         invariants\"); move what needs it into sgpu-healthd:\n\n{}",
        found.join("\n")
    );
}

#[test]
fn the_spank_plugin_links_no_runtime_http_database_or_metrics() {
    assert_clean("sgpu-spank");
}

#[test]
fn the_prolog_and_epilog_link_no_runtime_http_database_or_metrics() {
    assert_clean("sgpu-prolog-epilog");
}

#[test]
fn the_node_library_links_no_runtime_http_database_or_metrics() {
    assert_clean("sgpu-nodelib");
}

/// The check sees what it looks for: the daemon links tokio, axum, sled and
/// prometheus-client, and each is reported with the crate that pulled it in.
#[test]
fn the_check_finds_the_daemons_runtime_server_database_and_metrics() {
    let found = violations("sgpu-healthd");
    for name in ["tokio", "axum", "sled", "prometheus-client"] {
        let hit = found
            .iter()
            .find(|v| v.starts_with(&format!("sgpu-healthd links {name} ")));
        match hit {
            Some(v) => assert!(
                v.contains("sgpu-healthd v"),
                "the chain for {name} does not name the crate that pulled it in:\n{v}"
            ),
            None => panic!("{name} not reported for sgpu-healthd; found:\n{found:#?}"),
        }
    }
    // the gates' own crates are in their trees, so an empty tree cannot pass
    assert!(dependencies("sgpu-spank").contains("sgpu-nodelib"));
    assert!(dependencies("sgpu-prolog-epilog").contains("nvml-wrapper"));
}
