//! The JSON documents sgpu's processes exchange over HTTP, as types: the servers serialise
//! them and every client deserialises them, so a renamed or retyped field fails to compile
//! on both sides instead of reading as nothing.
//!
//! - [`acctd`]: sgpu-acctd's answers (`POST /v1/records`, `GET /v1/report`, `GET /v1/jobs`,
//!   `GET /v1/jobs/{cluster}/{id}`, `GET`/`POST /v1/history`, `GET /v1/conflicts`,
//!   `GET /v1/site`, errors)
//!   and the node history request body.
//! - [`efficiency`]: acctd's per-job efficiency answer (`sgpu seff`).
//! - [`healthd`]: sgpu-healthd's `GET /status` document.
//! - [`gate`]: a gate's request on healthd's Unix socket and healthd's readings (not HTTP).
//!
//! Usage records and node events inside these documents are the spool crate's types; the
//! documents here are generic over them (`JobAnswer<R>`), so this crate needs only serde.
//!
//! # Versions
//! Every answer carries `version`, the major version of its schema ([`Answer::VERSION`]).
//! Within a major version a document changes only by adding fields, and every added field
//! is an `Option` whose `None` has a stated meaning (usually "the server predates it");
//! clients ignore fields they do not know. Removing, renaming or retyping a field, changing
//! its unit or meaning, or adding a value to an enumeration without a documented fallback
//! is a new major version. [`decode`] refuses an answer of another major version with
//! [`DecodeError::Version`], which names both versions and what to upgrade. An answer
//! without `version` comes from a server that predates versioning and is version 1.

#![forbid(unsafe_code)]

pub mod acctd;
pub mod efficiency;
pub mod gate;
pub mod healthd;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A versioned answer document.
pub trait Answer: DeserializeOwned {
    /// What the document is, for messages, e.g. `sgpu-acctd's report (GET /v1/report)`.
    const DOCUMENT: &'static str;
    /// The major schema version this build writes and reads.
    const VERSION: u32;
    /// The version the answer declares (`None`: a server that predates versioning).
    fn declared_version(&self) -> Option<u32>;
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The answer is of another major schema version than this build reads.
    Version {
        /// The document.
        document: &'static str,
        /// The version the server wrote.
        got: u32,
        /// The version this build reads.
        understood: u32,
    },
    /// The answer is not the document (bad JSON, a missing or mistyped field).
    Malformed {
        /// The document.
        document: &'static str,
        /// serde's message (names the field and position).
        error: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version {
                document,
                got,
                understood,
            } if got > understood => write!(
                f,
                "{document} is schema version {got}, but this program reads version \
                 {understood}: the server is newer; upgrade sgpu on this host to the \
                 server's release"
            ),
            DecodeError::Version {
                document,
                got,
                understood,
            } => write!(
                f,
                "{document} is schema version {got}, but this program reads version \
                 {understood}: the server is older; upgrade the server to this host's sgpu \
                 release"
            ),
            DecodeError::Malformed { document, error } => {
                write!(f, "{document} is not what this program expects: {error}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Only the version of an answer (every other field ignored).
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<u32>,
}

/// Reads an answer: the document of [`Answer::VERSION`], or an error that names the
/// versions when the server wrote another one (see the crate documentation for the rule).
pub fn decode<T: Answer>(body: &[u8]) -> Result<T, DecodeError> {
    let version_error = |got: u32| DecodeError::Version {
        document: T::DOCUMENT,
        got,
        understood: T::VERSION,
    };
    match serde_json::from_slice::<T>(body) {
        Ok(doc) => match doc.declared_version().unwrap_or(1) {
            v if v == T::VERSION => Ok(doc),
            v => Err(version_error(v)),
        },
        // Another major version may not parse as this one: say so rather than name a field.
        Err(e) => match serde_json::from_slice::<VersionProbe>(body) {
            Ok(VersionProbe { version: Some(v) }) if v != T::VERSION => Err(version_error(v)),
            _ => Err(DecodeError::Malformed {
                document: T::DOCUMENT,
                error: e.to_string(),
            }),
        },
    }
}

/// Implements [`Answer`] for a document with a `version: Option<u32>` field.
macro_rules! answer {
    ($t:ident $(<$g:ident>)?, $version:expr, $doc:expr) => {
        impl$(<$g: serde::de::DeserializeOwned>)? $crate::Answer for $t$(<$g>)? {
            const DOCUMENT: &'static str = $doc;
            const VERSION: u32 = $version;
            fn declared_version(&self) -> Option<u32> {
                self.version
            }
        }
    };
}
pub(crate) use answer;

#[cfg(test)]
mod tests;
