use super::*;
use crate::day::DAY_MS;
use crate::test_records::{H100, job_end, job_usage, on_slices, with_slurm_window};

const HOUR: u64 = 3_600_000;

fn key(day: u32) -> RollupKey {
    RollupKey {
        day,
        cluster: "alpha".into(),
        account: "physics".into(),
        user: "alice".into(),
        partition: "gpu".into(),
        gpu_model: H100.into(),
    }
}

#[test]
fn job_end_within_a_day() {
    let r = job_end(
        7,
        "n1",
        100 * DAY_MS + HOUR,
        100 * DAY_MS + 3 * HOUR,
        &[500, 700],
    );
    let c = contributions(&r);
    assert_eq!(c.len(), 1);
    let v = c[&key(100)];
    assert_eq!(v.allocated_gpu_ms, 2 * 2 * HOUR);
    assert_eq!(v.energy_mj, 1_200);
    assert_eq!(v.used_gpu_ms, 0);
    assert_eq!(v.jobs, 0, "jobs are counted separately");
    assert_eq!(job_count_key(&r), Some(key(100)));
}

#[test]
fn job_end_straddling_midnight_is_split_by_day() {
    // 22:00 to 01:00: 2 h on day 100, 1 h on day 101; 2 GPUs; energy 3000 + 301 mJ.
    let r = job_end(
        7,
        "n1",
        100 * DAY_MS + 22 * HOUR,
        101 * DAY_MS + HOUR,
        &[3_000, 301],
    );
    let c = contributions(&r);
    assert_eq!(c[&key(100)].allocated_gpu_ms, 2 * 2 * HOUR);
    assert_eq!(c[&key(101)].allocated_gpu_ms, 2 * HOUR);
    // 2/3 and 1/3 of each GPU's energy; remainders on the last day.
    assert_eq!(c[&key(100)].energy_mj, 2_000 + 200);
    assert_eq!(c[&key(101)].energy_mj, 1_000 + 101);
    let total: u64 = c.values().map(|v| v.allocated_gpu_ms).sum();
    assert_eq!(total, 2 * 3 * HOUR);
    // Counted on the day it ended.
    assert_eq!(job_count_key(&r), Some(key(101)));
}

#[test]
fn job_usage_adds_only_used_time() {
    let r = job_usage(
        7,
        "n1",
        100 * DAY_MS + 23 * HOUR,
        101 * DAY_MS + HOUR,
        &[HOUR, 2 * HOUR],
    );
    let c = contributions(&r);
    assert_eq!(c[&key(100)].used_gpu_ms, HOUR / 2 + HOUR);
    assert_eq!(c[&key(101)].used_gpu_ms, HOUR / 2 + HOUR);
    assert!(
        c.values()
            .all(|v| v.allocated_gpu_ms == 0 && v.energy_mj == 0)
    );
    assert_eq!(job_count_key(&r), None);
}

#[test]
fn zero_gpu_job_end_adds_nothing_and_is_not_counted() {
    let r = job_end(7, "n1", 0, HOUR, &[]);
    assert!(contributions(&r).is_empty());
    assert_eq!(job_count_key(&r), None);
}

#[test]
fn keys_and_values_round_trip() {
    let mut k = key(19_000);
    k.account = String::new();
    k.user = "ü,\0x".into();
    assert_eq!(RollupKey::decode(&k.encode()), Some(k.clone()));
    assert_eq!(RollupKey::decode(&k.encode()[..10]), None);
    let v = RollupValue {
        allocated_gpu_ms: 1,
        used_gpu_ms: u64::MAX,
        energy_mj: 3,
        jobs: 4,
        idle_gpu_ms: 5,
        idle_measured_gpu_ms: 6,
        slice_ms: 7,
        used_unmeasured_gpu_ms: 0,
    };
    assert_eq!(RollupValue::decode(&v.encode()), Some(v));
    // the 56-byte form predates unmeasured used time: it reads 0 (all measured)
    let later = RollupValue {
        used_unmeasured_gpu_ms: 8,
        ..v
    };
    assert_eq!(RollupValue::decode(&later.encode()), Some(v));
    // a row written before slice time was kept: slice time 0, the rest as it was
    let v48 = RollupValue::decode(&v.encode()[..48]).unwrap();
    assert_eq!(v48, RollupValue { slice_ms: 0, ..v });
    assert_eq!(RollupValue::decode(&v.encode()[..40]), None);
    assert_eq!(RollupValue::decode(&[0; 31]), None);
    // a row written before idle time was kept: idle unknown (measured over 0 GPU-ms)
    let old = RollupValue::decode(&v.encode()[..32]).unwrap();
    assert_eq!(
        (old.jobs, old.idle_gpu_ms, old.idle_measured_gpu_ms),
        (4, 0, 0)
    );
    // Keys sort by day first.
    assert!(key(1).encode() < key(2).encode());
    assert!(key(255).encode() < key(256).encode());
}

#[test]
fn slurm_window_sets_allocated_days_energy_stays_on_the_gate_window() {
    // the gates saw 00:00:00.300 to 01:00:00.500 of day 101; slurmctld's window starts 2 s
    // before midnight (day 100) and ends at 01:00:00
    let gate = job_end(
        7,
        "n1",
        101 * DAY_MS + 300,
        101 * DAY_MS + HOUR + 500,
        &[3_000, 301],
    );
    let r = with_slurm_window(gate, 101 * 86_400 - 2, 101 * 86_400 + 3_600);
    let c = contributions(&r);
    assert_eq!(c[&key(100)].allocated_gpu_ms, 2 * 2_000);
    assert_eq!(c[&key(101)].allocated_gpu_ms, 2 * HOUR);
    let total: u64 = c.values().map(|v| v.allocated_gpu_ms).sum();
    let RecordBody::JobEnd(b) = r.body() else {
        unreachable!()
    };
    assert_eq!(
        total, b.allocated_gpu_ms,
        "the rollups add up to the record"
    );
    // energy was measured over the gates' window: all of it on day 101
    assert_eq!(c[&key(100)].energy_mj, 0);
    assert_eq!(c[&key(101)].energy_mj, 3_301);
    assert_eq!(job_count_key(&r), Some(key(101)));
    // the record is found on both days it touches (reports of day 100 see it)
    assert_eq!(crate::store::record_days(&r), 100..=101);
}

