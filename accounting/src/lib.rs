//! sgpu accounting: `sgpu-acctd`, the head-node service that stores usage records and keeps
//! the GPU-hour and energy rollups that `sgpu report` reads.
//!
//! Nodes (prolog, epilog, SPANK plugin, healthd) write usage records ([`sgpu_spool::Record`])
//! to their spool; healthd's forwarder sends them here in batches (`POST /v1/records`,
//! [`ingest`]). acctd validates each record with the spool crate's strict parser, stores it
//! once per identity ([`sgpu_spool::RecordId::key`]: a resend never counts twice), updates
//! the per-(cluster, account, user, partition, GPU model, UTC day) rollups ([`rollup`]) in
//! the same atomic step, and acknowledges only after the store is flushed to disk. The
//! store is behind a small trait ([`store::Store`]) implemented on sled 0.34 plus an
//! append-only log of the records' JSON ([`sled_store::SledStore`]). acctd serves reports
//! over any window (`GET /v1/report`: whole days from rollups, partial edge days from
//! per-job records, [`report`]), job lists (`GET /v1/jobs`) and per-job records
//! (`GET /v1/jobs/{cluster}/{id}`) over HTTP ([`http`]). Every request carries a
//! MUNGE credential bound to that request ([`auth::MungeAuthenticator`]); the
//! [`auth::Policy`] lets only root and the SlurmUser ingest, users read their own jobs and
//! totals, and admins everything.

#![forbid(unsafe_code)]

pub mod admin_comment;
pub mod auth;
pub mod coordinators;
pub mod day;
pub mod efficiency;
pub mod history;
pub mod http;
pub mod ingest;
pub mod mariadb_server;
pub mod migrate;
pub mod mysql_store;
pub mod prices;
pub mod query;
pub mod report;
pub mod rollup;
pub mod serve;
pub mod site;
pub mod sled_store;
pub mod store;
pub mod zone;

#[cfg(test)]
mod test_records;
#[cfg(test)]
mod test_store;
