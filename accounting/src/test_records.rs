//! Record builders for unit tests.

use sgpu_spool::{GpuEnd, GpuUsage, JobEnd, Record, RecordBody, RecordId, RecordKind, Usage};

pub const H100: &str = "NVIDIA H100 80GB HBM3";

pub fn job_end(job: u32, node: &str, start: u64, end: u64, energies: &[u64]) -> Record {
    let gpus: Vec<GpuEnd> = energies
        .iter()
        .enumerate()
        .map(|(i, &e)| GpuEnd {
            index: i as u32,
            uuid: format!("GPU-{node}-{i}"),
            name: Some(H100.into()),
            energy_start_mj: Some(1_000),
            energy_end_mj: Some(1_000 + e),
            energy_delta_mj: Some(e),
            mig: None,
        })
        .collect();
    let body = JobEnd {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: end,
        allocated_gpu_ms: gpus.len() as u64 * (end - start),
        gpus,
        exit: None,
        slurm_window: None,
    };
    let id = RecordId::new("alpha", job, None, node, RecordKind::JobEnd).unwrap();
    Record::new(id, end, RecordBody::JobEnd(body)).unwrap()
}

/// `r` (a `job_end`) on MIG slices: GPU `i` becomes the slice `shares[i]` (profile, slices,
/// of) of an H100, named `<H100> MIG <profile>`, without energy (NVML counts it per GPU).
pub fn on_slices(r: Record, shares: &[(&str, u32, u32)]) -> Record {
    let (id, written, body) = r.into_parts();
    let RecordBody::JobEnd(mut b) = body else {
        panic!("not a job_end: {body:?}")
    };
    for (g, &(profile, slices, of)) in b.gpus.iter_mut().zip(shares) {
        g.uuid = format!("MIG-{}", g.uuid);
        g.name = Some(format!("{H100} MIG {profile}"));
        (g.energy_start_mj, g.energy_end_mj, g.energy_delta_mj) = (None, None, None);
        g.mig = Some(sgpu_spool::MigShare {
            profile: profile.into(),
            slices,
            of,
        });
    }
    Record::new(id, written, RecordBody::JobEnd(b)).unwrap()
}

/// `r` as a record of the job's run `run`.
pub fn in_run(r: Record, run: u32) -> Record {
    let (id, written, body) = r.into_parts();
    Record::new(id.with_run(run).unwrap(), written, body).unwrap()
}

/// `r` (a `job_end`) with Slurm's window `start_s..end_s`, allocated time set to match.
pub fn with_slurm_window(r: Record, start_s: u64, end_s: u64) -> Record {
    let (id, written, body) = r.into_parts();
    let RecordBody::JobEnd(mut b) = body else {
        panic!("not a job_end: {body:?}")
    };
    b.slurm_window = Some(sgpu_spool::SlurmWindow { start_s, end_s });
    b.allocated_gpu_ms = b.gpus.len() as u64 * (end_s - start_s) * 1000;
    Record::new(id, written, RecordBody::JobEnd(b)).unwrap()
}

pub fn job_usage(job: u32, node: &str, start: u64, end: u64, used: &[u64]) -> Record {
    let gpus: Vec<GpuUsage> = used
        .iter()
        .enumerate()
        .map(|(i, &u)| GpuUsage {
            index: i as u32,
            uuid: format!("GPU-{node}-{i}"),
            name: Some(H100.into()),
            samples: 10,
            util_mean_pct: 50.0,
            util_max_pct: 100,
            mem_peak_mib: 1,
            energy_mj: None,
            used_gpu_ms: u,
            idle_ms: None,
            idle_periods: None,
        })
        .collect();
    let body = Usage {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        window_start: start,
        window_end: end,
        allocated_gpu_ms: gpus.len() as u64 * (end - start),
        used_gpu_ms: used.iter().sum(),
        gpus,
        idle_gpu_ms: None,
    };
    let id = RecordId::new("alpha", job, None, node, RecordKind::JobUsage).unwrap();
    Record::new(id, end, RecordBody::JobUsage(body)).unwrap()
}
