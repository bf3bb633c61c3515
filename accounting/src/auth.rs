//! Authentication and authorisation of acctd's callers.
//!
//! Every request goes through an [`Authenticator`] before it is handled. In production it
//! is [`MungeAuthenticator`]: each request carries `Authorization: MUNGE <credential>`, a
//! MUNGE credential (the service Slurm itself uses) whose payload is that request's
//! `"<METHOD> <path-and-query> sha256=<body digest>"` ([`sgpu_munge::request`]); the local
//! munged decodes it into the caller's uid/gid ([`Caller::Uid`]) and refuses forged,
//! expired and replayed credentials. Binding the payload to the request means a credential
//! cannot be used for any other request, nor with another body: acctd checks the method
//! and target before it reads the body, and the digest once it has read it.
//! [`NoAuthentication`] identifies nobody ([`Caller::Unauthenticated`]) and is allowed on
//! loopback only. The [`Policy`] then decides what a caller may do: ingest only from root
//! and the SlurmUser, users read their own jobs and totals, admins everything.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use nix::unistd::{Gid, Group, User, getgrouplist};

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

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credential is missing, invalid, forged, expired, replayed or for another
    /// request (answered 401).
    #[error("authentication failed: {0}")]
    Refused(String),
    /// acctd could not check the credential (its munged is down; answered 503).
    #[error("cannot check credentials: {0}")]
    Unavailable(String),
}

/// A request's authenticated caller, and the body its credential was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// Who made the request.
    pub caller: Caller,
    /// The SHA-256 the request's body must have (`None`: not checked, without
    /// authentication).
    pub body_sha256: Option<[u8; 32]>,
}

/// Turns a request's credential into a [`Caller`].
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates one request from its target (`"<METHOD> <path-and-query>"`) and
    /// headers, before its body is read. It may block (MUNGE asks munged): call it off the
    /// async workers.
    fn authenticate(
        &self,
        request_target: &str,
        headers: &HeaderMap,
    ) -> Result<Authenticated, AuthError>;

    /// Whether callers are really identified; `false` restricts acctd to loopback.
    fn is_real(&self) -> bool;
}

/// Checks nothing; every caller is [`Caller::Unauthenticated`]. Loopback only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuthentication;

impl Authenticator for NoAuthentication {
    fn authenticate(
        &self,
        _request_target: &str,
        _headers: &HeaderMap,
    ) -> Result<Authenticated, AuthError> {
        Ok(Authenticated {
            caller: Caller::Unauthenticated,
            body_sha256: None,
        })
    }

    fn is_real(&self) -> bool {
        false
    }
}

/// Authenticates with MUNGE: `Authorization: MUNGE <credential>`, decoded by the local
/// munged, whose payload must be this request's `"<METHOD> <path-and-query>"`.
#[derive(Debug, Clone, Default)]
pub struct MungeAuthenticator {
    socket: Option<PathBuf>,
}

impl MungeAuthenticator {
    /// Decodes with the munged at `socket` (`None`: libmunge's default socket).
    pub fn new(socket: Option<PathBuf>) -> MungeAuthenticator {
        MungeAuthenticator { socket }
    }
}

impl Authenticator for MungeAuthenticator {
    fn authenticate(
        &self,
        request_target: &str,
        headers: &HeaderMap,
    ) -> Result<Authenticated, AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or_else(|| {
            AuthError::Refused(
                "no credential: acctd requires MUNGE; send `Authorization: MUNGE <credential>` \
                 (sgpu and healthd do with [accounting] auth = \"munge\"; check that munged \
                 runs on the client host)"
                    .into(),
            )
        })?;
        let value = value
            .to_str()
            .map_err(|_| AuthError::Refused("the Authorization header is not ASCII".into()))?;
        let cred = match value.split_once(' ') {
            Some((scheme, cred)) if scheme.eq_ignore_ascii_case("munge") => cred.trim(),
            _ => {
                return Err(AuthError::Refused(
                    "the Authorization header must be `MUNGE <credential>`".into(),
                ));
            }
        };
        let decoded = sgpu_munge::decode(
            cred,
            &sgpu_munge::Options::with_socket(self.socket.as_deref()),
        )
        .map_err(|e| match e {
            sgpu_munge::MungeError::Daemon { .. } | sgpu_munge::MungeError::Other { .. } => {
                AuthError::Unavailable(e.to_string())
            }
            e => AuthError::Refused(e.to_string()),
        })?;
        let made_for = sgpu_munge::request::parse(&decoded.payload);
        let Some((target, digest)) = made_for.filter(|(t, _)| *t == request_target) else {
            return Err(AuthError::Refused(format!(
                "the MUNGE credential was made for {:?}, not for this request {request_target:?}; \
                 make one credential per request with that request's method, path and body \
                 digest (\"<METHOD> <path> sha256=<hex>\"; sgpu-acct-client does)",
                String::from_utf8_lossy(&decoded.payload)
            )));
        };
        debug_assert_eq!(target, request_target);
        Ok(Authenticated {
            caller: Caller::Uid {
                uid: decoded.uid,
                gid: decoded.gid,
            },
            body_sha256: Some(digest),
        })
    }

    fn is_real(&self) -> bool {
        true
    }
}

