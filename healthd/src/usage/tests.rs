use super::*;
use sgpu_spool::{GpuEnd, GpuRef, Record, RecordBody, RecordKind};

fn sample(
    uuid: &str,
    util: Option<u32>,
    mem: u64,
    power_mw: u32,
    energy: Option<u64>,
) -> GpuSample {
    GpuSample {
        index: 0,
        lost: false,
        uuid: Some(uuid.to_string()),
        name: Some("Sim".into()),
        utilization_gpu_pct: util,
        utilization_memory_pct: util,
        memory_used_bytes: Some(mem),
        power_mw: Some(power_mw),
        energy_mj: energy,
        temperature_c: Some(40),
        ecc_volatile_uncorrected: Some(0),
        mig_parent: None,
    }
}

fn start_record(job: u32, start: u64, uuids: &[&str]) -> (RecordId, JobStart) {
    let id = RecordId::new("alpha", job, None, "node1", RecordKind::JobStart).unwrap();
    let body = JobStart {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start,
        gpus: uuids
            .iter()
            .enumerate()
            .map(|(i, u)| GpuRef {
                index: i as u32,
                uuid: u.to_string(),
                name: Some("Sim".into()),
                energy_mj: Some(1_000),
                mig: None,
            })
            .collect(),
    };
    (id, body)
}

fn end_body(start: u64, end: u64, gpus: &[(&str, Option<u64>)]) -> JobEnd {
    JobEnd {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: start,
        end_time: end,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, (u, delta))| GpuEnd {
                index: i as u32,
                uuid: u.to_string(),
                name: Some("Sim".into()),
                energy_start_mj: delta.map(|_| 1_000),
                energy_end_mj: delta.map(|d| 1_000 + d),
                energy_delta_mj: *delta,
                mig: None,
            })
            .collect(),
        allocated_gpu_ms: gpus.len() as u64 * (end - start),
        exit: None,
        slurm_window: None,
    }
}

#[test]
fn mean_max_peak_and_counter_energy() {
    let mut g = GpuAccumulator::new(0, "GPU-a".into(), None, Some(1_000));
    g.add(
        &sample("GPU-a", Some(40), 3 * MIB, 100_000, Some(1_500)),
        10_000,
    );
    g.add(
        &sample("GPU-a", Some(80), 5 * MIB + 1, 100_000, Some(2_600)),
        11_000,
    );
    g.add(
        &sample("GPU-a", Some(60), 2 * MIB, 100_000, Some(2_700)),
        12_000,
    );
    assert_eq!(g.samples, 3);
    assert_eq!(g.util_mean(), 60.0);
    assert_eq!(g.util_max, 80);
    assert_eq!(g.mem_peak_mib(), 6, "rounded up");
    // counter deltas from the prolog's reading: 2700 - 1000
    assert_eq!(g.energy(), Some(1_700));
}

#[test]
fn utilization_over_100_is_clamped_and_missing_readings_do_not_count() {
    let mut g = GpuAccumulator::new(0, "GPU-a".into(), None, None);
    g.add(&sample("GPU-a", Some(250), 0, 0, None), 1);
    g.add(&sample("GPU-a", None, 0, 0, None), 2);
    assert_eq!((g.samples, g.util_max, g.util_mean()), (1, 100, 100.0));
}

#[test]
fn counter_reset_and_missing_counter_integrate_power() {
    // no counter at all: power x time between samples (first sample only sets the time)
    let mut g = GpuAccumulator::new(0, "GPU-a".into(), None, None);
    g.add(&sample("GPU-a", Some(10), 0, 200_000, None), 1_000);
    assert_eq!(g.energy(), None, "nothing measured yet");
    g.add(&sample("GPU-a", Some(10), 0, 200_000, None), 3_000);
    assert_eq!(g.energy(), Some(400_000), "200 W x 2 s = 400 J");

    // counter goes backwards (driver reload): that interval is power x time, then deltas again
    let mut g = GpuAccumulator::new(0, "GPU-a".into(), None, Some(50_000));
    g.add(&sample("GPU-a", Some(10), 0, 100_000, Some(60_000)), 1_000);
    g.add(&sample("GPU-a", Some(10), 0, 100_000, Some(5_000)), 2_000);
    g.add(&sample("GPU-a", Some(10), 0, 100_000, Some(7_000)), 3_000);
    assert_eq!(g.energy(), Some(10_000 + 100_000 + 2_000));
}

