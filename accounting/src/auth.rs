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

/// What a caller may read: everything, or only one user's jobs and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every job and total (admins; loopback without authentication).
    All,
    /// Only records and rollups whose user is this name.
    User(String),
}

/// Why an authenticated caller is refused (answered 403).
#[derive(Debug, thiserror::Error)]
#[error("not allowed: {0}")]
pub struct Denied(pub String);

/// Who may do what: ingest (root and the SlurmUser), read all (admins), read own (users).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Uids allowed to ingest records besides root (the SlurmUser's uid).
    pub ingest_uids: Vec<u32>,
    /// Uids that see everything and may run admin commands (root always may).
    pub admin_uids: Vec<u32>,
    /// Gids whose members (primary group) see everything and may run admin commands.
    pub admin_gids: Vec<u32>,
}

impl Policy {
    /// Whether `caller` is an admin (root, a listed uid or gid, or unauthenticated loopback).
    pub fn is_admin(&self, caller: &Caller) -> bool {
        match *caller {
            Caller::Unauthenticated => true,
            Caller::Uid { uid, gid } => {
                uid == 0 || self.admin_uids.contains(&uid) || self.admin_gids.contains(&gid)
            }
        }
    }

    /// Allows ingest only from root, the configured ingest uids, or loopback without auth.
    pub fn may_ingest(&self, caller: &Caller) -> Result<(), Denied> {
        match *caller {
            Caller::Unauthenticated => Ok(()),
            Caller::Uid { uid, .. } if uid == 0 || self.ingest_uids.contains(&uid) => Ok(()),
            Caller::Uid { uid, .. } => Err(Denied(format!(
                "uid {uid} may not send records; only root and the SlurmUser may \
                 (acctd --ingest-uid)"
            ))),
        }
    }

    /// What `caller` may read; a user is limited to their own name (looked up by uid).
    pub fn read_scope(&self, caller: &Caller) -> Result<ReadScope, Denied> {
        if self.is_admin(caller) {
            return Ok(ReadScope::All);
        }
        match *caller {
            Caller::Unauthenticated => Ok(ReadScope::All),
            Caller::Uid { uid, .. } => user_name(uid).map(ReadScope::User).ok_or_else(|| {
                Denied(format!(
                    "uid {uid} has no user name on the acctd host; add the user there \
                     (same passwd source as the cluster)"
                ))
            }),
        }
    }
}

/// The login name of `uid` on this host, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: all pointers are valid for the call; buf outlives pwd's use below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, pw_name points into buf and is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_str().ok().map(str::to_owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_listed_uids_ingest_others_do_not() {
        let p = Policy {
            ingest_uids: vec![64030],
            ..Policy::default()
        };
        assert!(p.may_ingest(&Caller::Uid { uid: 0, gid: 0 }).is_ok());
        assert!(p.may_ingest(&Caller::Uid { uid: 64030, gid: 1 }).is_ok());
        assert!(
            p.may_ingest(&Caller::Uid {
                uid: 1000,
                gid: 1000
            })
            .is_err()
        );
    }

    #[test]
    fn users_read_their_own_name_admins_all() {
        let p = Policy {
            admin_gids: vec![27],
            ..Policy::default()
        };
        assert_eq!(
            p.read_scope(&Caller::Uid { uid: 0, gid: 0 }).ok(),
            Some(ReadScope::All)
        );
        assert_eq!(
            p.read_scope(&Caller::Uid { uid: 4242, gid: 27 }).ok(),
            Some(ReadScope::All)
        );
        // uid 0's name exists everywhere; a plain user maps to its own name.
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(
            p.read_scope(&Caller::Uid {
                uid: 4_000_000_000,
                gid: 4
            })
            .is_err()
        );
    }
}
