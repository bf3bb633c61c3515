//! The authentication extension point.
//!
//! Every request goes through an [`Authenticator`] before it is handled. MUNGE (issue 6 §2)
//! is not implemented yet: the only authenticator here, [`NoAuthentication`], authenticates
//! nobody and says so ([`Caller::Unauthenticated`]); the daemon therefore refuses to listen
//! on anything but loopback. The MUNGE implementation will decode the credential carried
//! by each request into a uid/gid ([`Caller::Uid`]), and authorisation (ingest only from
//! root/SlurmUser, users see their own jobs, admins everything) will be decided from it.

use axum::http::HeaderMap;

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No credential was checked (no authenticator configured).
    Unauthenticated,
    /// A verified local identity.
    Uid {
        /// User id.
        uid: u32,
        /// Primary group id.
        gid: u32,
    },
}

/// Why a request was not authenticated (answered 401).
#[derive(Debug, thiserror::Error)]
#[error("authentication failed: {0}")]
pub struct AuthError(pub String);

/// Turns a request's credential into a [`Caller`]; the MUNGE extension point.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates one request from its headers.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError>;

    /// Whether callers are really identified; `false` restricts acctd to loopback.
    fn is_real(&self) -> bool;
}

/// Checks nothing; every caller is [`Caller::Unauthenticated`]. Loopback only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuthentication;

impl Authenticator for NoAuthentication {
    fn authenticate(&self, _headers: &HeaderMap) -> Result<Caller, AuthError> {
        Ok(Caller::Unauthenticated)
    }

    fn is_real(&self) -> bool {
        false
    }
}
