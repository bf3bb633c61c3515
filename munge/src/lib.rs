//! MUNGE credentials for sgpu: a small safe API over libmunge (bindings generated from
//! `munge.h` by bindgen).
//!
//! MUNGE is the credential service Slurm itself uses. A client asks the local `munged` to
//! [`encode`] a payload into a credential that names the caller's uid and gid; the receiving
//! service asks its `munged` to [`decode`] it, which checks the credential's MAC, its
//! time-to-live and that it was not already decoded (replay). In sgpu, the acctd client
//! (`sgpu-acct-client`) sends one credential per request, whose payload is that request's
//! `"<METHOD> <path-and-query> sha256=<body digest>"` ([`request`]), and sgpu-acctd decodes
//! it to learn who is calling.
//!
//! libmunge contexts are not thread-safe: each call here creates and destroys its own.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

pub mod request;

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unused_imports,
    missing_docs,
    clippy::all
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/munge_bindings.rs"));
}

/// Options for [`encode`] and [`decode`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// munged's socket; `None` uses libmunge's default (`/run/munge/munge.socket.2`).
    pub socket: Option<PathBuf>,
    /// Credential time-to-live in seconds (encode only); `None` uses munged's default (300).
    pub ttl: Option<u32>,
}

impl Options {
    /// Options that talk to munged at `socket`.
    pub fn with_socket(socket: Option<&Path>) -> Options {
        Options {
            socket: socket.map(Path::to_path_buf),
            ttl: None,
        }
    }
}

/// A credential decoded and verified by munged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The uid of the process that encoded the credential.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The payload it carries.
    pub payload: Vec<u8>,
    /// When it was encoded, seconds since the Unix epoch.
    pub encode_time: i64,
    /// Its time-to-live, seconds.
    pub ttl: u32,
}

/// Why a credential could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MungeError {
    /// The credential is older than its time-to-live (plus munged's clock-skew allowance).
    #[error("the MUNGE credential has expired; make a new one for every request")]
    Expired,
    /// The credential was encoded in the future (clocks differ between hosts).
    #[error(
        "the MUNGE credential is rewound (encoded in the future); check that the hosts' \
         clocks agree (NTP)"
    )]
    Rewound,
    /// The credential was already decoded once.
    #[error("the MUNGE credential was replayed (it has already been used once)")]
    Replayed,
    /// Not a valid credential: malformed, forged, from another key or realm.
    #[error("invalid MUNGE credential: {0}")]
    Invalid(String),
    /// This process may not decode the credential (it was restricted to another uid/gid).
    #[error("not authorized to decode this MUNGE credential: {0}")]
    Unauthorized(String),
    /// munged could not be reached.
    #[error(
        "cannot talk to munged{socket}: {message}; check that munged is running \
         (systemctl status munge) and that the socket path is right",
        socket = .socket.as_ref().map(|s| format!(" at {}", s.display())).unwrap_or_default()
    )]
    Daemon {
        /// The socket tried, if not the default.
        socket: Option<PathBuf>,
        /// libmunge's explanation.
        message: String,
    },
    /// Any other libmunge failure (bad argument, out of memory, ...).
    #[error("MUNGE error {code}: {message}")]
    Other {
        /// The `munge_err_t` value.
        code: u32,
        /// libmunge's explanation.
        message: String,
    },
}

/// One libmunge context, destroyed on drop.
struct Ctx {
    raw: ffi::munge_ctx_t,
    socket: Option<PathBuf>,
}

impl Ctx {
    fn new(opts: &Options) -> Result<Ctx, MungeError> {
        // SAFETY: plain constructor; NULL on allocation failure.
        let raw = unsafe { ffi::munge_ctx_create() };
        if raw.is_null() {
            return Err(MungeError::Other {
                code: ffi::EMUNGE_NO_MEMORY,
                message: "cannot create a MUNGE context (out of memory)".into(),
            });
        }
        let ctx = Ctx {
            raw,
            socket: opts.socket.clone(),
        };
        if let Some(socket) = &opts.socket {
            let c = CString::new(socket.as_os_str().as_encoded_bytes()).map_err(|_| {
                MungeError::Other {
                    code: ffi::EMUNGE_BAD_ARG,
                    message: format!("socket path {} contains a NUL byte", socket.display()),
                }
            })?;
            // SAFETY: ctx is valid; MUNGE_OPT_SOCKET takes a `char *`, which libmunge copies.
            let rc =
                unsafe { ffi::munge_ctx_set(ctx.raw, ffi::MUNGE_OPT_SOCKET as c_int, c.as_ptr()) };
            ctx.check(rc)?;
        }
        if let Some(ttl) = opts.ttl {
            let ttl = c_int::try_from(ttl).unwrap_or(c_int::MAX);
            // SAFETY: ctx is valid; MUNGE_OPT_TTL takes an `int`.
            let rc = unsafe { ffi::munge_ctx_set(ctx.raw, ffi::MUNGE_OPT_TTL as c_int, ttl) };
            ctx.check(rc)?;
        }
        Ok(ctx)
    }