#[test]
fn accumulator_survives_serialisation() {
    let (id, start) = start_record(7, 1_000, &["GPU-a"]);
    let mut acc = JobAccumulator::from_start(&id, &start);
    let owners = gpu_owners([&acc]);
    assert!(acc.add(
        &[sample("GPU-a", Some(30), MIB, 1, Some(2_000))],
        2_000,
        &owners
    ));
    let text = serde_json::to_string(&acc).unwrap();
    let back: JobAccumulator = serde_json::from_str(&text).unwrap();
    assert_eq!(back, acc);
}

#[test]
fn finalise_builds_a_valid_record_with_used_time_and_exact_energy() {
    let (id, start) = start_record(42, 10_000, &["GPU-a", "GPU-b"]);
    let mut acc = JobAccumulator::from_start(&id, &start);
    let owners = gpu_owners([&acc]);
    for (t, ua, ub) in [(11_000, 60, 0), (12_000, 60, 10), (13_000, 60, 20)] {
        let batch = [
            sample(
                "GPU-a",
                Some(ua),
                4 * MIB,
                100_000,
                Some(1_000 + (t - 10_000) * 100),
            ),
            sample(
                "GPU-b",
                Some(ub),
                MIB,
                50_000,
                Some(1_000 + (t - 10_000) * 50),
            ),
        ];
        acc.add(&batch, t, &owners);
    }
    assert_eq!(acc.util_mean(), 35.0);
    assert_eq!(acc.util_max(), 60);
    assert_eq!(acc.energy(), Some(300_000 + 150_000));
    // the epilog measured GPU-a's delta exactly; GPU-b's counter was unreadable at the end
    let end = end_body(
        10_000,
        20_000,
        &[("GPU-a", Some(1_000_000)), ("GPU-b", None)],
    );
    let usage = acc.finalise(&end);
    assert_eq!((usage.window_start, usage.window_end), (10_000, 20_000));
    assert_eq!(usage.allocated_gpu_ms, 20_000);
    assert_eq!(usage.gpus[0].used_gpu_ms, 6_000, "10 s x 60 %");
    assert_eq!(usage.gpus[1].used_gpu_ms, 1_000, "10 s x 10 %");
    assert_eq!(usage.used_gpu_ms, 7_000);
    assert_eq!(
        usage.gpus[0].energy_mj,
        Some(1_000_000),
        "the end record's exact delta"
    );
    assert_eq!(usage.gpus[1].energy_mj, Some(150_000), "sampled");
    assert_eq!(usage.gpus[0].mem_peak_mib, 4);
    assert_eq!(usage.gpus[1].util_max_pct, 20);
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobUsage).unwrap();
    Record::new(id, 20_001, RecordBody::JobUsage(usage)).expect("the spool accepts it");
}

#[test]
fn finalise_without_samples_or_end_gpus_is_still_valid() {
    let (id, start) = start_record(43, 10_000, &["GPU-a"]);
    let acc = JobAccumulator::from_start(&id, &start);
    // the epilog lacked the prolog's note: no GPUs, start = end
    let end = end_body(15_000, 15_000, &[]);
    let usage = acc.finalise(&end);
    assert_eq!((usage.window_start, usage.window_end), (10_000, 15_000));
    assert_eq!(usage.gpus.len(), 1);
    assert_eq!((usage.gpus[0].samples, usage.gpus[0].used_gpu_ms), (0, 0));
    assert_eq!(usage.allocated_gpu_ms, 5_000);
    let rid = RecordId::new("alpha", 43, None, "node1", RecordKind::JobUsage).unwrap();
    Record::new(rid, 1, RecordBody::JobUsage(usage)).expect("valid");
    // an end before the start record's start (clock skew) gives an empty window, not a panic
    let usage = acc.finalise(&end_body(5_000, 5_000, &[]));
    assert_eq!((usage.window_start, usage.window_end), (5_000, 5_000));
}

