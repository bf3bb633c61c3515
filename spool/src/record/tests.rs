use super::*;
use proptest::prelude::*;

pub(crate) fn start_id(job: u32) -> RecordId {
    RecordId::new("alpha", job, None, "node1", RecordKind::JobStart).unwrap()
}

pub(crate) fn example_start(job: u32) -> Record {
    Record::new(
        start_id(job),
        1_700_000_000_250,
        RecordBody::JobStart(JobStart {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: 1_700_000_000_000,
            gpus: vec![
                GpuRef {
                    index: 0,
                    uuid: "GPU-0b7c3c52-6d9e-4a3b-9f10-000000000000".into(),
                    name: Some("NVIDIA H100 80GB HBM3".into()),
                    energy_mj: Some(5_000_000),
                    mig: None,
                },
                GpuRef {
                    index: 1,
                    uuid: "GPU-0b7c3c52-6d9e-4a3b-9f10-000000000001".into(),
                    name: Some("NVIDIA H100 80GB HBM3".into()),
                    energy_mj: Some(7_000_000),
                    mig: None,
                },
            ],
        }),
    )
    .unwrap()
}

pub(crate) fn example_end() -> Record {
    Record::new(
        RecordId::new("alpha", 42, None, "node1", RecordKind::JobEnd).unwrap(),
        1_700_003_600_300,
        RecordBody::JobEnd(JobEnd {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: 1_700_000_000_000,
            end_time: 1_700_003_600_000,
            gpus: vec![
                GpuEnd {
                    index: 0,
                    uuid: "GPU-0b7c3c52-6d9e-4a3b-9f10-000000000000".into(),
                    name: Some("NVIDIA H100 80GB HBM3".into()),
                    energy_start_mj: Some(5_000_000),
                    energy_end_mj: Some(1_445_000_000),
                    energy_delta_mj: Some(1_440_000_000),
                    mig: None,
                },
                GpuEnd {
                    index: 1,
                    uuid: "GPU-0b7c3c52-6d9e-4a3b-9f10-000000000001".into(),
                    name: Some("NVIDIA H100 80GB HBM3".into()),
                    energy_start_mj: Some(7_000_000),
                    energy_end_mj: Some(727_000_000),
                    energy_delta_mj: Some(720_000_000),
                    mig: None,
                },
            ],
            allocated_gpu_ms: 7_200_000,
            exit: Some(ExitStatus { code: 0, signal: 0 }),
            slurm_window: None,
        }),
    )
    .unwrap()
}

pub(crate) fn example_usage(kind: RecordKind) -> Record {
    let step = (kind == RecordKind::StepUsage).then(|| "0".to_string());
    let usage = Usage {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        window_start: 1_700_000_000_000,
        window_end: 1_700_003_600_000,
        gpus: vec![GpuUsage {
            index: 0,
            uuid: "GPU-0b7c3c52-6d9e-4a3b-9f10-000000000000".into(),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            samples: 360,
            util_mean_pct: 87.5,
            util_max_pct: 100,
            mem_peak_mib: 61_440,
            energy_mj: Some(1_440_000_000),
            used_gpu_ms: 3_150_000,
            idle_ms: None,
            idle_periods: None,
        }],
        allocated_gpu_ms: 3_600_000,
        used_gpu_ms: 3_150_000,
        idle_gpu_ms: None,
    };
    let mut usage = usage;
    if kind == RecordKind::JobUsage {
        // healthd's records carry the idle figures: ten idle minutes in the first hour
        usage.gpus[0].idle_ms = Some(600_000);
        usage.gpus[0].idle_periods = Some(vec![IdlePeriod {
            start: 1_700_000_600_000,
            end: 1_700_001_200_000,
        }]);
        usage.idle_gpu_ms = Some(600_000);
    }
    let body = match kind {
        RecordKind::StepUsage => RecordBody::StepUsage(usage),
        _ => RecordBody::JobUsage(usage),
    };
    Record::new(
        RecordId::new("alpha", 42, step, "node1", kind).unwrap(),
        1_700_003_600_900,
        body,
    )
    .unwrap()
}

