//! Architecture invariant (docs/architecture.md, "Wire contracts"): the JSON between
//! processes is only `sgpu-wire`'s typed documents.
//!
//! - No product source calls `Client::get_json` or `Client::post_json` (the raw JSON access
//!   the client keeps for tests and tools): every client reads the typed answers.
//! - The servers' answers are built from the wire types: acctd's HTTP handlers and healthd's
//!   `/status` build no `json!` document.
//! - `sgpu-wire` itself depends on serde and serde_json only.
//!
//! A source scan: it needs no cluster and no build, and names the file and line it objects to.

use std::path::{Path, PathBuf};

use sgpu_tests::cluster::repo_root;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `file:line: text` of every line of `files` that contains one of `needles`, outside the
/// file's `#[cfg(test)]` part (everything after the first such line) and outside comments.
fn offending(root: &Path, files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                let rel = f.strip_prefix(root).unwrap_or(f);
                found.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn product_code_reads_other_processes_answers_as_wire_documents() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in [
        "cli/src",
        "healthd/src",
        "spank-plugin/src",
        "prolog-epilog/src",
        "nodelib/src",
        "accounting/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    // tests.rs beside a module are test code
    files.retain(|f| f.file_name().is_none_or(|n| n != "tests.rs"));
    let raw = offending(&root, &files, &[".get_json(", ".post_json("]);
    assert!(
        raw.is_empty(),
        "product code reads raw JSON from another process; use Client::get/post with a \
         sgpu-wire document:\n{}",
        raw.join("\n")
    );
}

#[test]
fn servers_answer_with_wire_documents() {
    let root = repo_root();
    let files: Vec<PathBuf> = [
        "accounting/src/http.rs",
        "accounting/src/history.rs",
        "accounting/src/report/handlers.rs",
        "healthd/src/http.rs",
        "healthd/src/status.rs",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let built = offending(&root, &files, &["json!("]);
    assert!(
        built.is_empty(),
        "a server builds an untyped answer; add the document to sgpu-wire:\n{}",
        built.join("\n")
    );
}

#[test]
fn the_wire_crate_needs_only_serde() {
    let manifest = repo_root().join("wire/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section.ends_with("dependencies]")
            && !section.contains("dev-")
            && !line.is_empty()
            && !line.starts_with('#')
        {
            deps.push(
                line.split(['=', '.'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            );
        }
    }
    assert_eq!(
        deps,
        ["serde", "serde_json"],
        "{}: sgpu-wire is linked by every client, the SPANK plugin included",
        manifest.display()
    );
}