/// What a caller may read: everything, only one user's jobs and totals, or a coordinator's:
/// their own and those of the accounts they coordinate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every job and total (admins; loopback without authentication).
    All,
    /// Only records and rollups whose user is this name.
    User(String),
    /// An account coordinator ([`crate::coordinators`]): their own jobs and totals, and
    /// those whose account is one of `accounts`.
    Coordinator {
        /// The caller.
        user: String,
        /// The accounts they coordinate.
        accounts: BTreeSet<String>,
    },
}

impl ReadScope {
    /// Whether jobs and totals of `user` in `account` may be shown under this scope
    /// (`account`: the job's trusted one, see [`ReadScope::visible_records`]).
    pub fn allows(&self, user: &str, account: &str) -> bool {
        match self {
            ReadScope::All => true,
            ReadScope::User(me) => me == user,
            ReadScope::Coordinator { user: me, accounts } => {
                me == user || accounts.contains(account)
            }
        }
    }

    /// The records of one job this scope may see. A user sees their own records; a
    /// coordinator also every record of a job whose account, taken from its most trusted
    /// record (`job_end`, `job_start`, `job_usage`; never a `step_usage`, whose account the
    /// job's environment sets), is one they coordinate.
    pub fn visible_records(&self, records: Vec<sgpu_spool::Record>) -> Vec<sgpu_spool::Record> {
        let account = crate::report::jobs::trusted_account(&records).unwrap_or_default();
        records
            .into_iter()
            .filter(|r| self.allows(crate::http::record_user(r), &account))
            .collect()
    }
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
    /// Gids whose members (primary or supplementary group, as the acctd host's group
    /// database says) see everything and may run admin commands.
    pub admin_gids: Vec<u32>,
}

impl Policy {
    /// Whether `caller` is an admin (root, a listed uid or gid, or unauthenticated loopback).
    pub fn is_admin(&self, caller: &Caller) -> bool {
        match *caller {
            Caller::Unauthenticated => true,
            Caller::Uid { uid, gid } => {
                uid == 0
                    || self.admin_uids.contains(&uid)
                    || self.admin_gids.contains(&gid)
                    || (!self.admin_gids.is_empty()
                        && user_groups(uid, gid)
                            .iter()
                            .any(|g| self.admin_gids.contains(g)))
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
    sgpu_spool::passwd::user_name(uid)
}

/// The uid of user `name`, or `name` itself when it is a number.
pub fn user_id(name: &str) -> Option<u32> {
    if let Ok(uid) = name.parse() {
        return Some(uid);
    }
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// The gid of group `name`, or `name` itself when it is a number.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The groups of `uid` (primary `gid` and its supplementary groups) on this host.
pub fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Some(name) = user_name(uid).and_then(|n| std::ffi::CString::new(n).ok()) else {
        return vec![gid];
    };
    match getgrouplist(&name, Gid::from_raw(gid)) {
        Ok(groups) => groups.into_iter().map(Gid::as_raw).collect(),
        Err(_) => vec![gid],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn munge_refuses_missing_and_non_munge_authorization_before_decoding() {
        let auth = MungeAuthenticator::new(Some("/nonexistent/munge.socket".into()));
        let mut h = HeaderMap::new();
        let e = auth.authenticate("GET /v1/report", &h).unwrap_err();
        assert!(
            matches!(&e, AuthError::Refused(m) if m.contains("MUNGE")),
            "{e}"
        );
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        let e = auth.authenticate("GET /v1/report", &h).unwrap_err();
        assert!(matches!(e, AuthError::Refused(_)), "{e}");
        // A well-formed header reaches munged; none at that socket: unavailable, not refused.
        h.insert(AUTHORIZATION, "munge MUNGE:abc:".parse().unwrap());
        let e = auth.authenticate("GET /v1/report", &h).unwrap_err();
        assert!(
            matches!(&e, AuthError::Unavailable(m) if m.contains("munged")),
            "{e}"
        );
        assert!(auth.is_real() && !NoAuthentication.is_real());
    }

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
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(user_id("64030"), Some(64030));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-sgpu"), None);
        assert!(user_groups(0, 0).contains(&0));
        assert!(
            p.read_scope(&Caller::Uid {
                uid: 4_000_000_000,
                gid: 4
            })
            .is_err()
        );
    }
}