pub(crate) fn examples() -> Vec<Record> {
    vec![
        example_start(42),
        example_end(),
        example_usage(RecordKind::StepUsage),
        example_usage(RecordKind::JobUsage),
    ]
}

#[test]
fn print_examples() {
    // `cargo test -p sgpu-spool print_examples -- --nocapture` shows one record of each kind.
    for r in examples() {
        println!("{}", String::from_utf8(r.to_json().unwrap()).unwrap());
    }
}

#[test]
fn examples_round_trip_and_body_has_no_tag() {
    for r in examples() {
        let json = r.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v["body"].get("kind").is_none());
        assert_eq!(v["id"]["kind"], r.id().kind().as_str());
        assert_eq!(Record::from_json(&json).unwrap(), r);
        // Through plain serde too (as acctd would, inside a batch).
        let via_serde: Record = serde_json::from_slice(&json).unwrap();
        assert_eq!(via_serde, r);
    }
}

fn json_of(r: &Record) -> serde_json::Value {
    serde_json::from_slice(&r.to_json().unwrap()).unwrap()
}

fn from_value(v: &serde_json::Value) -> Result<Record, RecordError> {
    Record::from_json(&serde_json::to_vec(v).unwrap())
}

#[test]
fn unknown_fields_are_rejected_naming_them() {
    let base = json_of(&example_end());
    let mut cases = Vec::new();
    let mut v = base.clone();
    v["colour"] = 1.into();
    cases.push(v);
    let mut v = base.clone();
    v["id"]["colour"] = 1.into();
    cases.push(v);
    let mut v = base.clone();
    v["body"]["colour"] = 1.into();
    cases.push(v);
    let mut v = base.clone();
    v["body"]["gpus"][1]["colour"] = 1.into();
    cases.push(v);
    let mut v = base.clone();
    v["body"]["exit"]["colour"] = 1.into();
    cases.push(v);
    for v in cases {
        let e = from_value(&v).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }
}

#[test]
fn body_of_another_kind_is_rejected() {
    // A job_end body under a job_start id: the job_start shape rejects job_end's fields.
    let mut v = json_of(&example_end());
    v["id"]["kind"] = "job_start".into();
    let e = from_value(&v).unwrap_err();
    assert_eq!(e.field(), Some("body"), "{e}");
    // And in Rust, a mismatched body cannot be built into a record.
    let (_, at, body) = example_end().into_parts();
    let e = Record::new(start_id(42), at, body).unwrap_err();
    assert_eq!(e.field(), Some("body"));
    assert!(
        e.to_string()
            .contains("job_end body but id.kind is job_start"),
        "{e}"
    );
}

#[test]
fn unsupported_version_is_named() {
    let mut v = json_of(&example_start(1));
    v["version"] = 2.into();
    v["body"]["new_field_of_v2"] = 1.into();
    let e = from_value(&v).unwrap_err();
    assert_eq!(e.field(), Some("version"), "{e}");
}

#[test]
fn missing_field_is_named() {
    let mut v = json_of(&example_end());
    v["body"].as_object_mut().unwrap().remove("end_time");
    let e = from_value(&v).unwrap_err();
    assert!(e.to_string().contains("end_time"), "{e}");
}

fn end_body() -> JobEnd {
    match example_end().into_parts().2 {
        RecordBody::JobEnd(b) => b,
        _ => unreachable!(),
    }
}

fn usage_body() -> Usage {
    match example_usage(RecordKind::JobUsage).into_parts().2 {
        RecordBody::JobUsage(b) => b,
        _ => unreachable!(),
    }
}

fn end_err(f: impl FnOnce(&mut JobEnd)) -> RecordError {
    let mut b = end_body();
    f(&mut b);
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobEnd).unwrap();
    Record::new(id, 1, RecordBody::JobEnd(b)).unwrap_err()
}

