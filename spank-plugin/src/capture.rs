//! Per-step GPU capture: which GPUs a step holds, their energy counters at its start and end,
//! and the `step_usage` record written to the node spool.

use std::collections::BTreeMap;

use sgpu_nodelib::gpu::{NodeSnapshot, NvmlOptions, Session};
use sgpu_nodelib::nodeconf::NodeLayout;
use sgpu_spool::{GpuUsage, Record, RecordBody, RecordId, RecordKind, Usage};

use crate::ffi::sys;

/// The spool's name of a step: `batch`, `extern`, `interactive` or the step number
/// (`SLURM_BATCH_SCRIPT` etc. as `slurm/slurm.h` defines them).
pub fn step_name(step_id: u32) -> String {
    match step_id {
        sys::SLURM_BATCH_SCRIPT => "batch".into(),
        sys::SLURM_EXTERN_CONT => "extern".into(),
        sys::SLURM_INTERACTIVE_STEP => "interactive".into(),
        sys::SLURM_PENDING_STEP => "pending".into(),
        n => n.to_string(),
    }
}

/// Parses a Slurm GPU index list (`0,1,3` or `0-3`); `None` for anything else (such as
/// `NoDevFiles` or UUIDs).
pub fn parse_gpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 1024 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The step's GPUs as Slurm numbers them on this node, from the step's environment:
/// `SLURM_STEP_GPUS` (srun steps), else `SLURM_JOB_GPUS` (batch step, whole job). Not
/// `CUDA_VISIBLE_DEVICES`: under device cgroups it is renumbered from 0.
pub fn slurm_gpus(getenv: impl Fn(&str) -> Option<String>) -> Vec<u32> {
    ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"]
        .iter()
        .find_map(|v| getenv(v).and_then(|s| parse_gpu_list(&s)))
        .unwrap_or_default()
}

/// One GPU at step start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuStart {
    /// NVML index.
    pub index: u32,
    /// NVML UUID.
    pub uuid: String,
    /// Product name.
    pub name: Option<String>,
    /// Energy counter, mJ.
    pub energy_mj: Option<u64>,
    /// For a MIG slice, its profile and share of the GPU (`--gpu-report` counts its
    /// GPU-hours by it); `None`: a whole GPU, or a slice whose share NVML did not give.
    pub mig: Option<sgpu_spool::MigShare>,
}

/// What the plugin knows about a step from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStart {
    /// Cluster name.
    pub cluster: String,
    /// Job id.
    pub job_id: u32,
    /// The job's run, from the prolog's note ([`sgpu_spool::job_note`]).
    pub run: u32,
    /// Step name ([`step_name`]).
    pub step: String,
    /// Slurm node name.
    pub node: String,
    /// Job owner.
    pub user: String,
    /// Job owner's uid.
    pub uid: u32,
    /// Account, if known.
    pub account: Option<String>,
    /// Partition, if known.
    pub partition: Option<String>,
    /// Step start, Unix ms.
    pub start_ms: u64,
    /// The step's GPUs.
    pub gpus: Vec<GpuStart>,
}

/// One GPU at step end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEndReading {
    /// Energy counter at step end, mJ.
    pub energy_mj: Option<u64>,
}

/// Energy over the step: `end - start` when both are known and the counter did not go
/// backwards (driver reload).
pub fn energy_delta(start: Option<u64>, end: Option<u64>) -> Option<u64> {
    end?.checked_sub(start?)
}

