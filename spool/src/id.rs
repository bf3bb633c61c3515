//! Record identity: (cluster, job id, run, step, node, kind) and its stable string key.
//!
//! A job's *run* is how often Slurm had requeued it when this execution started
//! (`SLURM_JOB_RESTART_COUNT` in the prolog's environment, set by slurmd): a requeued job
//! runs again under the same job id, and each run is its own set of records, billed once.
//! Run 0 is left out of the JSON and of the key, so records written before runs existed
//! read as run 0 and keep their keys.
//!
//! The key names spool files and is what the receiver deduplicates by, so it must be
//! unambiguous and safe as part of a file name. Components are validated when an id is
//! built (or read): empty names, `.`/`..`, `/`, NUL and control characters are refused
//! with an error naming the component. Everything outside `[A-Za-z0-9._+-]` is then
//! percent-encoded (`%XX`, upper-case hex, per UTF-8 byte), so the `,` that separates
//! components and the `%` itself can never appear raw inside one: two different ids never
//! share a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::RecordError;

/// Longest accepted cluster, node or step name, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 64;

/// Longest accepted key ([`RecordId::key`]), in bytes; keeps spool file names under 255.
pub const MAX_KEY_BYTES: usize = 160;

/// What a record is about; the last component of its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Written by sgpu-prolog when a job starts on the node.
    JobStart,
    /// Written by sgpu-epilog when a job ends on the node.
    JobEnd,
    /// Per-step usage captured by the SPANK plugin in slurmstepd.
    StepUsage,
    /// healthd's finalised per-job sampled usage on the node.
    JobUsage,
}

impl RecordKind {
    /// Every kind, in declaration order.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::JobStart,
        RecordKind::JobEnd,
        RecordKind::StepUsage,
        RecordKind::JobUsage,
    ];

    /// The snake_case name used in JSON and in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::JobStart => "job_start",
            RecordKind::JobEnd => "job_end",
            RecordKind::StepUsage => "step_usage",
            RecordKind::JobUsage => "job_usage",
        }
    }

    /// Whether records of this kind are per step (`step` required) rather than per job.
    pub fn is_per_step(self) -> bool {
        matches!(self, RecordKind::StepUsage)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| RecordError::invalid("kind", format!("unknown record kind {s:?}")))
    }
}