fn usage_err(f: impl FnOnce(&mut Usage)) -> RecordError {
    let mut b = usage_body();
    f(&mut b);
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobUsage).unwrap();
    Record::new(id, 1, RecordBody::JobUsage(b)).unwrap_err()
}

#[test]
fn validation_errors_name_the_field() {
    let cases: Vec<(RecordError, &str)> = vec![
        (end_err(|b| b.end_time = b.start_time - 1), "body.end_time"),
        (
            end_err(|b| b.gpus[1].energy_end_mj = Some(1)),
            "body.gpus[1].energy_end_mj",
        ),
        (
            end_err(|b| b.gpus[0].energy_delta_mj = Some(3)),
            "body.gpus[0].energy_delta_mj",
        ),
        (
            end_err(|b| b.gpus[1].uuid = String::new()),
            "body.gpus[1].uuid",
        ),
        (
            end_err(|b| b.gpus[1].uuid = b.gpus[0].uuid.clone()),
            "body.gpus[1].uuid",
        ),
        (
            end_err(|b| b.allocated_gpu_ms += 1),
            "body.allocated_gpu_ms",
        ),
        (end_err(|b| b.user = String::new()), "body.user"),
        (
            usage_err(|b| b.gpus[0].util_max_pct = 101),
            "body.gpus[0].util_max_pct",
        ),
        (
            usage_err(|b| b.gpus[0].util_mean_pct = 100.5),
            "body.gpus[0].util_mean_pct",
        ),
        (
            usage_err(|b| b.gpus[0].util_mean_pct = f64::NAN),
            "body.gpus[0].util_mean_pct",
        ),
        (
            usage_err(|b| {
                b.gpus[0].util_max_pct = 50;
                b.gpus[0].util_mean_pct = 60.0;
            }),
            "body.gpus[0].util_mean_pct",
        ),
        (
            usage_err(|b| {
                b.gpus[0].used_gpu_ms = 3_600_001;
                b.used_gpu_ms = 3_600_001;
            }),
            "body.gpus[0].used_gpu_ms",
        ),
        (usage_err(|b| b.used_gpu_ms += 1), "body.used_gpu_ms"),
        (usage_err(|b| b.window_end = 0), "body.window_end"),
        (
            usage_err(|b| b.allocated_gpu_ms = 0),
            "body.allocated_gpu_ms",
        ),
    ];
    for (e, field) in cases {
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.to_string().starts_with(field), "{e}");
    }
}

