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

/// Database client drivers: acctd's MariaDB/MySQL store only, never on a compute node.
const DATABASE_DRIVERS: &[&str] = &[
    "mysql_async",
    "mysql_common",
    "mysql",
    "sqlx",
    "sqlx-core",
    "sqlx-mysql",
    "postgres",
    "tokio-postgres",
    "diesel",
    "sea-orm",
];

/// What runs on a compute node: the plugin, the gates, the node library, healthd, the
/// `sgpu` command (`sgpu check`), the record spool and the acctd client.
const NODE_CRATES: &[&str] = &[
    "sgpu-spank",
    "sgpu-prolog-epilog",
    "sgpu-nodelib",
    "sgpu-healthd",
    "sgpu-cli",
    "sgpu-spool",
    "sgpu-acct-client",
];

/// A database driver stays in acctd's crate (its MariaDB/MySQL store, issue 17): nothing
/// that runs on a compute node links one, and the check sees the one acctd links.
#[test]
fn no_crate_on_a_compute_node_links_a_database_driver() {
    let mut found = Vec::new();
    for krate in NODE_CRATES {
        let deps = dependencies(krate);
        assert!(
            deps.contains(*krate),
            "cargo tree -p {krate} did not list itself"
        );
        for driver in DATABASE_DRIVERS.iter().filter(|d| deps.contains(**d)) {
            let chain = cargo_tree(&["-p", krate, "-i", driver]).unwrap_or_else(|e| e);
            found.push(format!("{krate} links {driver}; pulled in by:\n{chain}"));
        }
    }
    assert!(
        found.is_empty(),
        "a database driver belongs to sgpu-accounting (acctd's store) only, never to a crate \
         that runs on compute nodes; move what needs it into sgpu-accounting:\n\n{}",
        found.join("\n")
    );
    assert!(
        dependencies("sgpu-accounting").contains("mysql_async"),
        "acctd's MariaDB/MySQL store links mysql_async: the check must see it"
    );
}

/// One row of docs/architecture.md's crate table: the crate and its folder (relative to the
/// repository, no trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CrateRow {
    name: String,
    dir: String,
}

/// The rows of the table under `## Crates` (`| \`crate\` | \`dir/\` | role |`).
fn crate_table(doc: &str) -> Vec<CrateRow> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Crates\n"))
        .unwrap_or_default();
    section
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix('|')?.split('|').map(str::trim);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let dir = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some(CrateRow {
                name: name.to_string(),
                dir: dir.trim_end_matches('/').to_string(),
            })
        })
        .collect()
}

/// The paragraph of the crates section that explains names (`Names: ...`).
fn names_paragraph(doc: &str) -> &str {
    doc.split("\n\n")
        .find(|p| p.starts_with("Names:"))
        .unwrap_or_default()
}

/// What disagrees between the doc's crate table and the crates there are (`workspace`, and
/// `outside`: crates of the repository outside the workspace, found by the folder the table
/// names): a crate missing from the table or under another folder, a row naming no crate,
/// and a crate whose name is not `sgpu-<folder>` without the names paragraph explaining it.
fn crate_table_mismatches(
    doc: &str,
    workspace: &[CrateRow],
    outside: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let table = crate_table(doc);
    let mut out = Vec::new();
    if table.is_empty() {
        out.push("no crate table under `## Crates`".to_string());
    }
    for c in workspace {
        match table.iter().find(|r| r.name == c.name) {
            None => out.push(format!(
                "crate {} ({}/) is not in the table; add a row",
                c.name, c.dir
            )),
            Some(r) if r.dir != c.dir => out.push(format!(
                "crate {} lives in {}/, the table says {}/",
                c.name, c.dir, r.dir
            )),
            Some(_) => {}
        }
    }
    let mut verified = Vec::new();
    for r in &table {
        if table.iter().filter(|o| o.name == r.name).count() > 1 {
            out.push(format!("crate {} has more than one row", r.name));
        }
        if workspace.contains(r) {
            verified.push(r);
            continue;
        }
        match outside(&r.dir) {
            Some(name) if name == r.name => verified.push(r),
            Some(name) => out.push(format!(
                "the table puts {} in {}/, whose crate is {name}",
                r.name, r.dir
            )),
            None => out.push(format!(
                "the table names {} in {}/, which holds no crate",
                r.name, r.dir
            )),
        }
    }
    let names = names_paragraph(doc);
    for r in verified {
        if r.name == format!("sgpu-{}", r.dir) {
            continue;
        }
        let top = r.dir.split('/').next().unwrap_or_default();
        if !(names.contains(&format!("`{}`", r.name)) && names.contains(&format!("`{top}/`"))) {
            out.push(format!(
                "crate {} lives in {}/ (not sgpu-{}): the `Names:` paragraph must say why, \
                 naming `{}` and `{top}/`",
                r.name, r.dir, r.dir, r.name
            ));
        }
    }
    out
}

