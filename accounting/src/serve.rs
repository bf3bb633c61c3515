//! Serving acctd's router under limits a hostile client cannot get around.
//!
//! `axum::serve` has no header-read timeout and no connection limit, so one client opening
//! sockets and sending a byte a minute would hold acctd's memory and tasks. [`serve`] accepts
//! connections itself and serves each with hyper under [`ServeLimits`]: at most
//! `max_connections` at once (one more is answered `503` and closed at once, without reading
//! it), request headers within `header_timeout` (else the connection is closed), and each
//! connection closed after `max_connection_age`. The
//! body's own deadline and size cap are the router's ([`crate::http::Limits`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (from the first byte, and for an idle
    /// keep-alive connection from the end of the previous answer).
    pub header_timeout: Duration,
    /// Longest life of one connection.
    pub max_connection_age: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
        }
    }
}

/// The answer to a connection over [`ServeLimits::max_connections`].
fn busy() -> Vec<u8> {
    let body = r#"{"error":"acctd serves its maximum number of connections; retry in a moment (sgpu-acctd --max-connections)"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Connection: close\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes (connections in
/// flight then finish on their own tasks).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors and the like: wait, do not spin
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: at the connection limit");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&busy()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.max_connection_age, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
                Err(_) => tracing::debug!(%peer, "connection closed at its maximum age"),
            }
            drop(permit);
        });
    }
}