#[test]
fn idle_figures_are_checked_naming_the_field() {
    let p = |start, end| IdlePeriod { start, end };
    let w0 = 1_700_000_000_000;
    let cases: Vec<(RecordError, &str)> = vec![
        (
            usage_err(|b| b.gpus[0].idle_ms = Some(3_600_001)),
            "body.gpus[0].idle_ms",
        ),
        (
            usage_err(|b| b.gpus[0].idle_periods = Some(vec![p(w0 - 1, w0 + 600_000)])),
            "body.gpus[0].idle_periods[0].start",
        ),
        (
            usage_err(|b| b.gpus[0].idle_periods = Some(vec![p(w0, w0 + 3_600_001)])),
            "body.gpus[0].idle_periods[0].end",
        ),
        (
            usage_err(|b| b.gpus[0].idle_periods = Some(vec![p(w0 + 5, w0 + 5)])),
            "body.gpus[0].idle_periods[0].end",
        ),
        (
            usage_err(|b| {
                b.gpus[0].idle_periods =
                    Some(vec![p(w0 + 700_000, w0 + 1_300_000), p(w0, w0 + 700_000)])
            }),
            "body.gpus[0].idle_periods[1].start",
        ),
        (
            // touching periods must have been merged
            usage_err(|b| {
                b.gpus[0].idle_periods =
                    Some(vec![p(w0, w0 + 300_000), p(w0 + 300_000, w0 + 600_000)])
            }),
            "body.gpus[0].idle_periods[1].start",
        ),
        (
            usage_err(|b| b.gpus[0].idle_periods = Some(vec![p(w0, w0 + 599_999)])),
            "body.gpus[0].idle_ms",
        ),
        (
            usage_err(|b| {
                b.gpus[0].idle_periods = Some(
                    (0..17u64)
                        .map(|i| p(w0 + i * 200_000, w0 + i * 200_000 + 100_000))
                        .collect(),
                )
            }),
            "body.gpus[0].idle_periods",
        ),
        (
            usage_err(|b| {
                b.gpus[0].idle_ms = None;
                b.idle_gpu_ms = None;
            }),
            "body.gpus[0].idle_periods",
        ),
        (usage_err(|b| b.idle_gpu_ms = Some(1)), "body.idle_gpu_ms"),
        (usage_err(|b| b.idle_gpu_ms = None), "body.idle_gpu_ms"),
        (
            usage_err(|b| {
                b.gpus[0].idle_ms = None;
                b.gpus[0].idle_periods = None;
            }),
            "body.idle_gpu_ms",
        ),
    ];
    for (e, field) in cases {
        assert_eq!(e.field(), Some(field), "{e}");
    }
    // unknown stays unknown: no figures at all is valid, and reads back as None, not 0
    let mut b = usage_body();
    b.gpus[0].idle_ms = None;
    b.gpus[0].idle_periods = None;
    b.idle_gpu_ms = None;
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobUsage).unwrap();
    let r = Record::new(id, 1, RecordBody::JobUsage(b)).unwrap();
    let json = String::from_utf8(r.to_json().unwrap()).unwrap();
    assert!(!json.contains("idle"), "{json}");
    assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
    // idle_ms without periods is valid (periods are optional detail)
    let mut b = usage_body();
    b.gpus[0].idle_periods = None;
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobUsage).unwrap();
    Record::new(id, 1, RecordBody::JobUsage(b)).unwrap();
}

#[test]
fn idle_periods_merge_and_stay_capped() {
    let p = |start, end| IdlePeriod { start, end };
    let mut v = Vec::new();
    push_idle_period(&mut v, p(10, 20));
    push_idle_period(&mut v, p(30, 40));
    push_idle_period(&mut v, p(20, 25)); // touches the first
    push_idle_period(&mut v, p(5, 5)); // empty: ignored
    assert_eq!(v, vec![p(10, 25), p(30, 40)]);
    push_idle_period(&mut v, p(24, 31)); // bridges both
    assert_eq!(v, vec![p(10, 40)]);
    // 40 periods with gaps of 10, one gap of 1: the cap merges the closest first
    let mut v = Vec::new();
    for i in 0..40u64 {
        push_idle_period(&mut v, p(1000 + i * 20, 1000 + i * 20 + 10));
    }
    push_idle_period(&mut v, p(5000, 5010));
    push_idle_period(&mut v, p(5011, 5020));
    assert_eq!(v.len(), IDLE_PERIODS_MAX);
    assert!(v.windows(2).all(|w| w[0].end < w[1].start), "{v:?}");
    assert_eq!(v.first().map(|q| q.start), Some(1000));
    assert_eq!(v.last().map(|q| q.end), Some(5020));
    // every idle instant stays covered
    let covered: u64 = v.iter().map(IdlePeriod::len_ms).sum();
    assert!(covered >= 42 * 10 - 1, "{covered}");
}

#[test]
fn invalid_json_on_disk_is_rejected_with_the_field() {
    let mut v = json_of(&example_end());
    v["body"]["end_time"] = 5.into();
    let e = from_value(&v).unwrap_err();
    assert_eq!(e.field(), Some("body.end_time"), "{e}");
}