#[test]
fn a_mig_slice_is_billed_its_share_of_the_gpu() {
    // 2g.20gb (2 of 7 compute slices) for one hour: 2/7 GPU-hour, not a whole one
    let r = on_slices(
        job_end(7, "n1", 100 * DAY_MS + HOUR, 100 * DAY_MS + 2 * HOUR, &[0]),
        &[("2g.20gb", 2, 7)],
    );
    let c = contributions(&r);
    let mig = |day| RollupKey {
        gpu_model: format!("{H100} MIG 2g.20gb"),
        ..key(day)
    };
    assert_eq!(c.len(), 1);
    assert_eq!(c[&mig(100)].allocated_gpu_ms, 1_028_571); // 3600000 x 2/7 = 1028571.43
    assert_eq!(c[&mig(100)].energy_mj, 0, "no energy for a slice");
    assert_eq!(c[&mig(100)].slice_ms, HOUR, "one slice-hour, counted once");
    // healthd has no utilization per slice: its used time is unknown over all of its share
    assert_eq!(c[&mig(100)].used_unmeasured_gpu_ms, 1_028_571);
    assert_eq!(c[&mig(100)].used_measured_gpu_ms(), 0);
    assert_eq!(job_count_key(&r), Some(mig(100)));

    // 22:00 to 01:00 on a 1g.10gb and a 3g.40gb: 3 h x 1/7 and 3 h x 3/7, split 2:1 by day
    // with nothing lost or added over the days
    let r = on_slices(
        job_end(
            8,
            "n1",
            100 * DAY_MS + 22 * HOUR,
            101 * DAY_MS + HOUR,
            &[0, 0],
        ),
        &[("1g.10gb", 1, 7), ("3g.40gb", 3, 7)],
    );
    let c = contributions(&r);
    let at = |p: &str, day| {
        c[&RollupKey {
            gpu_model: format!("{H100} MIG {p}"),
            ..key(day)
        }]
            .allocated_gpu_ms
    };
    assert_eq!(at("1g.10gb", 100) + at("1g.10gb", 101), 1_542_857); // 1542857.14
    assert_eq!(at("3g.40gb", 100) + at("3g.40gb", 101), 4_628_571); // 4628571.43
    assert_eq!(at("1g.10gb", 100), 1_542_857 * 2 / 3);
    assert_eq!(at("3g.40gb", 100), 4_628_571 * 2 / 3);
    // slice time: each slice's exact overlap with each day, whatever its share
    let slice = |p: &str, day| {
        c[&RollupKey {
            gpu_model: format!("{H100} MIG {p}"),
            ..key(day)
        }]
            .slice_ms
    };
    for p in ["1g.10gb", "3g.40gb"] {
        assert_eq!((slice(p, 100), slice(p, 101)), (2 * HOUR, HOUR), "{p}");
    }
    // unmeasured used time is the share, split as allocated time, on each day
    for v in c.values() {
        assert_eq!(v.used_unmeasured_gpu_ms, v.allocated_gpu_ms);
    }

    // the full profile, and a whole GPU beside a slice, count in full
    let r = on_slices(
        job_end(9, "n1", 100 * DAY_MS, 100 * DAY_MS + HOUR, &[0, 5]),
        &[("7g.80gb", 7, 7)],
    );
    let c = contributions(&r);
    assert_eq!(
        c[&RollupKey {
            gpu_model: format!("{H100} MIG 7g.80gb"),
            ..key(100)
        }]
            .allocated_gpu_ms,
        HOUR
    );
    assert_eq!(c[&key(100)].allocated_gpu_ms, HOUR);
    assert_eq!(c[&key(100)].slice_ms, 0, "a whole GPU is no slice");
    assert_eq!(
        c[&key(100)].used_unmeasured_gpu_ms,
        0,
        "a whole GPU is sampled"
    );
}

#[test]
fn a_slice_without_a_share_still_counts_its_slice_time() {
    // the prolog could not read the share: billed as a whole GPU, but its model names the
    // profile, so its device time is slice time of that profile
    let (id, written, body) =
        job_end(7, "n1", 100 * DAY_MS, 100 * DAY_MS + HOUR, &[0]).into_parts();
    let RecordBody::JobEnd(mut b) = body else {
        unreachable!()
    };
    b.gpus[0].name = Some(format!("{H100} MIG 1g.10gb"));
    let r = Record::new(id, written, RecordBody::JobEnd(b)).unwrap();
    let c = contributions(&r);
    let v = c[&RollupKey {
        gpu_model: format!("{H100} MIG 1g.10gb"),
        ..key(100)
    }];
    assert_eq!((v.allocated_gpu_ms, v.slice_ms), (HOUR, HOUR));
    assert_eq!(v.used_unmeasured_gpu_ms, HOUR, "no utilization per slice");
    assert!(is_slice(None, &format!("{H100} MIG 1g.10gb")));
    assert!(!is_slice(None, H100));
}
