//! `dcgmi diag -r N -j`: NVIDIA DCGM's diagnostic report, read as an active check's answer.
//!
//! The JSON (DCGM's `JsonOutput`, written by `dcgmi` after an optional line such as
//! `Successfully ran diagnostic for group.`) is one object under `"DCGM GPU Diagnostic"`
//! (DCGM 2.x/3.x) or `"DCGM Diagnostic"` (4.x): `test_categories`, each a `category`
//! (Deployment, Integration, Hardware, Stress, ...) with `tests`, each a `name` and
//! `results`, one per GPU (a deployment test: one for all GPUs, its GPU ids comma-separated),
//! each with a `status` (`Pass`, `Fail`, `Warn`, `Skip`; upper case in some releases), the
//! GPU as `gpu_id` or `gpu_ids` (a string or a number) or, in 4.x, `entity_id` of
//! `entity_group` `GPU` (4.x also tests CPUs: their ids are not GPU indices), and
//! `warnings` (strings, or objects `{"warning": ..., "error_id": N}`); DCGM 4.x adds a
//! per-test `test_summary` with its own `status`. Fields sgpu does not use are ignored, so
//! a newer DCGM that adds fields still reads.

use serde::Deserialize;

use super::{Judged, Outcome};

/// Why the output is not a diagnostic report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcgmiError {
    /// No JSON object in the output.
    #[error("its output holds no JSON object (was `-j` given to dcgmi diag?)")]
    NoJson,
    /// The JSON does not parse as a report.
    #[error("its JSON is not a dcgmi diag report: {0}")]
    Invalid(String),
    /// The report lists no test.
    #[error("its report lists no test result")]
    Empty,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "DCGM GPU Diagnostic")]
    v3: Option<Diag>,
    #[serde(rename = "DCGM Diagnostic")]
    v4: Option<Diag>,
}

#[derive(Deserialize)]
struct Diag {
    #[serde(default)]
    test_categories: Vec<Category>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct Category {
    #[serde(default)]
    category: String,
    #[serde(default)]
    tests: Vec<Test>,
}

#[derive(Deserialize)]
struct Test {
    #[serde(default)]
    name: String,
    #[serde(default)]
    results: Vec<RawResult>,
    #[serde(default)]
    test_summary: Option<Summary>,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Warning {
    Text(String),
    Object {
        #[serde(alias = "message")]
        warning: String,
    },
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    gpu_id: Option<Id>,
    #[serde(default)]
    gpu_ids: Option<Id>,
    #[serde(default)]
    entity_group: Option<String>,
    #[serde(default)]
    entity_id: Option<Id>,
    #[serde(default)]
    warnings: Vec<Warning>,
}

/// One test's status on one GPU (or on every GPU, for deployment tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatus {
    /// Passed.
    Pass,
    /// Passed with a warning.
    Warn,
    /// Failed.
    Fail,
    /// Skipped or not run (not supported on this GPU, not allowed at this level).
    Skip,
}

impl TestStatus {
    fn parse(s: &str) -> TestStatus {
        let s = s.trim().to_ascii_lowercase();
        if s.starts_with("fail") {
            TestStatus::Fail
        } else if s.starts_with("warn") {
            TestStatus::Warn
        } else if s.starts_with("pass") {
            TestStatus::Pass
        } else {
            TestStatus::Skip
        }
    }
}

/// One result line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The category (`Hardware`, ...).
    pub category: String,
    /// The test (`GPU Memory`, `memory`, ...).
    pub test: String,
    /// The GPU, when the result names exactly one.
    pub gpu: Option<u32>,
    /// Its status.
    pub status: TestStatus,
    /// DCGM's first warning for it, one line.
    pub warning: Option<String>,
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// DCGM's version, when given.
    pub version: Option<String>,
    /// Every result, in report order.
    pub results: Vec<TestResult>,
}