#[test]
fn slurm_window_sets_the_allocated_time() {
    // 2 GPUs; gate window 3_600_000 ms; Slurm's 1_700_000_000..1_700_003_601 s
    let window = SlurmWindow {
        start_s: 1_700_000_000,
        end_s: 1_700_003_601,
    };
    let mut b = end_body();
    b.slurm_window = Some(window);
    b.allocated_gpu_ms = 2 * 3_601_000;
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobEnd).unwrap();
    let r = Record::new(id.clone(), 1, RecordBody::JobEnd(b.clone())).unwrap();
    assert_eq!(b.allocated_window(), (1_700_000_000_000, 1_700_003_601_000));
    assert_eq!(b.covered_window(), (1_700_000_000_000, 1_700_003_601_000));
    let json = String::from_utf8(r.to_json().unwrap()).unwrap();
    assert!(
        json.contains(r#""slurm_window":{"start_s":1700000000,"end_s":1700003601}"#),
        "{json}"
    );
    assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);

    // with the window, the gate window's figure is wrong
    let e = end_err(|b| b.slurm_window = Some(window));
    assert_eq!(e.field(), Some("body.allocated_gpu_ms"), "{e}");
    assert!(e.to_string().contains("3601000 ms"), "{e}");
    // a window that ends before it starts names its end
    let e = end_err(|b| {
        b.slurm_window = Some(SlurmWindow {
            start_s: 10,
            end_s: 9,
        });
        b.allocated_gpu_ms = 0;
    });
    assert_eq!(e.field(), Some("body.slurm_window.end_s"), "{e}");
    // unknown fields inside it are refused
    let mut v = json_of(&r);
    v["body"]["slurm_window"]["elapsed_s"] = 3601.into();
    let e = from_value(&v).unwrap_err();
    assert!(e.to_string().contains("elapsed_s"), "{e}");

    // a record without it (as written before it existed) has no such key and stays valid
    let old = example_end();
    let json = String::from_utf8(old.to_json().unwrap()).unwrap();
    assert!(!json.contains("slurm_window"), "{json}");
    let RecordBody::JobEnd(b) = Record::from_json(json.as_bytes()).unwrap().into_parts().2 else {
        unreachable!()
    };
    assert_eq!(b.allocated_window(), (b.start_time, b.end_time));
}

#[test]
fn energy_delta_alone_is_accepted() {
    // Fallback accounting (integrated power) has a delta but no counters.
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobEnd).unwrap();
    let mut b = end_body();
    for g in &mut b.gpus {
        g.energy_start_mj = None;
        g.energy_end_mj = None;
    }
    Record::new(id, 1, RecordBody::JobEnd(b)).unwrap();
}

fn share(profile: &str, slices: u32, of: u32) -> MigShare {
    MigShare {
        profile: profile.into(),
        slices,
        of,
    }
}

#[test]
fn a_slice_counts_by_its_share_of_the_gpu() {
    const HOUR: u64 = 3_600_000;
    // 2g.20gb of an A100/H100 (7 compute slices) for an hour: 2/7 of a GPU-hour
    assert_eq!(share("2g.20gb", 2, 7).gpu_equiv_ms(HOUR), 1_028_571); // 1028571.43
    // rounded to the nearest ms, halves up: 1 ms of 1g of 7 is 0.14 ms, 4 ms of 1g of 7 0.57
    assert_eq!(share("1g.10gb", 1, 7).gpu_equiv_ms(1), 0);
    assert_eq!(share("1g.10gb", 1, 7).gpu_equiv_ms(4), 1);
    assert_eq!(share("1g.6gb", 1, 4).gpu_equiv_ms(2), 1); // 0.5 rounds up
    // the full profile and a whole GPU count in full; never more than the device time
    assert_eq!(share("7g.80gb", 7, 7).gpu_equiv_ms(HOUR), HOUR);
    assert_eq!(gpu_equiv_ms(None, HOUR), HOUR);
    // a part of the GPU's energy, by the same arithmetic: 2/7 of 7_000 mJ, of 1 mJ none
    assert_eq!(share("2g.20gb", 2, 7).part(7_000), 2_000);
    assert_eq!(share("2g.20gb", 2, 7).part(1), 0);
    assert_eq!(share("7g.80gb", 7, 7).gpu_equiv_ms(u64::MAX), u64::MAX);
    assert_eq!(
        share("3g.40gb", 3, 7).gpu_equiv_ms(u64::MAX),
        7_905_747_460_161_236_406
    );
    // seven 1g slices of one GPU add up to the GPU within the rounding (< 1 ms each)
    let seven: u64 = (0..7)
        .map(|_| share("1g.10gb", 1, 7).gpu_equiv_ms(HOUR))
        .sum();
    assert!(seven.abs_diff(HOUR) < 7, "{seven}");
}