#[test]
fn full_utilization_uses_the_whole_window() {
    let (id, start) = start_record(44, 0, &["GPU-a"]);
    let mut acc = JobAccumulator::from_start(&id, &start);
    let owners = gpu_owners([&acc]);
    acc.add(&[sample("GPU-a", Some(100), 0, 0, None)], 1, &owners);
    let usage = acc.finalise(&end_body(0, 7, &[("GPU-a", None)]));
    assert_eq!(usage.used_gpu_ms, 7);
}

#[test]
fn owners_prefer_the_later_start_and_samples_go_to_the_owner_only() {
    let (id1, s1) = start_record(1, 1_000, &["GPU-a", "GPU-b"]);
    let (id2, s2) = start_record(2, 2_000, &["GPU-b"]);
    let mut old = JobAccumulator::from_start(&id1, &s1);
    let mut new = JobAccumulator::from_start(&id2, &s2);
    let owners = gpu_owners([&old, &new]);
    assert_eq!(
        owners.get("GPU-a").map(String::as_str),
        Some("alpha,1,1000")
    );
    assert_eq!(
        owners.get("GPU-b").map(String::as_str),
        Some("alpha,2,2000")
    );
    let batch = [
        sample("GPU-a", Some(10), 0, 0, None),
        sample("GPU-b", Some(90), 0, 0, None),
        sample("GPU-c", Some(50), 0, 0, None),
    ];
    assert!(old.add(&batch, 1, &owners));
    assert!(new.add(&batch, 1, &owners));
    assert_eq!((old.gpus[0].samples, old.gpus[1].samples), (1, 0));
    assert_eq!(new.gpus[0].util_max, 90);
    // a job none of whose GPUs is in the batch
    let (id3, s3) = start_record(3, 3_000, &["GPU-z"]);
    let mut gone = JobAccumulator::from_start(&id3, &s3);
    assert!(!gone.add(&batch, 1, &gpu_owners([&gone])));
}

fn end_record(job: u32, start: u64, end: u64, uuid: &str) -> (RecordId, JobEnd) {
    let id = RecordId::new("alpha", job, None, "node1", RecordKind::JobEnd).unwrap();
    (id, end_body(start, end, &[(uuid, None)]))
}

#[test]
fn plan_follows_new_starts_and_finalises_ended_jobs() {
    let mut spool = SpoolJobs::default();
    let (id1, s1) = start_record(1, 1_000, &["GPU-a"]);
    let (id2, s2) = start_record(2, 1_000, &["GPU-b"]);
    let (id3, s3) = start_record(3, 1_000, &["GPU-c"]);
    let (id4, s4) = start_record(4, 1_000, &["GPU-d"]);
    // 1: running, not followed yet -> follow
    spool.starts.push((id1, s1, false));
    // 2: followed, ended -> finalise
    spool.starts.push((id2.clone(), s2.clone(), false));
    spool.ends.push(end_record(2, 1_000, 2_000, "GPU-b"));
    // 3: both records were there before healthd started, never followed -> ignored
    spool.starts.push((id3, s3, false));
    spool.ends.push(end_record(3, 1_000, 2_000, "GPU-c"));
    // 4: started and ended between two scans while healthd ran -> followed and finalised
    spool.starts.push((id4, s4, true));
    spool.ends.push(end_record(4, 1_000, 1_500, "GPU-d"));
    let mut followed = BTreeMap::new();
    let a2 = JobAccumulator::from_start(&id2, &s2);
    followed.insert(a2.key(), a2);
    // 5: followed, its start record is gone (forwarded), still running -> nothing
    let (id5, s5) = start_record(5, 1_000, &["GPU-e"]);
    let a5 = JobAccumulator::from_start(&id5, &s5);
    followed.insert(a5.key(), a5);

    let p = plan(&spool, &followed);
    let follow: Vec<u32> = p.follow.iter().map(|a| a.job_id).collect();
    assert_eq!(follow, vec![1, 4]);
    let fin: Vec<&str> = p.finalise.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(fin, vec!["alpha,2,1000", "alpha,4,1000"]);
}

