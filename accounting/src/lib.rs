//! sgpu accounting: the usage record model and `sgpu-acctd`, the head-node store.
//!
//! Nodes (prolog, epilog, SPANK plugin, healthd) write usage records to their spool; healthd
//! forwards them here. acctd deduplicates by record identity, acknowledges only durable
//! batches, keeps rollups per account/user/partition/GPU model/day and answers the
//! sacct-style `sgpu report` queries, authenticated with MUNGE.