#[test]
fn a_job_end_on_slices_bills_gpu_equivalents() {
    const HOUR: u64 = 3_600_000;
    let mut b = end_body();
    b.end_time = b.start_time + HOUR;
    b.allocated_gpu_ms = 2 * HOUR;
    b.gpus[0].mig = Some(share("2g.20gb", 2, 7));
    b.gpus[1].name = Some("NVIDIA H100 80GB HBM3 MIG 3g.40gb".into());
    b.gpus[1].mig = Some(share("3g.40gb", 3, 7));
    for g in &mut b.gpus {
        (g.energy_start_mj, g.energy_end_mj, g.energy_delta_mj) = (None, None, None);
    }
    // devices x window stays allocated_gpu_ms; the bill is 2/7 + 3/7 of the hour
    assert_eq!(b.allocated_gpu_equiv_ms(), 1_028_571 + 1_542_857);
    // over Slurm's window when present, as allocated_gpu_ms
    b.slurm_window = Some(SlurmWindow {
        start_s: b.start_time / 1000,
        end_s: b.start_time / 1000 + 7200,
    });
    b.allocated_gpu_ms = 4 * HOUR;
    assert_eq!(b.allocated_gpu_equiv_ms(), 2 * (1_028_571 + 1_542_857) + 1);
    let id = RecordId::new("alpha", 42, None, "node1", RecordKind::JobEnd).unwrap();
    let r = Record::new(id, 1, RecordBody::JobEnd(b.clone())).unwrap();
    let json = r.to_json().unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.contains(r#""mig":{"profile":"2g.20gb","slices":2,"of":7}"#),
        "{text}"
    );
    assert_eq!(Record::from_json(&json).unwrap(), r);
    // a whole GPU in the same record counts in full
    b.gpus[1].mig = None;
    assert_eq!(b.allocated_gpu_equiv_ms(), 2_057_143 + 2 * HOUR); // 2057142.86
}

#[test]
fn records_without_shares_read_as_whole_gpus() {
    // a record as written before shares existed: no "mig" anywhere
    let old = example_end().to_json().unwrap();
    assert!(!String::from_utf8_lossy(&old).contains("mig"));
    let r = Record::from_json(&old).unwrap();
    let RecordBody::JobEnd(b) = r.body() else {
        panic!("not a job_end");
    };
    assert!(b.gpus.iter().all(|g| g.mig.is_none()));
    assert_eq!(b.allocated_gpu_equiv_ms(), b.allocated_gpu_ms);
    let start = example_start(42).to_json().unwrap();
    assert!(!String::from_utf8_lossy(&start).contains("mig"));
    Record::from_json(&start).unwrap();
}

