//! The gates' readings from healthd: where healthd serves them and how old they may be.
//!
//! ```toml
//! gate_socket = "/run/sgpu/healthd.sock"   # default; "off": healthd serves none, the gates read NVML
//! gate_max_age_ms = 2000                   # the snapshot healthd answers with is at most this old
//! gate_healthd_timeout_ms = 250            # the gate's whole wait for healthd, then its own NVML
//! ```
//!
//! Top-level keys of `sgpu.toml` (healthd and the gates read the same file); see
//! [`crate::gate_client`] for the protocol and the trust rule (root peer only).

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::accounting::Invalid;

/// Default path of healthd's gate socket.
pub const DEFAULT_GATE_SOCKET: &str = "/run/sgpu/healthd.sock";

/// Default oldest snapshot healthd answers a gate with, ms.
pub const DEFAULT_GATE_MAX_AGE_MS: u64 = 2000;

/// Default time a gate waits for healthd's answer in all (connect, ask, read), ms.
pub const DEFAULT_GATE_HEALTHD_TIMEOUT_MS: u64 = 250;

/// The gate socket settings (`gate_socket`, `gate_max_age_ms`, `gate_healthd_timeout_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSettings {
    /// The Unix socket healthd serves gate readings on (`None`: `gate_socket = "off"`).
    pub socket: Option<PathBuf>,
    /// The oldest snapshot healthd answers with; older, it takes a fresh one first (0:
    /// always fresh). The gate refuses an answer older than this plus its own timeout.
    pub max_age: Duration,
    /// The gate's whole wait for healthd before it reads NVML itself.
    pub timeout: Duration,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            socket: Some(PathBuf::from(DEFAULT_GATE_SOCKET)),
            max_age: Duration::from_millis(DEFAULT_GATE_MAX_AGE_MS),
            timeout: Duration::from_millis(DEFAULT_GATE_HEALTHD_TIMEOUT_MS),
        }
    }
}

/// The three keys as written.
pub(super) struct RawGate<'a> {
    pub(super) socket: Option<&'a Spanned<String>>,
    pub(super) max_age_ms: Option<&'a Spanned<u64>>,
    pub(super) timeout_ms: Option<&'a Spanned<u64>>,
}

impl RawGate<'_> {
    /// Checks every value, naming the key of the first bad one.
    pub(super) fn validate(&self) -> Result<GateSettings, Invalid> {
        let mut s = GateSettings::default();
        if let Some(v) = self.socket {
            let text = v.get_ref().trim();
            s.socket = if text == "off" {
                None
            } else {
                let path = PathBuf::from(text);
                if !path.is_absolute() || text.len() > 100 {
                    return Err((
                        v.span().start,
                        "gate_socket".into(),
                        format!(
                            "{text:?} is not an absolute path of at most 100 bytes \
                             (a Unix socket's limit) or \"off\""
                        ),
                    ));
                }
                Some(path)
            };
        }
        if let Some(v) = self.max_age_ms {
            let ms = *v.get_ref();
            if ms > 60_000 {
                return Err((
                    v.span().start,
                    "gate_max_age_ms".into(),
                    format!("{ms} is out of range (0 to 60000 ms)"),
                ));
            }
            s.max_age = Duration::from_millis(ms);
        }
        if let Some(v) = self.timeout_ms {
            let ms = *v.get_ref();
            if !(1..=10_000).contains(&ms) {
                return Err((
                    v.span().start,
                    "gate_healthd_timeout_ms".into(),
                    format!("{ms} is out of range (1 to 10000 ms)"),
                ));
            }
            s.timeout = Duration::from_millis(ms);
        }
        Ok(s)
    }
}
