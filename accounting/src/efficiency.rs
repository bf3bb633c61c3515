//! `GET /v1/jobs/{cluster}/{job_id}/efficiency`: one job's GPU efficiency figures
//! ([`sgpu_wire::efficiency::EfficiencyAnswer`]) from its stored records, for `sgpu seff`.
//!
//! The answer describes the latest run acctd has records of. Per GPU: allocated time and
//! energy from the node's `job_end` (Slurm's window when the epilog read it), utilization,
//! memory peak and used time from healthd's `job_usage`; a node with a `job_start` and no
//! `job_end` yet is running, and its GPUs' allocated time counts up to now. A MIG slice's
//! allocated time counts by its share of its GPU, as acctd bills it (GPU-equivalents,
//! [`sgpu_spool::gpu_equiv_ms`]), its device time apart as slice time, and the entry names
//! its profile, share and parent GPU's model. What no record measured stays `None`
//! (unknown), never 0: a GPU without a utilization sample (a MIG slice: NVML gives none per
//! slice) has no used time. Access is `GET /v1/jobs/{cluster}/{id}`'s: a
//! user's answer holds only records of their own jobs, and another user's job is a 404.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sgpu_spool::{MigShare, NodeEvent, Record, RecordBody, gpu_equiv_ms};
use sgpu_wire::acctd::VERSION;
use sgpu_wire::efficiency::{
    EfficiencyAnswer, GpuEfficiency, IdleAction, MigSlice, Period, mem_from_model,
};

use crate::http::{AppState, error, job_reader};

/// The efficiency route.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/jobs/{cluster}/{job_id}/efficiency",
        get(get_efficiency),
    )
}