#[test]
fn bad_shares_are_refused_naming_the_field() {
    let cases = [
        (share("", 1, 7), "body.gpus[0].mig.profile"),
        (share("1g.10gb", 0, 7), "body.gpus[0].mig.slices"),
        (share("7g.80gb", 8, 7), "body.gpus[0].mig.slices"),
        (share("1g.10gb", 1, 0), "body.gpus[0].mig.of"),
    ];
    for (m, field) in cases {
        let e = end_err(|b| b.gpus[0].mig = Some(m.clone()));
        assert_eq!(e.field(), Some(field), "{m:?}: {e}");
        let mut s = match example_start(1).into_parts().2 {
            RecordBody::JobStart(s) => s,
            _ => unreachable!(),
        };
        s.gpus[0].mig = Some(m.clone());
        let e = Record::new(start_id(1), 1, RecordBody::JobStart(s)).unwrap_err();
        assert_eq!(e.field(), Some(field), "{m:?}: {e}");
    }
    // unknown fields inside a share are refused, as everywhere in a record
    let mut v = json_of(&example_end());
    v["body"]["gpus"][0]["mig"] = serde_json::json!({"profile":"1g.10gb","slices":1,"of":7,"x":1});
    assert!(from_value(&v).is_err());
}

// ---- property tests -------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    // Odd but legal names, escaping included.
    "[a-zA-Z0-9._+,% é-]{1,6}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn opt_name() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9 _-]{0,12}")
}

fn uuids(n: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::hash_set("GPU-[0-9a-f]{8}", n).prop_map(|s| s.into_iter().collect())
}

fn start_body() -> impl Strategy<Value = RecordBody> {
    (
        name(),
        any::<u32>(),
        opt_name(),
        opt_name(),
        any::<u64>(),
        (0usize..5).prop_flat_map(|n| {
            (
                uuids(n),
                proptest::collection::vec((any::<u32>(), opt_name(), any::<Option<u64>>()), n),
            )
        }),
    )
        .prop_map(|(user, uid, account, partition, start_time, (uuids, gs))| {
            RecordBody::JobStart(JobStart {
                user,
                uid,
                account,
                partition,
                start_time,
                gpus: uuids
                    .into_iter()
                    .zip(gs)
                    .map(|(uuid, (index, name, energy_mj))| GpuRef {
                        index,
                        uuid,
                        name,
                        energy_mj,
                        mig: None,
                    })
                    .collect(),
            })
        })
}

fn end_body_strategy() -> impl Strategy<Value = RecordBody> {
    (
        name(),
        any::<u32>(),
        opt_name(),
        opt_name(),
        0u64..1 << 45,
        0u64..1 << 40,
        (0usize..5).prop_flat_map(|n| {
            (
                uuids(n),
                proptest::collection::vec(
                    (
                        any::<u32>(),
                        opt_name(),
                        0u64..1 << 50,
                        0u64..1 << 40,
                        0u8..4,
                    ),
                    n,
                ),
            )
        }),
        any::<Option<(u32, u32)>>(),
        any::<Option<(u32, u16)>>(),
    )
        .prop_map(
            |(user, uid, account, partition, start_time, span, (uuids, gs), exit, window)| {
                let gpus: Vec<GpuEnd> = uuids
                    .into_iter()
                    .zip(gs)
                    .map(|(uuid, (index, name, s, d, shape))| GpuEnd {
                        index,
                        uuid,
                        name,
                        energy_start_mj: (shape & 1 == 0).then_some(s),
                        energy_end_mj: (shape & 1 == 0).then_some(s + d),
                        energy_delta_mj: (shape != 3).then_some(d),
                        mig: None,
                    })
                    .collect();
                RecordBody::JobEnd(JobEnd {
                    user,
                    uid,
                    account,
                    partition,
                    start_time,
                    end_time: start_time + span,
                    allocated_gpu_ms: match window {
                        Some((_, secs)) => gpus.len() as u64 * u64::from(secs) * 1000,
                        None => gpus.len() as u64 * span,
                    },
                    gpus,
                    exit: exit.map(|(code, signal)| ExitStatus { code, signal }),
                    slurm_window: window.map(|(start, secs)| SlurmWindow {
                        start_s: u64::from(start),
                        end_s: u64::from(start) + u64::from(secs),
                    }),
                })
            },
        )
}