#[test]
fn a_requeued_job_is_not_ended_by_its_earlier_run() {
    let (id, s_old) = start_record(9, 1_000, &["GPU-a"]);
    let (_, s_new) = start_record(9, 5_000, &["GPU-a"]);
    let old = JobAccumulator::from_start(&id, &s_old);
    let new = JobAccumulator::from_start(&id, &s_new);
    assert_ne!(old.key(), new.key());
    let (eid, first_end) = end_record(9, 1_000, 2_000, "GPU-a");
    assert!(old.ended_by(&eid, &first_end));
    assert!(!new.ended_by(&eid, &first_end));
    // an end record without the prolog's note ends whichever run started before it
    let bare = end_body(6_000, 6_000, &[]);
    assert!(new.ended_by(&eid, &bare));
    let other = RecordId::new("alpha", 10, None, "node1", RecordKind::JobEnd).unwrap();
    assert!(!new.ended_by(&other, &bare));
    // the new run's start beside the old run's records: followed, not finalised
    let spool = SpoolJobs {
        starts: vec![(id.clone(), s_old, false), (id, s_new, true)],
        ends: vec![(eid, first_end)],
    };
    let p = plan(&spool, &BTreeMap::new());
    assert_eq!(p.follow.len(), 1);
    assert_eq!(p.follow[0].start_time, 5_000);
    assert!(p.finalise.is_empty());
}

#[test]
fn a_run_is_ended_only_by_its_own_runs_end_and_its_usage_carries_the_run() {
    let (id, s) = start_record(9, 5_000, &["GPU-a"]);
    let id1 = id.with_run(1).unwrap();
    let acc = JobAccumulator::from_start(&id1, &s);
    assert_eq!(acc.run, 1);
    let (eid0, end) = end_record(9, 5_000, 6_000, "GPU-a");
    // the same start but run 0's identity: another execution's record
    assert!(!acc.ended_by(&eid0, &end));
    let eid1 = eid0.with_run(1).unwrap();
    assert!(acc.ended_by(&eid1, &end));
    // an accumulator stored before runs existed reads as run 0
    let mut json = serde_json::to_value(&acc).unwrap();
    json.as_object_mut().unwrap().remove("run");
    let old: JobAccumulator = serde_json::from_value(json).unwrap();
    assert_eq!(old.run, 0);
}

#[test]
fn finalise_carries_idle_time_and_periods_per_gpu() {
    let (id, start) = start_record(8, 0, &["GPU-a", "GPU-b"]);
    let mut acc = JobAccumulator::from_start(&id, &start);
    let owners = gpu_owners([&acc]);
    let detect = sgpu_nodelib::config::IdleDetect {
        util_below_pct: 5,
        mem_util_below_pct: 5,
        window: std::time::Duration::from_secs(20),
    };
    // GPU-a idle from 10 s to 40 s, then busy; GPU-b busy throughout
    for t in (10..=60u64).step_by(10) {
        let ua = if t <= 40 { 0 } else { 90 };
        let batch = [
            sample("GPU-a", Some(ua), MIB, 1_000, None),
            sample("GPU-b", Some(70), MIB, 1_000, None),
        ];
        acc.add_detect(&batch, t * 1000, &owners, &detect);
    }
    let usage = acc.finalise(&end_body(0, 70_000, &[("GPU-a", None), ("GPU-b", None)]));
    assert_eq!(usage.gpus[0].idle_ms, Some(30_000));
    assert_eq!(
        usage.gpus[0].idle_periods,
        Some(vec![sgpu_spool::IdlePeriod {
            start: 10_000,
            end: 40_000
        }])
    );
    assert_eq!(usage.gpus[1].idle_ms, Some(0));
    assert_eq!(usage.idle_gpu_ms, Some(30_000));
    let record = Record::new(
        RecordId::new("c", 8, None, "node1", RecordKind::JobUsage)
            .unwrap_or_else(|e| panic!("{e}")),
        1,
        RecordBody::JobUsage(usage),
    );
    assert!(record.is_ok(), "{record:?}");
    // an accumulator that never saw a reading leaves the figures unknown
    let (id, start) = start_record(9, 0, &["GPU-c"]);
    let fresh = JobAccumulator::from_start(&id, &start);
    let usage = fresh.finalise(&end_body(0, 1_000, &[("GPU-c", None)]));
    assert_eq!((usage.gpus[0].idle_ms, usage.idle_gpu_ms), (None, None));
}

