//! Ingest: a batch (a JSON array of records) split into valid records and per-record
//! rejections.
//!
//! The batch rule: the body must be a JSON array, else the whole request is refused (400)
//! and nothing is stored. Each element is then judged on its own with the spool crate's
//! strict parser and [`sgpu_spool::Record::validate`]: valid records are stored (one
//! atomic, flushed step) and reported `accepted` or `duplicate`; invalid ones are reported
//! `rejected`, naming the record (its key when its `id` parses, else its position) and the
//! field. A batch with any rejection is answered 422 with the same per-record list, so the
//! sender can drop what was acknowledged and quarantine what was refused; resending the
//! whole batch is harmless, since acknowledged records come back `duplicate`.

use serde::Serialize;
use serde_json::value::RawValue;
use sgpu_spool::{Record, RecordError, RecordId};

/// Why a batch as a whole is refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The body is not a JSON array.
    #[error("a batch must be a JSON array of records: {0}")]
    NotAnArray(serde_json::Error),
}

/// One refused record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Position in the batch, from 0.
    pub index: usize,
    /// The record's key when its `id` could be read.
    pub key: Option<String>,
    /// The offending field's path, when known (`body.end_time`).
    pub field: Option<String>,
    /// What is wrong.
    pub error: String,
}

/// A batch after parsing: valid records with their positions, and rejections.
#[derive(Debug, Default)]
pub struct ParsedBatch<'a> {
    /// Valid records, their positions in the batch and their JSON as received (borrowed
    /// from the body: not copied).
    pub valid: Vec<(usize, Record, &'a RawValue)>,
    /// Refused records.
    pub rejected: Vec<Rejection>,
}

/// Parses a batch body; see the module documentation for the rule.
pub fn parse_batch(body: &[u8]) -> Result<ParsedBatch<'_>, BatchError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(BatchError::NotAnArray)?;
    let mut out = ParsedBatch::default();
    for (index, raw) in items.into_iter().enumerate() {
        match Record::from_json(raw.get().as_bytes()) {
            Ok(r) => out.valid.push((index, r, raw)),
            Err(e) => out.rejected.push(rejection(index, raw, &e)),
        }
    }
    Ok(out)
}

fn rejection(index: usize, raw: &RawValue, e: &RecordError) -> Rejection {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Box<RawValue>,
    }
    let id = serde_json::from_str::<IdOnly>(raw.get()).ok().map(|i| i.id);
    let key = id
        .as_ref()
        .and_then(|id| serde_json::from_str::<RecordId>(id.get()).ok())
        .map(|id| id.key());
    let mut field = e.field().map(str::to_string);
    if field.is_none() {
        // An id that does not parse is the field at fault; serde names the part inside it.
        if id.is_some() && key.is_none() {
            field = Some("id".to_string());
        }
    }
    Rejection {
        index,
        key,
        field,
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