fn usage_strategy() -> impl Strategy<Value = Usage> {
    (
        name(),
        any::<u32>(),
        opt_name(),
        opt_name(),
        0u64..1 << 45,
        0u64..1 << 40,
        (0usize..5).prop_flat_map(|n| {
            (
                uuids(n),
                proptest::collection::vec(
                    (
                        any::<u32>(),
                        opt_name(),
                        any::<u64>(),
                        0u32..=100,
                        0.0f64..=1.0,
                        any::<u64>(),
                        any::<Option<u64>>(),
                        0.0f64..=1.0,
                    ),
                    n,
                ),
            )
        }),
    )
        .prop_map(
            |(user, uid, account, partition, window_start, span, (uuids, gs))| {
                let gpus: Vec<GpuUsage> = uuids
                    .into_iter()
                    .zip(gs)
                    .map(
                        |(uuid, (index, name, samples, max, frac, mem, energy_mj, used))| {
                            GpuUsage {
                                index,
                                uuid,
                                name,
                                samples,
                                util_mean_pct: f64::from(max) * frac,
                                util_max_pct: max,
                                mem_peak_mib: mem,
                                energy_mj,
                                used_gpu_ms: (span as f64 * used) as u64,
                                idle_ms: None,
                                idle_periods: None,
                            }
                        },
                    )
                    .collect();
                Usage {
                    user,
                    uid,
                    account,
                    partition,
                    window_start,
                    window_end: window_start + span,
                    allocated_gpu_ms: gpus.len() as u64 * span,
                    used_gpu_ms: gpus.iter().map(|g| g.used_gpu_ms).sum(),
                    gpus,
                    idle_gpu_ms: None,
                }
            },
        )
}

pub(crate) fn any_record() -> impl Strategy<Value = Record> {
    (
        name(),
        1u32..,
        name(),
        name(),
        any::<u64>(),
        prop_oneof![
            start_body(),
            end_body_strategy(),
            usage_strategy().prop_map(RecordBody::StepUsage),
            usage_strategy().prop_map(RecordBody::JobUsage),
        ],
    )
        .prop_map(|(cluster, job, step, node, at, body)| {
            let kind = body.kind();
            let step = kind.is_per_step().then_some(step);
            let id = RecordId::new(cluster, job, step, node, kind).unwrap();
            Record::new(id, at, body).unwrap()
        })
        .prop_flat_map(|r| (Just(r), prop_oneof![Just(0u32), 1u32..5, any::<u32>()]))
        .prop_map(|(r, run)| {
            let (id, at, body) = r.into_parts();
            Record::new(id.with_run(run).unwrap(), at, body).unwrap()
        })
}

proptest! {
    #[test]
    fn any_valid_record_round_trips(r in any_record()) {
        let json = r.to_json().unwrap();
        let back = Record::from_json(&json).unwrap();
        prop_assert_eq!(&back, &r);
        prop_assert_eq!(back.id().key(), r.id().key());
    }

    #[test]
    fn from_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Record::from_json(&bytes);
    }

    /// Spool records as a file system or a hostile writer may leave them: a valid record's
    /// JSON with bytes changed, cut or spliced; reading never panics, and whatever reads
    /// is valid and writes back to itself.
    #[test]
    fn mutated_records_never_panic(
        r in any_record(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut json = r.to_json().unwrap();
        for (at, b) in edits {
            let i = at % json.len();
            json[i] = b;
        }
        if let Some(c) = cut {
            json.truncate(c % (json.len() + 1));
        }
        if let Ok(back) = Record::from_json(&json) {
            prop_assert!(back.validate().is_ok());
            let again = Record::from_json(&back.to_json().unwrap()).unwrap();
            prop_assert_eq!(again, back);
        }
    }

    /// Two different identities never share a key (the dedup key, and spool file names).
    #[test]
    fn distinct_ids_have_distinct_keys(a in any_record(), b in any_record()) {
        prop_assert_eq!(a.id() == b.id(), a.id().key() == b.id().key());
    }
}
