//! The job-start and job-end records the gates put in the node spool for accounting.
//!
//! Energy is the NVML total-energy counter's delta per GPU between prolog and epilog.
//! Allocated GPU time is GPUs x the job's window as slurmctld has it (`StartTime` to
//! `EndTime`, whole seconds: exactly what `sacct` accounts) when the epilog could ask for it
//! (see [`crate::slurm_times`]), else GPUs x the wall time between prolog and epilog, in ms.

use sgpu_nodelib::config::Config;
use sgpu_nodelib::gpu::NodeSnapshot;
use sgpu_spool::{
    GpuEnd, GpuRef, JobEnd, JobStart, Record, RecordBody, RecordId, RecordKind, SlurmWindow, Spool,
};

use crate::env::JobEnv;
use crate::handoff::JobStartState;

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The job's environment lacks what a record needs.
    #[error("{0} is not set; slurmd sets it for every Prolog/Epilog")]
    Missing(&'static str),
    /// The record is invalid (the message names the field).
    #[error("{0}")]
    Record(#[from] sgpu_spool::RecordError),
    /// The spool could not take it.
    #[error("{0}")]
    Spool(#[from] sgpu_spool::SpoolError),
}

/// The identity of `job`'s `kind` record for run `run` (the prolog's note's, see
/// [`sgpu_spool::job_note`]).
fn id(job: &JobEnv, run: u32, kind: RecordKind) -> Result<RecordId, RecordsError> {
    let cluster = job
        .cluster
        .clone()
        .ok_or(RecordsError::Missing("SLURM_CLUSTER_NAME"))?;
    Ok(RecordId::new(cluster, job.job_id, None, job.node.clone(), kind)?.with_run(run)?)
}

fn user(job: &JobEnv) -> Result<(String, u32), RecordsError> {
    let user = job
        .user
        .clone()
        .ok_or(RecordsError::Missing("SLURM_JOB_USER"))?;
    let uid = job.uid.ok_or(RecordsError::Missing("SLURM_JOB_UID"))?;
    Ok((user, uid))
}

/// The job-start record for a job whose prolog passed.
pub fn start_record(job: &JobEnv, start: &JobStartState) -> Result<Record, RecordsError> {
    let (user, uid) = user(job)?;
    let body = JobStart {
        user,
        uid,
        account: job.account.clone(),
        partition: job.partition.clone(),
        start_time: start.start_ms,
        gpus: start
            .gpus
            .iter()
            .map(|g| GpuRef {
                index: g.slurm_index,
                uuid: g.record_uuid(),
                name: g.name.clone(),
                // a slice's note holds its GPU's counter, not the slice's: none here
                energy_mj: if g.mig.is_some() { None } else { g.energy_mj },
                mig: g.mig.clone(),
            })
            .collect(),
    };
    Ok(Record::new(
        id(job, start.run, RecordKind::JobStart)?,
        start.start_ms,
        RecordBody::JobStart(body),
    )?)
}

/// The job-end record: energy deltas from the prolog's counters to `snapshot`'s, allocated
/// GPU time over Slurm's `window` when known, else from the prolog's start to `end_ms`.
/// Without the prolog's note the job's start is unknown: start = end, no energy, no
/// allocated time (the record still says the job ran here and ended). The record's run is
/// the note's ([`JobStartState::run`]).
pub fn end_record(
    job: &JobEnv,
    start: Option<&JobStartState>,
    snapshot: Option<&NodeSnapshot>,
    end_ms: u64,
    window: Option<SlurmWindow>,
) -> Result<Record, RecordsError> {
    let (user, uid) = user(job)?;
    let start_ms = start.map_or(end_ms, |s| s.start_ms.min(end_ms));
    let gpus: Vec<GpuEnd> = match start {
        Some(s) => s
            .gpus
            .iter()
            .map(|g| {
                let now = snapshot.and_then(|snap| {
                    snap.gpus.iter().find(|n| match (&g.uuid, n.uuid()) {
                        // a MIG slice's counter is its GPU's (the UUID is the slice's)
                        _ if g.mig.is_some() => n.index == g.nvml_index,
                        // follow the GPU by UUID; its NVML index may change across a reload
                        (Some(u), Some(nu)) => u == nu,
                        _ => n.index == g.nvml_index,
                    })
                });
                let energy_end_mj = now.and_then(|n| n.energy_mj.value().copied());
                // a counter that went backwards (driver reload resets it) gives no delta
                let energy_delta_mj = match (g.energy_mj, energy_end_mj) {
                    (Some(a), Some(b)) if b >= a => Some(b - a),
                    _ => None,
                };
                let (energy_start_mj, energy_end_mj, energy_delta_mj) = match &g.mig {
                    // a slice: its share of the GPU's energy, without the GPU's counters
                    Some(share) => (None, None, energy_delta_mj.map(|d| share.part(d))),
                    None if energy_delta_mj.is_some() => {
                        (g.energy_mj, energy_end_mj, energy_delta_mj)
                    }
                    None => (g.energy_mj, None, None),
                };
                GpuEnd {
                    index: g.slurm_index,
                    uuid: g.record_uuid(),
                    name: g.name.clone(),
                    energy_start_mj,
                    energy_end_mj,
                    energy_delta_mj,
                    mig: g.mig.clone(),
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let span_ms = match window {
        Some(w) => w.end_s.saturating_sub(w.start_s).saturating_mul(1000),
        None => end_ms - start_ms,
    };
    let allocated_gpu_ms = span_ms.saturating_mul(gpus.len() as u64);
    let body = JobEnd {
        user,
        uid,
        account: job.account.clone(),
        partition: job.partition.clone(),
        start_time: start_ms,
        end_time: end_ms,
        gpus,
        allocated_gpu_ms,
        exit: None,
        slurm_window: window,
    };
    Ok(Record::new(
        // the run the prolog noted; without a note, the environment's count (which an
        // admin's requeue has already advanced: the record then carries no GPUs anyway)
        id(
            job,
            start.map_or(job.restart_count, |s| s.run),
            RecordKind::JobEnd,
        )?,
        end_ms,
        RecordBody::JobEnd(body),
    )?)
}

/// Puts the job-start record in the spool.
pub fn spool_start(
    config: &Config,
    job: &JobEnv,
    start: &JobStartState,
) -> Result<(), RecordsError> {
    let record = start_record(job, start)?;
    Spool::open(&config.spool_dir)?.write(&record)?;
    Ok(())
}

/// Puts the job-end record in the spool.
pub fn spool_end(
    config: &Config,
    job: &JobEnv,
    start: Option<&JobStartState>,
    snapshot: Option<&NodeSnapshot>,
    end_ms: u64,
    window: Option<SlurmWindow>,
) -> Result<(), RecordsError> {
    let record = end_record(job, start, snapshot, end_ms, window)?;
    Spool::open(&config.spool_dir)?.write(&record)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::StartGpu;
    use sgpu_nodelib::gpu::{GpuSnapshot, Reading};

    fn job() -> JobEnv {
        JobEnv::from_vars(|k| {
            match k {
                "SLURM_JOB_ID" => Some("42"),
                "SLURMD_NODENAME" => Some("node1"),
                "SLURM_CLUSTER_NAME" => Some("alpha"),
                "SLURM_JOB_USER" => Some("alice"),
                "SLURM_JOB_UID" => Some("1001"),
                "SLURM_JOB_PARTITION" => Some("gpu"),
                "SLURM_JOB_GPUS" => Some("0,1"),
                _ => None,
            }
            .map(str::to_string)
        })
        .unwrap()
    }

    fn start() -> JobStartState {
        JobStartState {
            job_id: 42,
            node: "node1".into(),
            run: 0,
            start_ms: 1_000_000,
            readings: None,
            gpus: (0..2)
                .map(|i| StartGpu {
                    slurm_index: i,
                    nvml_index: 3 - i,
                    uuid: Some(format!("GPU-{i}")),
                    name: Some("H100".into()),
                    energy_mj: Some(1_000 * u64::from(i + 1)),
                    mig: None,
                })
                .collect(),
        }
    }

    fn snapshot(energies: &[(u32, &str, Option<u64>)]) -> NodeSnapshot {
        NodeSnapshot {
            driver_version: Reading::Value("550".into()),
            gpus: energies
                .iter()
                .map(|(index, uuid, e)| {
                    let mut g = GpuSnapshot::unknown(*index);
                    g.uuid = Reading::Value(uuid.to_string());
                    g.energy_mj = e.map_or(Reading::Unsupported, Reading::Value);
                    g
                })
                .collect(),
        }
    }

    #[test]
    fn end_record_has_deltas_by_uuid_and_allocated_time() {
        // NVML indices 3 and 2 hold GPU-0 and GPU-1
        let snap = snapshot(&[(2, "GPU-1", Some(52_000)), (3, "GPU-0", Some(31_000))]);
        let rec = end_record(&job(), Some(&start()), Some(&snap), 1_010_000, None).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!("not a job end: {rec:?}")
        };
        assert_eq!(end.start_time, 1_000_000);
        assert_eq!(end.end_time, 1_010_000);
        assert_eq!(end.allocated_gpu_ms, 2 * 10_000);
        assert_eq!(end.gpus[0].uuid, "GPU-0");
        assert_eq!(end.gpus[0].energy_delta_mj, Some(30_000));
        assert_eq!(end.gpus[1].energy_delta_mj, Some(50_000));
        assert_eq!(rec.id().kind(), RecordKind::JobEnd);
        assert_eq!(rec.id().cluster(), "alpha");
    }

    #[test]
    fn slurm_window_gives_the_allocated_time_energy_stays_measured() {
        let snap = snapshot(&[(2, "GPU-1", Some(52_000)), (3, "GPU-0", Some(31_000))]);
        // the gates saw 10.2 s (1_000_000..1_010_200 ms); slurmctld's window is 10 s
        let w = SlurmWindow {
            start_s: 999,
            end_s: 1_009,
        };
        let rec = end_record(&job(), Some(&start()), Some(&snap), 1_010_200, Some(w)).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!("not a job end: {rec:?}")
        };
        assert_eq!(end.slurm_window, Some(w));
        assert_eq!(end.allocated_gpu_ms, 2 * 10_000);
        assert_eq!((end.start_time, end.end_time), (1_000_000, 1_010_200));
        assert_eq!(end.gpus[0].energy_delta_mj, Some(30_000));
        // without the prolog's note there are no GPUs: nothing allocated, window or not
        let rec = end_record(&job(), None, None, 5_000, Some(w)).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!()
        };
        assert_eq!(end.allocated_gpu_ms, 0);
    }

    #[test]
    fn a_slices_share_goes_from_the_note_into_both_records() {
        // GPU 0 is a 2g.20gb slice (2 of 7), GPU 1 a whole GPU; one hour from the note
        let mut s = start();
        let share = sgpu_spool::MigShare {
            profile: "2g.20gb".into(),
            slices: 2,
            of: 7,
        };
        // the note holds the slice's GPU's counter (1_000 mJ, NVML index 3)
        s.gpus[0].uuid = Some("MIG-0".into());
        s.gpus[0].mig = Some(share.clone());
        let rec = start_record(&job(), &s).unwrap();
        let RecordBody::JobStart(b) = rec.body() else {
            panic!("not a job start: {rec:?}")
        };
        assert_eq!(b.gpus[0].mig.as_ref(), Some(&share));
        assert_eq!(
            b.gpus[0].energy_mj, None,
            "the GPU's counter is not the slice's"
        );
        assert_eq!(b.gpus[1].mig, None);
        assert_eq!(b.gpus[1].energy_mj, Some(2_000));
        // the slice's GPU used 7_000 mJ over the job (any slices' jobs on it), GPU-1 50_000
        let snap = snapshot(&[(2, "GPU-1", Some(52_000)), (3, "GPU-0", Some(8_000))]);
        let rec = end_record(&job(), Some(&s), Some(&snap), 1_000_000 + 3_600_000, None).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!("not a job end: {rec:?}")
        };
        assert_eq!(end.gpus[0].mig.as_ref(), Some(&share));
        // the slice's share of its GPU's energy, 2/7 of 7_000 mJ, without the counters
        assert_eq!(end.gpus[0].energy_delta_mj, Some(2_000));
        assert_eq!(end.gpus[0].energy_start_mj, None);
        assert_eq!(end.gpus[0].energy_end_mj, None);
        assert_eq!(end.gpus[1].energy_delta_mj, Some(50_000));
        // a counter that went backwards gives the slice no energy, as a whole GPU none
        let reset = snapshot(&[(2, "GPU-1", Some(52_000)), (3, "GPU-0", Some(10))]);
        let rec = end_record(&job(), Some(&s), Some(&reset), 1_000_000 + 3_600_000, None).unwrap();
        let RecordBody::JobEnd(e) = rec.body() else {
            panic!("not a job end: {rec:?}")
        };
        assert_eq!(e.gpus[0].energy_delta_mj, None);
        assert_eq!(end.gpus[1].mig, None);
        assert_eq!(end.allocated_gpu_ms, 2 * 3_600_000, "devices x window");
        // billed: 2/7 of the hour for the slice, the whole hour for the GPU
        assert_eq!(end.allocated_gpu_equiv_ms(), 1_028_571 + 3_600_000);
    }

    #[test]
    fn counter_reset_or_unsupported_gives_no_delta() {
        let snap = snapshot(&[(2, "GPU-1", None), (3, "GPU-0", Some(10))]);
        let rec = end_record(&job(), Some(&start()), Some(&snap), 1_001_000, None).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!()
        };
        assert!(end.gpus.iter().all(|g| g.energy_delta_mj.is_none()));
        assert!(end.gpus.iter().all(|g| g.energy_end_mj.is_none()));
    }

    #[test]
    fn records_carry_the_notes_run_not_the_environments() {
        // an admin's requeue: the killed run's epilog already sees the next restart count
        let mut j = job();
        j.restart_count = 2;
        let mut s = start();
        s.run = 1;
        let begun = start_record(&j, &s).unwrap();
        let ended = end_record(&j, Some(&s), None, 1_005_000, None).unwrap();
        assert_eq!((begun.id().run(), ended.id().run()), (1, 1));
        assert_eq!(ended.id().key(), "alpha,42,,node1,r1,job_end");
        // no note at all: the environment's count is all there is
        let lone = end_record(&j, None, None, 5_000, None).unwrap();
        assert_eq!(lone.id().run(), 2);
    }

    #[test]
    fn without_the_prolog_note_the_record_says_so() {
        let rec = end_record(&job(), None, None, 5_000, None).unwrap();
        let RecordBody::JobEnd(end) = rec.body() else {
            panic!()
        };
        assert_eq!((end.start_time, end.end_time), (5_000, 5_000));
        assert!(end.gpus.is_empty());
        assert_eq!(end.allocated_gpu_ms, 0);
    }

    #[test]
    fn start_record_and_missing_fields() {
        let rec = start_record(&job(), &start()).unwrap();
        let RecordBody::JobStart(s) = rec.body() else {
            panic!()
        };
        assert_eq!(s.user, "alice");
        assert_eq!(s.gpus.len(), 2);
        assert_eq!(s.gpus[1].energy_mj, Some(2_000));
        let mut j = job();
        j.cluster = None;
        assert!(matches!(
            start_record(&j, &start()),
            Err(RecordsError::Missing("SLURM_CLUSTER_NAME"))
        ));
    }
}