async fn get_efficiency(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cluster, job_id)): Path<(String, String)>,
) -> Response {
    let (scope, job_id) = match job_reader(&state, &headers, &job_id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let store = state.store.clone();
    let c = cluster.clone();
    let read = move || -> Result<(Vec<Record>, Vec<NodeEvent>), crate::store::StoreError> {
        // Another user's job looks exactly like a missing one: no 403 that would confirm it.
        let records: Vec<Record> = scope.visible_records(store.job(&c, job_id)?);
        let mut events = Vec::new();
        if !records.is_empty() {
            store.for_each_event(&mut |e| {
                if e.cluster == c
                    && e.job
                        .as_ref()
                        .is_some_and(|j| j.job_id == u64::from(job_id))
                {
                    events.push(e);
                }
            })?;
        }
        Ok((records, events))
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok((records, events))) => {
            match efficiency(&cluster, job_id, &records, sgpu_spool::now_ms()) {
                Some(mut answer) => {
                    answer.actions = actions(&events, answer.run);
                    axum::Json(answer).into_response()
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no records of job {job_id} on cluster {cluster}"),
                ),
            }
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The idle-policy actions of run `run` among a job's node events, oldest first.
pub fn actions(events: &[NodeEvent], run: u32) -> Vec<IdleAction> {
    let mut out: Vec<IdleAction> = events
        .iter()
        .filter(|e| e.action.is_job_action() && e.job.as_ref().is_some_and(|j| j.run == run))
        .map(|e| IdleAction {
            time_ms: e.time_ms,
            node: e.node.clone(),
            action: if e.job.as_ref().is_some_and(|j| j.dry_run) {
                format!("{} (dry run)", e.action.as_str())
            } else {
                e.action.as_str().to_string()
            },
            reason: e.reason.clone(),
        })
        .collect();
    out.sort_by(|a, b| (a.time_ms, &a.node).cmp(&(b.time_ms, &b.node)));
    out
}

/// Adds `v` to an unknown-or-known sum.
fn add(sum: &mut Option<u64>, v: u64) {
    *sum = Some(sum.unwrap_or(0).saturating_add(v));
}

/// The efficiency of the latest run of a job from its records (`None`: no record of a job
/// kind, so nothing to say). `now_ms` ends a running node's allocation.
pub fn efficiency(
    cluster: &str,
    job_id: u32,
    records: &[Record],
    now_ms: u64,
) -> Option<EfficiencyAnswer> {
    let run = records.iter().map(|r| r.id().run()).max()?;
    let records: Vec<&Record> = records
        .iter()
        .filter(|r| r.id().run() == run && !matches!(r.body(), RecordBody::StepUsage(_)))
        .collect();
    let (user, account, partition) = identity(&records)?;
    let mut tally = Tally::new();
    for r in &records {
        tally.add(r);
    }
    let running = tally.started.keys().any(|n| !tally.ended.contains(n));
    let (start_ms, end_ms, ended) = (tally.start_ms, tally.end_ms, !tally.ended.is_empty());
    let gpus = tally.finish(now_ms);
    let nodes: BTreeSet<String> = records.iter().map(|r| r.id().node().to_string()).collect();
    let sum = |f: fn(&GpuEfficiency) -> Option<u64>| -> Option<u64> {
        gpus.iter().filter_map(f).reduce(u64::saturating_add)
    };
    Some(EfficiencyAnswer {
        version: Some(VERSION),
        cluster: cluster.to_string(),
        job_id,
        run,
        user: user.clone(),
        account: account.clone().unwrap_or_default(),
        partition: partition.clone().unwrap_or_default(),
        start_ms: if start_ms == u64::MAX { 0 } else { start_ms },
        end_ms: (!running && ended).then_some(end_ms),
        now_ms,
        nodes: nodes.into_iter().collect(),
        allocated_gpu_ms: gpus
            .iter()
            .map(|g| g.allocated_gpu_ms)
            .fold(0, u64::saturating_add),
        slice_ms: sum(|g| g.slice_ms),
        used_gpu_ms: sum(|g| g.used_gpu_ms),
        energy_mj: sum(|g| g.energy_mj),
        idle_gpu_ms: sum(|g| g.idle_ms),
        actions: Vec::new(),
        gpus,
    })
}

/// The job's user, account and partition from the most trusted record: job_end > job_start
/// > job_usage (as the rollups take it); `None` without records.
fn identity<'a>(
    records: &[&'a Record],
) -> Option<(&'a String, &'a Option<String>, &'a Option<String>)> {
    let rank = |r: &Record| match r.body() {
        RecordBody::JobEnd(_) => 0,
        RecordBody::JobStart(_) => 1,
        _ => 2,
    };
    let trusted: &'a Record = records.iter().copied().min_by_key(|r| rank(r))?;
    Some(match trusted.body() {
        RecordBody::JobEnd(b) => (&b.user, &b.account, &b.partition),
        RecordBody::JobStart(b) => (&b.user, &b.account, &b.partition),
        RecordBody::JobUsage(b) | RecordBody::StepUsage(b) => (&b.user, &b.account, &b.partition),
    })
}

/// A GPU: (node, NVML index).
type GpuKey = (String, u32);

/// The MIG slice an entry is, from its model (`<GPU> MIG <profile>`) and its stated share
/// (the rule of the rollups, [`crate::rollup::is_slice`]); `None`: a whole GPU.
fn mig_slice(model: Option<&str>, share: Option<&MigShare>) -> Option<MigSlice> {
    let (parent, profile) = match model.map(crate::rollup::split_mig_model) {
        Some((parent, Some(profile))) => (Some(parent.to_string()), Some(profile.to_string())),
        Some((whole, None)) => (share.map(|_| whole.to_string()), None),
        None => (None, None),
    };
    if share.is_none() && profile.is_none() {
        return None;
    }
    Some(MigSlice {
        profile: profile
            .or_else(|| share.map(|m| m.profile.clone()))
            .unwrap_or_default(),
        parent_model: parent,
        slices: share.map(|m| m.slices),
        of: share.map(|m| m.of),
    })
}

/// What a run's records say, node by node and GPU by GPU, before the per-GPU figures are
/// derived ([`Tally::finish`]).
struct Tally {
    gpus: BTreeMap<GpuKey, GpuEfficiency>,
    /// Nodes with a job_start, and when.
    started: BTreeMap<String, u64>,
    /// Nodes with a job_end.
    ended: BTreeSet<String>,
    /// The earliest start seen (`u64::MAX`: none).
    start_ms: u64,
    /// The latest end seen.
    end_ms: u64,
    /// Per GPU: (sum of util x samples, samples), to weigh several usage records.
    util: BTreeMap<GpuKey, (f64, u64)>,
    /// Per GPU: healthd's sampled energy, used where the epilog read no counter.
    sampled_energy: BTreeMap<GpuKey, u64>,
    /// Per MIG slice: its share, as the records state it (absent: a whole GPU, or a slice
    /// whose share was not read, which counts as a whole GPU).
    shares: BTreeMap<GpuKey, MigShare>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            gpus: BTreeMap::new(),
            started: BTreeMap::new(),
            ended: BTreeSet::new(),
            start_ms: u64::MAX,
            end_ms: 0,
            util: BTreeMap::new(),
            sampled_energy: BTreeMap::new(),
            shares: BTreeMap::new(),
        }
    }

    /// The GPU `index` of `node`, added when new; its UUID, model and MIG share filled
    /// where unknown.
    fn gpu(
        &mut self,
        node: &str,
        index: u32,
        uuid: &str,
        name: &Option<String>,
        mig: Option<&MigShare>,
    ) -> GpuKey {
        let key = (node.to_string(), index);
        let e = self
            .gpus
            .entry(key.clone())
            .or_insert_with(|| GpuEfficiency::new(node, index, uuid, name.clone()));
        if e.uuid.is_empty() {
            e.uuid = uuid.to_string();
        }
        if e.model.is_none() {
            e.model.clone_from(name);
        }
        if let Some(m) = mig {
            self.shares.entry(key.clone()).or_insert_with(|| m.clone());
        }
        key
    }

    fn add(&mut self, r: &Record) {
        let node = r.id().node();
        match r.body() {
            RecordBody::JobStart(b) => {
                self.start_ms = self.start_ms.min(b.start_time);
                self.started.insert(node.to_string(), b.start_time);
                for g in &b.gpus {
                    self.gpu(node, g.index, &g.uuid, &g.name, g.mig.as_ref());
                }
            }
            RecordBody::JobEnd(b) => {
                let (s, e) = b.allocated_window();
                self.start_ms = self.start_ms.min(s);
                self.end_ms = self.end_ms.max(e);
                self.ended.insert(node.to_string());
                for g in &b.gpus {
                    let key = self.gpu(node, g.index, &g.uuid, &g.name, g.mig.as_ref());
                    let Some(x) = self.gpus.get_mut(&key) else {
                        continue;
                    };
                    // device time here; a slice's share is taken in finish()
                    x.allocated_gpu_ms = x.allocated_gpu_ms.saturating_add(e.saturating_sub(s));
                    let energy = g
                        .energy_delta_mj
                        .or_else(|| g.energy_end_mj?.checked_sub(g.energy_start_mj?));
                    if let Some(energy) = energy {
                        add(&mut x.energy_mj, energy);
                    }
                }
            }
            RecordBody::JobUsage(b) => {
                self.start_ms = self.start_ms.min(b.window_start);
                for g in &b.gpus {
                    let key = self.gpu(node, g.index, &g.uuid, &g.name, None);
                    let Some(x) = self.gpus.get_mut(&key) else {
                        continue;
                    };
                    add(&mut x.used_gpu_ms, g.used_gpu_ms);
                    add(&mut x.samples, g.samples);
                    x.util_max_pct = Some(x.util_max_pct.unwrap_or(0).max(g.util_max_pct));
                    x.mem_peak_mib = Some(x.mem_peak_mib.unwrap_or(0).max(g.mem_peak_mib));
                    if let Some(energy) = g.energy_mj {
                        let e = self.sampled_energy.entry(key.clone()).or_default();
                        *e = e.saturating_add(energy);
                    }
                    if let Some(idle) = g.idle_ms {
                        add(&mut x.idle_ms, idle);
                        let periods = x.idle_periods.get_or_insert_with(Vec::new);
                        periods.extend(g.idle_periods.iter().flatten().map(|p| Period {
                            start_ms: p.start,
                            end_ms: p.end,
                        }));
                        periods.sort_by_key(|p| p.start_ms);
                    }
                    let u = self.util.entry(key).or_default();
                    u.0 += g.util_mean_pct * g.samples as f64;
                    u.1 += g.samples;
                }
            }
            RecordBody::StepUsage(_) => {}
        }
    }

    /// The per-GPU figures: mean utilization weighed by samples (no sample: utilization
    /// and used time unknown), healthd's energy where no counter was read, a running
    /// node's allocation up to `now_ms`, a MIG slice's allocation by its share with its
    /// device time apart, the memory size from the model where NVML gave none.
    fn finish(mut self, now_ms: u64) -> Vec<GpuEfficiency> {
        for (key, (sum, n)) in self.util {
            if let Some(x) = self.gpus.get_mut(&key) {
                x.util_mean_pct = (n > 0).then(|| sum / n as f64);
                if n == 0 {
                    x.used_gpu_ms = None;
                }
            }
        }
        for (key, x) in self.gpus.iter_mut() {
            if x.energy_mj.is_none() {
                x.energy_mj = self.sampled_energy.get(key).copied();
            }
            if !self.ended.contains(&x.node) {
                // running (or its job_end not here yet): allocated so far
                if let Some(&s) = self.started.get(&x.node) {
                    x.allocated_gpu_ms = now_ms.saturating_sub(s);
                }
            }
            let share = self.shares.get(key);
            if let Some(slice) = mig_slice(x.model.as_deref(), share) {
                x.slice_ms = Some(x.allocated_gpu_ms);
                x.allocated_gpu_ms = gpu_equiv_ms(share, x.allocated_gpu_ms);
                x.mig = Some(slice);
            }
            if x.mem_total_mib.is_none() {
                x.mem_total_mib = x.model.as_deref().and_then(mem_from_model);
            }
        }
        self.gpus.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_records::{H100, in_run, job_end, job_usage, on_slices, with_slurm_window};
    use sgpu_spool::{GpuRef, JobStart, RecordId, RecordKind};

    fn job_start(job: u32, node: &str, start: u64, gpus: u32) -> Record {
        let body = JobStart {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: start,
            gpus: (0..gpus)
                .map(|i| GpuRef {
                    index: i,
                    uuid: format!("GPU-{node}-{i}"),
                    name: Some("NVIDIA A100-SXM4-40GB".into()),
                    energy_mj: Some(1_000),
                    mig: None,
                })
                .collect(),
        };
        let id = RecordId::new("alpha", job, None, node, RecordKind::JobStart).unwrap();
        Record::new(id, start, RecordBody::JobStart(body)).unwrap()
    }

    #[test]
    fn a_finished_job_has_per_gpu_figures_and_unknowns_stay_unknown() {
        let records = vec![
            job_start(7, "n1", 1_000, 2),
            with_slurm_window(job_end(7, "n1", 1_000, 11_000, &[500, 700]), 1, 11),
            job_usage(7, "n1", 1_000, 11_000, &[5_000, 0]),
            // a second node with no healthd: no samples there
            job_end(7, "n2", 2_000, 10_000, &[300]),
        ];
        let a = efficiency("alpha", 7, &records, 99_000).unwrap();
        assert_eq!(a.end_ms, Some(11_000));
        assert_eq!(a.start_ms, 1_000);
        assert_eq!(a.nodes, vec!["n1", "n2"]);
        assert_eq!(a.gpus.len(), 3);
        assert_eq!(a.gpus[0].allocated_gpu_ms, 10_000);
        assert_eq!(a.gpus[0].used_gpu_ms, Some(5_000));
        assert_eq!(a.gpus[0].util_mean_pct, Some(50.0));
        assert_eq!(a.gpus[0].energy_mj, Some(500));
        // the job_start named the model first
        assert_eq!(a.gpus[0].mem_total_mib, Some(40 * 1024));
        assert_eq!(a.gpus[2].node, "n2");
        assert_eq!(a.gpus[2].used_gpu_ms, None);
        assert_eq!(a.gpus[2].samples, None);
        assert_eq!(a.gpus[2].idle_ms, None);
        assert_eq!(a.allocated_gpu_ms, 28_000);
        assert_eq!(a.used_gpu_ms, Some(5_000));
        assert_eq!(a.energy_mj, Some(1_500));
        assert_eq!(a.idle_gpu_ms, None);
        assert_eq!((a.user.as_str(), a.account.as_str()), ("alice", "physics"));
    }

    #[test]
    fn a_running_job_counts_allocated_time_up_to_now() {
        let records = vec![job_start(8, "n1", 1_000, 2)];
        let a = efficiency("alpha", 8, &records, 5_000).unwrap();
        assert_eq!(a.end_ms, None);
        assert_eq!(a.allocated_gpu_ms, 8_000);
        assert_eq!(a.used_gpu_ms, None);
        assert_eq!(a.energy_mj, None);
        // one node ended, the other still runs: the job runs
        let records = vec![
            job_start(8, "n1", 1_000, 1),
            job_start(8, "n2", 1_000, 1),
            job_end(8, "n1", 1_000, 3_000, &[5]),
        ];
        let a = efficiency("alpha", 8, &records, 5_000).unwrap();
        assert_eq!(a.end_ms, None);
        assert_eq!(a.allocated_gpu_ms, 2_000 + 4_000);
    }

    #[test]
    fn only_the_latest_run_is_described() {
        let records = vec![
            job_end(9, "n1", 1_000, 2_000, &[5]),
            in_run(job_end(9, "n2", 5_000, 9_000, &[7, 7]), 1),
        ];
        let a = efficiency("alpha", 9, &records, 10_000).unwrap();
        assert_eq!(a.run, 1);
        assert_eq!(a.nodes, vec!["n2"]);
        assert_eq!(a.allocated_gpu_ms, 8_000);
        assert!(efficiency("alpha", 9, &[], 0).is_none());
    }

    #[test]
    fn idle_time_and_periods_come_from_healthd_records() {
        let usage = job_usage(10, "n1", 0, 100_000, &[10_000, 20_000]);
        let (id, written, body) = usage.into_parts();
        let RecordBody::JobUsage(mut b) = body else {
            panic!("not a job_usage")
        };
        b.gpus[0].idle_ms = Some(30_000);
        b.gpus[0].idle_periods = Some(vec![
            sgpu_spool::IdlePeriod {
                start: 50_000,
                end: 70_000,
            },
            sgpu_spool::IdlePeriod {
                start: 80_000,
                end: 90_000,
            },
        ]);
        b.gpus[1].idle_ms = Some(0);
        b.gpus[1].idle_periods = Some(vec![]);
        b.idle_gpu_ms = Some(30_000);
        let usage = Record::new(id, written, RecordBody::JobUsage(b)).unwrap();
        let records = vec![job_end(10, "n1", 0, 100_000, &[1, 1]), usage];
        let a = efficiency("alpha", 10, &records, 200_000).unwrap();
        assert_eq!(a.idle_gpu_ms, Some(30_000));
        assert_eq!(a.gpus[0].idle_ms, Some(30_000));
        let p = a.gpus[0].idle_periods.clone().unwrap();
        assert_eq!((p[0].start_ms, p[0].end_ms, p.len()), (50_000, 70_000, 2));
        assert_eq!(a.gpus[1].idle_ms, Some(0));
        assert_eq!(a.gpus[1].idle_periods, Some(vec![]));
    }

    #[test]
    fn a_mig_slice_counts_by_its_share_and_names_its_profile_and_gpu() {
        const HOUR: u64 = 3_600_000;
        // a 2g.20gb and a 1g.10gb slice for one hour; healthd sampled their memory only
        let end = on_slices(
            job_end(11, "n1", 0, HOUR, &[0, 0]),
            &[("2g.20gb", 2, 7), ("1g.10gb", 1, 7)],
        );
        let usage = job_usage(11, "n1", 0, HOUR, &[0, 0]);
        let (id, written, body) = usage.into_parts();
        let RecordBody::JobUsage(mut b) = body else {
            panic!("not a job_usage")
        };
        for g in &mut b.gpus {
            (g.samples, g.util_mean_pct, g.util_max_pct, g.mem_peak_mib) = (0, 0.0, 0, 512);
        }
        let usage = Record::new(id, written, RecordBody::JobUsage(b)).unwrap();
        let a = efficiency("alpha", 11, &[end, usage], 2 * HOUR).unwrap();
        assert_eq!(a.gpus[0].allocated_gpu_ms, 1_028_571); // 2/7 h, as billed
        assert_eq!(a.gpus[1].allocated_gpu_ms, 514_286); // 1/7 h
        assert_eq!(a.allocated_gpu_ms, 1_028_571 + 514_286);
        assert_eq!(a.gpus[0].slice_ms, Some(HOUR));
        assert_eq!(a.slice_ms, Some(2 * HOUR));
        let m = a.gpus[0].mig.clone().unwrap();
        assert_eq!(
            (
                m.profile.as_str(),
                m.parent_model.as_deref(),
                m.slices,
                m.of
            ),
            ("2g.20gb", Some(H100), Some(2), Some(7))
        );
        // NVML gives no utilization per slice: unknown, not 0
        assert_eq!(
            (a.gpus[0].util_mean_pct, a.gpus[0].used_gpu_ms),
            (None, None)
        );
        assert_eq!(a.used_gpu_ms, None);
        assert_eq!(a.gpus[0].mem_peak_mib, Some(512));
        assert_eq!(
            a.gpus[0].mem_total_mib,
            Some(20 * 1024),
            "the slice's memory"
        );

        // a whole GPU beside no slice: no slice time, figures as before
        let a = efficiency("alpha", 12, &[job_end(12, "n1", 0, HOUR, &[5])], HOUR).unwrap();
        assert_eq!(
            (a.allocated_gpu_ms, a.slice_ms, a.gpus[0].mig.clone()),
            (HOUR, None, None)
        );

        // a running slice (only the job_start): its share of the time so far
        let mut start = job_start(13, "n1", 0, 1);
        let (id, written, body) = start.into_parts();
        let RecordBody::JobStart(mut b) = body else {
            panic!("not a job_start")
        };
        b.gpus[0].name = Some(format!("{H100} MIG 3g.40gb"));
        b.gpus[0].mig = Some(MigShare {
            profile: "3g.40gb".into(),
            slices: 3,
            of: 7,
        });
        start = Record::new(id, written, RecordBody::JobStart(b)).unwrap();
        let a = efficiency("alpha", 13, &[start], 7_000).unwrap();
        assert_eq!((a.allocated_gpu_ms, a.slice_ms), (3_000, Some(7_000)));
    }

    #[test]
    fn idle_actions_of_the_run_are_listed_oldest_first() {
        use sgpu_spool::{JobAction, NodeAction, NodeEvent};
        let event = |t: u64, action: NodeAction, run: u32, dry_run: bool| NodeEvent {
            id: format!("e{t}"),
            cluster: "alpha".into(),
            node: "n1".into(),
            time_ms: t,
            action,
            source: "healthd".into(),
            uid: 0,
            user: "root".into(),
            reason: format!("at {t}"),
            previous_reason: None,
            forced: false,
            job: Some(JobAction {
                job_id: 10,
                run,
                user: "alice".into(),
                account: None,
                partition: "gpu".into(),
                gpus: vec![0],
                idle_minutes: 10,
                policy: "util<5% for 600s".into(),
                dry_run,
            }),
        };
        let events = vec![
            event(300, NodeAction::IdleCancel, 0, true),
            event(100, NodeAction::IdleWarn, 0, false),
            event(200, NodeAction::IdleWarn, 1, false),
        ];
        let a = actions(&events, 0);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].time_ms, a[0].action.as_str()), (100, "idle_warn"));
        assert_eq!(a[1].action, "idle_cancel (dry run)");
        assert_eq!(actions(&events, 1).len(), 1);
    }
}