/// A record's identity; always valid (checked by [`RecordId::new`] and on deserialisation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRecordId")]
pub struct RecordId {
    cluster: String,
    job_id: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    run: u32,
    step: Option<String>,
    node: String,
    kind: RecordKind,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The unchecked wire form of [`RecordId`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordId {
    cluster: String,
    job_id: u32,
    #[serde(default)]
    run: u32,
    #[serde(default)]
    step: Option<String>,
    node: String,
    kind: RecordKind,
}

impl TryFrom<RawRecordId> for RecordId {
    type Error = RecordError;

    fn try_from(r: RawRecordId) -> Result<Self, Self::Error> {
        RecordId::new(r.cluster, r.job_id, r.step, r.node, r.kind)?.with_run(r.run)
    }
}

impl RecordId {
    /// Builds an id, rejecting unsafe or inconsistent components (the error names the field).
    ///
    /// `step` is required for per-step kinds ([`RecordKind::StepUsage`]) and must be `None`
    /// for per-job kinds; Slurm's step names look like `"batch"`, `"extern"`, `"0"`.
    pub fn new(
        cluster: impl Into<String>,
        job_id: u32,
        step: Option<String>,
        node: impl Into<String>,
        kind: RecordKind,
    ) -> Result<Self, RecordError> {
        let id = RecordId {
            cluster: cluster.into(),
            job_id,
            run: 0,
            step,
            node: node.into(),
            kind,
        };
        check_component("id.cluster", &id.cluster)?;
        check_component("id.node", &id.node)?;
        if job_id == 0 {
            return Err(RecordError::invalid("id.job_id", "must be > 0"));
        }
        match (&id.step, kind.is_per_step()) {
            (Some(step), true) => check_component("id.step", step)?,
            (None, true) => {
                return Err(RecordError::invalid(
                    "id.step",
                    format!("required for kind {kind}"),
                ));
            }
            (Some(_), false) => {
                return Err(RecordError::invalid(
                    "id.step",
                    format!("must be null for per-job kind {kind}"),
                ));
            }
            (None, false) => {}
        }
        id.check_key_length()?;
        Ok(id)
    }

    /// The same identity for run `run` of the job (0: its first execution; see the module
    /// documentation).
    pub fn with_run(mut self, run: u32) -> Result<Self, RecordError> {
        self.run = run;
        self.check_key_length()?;
        Ok(self)
    }

    fn check_key_length(&self) -> Result<(), RecordError> {
        let key = self.key();
        if key.len() > MAX_KEY_BYTES {
            return Err(RecordError::invalid(
                "id",
                format!(
                    "key is {} bytes once escaped, over the {MAX_KEY_BYTES}-byte limit",
                    key.len()
                ),
            ));
        }
        Ok(())
    }

    /// The job's run this record belongs to: how often Slurm had requeued the job when
    /// this execution started (0 for its first).
    pub fn run(&self) -> u32 {
        self.run
    }

    /// The Slurm cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The Slurm job id.
    pub fn job_id(&self) -> u32 {
        self.job_id
    }

    /// The step name for per-step kinds, `None` for per-job kinds.
    pub fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// The Slurm node name the record was produced on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The stable dedup key `cluster,job_id,step,node,kind` (step empty when `None`), with
    /// `r<run>` before the kind for runs after the first (`cluster,job_id,step,node,r1,kind`),
    /// components percent-encoded; safe inside a file name and unique per identity. Every
    /// key of a job starts with `cluster,job_id,` and ends with `,kind`.
    pub fn key(&self) -> String {
        let mut k = String::with_capacity(64);
        escape_into(&mut k, &self.cluster);
        k.push(',');
        k.push_str(&self.job_id.to_string());
        k.push(',');
        if let Some(step) = &self.step {
            escape_into(&mut k, step);
        }
        k.push(',');
        escape_into(&mut k, &self.node);
        k.push(',');
        if self.run > 0 {
            k.push('r');
            k.push_str(&self.run.to_string());
            k.push(',');
        }
        k.push_str(self.kind.as_str());
        k
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

fn check_component(field: &str, value: &str) -> Result<(), RecordError> {
    if value.is_empty() {
        return Err(RecordError::invalid(field, "must not be empty"));
    }
    if value == "." || value == ".." {
        return Err(RecordError::invalid(
            field,
            format!("{value:?} is not a name"),
        ));
    }
    if value.len() > MAX_COMPONENT_BYTES {
        return Err(RecordError::invalid(
            field,
            format!(
                "{} bytes, over the {MAX_COMPONENT_BYTES}-byte limit",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|&c| c == '/' || c.is_control()) {
        return Err(RecordError::invalid(
            field,
            format!("{value:?} contains forbidden character {c:?}"),
        ));
    }
    Ok(())
}

fn escape_into(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: &str, step: Option<&str>, node: &str, kind: RecordKind) -> RecordId {
        RecordId::new(cluster, 42, step.map(str::to_owned), node, kind).unwrap()
    }

    #[test]
    fn key_format() {
        assert_eq!(
            id("alpha", None, "node1", RecordKind::JobStart).key(),
            "alpha,42,,node1,job_start"
        );
        assert_eq!(
            id("alpha", Some("batch"), "gpu-a.01", RecordKind::StepUsage).key(),
            "alpha,42,batch,gpu-a.01,step_usage"
        );
    }

    #[test]
    fn separators_and_odd_bytes_are_escaped() {
        let k = id("a,b", Some("0+1"), "n%1 é", RecordKind::StepUsage).key();
        assert_eq!(k, "a%2Cb,42,0+1,n%251%20%C3%A9,step_usage");
        // A name that looks like an escaped one does not collide with the original.
        let k2 = id("a%2Cb", Some("0+1"), "n%1 é", RecordKind::StepUsage).key();
        assert_ne!(k, k2);
    }

    #[test]
    fn path_traversal_and_control_characters_are_rejected() {
        for (cluster, node, field) in [
            ("../etc", "n1", "id.cluster"),
            ("a/b", "n1", "id.cluster"),
            ("c", "..", "id.node"),
            ("c", ".", "id.node"),
            ("c", "n1/../../x", "id.node"),
            ("c", "n\0x", "id.node"),
            ("c", "n\x7f", "id.node"),
            ("c", "n\n1", "id.node"),
            ("c", "", "id.node"),
            ("", "n", "id.cluster"),
        ] {
            let err = RecordId::new(cluster, 1, None, node, RecordKind::JobEnd).unwrap_err();
            assert_eq!(err.field(), Some(field), "{cluster:?}/{node:?}: {err}");
        }
        let err =
            RecordId::new("c", 1, Some("../x".into()), "n", RecordKind::StepUsage).unwrap_err();
        assert_eq!(err.field(), Some("id.step"));
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    #[test]
    fn step_presence_follows_kind() {
        let e = RecordId::new("c", 1, None, "n", RecordKind::StepUsage).unwrap_err();
        assert_eq!(e.field(), Some("id.step"));
        let e = RecordId::new("c", 1, Some("0".into()), "n", RecordKind::JobStart).unwrap_err();
        assert_eq!(e.field(), Some("id.step"));
        let e = RecordId::new("c", 0, None, "n", RecordKind::JobStart).unwrap_err();
        assert_eq!(e.field(), Some("id.job_id"));
    }

    #[test]
    fn overlong_names_are_rejected() {
        let long = "x".repeat(MAX_COMPONENT_BYTES + 1);
        let e = RecordId::new("c", 1, None, long, RecordKind::JobStart).unwrap_err();
        assert_eq!(e.field(), Some("id.node"));
        // Escaping can triple a name: the key limit catches that.
        let odd = " ".repeat(MAX_COMPONENT_BYTES);
        let e = RecordId::new(odd, 1, None, "n", RecordKind::JobStart).unwrap_err();
        assert_eq!(e.field(), Some("id"));
    }

    #[test]
    fn runs_are_part_of_the_identity() {
        let first = id("alpha", None, "node1", RecordKind::JobEnd);
        assert_eq!(first.run(), 0);
        let second = first.clone().with_run(1).unwrap();
        assert_eq!(second.key(), "alpha,42,,node1,r1,job_end");
        assert_ne!(first, second);
        assert_ne!(first.key(), second.key());
        // run 0 keeps the key and JSON of records written before runs existed
        assert_eq!(first.key(), "alpha,42,,node1,job_end");
        let old = r#"{"cluster":"alpha","job_id":42,"step":null,"node":"node1","kind":"job_end"}"#;
        assert_eq!(serde_json::from_str::<RecordId>(old).unwrap(), first);
        assert_eq!(serde_json::to_string(&first).unwrap(), old);
        let json = serde_json::to_string(&second).unwrap();
        assert!(json.contains(r#""run":1"#), "{json}");
        assert_eq!(serde_json::from_str::<RecordId>(&json).unwrap(), second);
        // a step's run goes before the kind too: the job prefix and the kind suffix stay
        let step = id("alpha", Some("batch"), "node1", RecordKind::StepUsage)
            .with_run(u32::MAX)
            .unwrap();
        assert_eq!(step.key(), "alpha,42,batch,node1,r4294967295,step_usage");
    }

    #[test]
    fn kind_names_round_trip() {
        for k in RecordKind::ALL {
            assert_eq!(k.as_str().parse::<RecordKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
    }

    #[test]
    fn deserialising_validates_and_rejects_unknown_fields() {
        let bad = r#"{"cluster":"c","job_id":1,"step":null,"node":"../x","kind":"job_end"}"#;
        let e = serde_json::from_str::<RecordId>(bad).unwrap_err();
        assert!(e.to_string().contains("id.node"), "{e}");
        let extra = r#"{"cluster":"c","job_id":1,"node":"n","kind":"job_end","colour":1}"#;
        let e = serde_json::from_str::<RecordId>(extra).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
