//! The runbook (`docs/operations.md`) must describe the checks and XIDs the code has: every
//! catalogue check with its auto-resume flag, every XID with its class and action.

use std::collections::BTreeMap;

use sgpu_nodelib::catalogue::CATALOGUE;
use sgpu_nodelib::xid::XID_TABLE;

fn runbook() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Table rows of the runbook, keyed by their first cell (backticks removed).
fn rows(doc: &str) -> BTreeMap<String, Vec<String>> {
    doc.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

#[test]
fn every_check_is_in_the_runbook_with_its_auto_resume_flag() {
    let doc = runbook();
    let rows = rows(&doc);
    for spec in CATALOGUE {
        let row = rows
            .get(spec.id)
            .unwrap_or_else(|| panic!("docs/operations.md has no row for check {}", spec.id));
        let expected = if spec.auto_recoverable { "yes" } else { "no" };
        assert_eq!(
            row[2], expected,
            "auto-resume of {} in the runbook",
            spec.id
        );
    }
}

#[test]
fn every_xid_is_in_the_runbook_with_its_class_and_action() {
    let doc = runbook();
    let rows = rows(&doc);
    for x in XID_TABLE {
        let row = rows
            .get(&x.code.to_string())
            .unwrap_or_else(|| panic!("docs/operations.md has no row for XID {}", x.code));
        assert_eq!(row[1], x.name, "name of XID {}", x.code);
        assert_eq!(row[2], x.class.as_str(), "class of XID {}", x.code);
        assert_eq!(row[4], x.action, "action of XID {}", x.code);
    }
}