    /// libmunge's message for the last error on this context.
    fn message(&self, rc: ffi::munge_err_t) -> String {
        // SAFETY: ctx is valid; the returned string (if any) lives as long as the context.
        let p = unsafe { ffi::munge_ctx_strerror(self.raw) };
        let p = if p.is_null() {
            // SAFETY: munge_strerror returns a static string for every code.
            unsafe { ffi::munge_strerror(rc) }
        } else {
            p
        };
        if p.is_null() {
            return format!("error {rc}");
        }
        // SAFETY: p is a NUL-terminated string owned by libmunge, valid here.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, rc: ffi::munge_err_t) -> Result<(), MungeError> {
        if rc == ffi::EMUNGE_SUCCESS {
            return Ok(());
        }
        let message = self.message(rc);
        Err(match rc {
            ffi::EMUNGE_CRED_EXPIRED => MungeError::Expired,
            ffi::EMUNGE_CRED_REWOUND => MungeError::Rewound,
            ffi::EMUNGE_CRED_REPLAYED => MungeError::Replayed,
            ffi::EMUNGE_BAD_CRED
            | ffi::EMUNGE_BAD_VERSION
            | ffi::EMUNGE_BAD_CIPHER
            | ffi::EMUNGE_BAD_MAC
            | ffi::EMUNGE_BAD_ZIP
            | ffi::EMUNGE_BAD_REALM
            | ffi::EMUNGE_CRED_INVALID => MungeError::Invalid(message),
            ffi::EMUNGE_CRED_UNAUTHORIZED => MungeError::Unauthorized(message),
            ffi::EMUNGE_SOCKET | ffi::EMUNGE_TIMEOUT => MungeError::Daemon {
                socket: self.socket.clone(),
                message,
            },
            code => MungeError::Other { code, message },
        })
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: raw came from munge_ctx_create and is destroyed once.
        unsafe { ffi::munge_ctx_destroy(self.raw) }
    }
}

/// Frees memory that libmunge allocated with malloc.
fn free<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: p came from libmunge's malloc and is freed once.
        unsafe { libc::free(p.cast()) }
    }
}

/// Asks munged for a credential carrying `payload` and this process's uid/gid.
pub fn encode(payload: &[u8], opts: &Options) -> Result<String, MungeError> {
    let ctx = Ctx::new(opts)?;
    let len = c_int::try_from(payload.len()).map_err(|_| MungeError::Other {
        code: ffi::EMUNGE_BAD_LENGTH,
        message: format!("payload of {} bytes is too long", payload.len()),
    })?;
    let mut cred: *mut c_char = std::ptr::null_mut();
    // SAFETY: ctx is valid; payload is readable for len bytes; cred receives a malloc'd
    // NUL-terminated string that we free below.
    let rc =
        unsafe { ffi::munge_encode(&mut cred, ctx.raw, payload.as_ptr().cast::<c_void>(), len) };
    let result = ctx.check(rc).and_then(|()| {
        if cred.is_null() {
            return Err(MungeError::Other {
                code: ffi::EMUNGE_SNAFU,
                message: "munged returned no credential".into(),
            });
        }
        // SAFETY: on success cred is a NUL-terminated string.
        Ok(unsafe { CStr::from_ptr(cred) }
            .to_string_lossy()
            .into_owned())
    });
    free(cred);
    result
}

