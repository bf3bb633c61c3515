//! `dcgmi diag -r N -j`: NVIDIA DCGM's diagnostic report, read as an active check's answer.
//!
//! The JSON (DCGM's `JsonOutput`, written by `dcgmi` after an optional line such as
//! `Successfully ran diagnostic for group.`) is one object under `"DCGM GPU Diagnostic"`
//! (DCGM 1.x to 3.x) or `"DCGM Diagnostic"` (4.x): `test_categories`, each a `category`
//! (Deployment, Integration, Hardware, Stress, Custom, ...) with `tests`, each a `name` and
//! `results`, one per GPU (a deployment test, and every test of the oldest releases: one for
//! all GPUs, its GPU ids comma-separated), each with a `status` (`Pass`, `Fail`, `Warn`,
//! `Skip`; upper case in DCGM 1.x-3.1), the GPU as `gpu_id` or `gpu_ids` (a string or a
//! number) or, in 4.x, `entity_id` of `entity_group` `GPU` (4.x also tests CPUs: their ids
//! are not GPU indices), and `warnings` (strings, or objects `{"warning": ..., "error_id":
//! N, ...}`); DCGM 4.x adds a per-test `test_summary` with its own `status` and warnings.
//! The version is the diagnostic object's `version` (up to 3.x) or the document's
//! `metadata.version` (4.x). Real reports also hold `null` where a test or a warning list
//! would be (NVIDIA's own 3.1.0 capture has a `null` after every deployment test;
//! `"warnings": null` in 1.3): they are skipped. Fields sgpu does not use are ignored, so a
//! newer DCGM that adds fields still reads. The real reports behind this are in
//! `nodelib/tests/dcgmi-reports/` (README: where each comes from).

use serde::{Deserialize, Deserializer};

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
    /// DCGM ran no test and said why (`runtime_error`).
    #[error("DCGM ran no test: {0}")]
    Runtime(String),
}

/// A list that may be `null`, or hold `null`s (both seen in real reports): its other items.
fn lenient<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items: Option<Vec<Option<T>>> = Option::deserialize(d)?;
    Ok(items.unwrap_or_default().into_iter().flatten().collect())
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "DCGM GPU Diagnostic")]
    v3: Option<Diag>,
    #[serde(rename = "DCGM Diagnostic")]
    v4: Option<Diag>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

/// DCGM 4's document-level `metadata`.
#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct Diag {
    #[serde(default, deserialize_with = "lenient")]
    test_categories: Vec<Category>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    runtime_error: Option<String>,
}

#[derive(Deserialize)]
struct Category {
    #[serde(default)]
    category: String,
    #[serde(default, deserialize_with = "lenient")]
    tests: Vec<Test>,
}

#[derive(Deserialize)]
struct Test {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "lenient")]
    results: Vec<RawResult>,
    #[serde(default)]
    test_summary: Option<Summary>,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    warnings: Vec<Warning>,
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
    /// Any other shape: not a message sgpu can show.
    Other(serde::de::IgnoredAny),
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
    #[serde(default, deserialize_with = "lenient")]
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

fn first_warning(warnings: &[Warning]) -> Option<String> {
    warnings.iter().find_map(|w| match w {
        Warning::Text(s) => Some(one_line(s)),
        Warning::Object { warning } => Some(one_line(warning)),
        Warning::Other(_) => None,
    })
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
    let metadata_version = doc.metadata.and_then(|m| m.version);
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
                results.push(TestResult {
                    category: c.category.clone(),
                    test: t.name.clone(),
                    gpu,
                    status: TestStatus::parse(r.status.as_deref().unwrap_or("")),
                    warning: first_warning(&r.warnings),
                });
            }
            // DCGM 4's summary can fail a test whose per-GPU lines do not say which GPU
            let summary = t.test_summary.as_ref().and_then(|s| {
                let status = TestStatus::parse(s.status.as_deref()?);
                Some((status, first_warning(&s.warnings)))
            });
            let worst_line = results[before..].iter().map(|r| rank(r.status)).max();
            if let Some((status, warning)) =
                summary.filter(|(s, _)| worst_line.is_none_or(|w| rank(*s) > w))
            {
                results.push(TestResult {
                    category: c.category.clone(),
                    test: t.name.clone(),
                    gpu: None,
                    status,
                    warning,
                });
            }
        }
    }
    if results.is_empty() {
        return Err(match diag.runtime_error.filter(|e| !e.trim().is_empty()) {
            Some(e) => DcgmiError::Runtime(one_line(&e)),
            None => DcgmiError::Empty,
        });
    }
    Ok(Report {
        version: metadata_version.or(diag.version),
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

#[cfg(test)]
mod tests;
