//! The job's window as slurmctld has it (`StartTime`, `EndTime`), for the job-end record.
//!
//! `sacct`'s `Elapsed` is `EndTime − StartTime`, whole seconds set by slurmctld; the gates'
//! own window (prolog start to epilog start) is later by their lag. Slurm 22.05 puts neither
//! time in the Prolog/Epilog environment, so the epilog asks slurmctld once per GPU job per
//! node: `SLURM_TIME_FORMAT=%s scontrol show job -o ID`, under a short deadline. The job is
//! completing by then, so its `EndTime` is final; while slurmctld still shows it running (its
//! `EndTime` is then the time limit's), the epilog asks again a few times, then goes without.
//! The prolog asks nothing: no RPC on the job's launch path.

use std::time::Duration;

use sgpu_healthd::config::Config;
use sgpu_healthd::slurmctl::{Scontrol, SlurmctlError, fields};
use sgpu_spool::SlurmWindow;

/// The deadline of one `scontrol show job` call from the epilog.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times the epilog asks while the job's end is not final yet.
pub const ATTEMPTS: u32 = 3;
/// The pause between those attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Job states whose `EndTime` is the job's real end (`COMPLETING` and the final states).
const ENDED_STATES: &[&str] = &[
    "COMPLETING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
];

/// Why the job's Slurm window is not known.
#[derive(Debug, thiserror::Error)]
pub enum TimesError {
    /// scontrol could not be found, run, or did not answer in time.
    #[error("{0}")]
    Query(#[from] SlurmctlError),
    /// The output has no line for the job.
    #[error("`scontrol show job -o {0}` printed no line with JobId={0}")]
    NoJob(u32),
    /// A field is absent from the job's line.
    #[error("`scontrol show job` printed no {0}=")]
    Missing(&'static str),
    /// A time is not set yet (`Unknown`, `None`, 0).
    #[error("{field}={value}: not set yet")]
    Unset {
        /// `StartTime` or `EndTime`.
        field: &'static str,
        /// What scontrol printed.
        value: String,
    },
    /// A time is not Unix seconds (`SLURM_TIME_FORMAT=%s` was not honoured).
    #[error("{field}={value} is not Unix seconds; does this scontrol honour SLURM_TIME_FORMAT?")]
    Malformed {
        /// `StartTime` or `EndTime`.
        field: &'static str,
        /// What scontrol printed.
        value: String,
    },
    /// The job has not ended as far as slurmctld knows, so `EndTime` is only projected.
    #[error("JobState={0}: EndTime is not final yet")]
    NotEnded(String),
    /// `EndTime` is before `StartTime`.
    #[error("EndTime={end} is before StartTime={start}")]
    Reversed {
        /// StartTime, s.
        start: u64,
        /// EndTime, s.
        end: u64,
    },
}

impl TimesError {
    /// Whether asking again shortly may give an answer (slurmctld has not closed the job yet).
    pub fn may_change(&self) -> bool {
        matches!(
            self,
            TimesError::NotEnded(_)
                | TimesError::Unset {
                    field: "EndTime",
                    ..
                }
        )
    }
}

fn epoch(field: &'static str, value: Option<&String>) -> Result<u64, TimesError> {
    let value = value.ok_or(TimesError::Missing(field))?;
    match value.as_str() {
        "Unknown" | "None" | "0" | "" => Err(TimesError::Unset {
            field,
            value: value.clone(),
        }),
        v => v.parse().map_err(|_| TimesError::Malformed {
            field,
            value: value.clone(),
        }),
    }
}

/// Reads job `job_id`'s window from `scontrol show job -o` output printed with
/// `SLURM_TIME_FORMAT=%s`; the job must have ended (`JobState` `COMPLETING` or final).
pub fn parse_job_times(output: &str, job_id: u32) -> Result<SlurmWindow, TimesError> {
    let id = job_id.to_string();
    let line = output
        .lines()
        .map(fields)
        .find(|f| f.iter().any(|(k, v)| *k == "JobId" && *v == id))
        .ok_or(TimesError::NoJob(job_id))?;
    let get = |key: &str| line.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    let state = get("JobState").ok_or(TimesError::Missing("JobState"))?;
    if !ENDED_STATES.contains(&state.as_str()) {
        return Err(TimesError::NotEnded(state.clone()));
    }
    let start_s = epoch("StartTime", get("StartTime"))?;
    let end_s = epoch("EndTime", get("EndTime"))?;
    if end_s < start_s {
        return Err(TimesError::Reversed {
            start: start_s,
            end: end_s,
        });
    }
    Ok(SlurmWindow { start_s, end_s })
}

/// Asks slurmctld for the window of `job_id`, at most [`ATTEMPTS`] times while its end is
/// not final, each call under [`QUERY_TIMEOUT`].
pub fn query(scontrol: &Scontrol, job_id: u32) -> Result<SlurmWindow, TimesError> {
    let mut attempt = 1;
    loop {
        let out = scontrol.show_job_epoch(job_id)?;
        match parse_job_times(&out, job_id) {
            Err(e) if e.may_change() && attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
            other => return other,
        }
    }
}

/// The window for the job-end record when `slurm_job_times` is on: `Ok(None)` when it is off.
pub fn for_epilog(config: &Config, job_id: u32) -> Result<Option<SlurmWindow>, TimesError> {
    if !config.slurm_job_times {
        return Ok(None);
    }
    let scontrol = Scontrol::locate(config.scontrol.as_deref())?.with_timeout(QUERY_TIMEOUT);
    query(&scontrol, job_id).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDED: &str = "JobId=42 JobName=x UserId=alice(1001) JobState=COMPLETING Reason=None \
         RunTime=00:00:03 SubmitTime=1700000000 StartTime=1700000001 EndTime=1700000004 \
         Deadline=N/A NodeList=node1 TRES=cpu=1,gres/gpu=2";

    #[test]
    fn reads_epoch_start_and_end() {
        assert_eq!(
            parse_job_times(ENDED, 42).unwrap(),
            SlurmWindow {
                start_s: 1_700_000_001,
                end_s: 1_700_000_004
            }
        );
        let done = ENDED.replace("COMPLETING", "CANCELLED");
        assert!(parse_job_times(&done, 42).is_ok());
        // the job's own line among others (a heterogeneous job lists its components)
        let two = format!("{}\n{ENDED}\n", ENDED.replace("JobId=42", "JobId=43"));
        assert_eq!(parse_job_times(&two, 42).unwrap().start_s, 1_700_000_001);
    }

    #[test]
    fn unknown_or_running_is_not_an_answer_yet() {
        let e = parse_job_times(&ENDED.replace("EndTime=1700000004", "EndTime=Unknown"), 42)
            .unwrap_err();
        assert!(
            matches!(
                e,
                TimesError::Unset {
                    field: "EndTime",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.may_change());
        let e = parse_job_times(&ENDED.replace("COMPLETING", "RUNNING"), 42).unwrap_err();
        assert!(
            matches!(e, TimesError::NotEnded(ref s) if s == "RUNNING"),
            "{e}"
        );
        assert!(e.may_change());
        let e =
            parse_job_times(&ENDED.replace("StartTime=1700000001", "StartTime=0"), 42).unwrap_err();
        assert!(
            matches!(
                e,
                TimesError::Unset {
                    field: "StartTime",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.may_change());
    }

    #[test]
    fn missing_malformed_or_other_job_is_an_error() {
        let e = parse_job_times(ENDED, 7).unwrap_err();
        assert!(matches!(e, TimesError::NoJob(7)), "{e}");
        assert!(!e.may_change());
        assert!(matches!(
            parse_job_times("", 42),
            Err(TimesError::NoJob(42))
        ));
        let e = parse_job_times(&ENDED.replace("EndTime=1700000004 ", ""), 42).unwrap_err();
        assert!(matches!(e, TimesError::Missing("EndTime")), "{e}");
        let e = parse_job_times(
            &ENDED.replace("StartTime=1700000001", "StartTime=2023-11-14T22:13:21"),
            42,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                TimesError::Malformed {
                    field: "StartTime",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("SLURM_TIME_FORMAT"), "{e}");
        let e = parse_job_times(
            &ENDED.replace("EndTime=1700000004", "EndTime=1600000000"),
            42,
        )
        .unwrap_err();
        assert!(matches!(e, TimesError::Reversed { .. }), "{e}");
        let e = parse_job_times(&ENDED.replace("JobState=COMPLETING ", ""), 42).unwrap_err();
        assert!(matches!(e, TimesError::Missing("JobState")), "{e}");
    }

    /// A fake scontrol that prints `lines` one per call (the last one again after that).
    fn fake_scontrol(dir: &std::path::Path, lines: &[&str]) -> Scontrol {
        let mut script = String::from("#!/bin/sh\nn=$(cat \"$0.n\" 2>/dev/null || echo 0)\n");
        script.push_str("echo $((n + 1)) > \"$0.n\"\ncase $n in\n");
        for (i, l) in lines.iter().enumerate() {
            script.push_str(&format!("{i}) echo '{l}' ;;\n"));
        }
        script.push_str(&format!("*) echo '{}' ;;\nesac\n", lines[lines.len() - 1]));
        let path = dir.join("scontrol");
        std::fs::write(&path, script).unwrap();
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).unwrap();
        Scontrol::locate(Some(&path)).unwrap()
    }

    fn calls(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("scontrol.n")).unwrap()
    }

    #[test]
    fn asks_again_while_the_job_is_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let running = ENDED.replace("COMPLETING", "RUNNING");
        let sc = fake_scontrol(dir.path(), &[&running, ENDED]);
        assert_eq!(query(&sc, 42).unwrap().end_s, 1_700_000_004);
        assert_eq!(calls(dir.path()).trim(), "2");

        // never ends: gives up after ATTEMPTS calls
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_scontrol(dir.path(), &[&running]);
        assert!(matches!(query(&sc, 42), Err(TimesError::NotEnded(_))));
        assert_eq!(calls(dir.path()).trim(), ATTEMPTS.to_string());

        // an answer that cannot change is not asked again
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_scontrol(dir.path(), &["JobId=9 JobState=COMPLETED"]);
        assert!(matches!(query(&sc, 42), Err(TimesError::NoJob(42))));
        assert_eq!(calls(dir.path()).trim(), "1");
    }

    #[test]
    fn off_in_the_config_asks_nothing() {
        let config = Config {
            slurm_job_times: false,
            scontrol: Some("/nonexistent/scontrol".into()),
            ..Config::default()
        };
        assert!(matches!(for_epilog(&config, 42), Ok(None)));
        let on = Config {
            slurm_job_times: true,
            ..config
        };
        assert!(matches!(
            for_epilog(&on, 42),
            Err(TimesError::Query(SlurmctlError::Spawn { .. }))
        ));
    }
}