/// Asks munged to verify `cred`; returns who made it and what it carries.
///
/// munged refuses a credential that is malformed or forged ([`MungeError::Invalid`]),
/// older than its time-to-live ([`MungeError::Expired`]), or already decoded once
/// ([`MungeError::Replayed`]).
pub fn decode(cred: &str, opts: &Options) -> Result<Decoded, MungeError> {
    let ctx = Ctx::new(opts)?;
    let c = CString::new(cred.trim())
        .map_err(|_| MungeError::Invalid("the credential contains a NUL byte".into()))?;
    let mut buf: *mut c_void = std::ptr::null_mut();
    let mut len: c_int = 0;
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: ctx and c are valid; the out-pointers are valid; buf receives malloc'd memory
    // (also on some errors) that we free below.
    let rc =
        unsafe { ffi::munge_decode(c.as_ptr(), ctx.raw, &mut buf, &mut len, &mut uid, &mut gid) };
    let payload = if buf.is_null() || len <= 0 {
        Vec::new()
    } else {
        // SAFETY: buf holds len bytes written by libmunge.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) }.to_vec()
    };
    free(buf);
    ctx.check(rc)?;
    let mut encode_time: libc::time_t = 0;
    // SAFETY: ctx is valid; MUNGE_OPT_ENCODE_TIME takes a `time_t *`.
    let rc = unsafe {
        ffi::munge_ctx_get(
            ctx.raw,
            ffi::MUNGE_OPT_ENCODE_TIME as c_int,
            &mut encode_time as *mut libc::time_t,
        )
    };
    ctx.check(rc)?;
    let mut ttl: c_int = 0;
    // SAFETY: ctx is valid; MUNGE_OPT_TTL takes an `int *`.
    let rc =
        unsafe { ffi::munge_ctx_get(ctx.raw, ffi::MUNGE_OPT_TTL as c_int, &mut ttl as *mut c_int) };
    ctx.check(rc)?;
    // time_t is i64 on 64-bit Linux, i32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let encode_time = i64::from(encode_time);
    Ok(Decoded {
        uid,
        gid,
        payload,
        encode_time,
        ttl: u32::try_from(ttl).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the system munged answers (the test cluster's `tests/cluster/up` starts it).
    fn munged_up() -> bool {
        match encode(b"", &Options::default()) {
            Ok(_) => true,
            Err(MungeError::Daemon { .. }) => {
                eprintln!("munged is not running: start it (tests/cluster/up does)");
                false
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn round_trip_names_this_process_and_refuses_replay() {
        assert!(munged_up(), "these tests need the system munged");
        let cred = encode(
            b"GET /v1/report?start=2024-03-01&end=2024-03-02",
            &Options::default(),
        )
        .unwrap();
        assert!(cred.starts_with("MUNGE:"), "{cred}");
        let d = decode(&cred, &Options::default()).unwrap();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((d.uid, d.gid), (uid, gid));
        assert_eq!(d.payload, b"GET /v1/report?start=2024-03-01&end=2024-03-02");
        assert!(d.ttl > 0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (d.encode_time - now).abs() < 60,
            "{} vs {now}",
            d.encode_time
        );
        assert_eq!(
            decode(&cred, &Options::default()),
            Err(MungeError::Replayed)
        );
    }

    #[test]
    fn ttl_is_carried_and_garbage_is_invalid() {
        assert!(munged_up(), "these tests need the system munged");
        let opts = Options {
            ttl: Some(7),
            ..Options::default()
        };
        let d = decode(&encode(b"", &opts).unwrap(), &Options::default()).unwrap();
        assert_eq!(d.ttl, 7);
        assert!(d.payload.is_empty());
        assert!(matches!(
            decode(
                "MUNGE:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA:",
                &Options::default()
            ),
            Err(MungeError::Invalid(_))
        ));
        assert!(matches!(
            decode("hello", &Options::default()),
            Err(MungeError::Invalid(_))
        ));
        // A tampered credential (one character of the body changed) fails its MAC.
        let cred = encode(b"POST /v1/records", &Options::default()).unwrap();
        let mut bytes = cred.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            decode(&forged, &Options::default()),
            Err(MungeError::Invalid(_))
        ));
    }

    #[test]
    fn a_missing_socket_says_to_check_munged() {
        let opts = Options::with_socket(Some(Path::new("/nonexistent/munge.socket")));
        let e = encode(b"x", &opts).unwrap_err();
        assert!(matches!(e, MungeError::Daemon { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("munged"), "{text}");
        assert!(text.contains("/nonexistent/munge.socket"), "{text}");
    }
}