/// Builds the `step_usage` record. Utilization is not sampled by the plugin: 0 samples,
/// utilization 0 and used GPU time 0 mean "not measured" (healthd's `job_usage` records
/// carry sampled utilization).
pub fn step_record(
    start: &StepStart,
    end_ms: u64,
    end: &BTreeMap<String, GpuEndReading>,
) -> Result<Record, sgpu_spool::RecordError> {
    let end_ms = end_ms.max(start.start_ms);
    let span = end_ms - start.start_ms;
    let gpus: Vec<GpuUsage> = start
        .gpus
        .iter()
        .map(|g| GpuUsage {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            samples: 0,
            util_mean_pct: 0.0,
            util_max_pct: 0,
            mem_peak_mib: 0,
            energy_mj: energy_delta(g.energy_mj, end.get(&g.uuid).and_then(|e| e.energy_mj)),
            used_gpu_ms: 0,
            idle_ms: None,
            idle_periods: None,
        })
        .collect();
    let n = u64::try_from(gpus.len()).unwrap_or(u64::MAX);
    let body = Usage {
        user: start.user.clone(),
        uid: start.uid,
        account: start.account.clone(),
        partition: start.partition.clone(),
        window_start: start.start_ms,
        window_end: end_ms,
        allocated_gpu_ms: n.saturating_mul(span),
        used_gpu_ms: 0,
        gpus,
        idle_gpu_ms: None,
    };
    let id = RecordId::new(
        start.cluster.clone(),
        start.job_id,
        Some(start.step.clone()),
        start.node.clone(),
        RecordKind::StepUsage,
    )?
    .with_run(start.run)?;
    Record::new(id, end_ms, RecordBody::StepUsage(body))
}

/// Opens the step's NVML session and reads what names the node's GPUs and their energy
/// counters (no deadline of its own: the caller runs it on a plugin thread and bounds the
/// wait).
pub fn open_and_read(
    opts: &NvmlOptions,
) -> Result<(Session, NodeSnapshot), sgpu_nodelib::gpu::NvmlFailure> {
    let session = Session::open(opts)?;
    let snap = session.identities()?;
    Ok((session, snap))
}

/// The end readings of the step's GPUs (NVML indices), by UUID, on the step's session,
/// which is then closed (on a plugin thread, like [`open_and_read`]). Only the energy
/// counters: the end needs nothing else.
pub fn end_readings_and_close(
    session: Session,
    indices: &[u32],
) -> BTreeMap<String, GpuEndReading> {
    let read = session.energy(indices);
    drop(session);
    read.into_iter()
        .map(|(_, uuid, energy_mj)| (uuid, GpuEndReading { energy_mj }))
        .collect()
}