fn single_gpu(id: &Id) -> Option<u32> {
    match id {
        Id::Number(n) => u32::try_from(*n).ok(),
        Id::Text(t) => t.trim().parse().ok(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

/// Parses `dcgmi diag -j`'s stdout (text before the JSON object is skipped).
pub fn parse(stdout: &[u8]) -> Result<Report, DcgmiError> {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find('{').ok_or(DcgmiError::NoJson)?;
    let end = text.rfind('}').ok_or(DcgmiError::NoJson)?;
    let json = text.get(start..=end).ok_or(DcgmiError::NoJson)?;
    let doc: Doc = serde_json::from_str(json).map_err(|e| DcgmiError::Invalid(e.to_string()))?;
    let diag = doc.v4.or(doc.v3).ok_or_else(|| {
        DcgmiError::Invalid(
            "neither \"DCGM GPU Diagnostic\" (DCGM 3) nor \"DCGM Diagnostic\" (DCGM 4) is in it"
                .into(),
        )
    })?;
    let mut results = Vec::new();
    for c in diag.test_categories {
        for t in c.tests {
            let before = results.len();
            for r in &t.results {
                // DCGM 4 names entities: only a GPU's id is a GPU index (a CPU's is not)
                let gpu_entity = r
                    .entity_id
                    .as_ref()
                    .filter(|_| r.entity_group.as_deref().is_none_or(|g| g == "GPU"));
                let gpu = r
                    .gpu_id
                    .as_ref()
                    .or(r.gpu_ids.as_ref())
                    .or(gpu_entity)
                    .and_then(single_gpu);
                let warning = r.warnings.first().map(|w| match w {
                    Warning::Text(s) => one_line(s),
                    Warning::Object { warning } => one_line(warning),
                });
                results.push(TestResult {
                    category: c.category.clone(),
                    test: t.name.clone(),
                    gpu,
                    status: TestStatus::parse(r.status.as_deref().unwrap_or("")),
                    warning,
                });
            }
            // DCGM 4's summary can fail a test whose per-GPU lines do not say which GPU
            let summary = t
                .test_summary
                .as_ref()
                .and_then(|s| s.status.as_deref())
                .map(TestStatus::parse);
            let worst_line = results[before..].iter().map(|r| rank(r.status)).max();
            if let Some(s) = summary.filter(|s| worst_line.is_none_or(|w| rank(*s) > w)) {
                results.push(TestResult {
                    category: c.category.clone(),
                    test: t.name.clone(),
                    gpu: None,
                    status: s,
                    warning: None,
                });
            }
        }
    }
    if results.is_empty() {
        return Err(DcgmiError::Empty);
    }
    Ok(Report {
        version: diag.version,
        results,
    })
}

fn rank(s: TestStatus) -> u8 {
    match s {
        TestStatus::Skip => 0,
        TestStatus::Pass => 1,
        TestStatus::Warn => 2,
        TestStatus::Fail => 3,
    }
}

impl Report {
    /// The verdict: any `Fail` fails, else any `Warn` warns, else it passes. The message
    /// names the first such test, its GPU and DCGM's warning, and how many more there are;
    /// the GPU is set when every failing (or warning) result names the same one.
    pub fn judge(&self) -> Judged {
        for (status, outcome, word) in [
            (TestStatus::Fail, Outcome::Fail, "failed"),
            (TestStatus::Warn, Outcome::Warn, "warned"),
        ] {
            let hits: Vec<&TestResult> =
                self.results.iter().filter(|r| r.status == status).collect();
            let Some(first) = hits.first() else { continue };
            let gpus: std::collections::BTreeSet<Option<u32>> =
                hits.iter().map(|r| r.gpu).collect();
            let gpu = match gpus.iter().collect::<Vec<_>>().as_slice() {
                [Some(g)] => Some(*g),
                _ => None,
            };
            let mut message = match first.gpu {
                Some(g) => format!("dcgmi {} gpu{g} {word}", first.test),
                None => format!("dcgmi {} {word}", first.test),
            };
            if let Some(w) = &first.warning {
                message.push_str(": ");
                message.push_str(w);
            }
            if hits.len() > 1 {
                message.push_str(&format!(" (and {} more {word})", hits.len() - 1));
            }
            return Judged {
                outcome,
                message,
                gpu,
            };
        }
        let passed = self
            .results
            .iter()
            .filter(|r| r.status == TestStatus::Pass)
            .count();
        let skipped = self.results.len() - passed;
        Judged {
            outcome: Outcome::Pass,
            message: format!(
                "dcgmi: {passed} results passed, {skipped} skipped (DCGM {})",
                self.version.as_deref().unwrap_or("?")
            ),
            gpu: None,
        }
    }
}