/// The workspace's crates and their folders, from `cargo metadata`.
fn workspace_crates() -> Vec<CrateRow> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .args(["--offline", "--locked"])
        .current_dir(repo_root())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => panic!(
            "cargo metadata failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {} metadata: {e}", env!("CARGO")),
    };
    let meta: serde_json::Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        Err(e) => panic!("cargo metadata printed no JSON: {e}"),
    };
    let root = repo_root();
    let mut crates: Vec<CrateRow> = meta["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let manifest = std::path::Path::new(p["manifest_path"].as_str()?);
            let dir = manifest.parent()?.strip_prefix(&root).ok()?;
            Some(CrateRow {
                name: p["name"].as_str()?.to_string(),
                dir: dir.to_str()?.to_string(),
            })
        })
        .collect();
    crates.sort();
    assert!(
        crates
            .iter()
            .any(|c| c.name == "sgpu-tests" && c.dir == "tests"),
        "cargo metadata did not list sgpu-tests in tests/: its format changed, fix \
         workspace_crates() in {}",
        file!()
    );
    crates
}

/// The `[package] name` of `<repo>/<dir>/Cargo.toml`, if there is one.
fn package_name_in(dir: &str) -> Option<String> {
    let text = std::fs::read_to_string(repo_root().join(dir).join("Cargo.toml")).ok()?;
    let package = text.split("\n[").find(|s| s.starts_with("package]"))?;
    package.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("name")?
            .trim_start()
            .strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// docs/architecture.md's crate table names every crate with its folder, and each crate
/// whose name is not `sgpu-<folder>` is explained in its `Names:` paragraph.
#[test]
fn the_crate_table_names_every_crate_and_its_folder() {
    let path = repo_root().join("docs/architecture.md");
    let doc = match std::fs::read_to_string(&path) {
        Ok(d) => d,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let found = crate_table_mismatches(&doc, &workspace_crates(), &package_name_in);
    assert!(
        found.is_empty(),
        "docs/architecture.md's crate table (## Crates) disagrees with the crates:\n{}",
        found.join("\n")
    );
}

/// The comparison sees each kind of disagreement.
#[test]
fn the_crate_table_check_finds_a_missing_a_moved_and_an_unexplained_crate() {
    let doc = "# x\n\n## Crates\n| crate | directory | role |\n| --- | --- | --- |\n\
               | `sgpu-a` | `a/` | fine |\n| `sgpu-b` | `c/` | moved |\n\
               | `other` | `d/` | unexplained |\n| `sgpu-e` | `e/` | no such folder |\n\n\
               Names: a crate is `sgpu-<directory>`.\n\n## Next\n";
    let crate_row = |name: &str, dir: &str| CrateRow {
        name: name.into(),
        dir: dir.into(),
    };
    let workspace = [
        crate_row("sgpu-a", "a"),
        crate_row("sgpu-b", "b"),
        crate_row("other", "d"),
        crate_row("sgpu-f", "f"),
    ];
    let outside = |dir: &str| (dir == "c").then(|| "sgpu-c".to_string());
    let found = crate_table_mismatches(doc, &workspace, &outside);
    let expect = [
        "crate sgpu-b lives in b/, the table says c/",
        "crate sgpu-f (f/) is not in the table",
        "the table puts sgpu-b in c/, whose crate is sgpu-c",
        "the table names sgpu-e in e/, which holds no crate",
        "crate other lives in d/ (not sgpu-d)",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e:?} not reported; found:\n{found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    let explained = doc.replace(
        "Names: a crate is `sgpu-<directory>`.",
        "Names: a crate is `sgpu-<directory>`; `other` lives in `d/` because.",
    );
    let found = crate_table_mismatches(&explained, &workspace, &outside);
    assert!(!found.iter().any(|f| f.contains("other")), "{found:#?}");
}
