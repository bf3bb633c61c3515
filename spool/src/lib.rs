//! sgpu-spool: the usage-record model and the node spool every node-side producer writes to.
//!
//! On each GPU node, four processes produce usage records: `sgpu-prolog` (job start),
//! `sgpu-epilog` (job end), the SPANK plugin in slurmstepd (per-step usage) and
//! `sgpu-healthd` (finalised per-job sampled usage). They write them, independently and
//! possibly at the same moment, into the node spool (`/var/spool/sgpu/` by default), a
//! Maildir-style directory that is safe for several writers and one reader ([`Spool`]).
//! healthd's forwarder reads the spool, sends the records to `sgpu-acctd` on the head node,
//! and removes each only after acctd acknowledged it durably; a record that cannot be read
//! is moved aside to `bad/`, never dropped. Delivery is therefore at-least-once: a record's
//! identity ([`RecordId`]: cluster, job id, run, step, node, kind) is what acctd deduplicates by;
//! a requeued job's runs are told apart by the run ([`job_note`]).
//!
//! The same [`Record`] type (JSON, schema [`SCHEMA_VERSION`], unknown fields rejected,
//! consistency checked by [`Record::validate`]) is what acctd parses on ingest.
//!
//! ```
//! use sgpu_spool::{JobStart, Record, RecordBody, RecordId, RecordKind, Spool};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! let spool = Spool::open(tmp.path().join("sgpu"))?;
//! let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobStart)?;
//! let body = RecordBody::JobStart(JobStart {
//!     user: "alice".into(),
//!     uid: 1001,
//!     account: Some("physics".into()),
//!     partition: Some("gpu".into()),
//!     start_time: 1_700_000_000_000,
//!     gpus: vec![],
//! });
//! spool.write(&Record::new_now(id, body)?)?;
//! for entry in spool.list()? {
//!     match spool.read(&entry) {
//!         Ok(record) => {
//!             // send `record` to acctd; once acknowledged:
//!             spool.remove(&entry)?;
//!         }
//!         Err(e) if e.is_corrupt() => {
//!             spool.quarantine(&entry, &e.to_string())?;
//!         }
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod calendar;
pub mod event;
mod id;
pub mod job_note;
pub mod passwd;
mod record;
mod spool;

pub use event::{EventSpool, JobAction, NodeAction, NodeEvent};
pub use id::{MAX_COMPONENT_BYTES, MAX_KEY_BYTES, RecordId, RecordKind};
pub use record::{
    ExitStatus, GpuEnd, GpuRef, GpuUsage, IDLE_PERIODS_MAX, IdlePeriod, JobEnd, JobStart, MigShare,
    Record, RecordBody, RecordError, SCHEMA_VERSION, SlurmWindow, Usage, gpu_equiv_ms, now_ms,
    push_idle_period,
};
pub use spool::{DEFAULT_SPOOL_DIR, Entry, MAX_RECORD_BYTES, Spool, SpoolError};
