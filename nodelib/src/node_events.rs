//! Node history from the node: every drain and resume healthd or the prolog makes is written
//! as a [`NodeEvent`] to the spool's `events/` area ([`record`]); healthd sends the pending
//! ones to acctd's `POST /v1/history` (`sgpu_healthd::event_forward`) next to the
//! usage-record forwarder, removing each only after acctd acknowledged it. `sgpu history`
//! shows them with the drains and resumes made through `sgpu drain`/`sgpu resume`.

use std::path::Path;

use sgpu_spool::{EventSpool, NodeAction, NodeEvent};

/// The cluster's name as records carry it (slurm.conf `ClusterName`, lower-case, else
/// [`sgpu_slurm_conf::UNKNOWN_CLUSTER`]).
pub fn cluster_name() -> String {
    crate::nodeconf::cluster_name().unwrap_or_else(|| sgpu_slurm_conf::UNKNOWN_CLUSTER.into())
}

/// Writes a drain or resume of `node` by `source` (`healthd`, `prolog`) to the spool's
/// `events/`, as this process's user. Errors say what failed; callers log them (the drain
/// itself stands).
pub fn record(
    spool_dir: &Path,
    node: &str,
    action: NodeAction,
    source: &str,
    reason: &str,
) -> Result<(), EventNotSpooled> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let time_ms = sgpu_spool::now_ms();
    let event = NodeEvent {
        id: NodeEvent::new_id(node, time_ms),
        cluster: cluster_name(),
        node: node.to_string(),
        time_ms,
        action,
        source: source.to_string(),
        uid,
        user: sgpu_spool::passwd::user_name(uid).unwrap_or_else(|| uid.to_string()),
        reason: reason.to_string(),
        previous_reason: None,
        forced: false,
        job: None,
    };
    EventSpool::open(spool_dir)
        .and_then(|s| s.write(&event))
        .map(|_| ())
        .map_err(|error| EventNotSpooled { error })
}

/// A node event that could not be written to the spool (the spool's error says why and what
/// to fix); the drain or resume itself stands.
#[derive(Debug, thiserror::Error)]
#[error("node history event not spooled: {error}")]
pub struct EventNotSpooled {
    /// The spool's error.
    pub error: sgpu_spool::SpoolError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_events_land_in_the_event_spool() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        record(dir.path(), "node7", NodeAction::Drain, "healthd", "sgpu: x")?;
        let pending = EventSpool::open(dir.path())?.pending()?;
        assert_eq!(pending.len(), 1);
        let e = match &pending[0].1 {
            Ok(e) => e,
            Err(err) => return Err(err.to_string().into()),
        };
        assert_eq!(
            (
                e.node.as_str(),
                e.action,
                e.source.as_str(),
                e.reason.as_str()
            ),
            ("node7", NodeAction::Drain, "healthd", "sgpu: x")
        );
        Ok(())
    }
}
