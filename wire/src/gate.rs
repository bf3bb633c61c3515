//! The gates' readings from sgpu-healthd: the request a gate (`sgpu-prolog`, `sgpu-epilog`)
//! writes on healthd's root-only Unix socket (`gate_socket`), and healthd's answer.
//!
//! One request per connection: the gate writes one [`GateRequest`] as a JSON line (at most
//! [`MAX_REQUEST_BYTES`]), healthd answers one [`GateReadings`] (at most
//! [`MAX_ANSWER_BYTES`]) and closes. The snapshot is generic (`S`: the node library's
//! `NodeSnapshot`), so this crate needs only serde.
//!
//! # The age rule
//! `snapshot` was read by healthd's own NVML session at `snapshot_taken_at_ms`, at most
//! `gate_max_age_ms` before `answered_at_ms` (older, healthd reads a new one before it
//! answers); the GPUs in `fresh_gpus` had their compute processes, energy counter and MIG
//! devices read again at the request, after `snapshot_taken_at_ms`. A gate takes the answer
//! only when its own clock puts `snapshot_taken_at_ms` no more than `gate_max_age_ms` plus
//! its own wait (`gate_healthd_timeout_ms`) in the past and not in the future, and only when
//! every GPU of the job is in `fresh_gpus`; otherwise it reads NVML itself.

use serde::{Deserialize, Serialize};

use crate::answer;

/// The major schema version of the request and the answer.
pub const VERSION: u32 = 1;

/// The most bytes healthd reads of a request (a longer one is refused unanswered).
pub const MAX_REQUEST_BYTES: usize = 4096;

/// The most bytes a gate reads of an answer (a longer one is refused: NVML is read instead).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What a gate asks healthd for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRequest {
    /// Schema version ([`VERSION`]).
    pub version: Option<u32>,
    /// The Slurm node the gate runs for (`SLURMD_NODENAME`); healthd refuses another node's.
    pub node: String,
    /// The GPUs whose processes and energy must be read now, by device minor number
    /// (`/dev/nvidia<minor>`, from gres.conf). `None`: every GPU.
    pub minors: Option<Vec<u32>>,
}
answer!(GateRequest, VERSION, "a gate's request to sgpu-healthd");

/// healthd's answer: the node snapshot and what was read fresh for the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReadings<S> {
    /// Schema version ([`VERSION`]).
    pub version: Option<u32>,
    /// The Slurm node healthd serves; a gate refuses an answer for another node.
    pub node: String,
    /// When healthd answered, Unix ms.
    pub answered_at_ms: u64,
    /// When healthd read `snapshot`, Unix ms (see the age rule).
    pub snapshot_taken_at_ms: u64,
    /// The NVML indices whose processes, energy and MIG devices were read at the request.
    pub fresh_gpus: Vec<u32>,
    /// The node snapshot, fresh readings applied (`None`: healthd could not read NVML;
    /// `error` says why, and the gate reads NVML itself).
    pub snapshot: Option<S>,
    /// Why there is no snapshot, or why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
answer!(GateReadings<S>, VERSION, "sgpu-healthd's gate readings");

impl<S> GateReadings<S> {
    /// How old the snapshot was when healthd answered, ms.
    pub fn age_at_answer_ms(&self) -> u64 {
        self.answered_at_ms
            .saturating_sub(self.snapshot_taken_at_ms)
    }

    /// Checks the age rule at `now_ms` (the gate's clock) for a snapshot at most `max_age_ms`
    /// old when answered and a gate that waited at most `wait_ms`; `Err` says what is off.
    pub fn check_age(&self, now_ms: u64, max_age_ms: u64, wait_ms: u64) -> Result<u64, String> {
        if self.snapshot_taken_at_ms > now_ms.saturating_add(wait_ms) {
            return Err(format!(
                "the snapshot is dated {} ms in the future",
                self.snapshot_taken_at_ms - now_ms
            ));
        }
        if self.snapshot_taken_at_ms > self.answered_at_ms {
            return Err("the snapshot is dated after the answer".into());
        }
        let age = now_ms.saturating_sub(self.snapshot_taken_at_ms);
        let limit = max_age_ms.saturating_add(wait_ms);
        if age > limit {
            return Err(format!("the snapshot is {age} ms old (limit {limit} ms)"));
        }
        Ok(age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, decode};

    fn readings(taken: u64, answered: u64) -> GateReadings<Vec<u32>> {
        GateReadings {
            version: Some(VERSION),
            node: "node1".into(),
            answered_at_ms: answered,
            snapshot_taken_at_ms: taken,
            fresh_gpus: vec![0, 1],
            snapshot: Some(vec![7, 8]),
            error: None,
        }
    }

    #[test]
    fn request_and_readings_round_trip() {
        let req = GateRequest {
            version: Some(VERSION),
            node: "node1".into(),
            minors: Some(vec![0, 3]),
        };
        let back: GateRequest = decode(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let r = readings(1_000, 1_500);
        let back: GateReadings<Vec<u32>> = decode(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.age_at_answer_ms(), 500);
    }

    #[test]
    fn another_major_version_is_refused_by_name() {
        let mut r = readings(1_000, 1_500);
        r.version = Some(VERSION + 1);
        let e = decode::<GateReadings<Vec<u32>>>(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(
            matches!(e, DecodeError::Version { got, .. } if got == VERSION + 1),
            "{e}"
        );
    }

    #[test]
    fn age_rule() {
        // taken 2000 ms before the answer, read 50 ms later by a gate that waits 100 ms
        let r = readings(10_000, 12_000);
        assert_eq!(r.check_age(12_050, 2_000, 100), Ok(2_050));
        // older than max age plus the wait: refused, naming the age
        let e = r.check_age(12_200, 2_000, 100).unwrap_err();
        assert!(e.contains("2200 ms old"), "{e}");
        // dated in the future (beyond the wait) or after its own answer: refused
        assert!(
            readings(20_000, 20_000)
                .check_age(10_000, 2_000, 100)
                .is_err()
        );
        assert!(
            readings(12_000, 11_000)
                .check_age(12_000, 2_000, 100)
                .is_err()
        );
        // max age 0: only what healthd read within the gate's wait
        assert_eq!(readings(5_000, 5_000).check_age(5_080, 0, 100), Ok(80));
        assert!(readings(5_000, 5_000).check_age(5_101, 0, 100).is_err());
    }
}