/// The step's GPUs (Slurm indices) as read from `snap`, mapped to NVML through the node's
/// gres.conf (`layout`: device minor numbers; `None`: slurm.conf unreadable, Slurm's
/// indices taken as NVML's). GPUs without a UUID are left out (noted). When gres.conf
/// lists MIG slices for the node, `session` adds the GPUs' MIG devices to `snap` and a slice
/// is recorded as its `MIG-` UUID and `<GPU> MIG <profile>`, without energy (NVML counts
/// energy per GPU, which other slices share).
pub fn gpus_at_start(
    slurm_indices: &[u32],
    snap: &mut NodeSnapshot,
    session: &Session,
    layout: Option<&NodeLayout>,
    notes: &mut Vec<String>,
) -> Vec<GpuStart> {
    let slices_listed =
        layout.is_some_and(|l| l.gpus.devices.iter().any(|d| !d.mig_caps.is_empty()));
    if slices_listed {
        session.add_mig(snap);
    }
    let devices = sgpu_nodelib::nodeconf::job_devices(layout, slurm_indices, &[], snap);
    notes.extend(devices.notes.iter().cloned());
    let mut out = Vec::new();
    for d in &devices.by_index {
        let Some(i) = d.gpu else {
            continue;
        };
        let Some(g) = snap.gpus.iter().find(|g| g.index == i) else {
            notes.push(format!("GPU {i} not found by NVML"));
            continue;
        };
        let start = match &d.slice {
            Some(slice) => {
                let Some(m) = slice.devices(g).into_iter().next() else {
                    notes.push(format!("gpu{i}: {} not found by NVML", slice.describe()));
                    continue;
                };
                let Some(uuid) = m.uuid.value().filter(|u| !u.is_empty()) else {
                    notes.push(format!("gpu{i}: {}: no UUID", m.label()));
                    continue;
                };
                GpuStart {
                    index: i,
                    uuid: uuid.clone(),
                    name: match (g.name.value(), m.profile.value()) {
                        (Some(n), Some(p)) => Some(format!("{n} MIG {p}")),
                        (n, _) => n.cloned(),
                    },
                    energy_mj: None,
                    mig: m.share(),
                }
            }
            None => {
                let Some(uuid) = g.uuid().filter(|u| !u.is_empty()) else {
                    notes.push(format!("gpu{i}: no UUID"));
                    continue;
                };
                GpuStart {
                    index: i,
                    uuid: uuid.to_string(),
                    name: g.name.value().cloned(),
                    energy_mj: g.energy_mj.value().copied(),
                    mig: None,
                }
            }
        };
        if out.iter().any(|o: &GpuStart| o.uuid == start.uuid) {
            continue;
        }
        out.push(start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StepStart {
        StepStart {
            cluster: "c".into(),
            job_id: 7,
            run: 0,
            step: "batch".into(),
            node: "node1".into(),
            user: "alice".into(),
            uid: 1000,
            account: None,
            partition: Some("gpu".into()),
            start_ms: 1_000,
            gpus: vec![
                GpuStart {
                    index: 0,
                    uuid: "GPU-a".into(),
                    name: Some("H100".into()),
                    energy_mj: Some(100),
                    mig: None,
                },
                GpuStart {
                    index: 2,
                    uuid: "GPU-b".into(),
                    name: None,
                    energy_mj: None,
                    mig: None,
                },
            ],
        }
    }

    #[test]
    fn step_names_follow_slurm_h() {
        assert_eq!(step_name(0xffff_fffb), "batch");
        assert_eq!(step_name(0xffff_fffc), "extern");
        assert_eq!(step_name(0xffff_fffa), "interactive");
        assert_eq!(step_name(3), "3");
    }

    #[test]
    fn gpu_lists() {
        assert_eq!(parse_gpu_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_gpu_list("NoDevFiles"), None);
        assert_eq!(parse_gpu_list(""), Some(vec![]));
        let env = |k: &str| match k {
            "SLURM_STEP_GPUS" => Some("1".to_string()),
            "SLURM_JOB_GPUS" => Some("0,1".to_string()),
            _ => None,
        };
        assert_eq!(slurm_gpus(env), vec![1]);
        assert_eq!(
            slurm_gpus(|k| (k == "SLURM_JOB_GPUS").then(|| "0,1".to_string())),
            vec![0, 1]
        );
        assert!(slurm_gpus(|_| None).is_empty());
    }

    #[test]
    fn record_has_energy_deltas_and_consistent_times() {
        let mut end = BTreeMap::new();
        end.insert(
            "GPU-a".to_string(),
            GpuEndReading {
                energy_mj: Some(600),
            },
        );
        let r = match step_record(&start(), 3_000, &end) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.id().step(), Some("batch"));
        let RecordBody::StepUsage(u) = r.body() else {
            panic!("not a step record")
        };
        assert_eq!(u.allocated_gpu_ms, 4_000);
        assert_eq!(u.used_gpu_ms, 0);
        assert_eq!(u.gpus[0].energy_mj, Some(500));
        assert_eq!(u.gpus[1].energy_mj, None);
        // a clock that went backwards gives an empty window, not an invalid record
        assert!(step_record(&start(), 10, &end).is_ok());
        // a counter that went backwards (driver reload) gives no delta
        assert_eq!(energy_delta(Some(5), Some(3)), None);
        // a requeued job's step carries its run
        let mut s = start();
        s.run = 2;
        let r = step_record(&s, 3_000, &end).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.id().key(), "c,7,batch,node1,r2,step_usage");
    }
}
