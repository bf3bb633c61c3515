//! Sends the node history events the gates and the daemon spool
//! ([`sgpu_nodelib::node_events::record`]) to acctd's `POST /v1/history`, next to the
//! usage-record forwarder ([`crate::forward`]), removing each only after acctd acknowledged it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sgpu_acct_client::Client;
use sgpu_spool::{EventSpool, NodeEvent};
use sgpu_wire::acctd::{EventBatch, HistoryPostAnswer};
use tracing::{info, warn};

/// The most events one request carries.
pub const MAX_EVENTS_PER_REQUEST: usize = 500;

/// Why a round of node-history forwarding stopped; the events stay in the spool and are
/// sent again.
#[derive(Debug, thiserror::Error)]
pub enum EventForwardError {
    /// The event spool could not be read or an acknowledged event not removed (the spool's
    /// error says what to fix).
    #[error(transparent)]
    Spool(#[from] sgpu_spool::SpoolError),
    /// acctd did not take the events (the client's error says why).
    #[error("POST /v1/history: {0}")]
    Post(sgpu_acct_client::ClientError),
}

/// Sends the pending events (up to [`MAX_EVENTS_PER_REQUEST`] per request) and removes
/// each acknowledged one; returns how many were sent. An unreadable file is left in place
/// and reported.
pub fn forward(spool_dir: &Path, client: &Client) -> Result<usize, EventForwardError> {
    let spool = EventSpool::open(spool_dir)?;
    let mut sent = 0;
    let pending = spool.pending()?;
    let mut good: Vec<(PathBuf, NodeEvent)> = Vec::new();
    for (path, read) in pending {
        match read {
            Ok(e) => good.push((path, e)),
            Err(e) => warn!("node history event {} skipped: {e}", path.display()),
        }
    }
    for chunk in good.chunks(MAX_EVENTS_PER_REQUEST) {
        let events: Vec<&NodeEvent> = chunk.iter().map(|(_, e)| e).collect();
        client
            .post::<_, HistoryPostAnswer>("/v1/history", &EventBatch { events })
            .map_err(EventForwardError::Post)?;
        for (path, _) in chunk {
            spool.remove(path)?;
        }
        sent += chunk.len();
    }
    Ok(sent)
}

/// Forwards node events every `interval`, for ever (a failure is logged and retried).
pub async fn run(spool_dir: PathBuf, client: Client, interval: Duration) {
    let mut failing = false;
    loop {
        let (dir, c) = (spool_dir.clone(), client.clone());
        match tokio::task::spawn_blocking(move || forward(&dir, &c)).await {
            Ok(Ok(n)) => {
                if n > 0 {
                    info!(events = n, "forwarded node history events to acctd");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    warn!("{e}; node history events stay in the spool and are retried");
                }
                failing = true;
            }
            Err(e) => warn!("node history forwarder: {e}"),
        }
        tokio::time::sleep(interval).await;
    }
}