#[test]
fn jobs_on_mig_slices_take_their_slices_samples() {
    // two jobs on two slices of one GPU: the prolog recorded each slice by its MIG- UUID
    let (id1, s1) = start_record(1, 1_000, &["MIG-one"]);
    let (id2, s2) = start_record(2, 2_000, &["MIG-two"]);
    let mut a = JobAccumulator::from_start(&id1, &s1);
    let mut b = JobAccumulator::from_start(&id2, &s2);
    let owners = gpu_owners([&a, &b]);
    let slice = |uuid: &str, mem: u64| GpuSample {
        uuid: Some(uuid.into()),
        utilization_gpu_pct: None,
        utilization_memory_pct: None,
        power_mw: None,
        energy_mj: None,
        temperature_c: None,
        ecc_volatile_uncorrected: None,
        memory_used_bytes: Some(mem),
        mig_parent: Some("GPU-p".into()),
        ..sample(uuid, None, mem, 0, None)
    };
    // the GPU's own sample (utilization N/A under MIG) belongs to no job
    let batch = [
        sample("GPU-p", None, 40 * MIB, 90_000, Some(5_000)),
        slice("MIG-one", 3 * MIB),
        slice("MIG-two", 30 * MIB),
    ];
    assert!(a.add(&batch, 3_000, &owners));
    assert!(b.add(&batch, 3_000, &owners));
    assert_eq!(a.gpus[0].mem_peak_mib(), 3);
    assert_eq!(b.gpus[0].mem_peak_mib(), 30);
    // no utilization per slice: unknown, never 0 % (so never "idle")
    assert_eq!(a.gpus[0].samples, 0);
    assert_eq!(a.gpus[0].idle.samples, 0);
    assert_eq!(a.gpus[0].energy(), None);
}

#[test]
fn a_jobs_mean_utilization_leaves_out_its_unsampled_slices() {
    // a whole GPU at 60 % and a MIG slice (no utilization per slice): the job's mean is the
    // GPU's 60 %, not 30 % (the slice is unknown, not 0 %)
    let (id, s) = start_record(3, 1_000, &["GPU-w", "MIG-s"]);
    let mut acc = JobAccumulator::from_start(&id, &s);
    let owners = gpu_owners([&acc]);
    let slice = GpuSample {
        utilization_gpu_pct: None,
        mig_parent: Some("GPU-p".into()),
        ..sample("MIG-s", None, MIB, 0, None)
    };
    let batch = [sample("GPU-w", Some(60), MIB, 100_000, None), slice];
    assert!(acc.add(&batch, 2_000, &owners));
    assert_eq!((acc.gpus[0].samples, acc.gpus[1].samples), (1, 0));
    assert_eq!(acc.util_mean(), 60.0);
    // nothing sampled yet: 0, the figure's value before any sample
    let fresh = JobAccumulator::from_start(&id, &s);
    assert_eq!(fresh.util_mean(), 0.0);
}
