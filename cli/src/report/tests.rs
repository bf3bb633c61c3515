use super::*;
use clap::Parser as _;

fn site(prices: bool) -> SiteAnswer {
    SiteAnswer {
        version: Some(1),
        time_zone: "UTC".into(),
        prices,
        currency: prices.then(|| "EUR".into()),
        coordinates: Vec::new(),
    }
}

fn rows() -> Vec<ReportRow> {
    // acctd's answer grouped by account,user,partition,gpu, priced by acctd (gpu 2.00 per
    // GPU-hour, other partitions 1.00, 0.50 per kWh)
    let rows = vec![
        json!({"account": "physics", "user": "alice", "partition": "gpu", "gpu_model": "H100",
               "allocated_gpu_ms": 7_200_000u64, "used_gpu_ms": 3_600_000u64,
               "energy_mj": 3_600_000_000u64, "jobs": 2, "cost_micro": 4_500_000u64}),
        json!({"account": "physics", "user": "alice", "partition": "debug", "gpu_model": "H100",
               "allocated_gpu_ms": 1_800_000u64, "used_gpu_ms": 0u64,
               "energy_mj": 0u64, "jobs": 1, "cost_micro": 500_000u64}),
        json!({"account": "chem", "user": "bob", "partition": "gpu", "gpu_model": "A100",
               "allocated_gpu_ms": 36_000_000u64, "used_gpu_ms": 36_000_000u64,
               "energy_mj": 9_000_000_000u64, "jobs": 1, "cost_micro": 21_250_000u64}),
    ];
    rows.into_iter()
        .map(|r| serde_json::from_value(r).unwrap())
        .collect()
}

#[test]
fn report_sums_priced_rows_into_the_requested_groups() {
    let agg = aggregate(&rows(), &[Field::Account]);
    let physics = &agg[&vec!["physics".to_string()]];
    assert_eq!(physics.allocated_gpu_ms, 9_000_000);
    assert_eq!(physics.jobs, 3);
    // 2 h in gpu at 2.0 + 1 kWh at 0.5 + 0.5 h in debug at the default 1.0.
    assert_eq!(physics.cost_micro, Some(5_000_000));
    // rows without a cost (acctd without prices): no cost, an empty cell
    let mut unpriced = rows();
    for r in &mut unpriced {
        r.cost_micro = None;
    }
    let agg = aggregate(&unpriced, &[Field::Account]);
    assert_eq!(agg[&vec!["chem".to_string()]].cost_micro, None);
    let cols = parse_format(
        "Account,Jobs,GPUHours,UsedGPUHours,GPUUtil,EnergyKWh,AvgPowerW,Cost",
        REPORT_FIELDS,
    )
    .unwrap();
    assert_eq!(
        render_report(&rows(), &cols, &[Field::Account], Style::Table, true),
        "   Account   Jobs   GPUHours UsedGPUHours GPUUtil  EnergyKWh AvgPowerW       Cost\n\
         ---------- ------ ---------- ------------ ------- ---------- --------- ----------\n      \
               chem      1      10.00        10.00   100.0      2.500     250.0      21.25\n   \
            physics      3       2.50         1.00    40.0      1.000     400.0       5.00\n"
    );
    assert_eq!(
        render_report(&rows(), &cols, &[Field::Account], Style::Parsable2, false),
        "chem|1|10.00|10.00|100.0|2.500|250.0|21.25\nphysics|3|2.50|1.00|40.0|1.000|400.0|5.00\n"
    );
}

#[test]
fn group_by_comes_from_the_flag_else_the_format_else_account_user() {
    let cols = parse_format("User,GPUHours", REPORT_FIELDS).unwrap();
    assert_eq!(
        group_fields(None, Some(&cols)).unwrap().1,
        vec![Field::User]
    );
    assert_eq!(group_fields(None, None).unwrap().0, vec!["account", "user"]);
    let (names, fields) = group_fields(Some("gpu,Month"), None).unwrap();
    assert_eq!(names, vec!["gpu", "month"]);
    assert_eq!(fields, vec![Field::GpuModel, Field::Period]);
    assert!(group_fields(Some("user"), Some(&cols[..])).is_ok());
    let e = group_fields(Some("account"), Some(&cols))
        .unwrap_err()
        .to_string();
    assert!(e.contains("User") && e.contains("--group-by"), "{e}");
    assert!(group_fields(Some("day,week"), None).is_err());
    assert!(
        group_fields(Some("colour"), None)
            .unwrap_err()
            .to_string()
            .contains("valid")
    );
    let period = parse_format("Period,GPUHours", REPORT_FIELDS).unwrap();
    assert!(group_fields(None, Some(&period)).is_err());
}

#[derive(clap::Parser)]
struct T {
    #[command(flatten)]
    s: SelectArgs,
}

#[test]
fn sacct_flags_make_the_query() {
    let t = T::parse_from([
        "t",
        "-S",
        "2026-11-01",
        "-E",
        "now-1days",
        "-A",
        "phys ics,chem",
        "-u",
        "alice",
        "-r",
        "gpu",
        "-M",
        "alpha",
        "-j",
        "12,13",
        "-G",
        "NVIDIA H100 80GB HBM3",
        "-P",
        "-n",
    ]);
    let now = 1_795_437_296;
    let (s, e) = window(&t.s, now, &TimeZone::UTC, 0, 1).unwrap();
    assert_eq!(format_time(s), "2026-11-01T00:00:00");
    assert_eq!(e, now - 86_400);
    assert_eq!(
        query(&t.s, s, e, Some("account,gpu")),
        format!(
            "start={s}&end={e}&account=phys%20ics,chem&user=alice&jobs=12,13&partition=gpu\
             &cluster=alpha&gpu_model=NVIDIA%20H100%2080GB%20HBM3&group_by=account,gpu"
        )
    );
    assert!(t.s.parsable2 && t.s.noheader);
    let t = T::parse_from(["t", "-S", "now", "-E", "now-1hours"]);
    assert!(
        window(&t.s, now, &TimeZone::UTC, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let t = T::parse_from(["t", "-S", "yesterday"]);
    let e = format!("{:#}", window(&t.s, now, &TimeZone::UTC, 0, 1).unwrap_err());
    assert!(e.contains("-S/--starttime") && e.contains("valid"), "{e}");
    let t = T::parse_from(["t"]);
    assert_eq!(window(&t.s, now, &TimeZone::UTC, 5, 9).unwrap(), (5, 9));
}

#[test]
fn job_lines_show_whole_jobs() {
    let j: JobSummary = serde_json::from_value(
        json!({"cluster": "alpha", "job_id": 42, "user": "alice", "account": "physics",
        "partition": "gpu", "start_ms": 1_795_392_000_000u64, "end_ms": 1_795_399_200_000u64,
        "nodes": ["n1", "n2"], "gpus": 2, "gpu_models": ["H100"],
        "allocated_gpu_ms": 14_400_000u64, "used_gpu_ms": 7_200_000u64,
        "energy_mj": 1_800_000_000u64, "cost_micro": 8_250_000u64}),
    )
    .unwrap();
    let cols = parse_format(
        "JobID,User,Start,End,Elapsed,State,NodeList,GPUs,GPUHours,GPUUtil,EnergyKWh,Cost",
        JOBS_FIELDS,
    )
    .unwrap();
    assert_eq!(
        job_cells(&j, &cols, &TimeZone::UTC),
        vec![
            "42",
            "alice",
            "2026-11-23T00:00:00",
            "2026-11-23T02:00:00",
            "02:00:00",
            "COMPLETED",
            "n1,n2",
            "2",
            "4.00",
            "50.0",
            "0.500",
            "8.25"
        ]
    );
    let running = JobSummary {
        job_id: 43,
        start_ms: 0,
        gpus: 1,
        ..JobSummary::default()
    };
    // in the site's zone: Berlin is an hour ahead in November
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    assert_eq!(
        job_cells(&j, &cols, &berlin)[2..4],
        ["2026-11-23T01:00:00", "2026-11-23T03:00:00"]
    );
    let cells = job_cells(&running, &cols, &TimeZone::UTC);
    assert_eq!(cells[3], "Unknown");
    assert_eq!(cells[5], "RUNNING");
    // idle GPU-hours: empty when not measured, else the job's idle time
    let idle = parse_format("JobID,IdleGPUHours", JOBS_FIELDS).unwrap();
    assert_eq!(job_cells(&j, &idle, &TimeZone::UTC), ["42", ""]);
    let measured = JobSummary {
        idle_gpu_ms: Some(5_400_000),
        ..j.clone()
    };
    assert_eq!(job_cells(&measured, &idle, &TimeZone::UTC), ["42", "1.50"]);
    // a job on a MIG slice only: its used time is unknown, not 0 (and no utilization)
    let used = parse_format("JobID,UsedGPUHours,GPUUtil", JOBS_FIELDS).unwrap();
    let slice = JobSummary {
        used_gpu_ms: 0,
        used_measured_gpu_ms: Some(0),
        ..j.clone()
    };
    assert_eq!(job_cells(&slice, &used, &TimeZone::UTC), ["42", "", ""]);
    let whole = JobSummary {
        used_gpu_ms: 0,
        ..j.clone()
    };
    assert_eq!(
        job_cells(&whole, &used, &TimeZone::UTC),
        ["42", "0.00", "0.0"]
    );
}

#[test]
fn cost_without_prices_is_a_clear_error() {
    let cols = parse_format("Account,Cost", REPORT_FIELDS).unwrap();
    let e = check_cost(&cols, &site(false)).unwrap_err().to_string();
    assert!(
        e.contains("acctd has no prices") && e.contains("acctd.toml"),
        "{e}"
    );
    assert!(check_cost(&cols, &site(true)).is_ok());
}

#[test]
fn per_gpu_lines_count_allocated_time_over_slurms_window() {
    use sgpu_spool::{GpuEnd, JobEnd, RecordId, RecordKind, SlurmWindow};
    let end = |window: Option<SlurmWindow>| {
        let body = JobEnd {
            user: "alice".into(),
            uid: 1001,
            account: None,
            partition: None,
            start_time: 1_700_000_000_000,
            end_time: 1_700_003_600_000,
            gpus: vec![GpuEnd {
                index: 0,
                uuid: "GPU-0".into(),
                name: Some("H100".into()),
                energy_start_mj: None,
                energy_end_mj: None,
                energy_delta_mj: Some(3_600_000),
                mig: None,
            }],
            allocated_gpu_ms: window.map_or(3_600_000, |w| (w.end_s - w.start_s) * 1000),
            exit: None,
            slurm_window: window,
        };
        let id = RecordId::new("c", 7, None, "n1", RecordKind::JobEnd).unwrap();
        Record::new(id, 1, RecordBody::JobEnd(body)).unwrap()
    };
    // the gates' window: 1 h
    assert_eq!(per_gpu_lines(&[end(None)])[0][5], "1.00");
    // Slurm's (made 2 h long here to tell them apart)
    let w = SlurmWindow {
        start_s: 1_700_000_000,
        end_s: 1_700_007_200,
    };
    assert_eq!(per_gpu_lines(&[end(Some(w))])[0][5], "2.00");
    // a 2g.20gb slice (2 of 7) for the hour: the parent's model, the profile with its share,
    // 2/7 GPU-hour billed and one slice-hour; a whole GPU has no profile or slice-hours
    let RecordBody::JobEnd(mut b) = end(None).body().clone() else {
        unreachable!()
    };
    b.gpus[0].uuid = "MIG-0".into();
    b.gpus[0].name = Some("H100 MIG 2g.20gb".into());
    b.gpus[0].energy_delta_mj = None;
    b.gpus[0].mig = Some(sgpu_spool::MigShare {
        profile: "2g.20gb".into(),
        slices: 2,
        of: 7,
    });
    let id = RecordId::new("c", 7, None, "n1", RecordKind::JobEnd).unwrap();
    let slice = Record::new(id, 1, RecordBody::JobEnd(b)).unwrap();
    let line = &per_gpu_lines(&[slice])[0];
    assert_eq!(
        line[..7],
        ["n1", "0", "H100", "2g.20gb (2/7)", "MIG-0", "0.29", "1.00"]
    );
    // no utilization per slice: used time and utilization empty, not 0
    assert_eq!(line[7..9], ["", ""]);
    let line = &per_gpu_lines(&[end(None)])[0];
    assert_eq!(line[..7], ["n1", "0", "H100", "", "GPU-0", "1.00", ""]);
    assert_eq!(line[7], "0.00", "a whole GPU's used time is measured");
}

#[test]
fn reports_group_by_mig_profile() {
    let (names, fields) = group_fields(Some("gpu,profile"), None).unwrap();
    assert_eq!(names, vec!["gpu", "profile"]);
    assert_eq!(fields, vec![Field::GpuModel, Field::MigProfile]);
    let cols = parse_format("Profile,GPUHours", REPORT_FIELDS).unwrap();
    assert_eq!(group_fields(None, Some(&cols)).unwrap().0, vec!["profile"]);
    let row = |profile: &str, ms: u64, slice_ms: u64| ReportRow {
        mig_profile: Some(profile.into()),
        allocated_gpu_ms: ms,
        slice_ms: Some(slice_ms),
        ..ReportRow::default()
    };
    let rows = [
        row("", 3_600_000, 0),
        row("2g.20gb", 1_028_571, 3_600_000),
        row("2g.20gb", 1_028_571, 3_600_000),
    ];
    let sums = aggregate(&rows, &[Field::MigProfile]);
    assert_eq!(sums[&vec![String::new()]].allocated_gpu_ms, 3_600_000);
    let two_g = &sums[&vec!["2g.20gb".to_string()]];
    assert_eq!(two_g.allocated_gpu_ms, 2 * 1_028_571);
    assert_eq!(two_g.slice_ms, Some(2 * 3_600_000));
    let cols = parse_format("Profile,GPUHours,SliceHours", REPORT_FIELDS).unwrap();
    let text = render_report(&rows, &cols, &[Field::MigProfile], Style::Parsable2, false);
    assert_eq!(text, "|1.00|0.00\n2g.20gb|0.57|2.00\n");
    // an acctd that predates slice time: the column stays empty, not 0
    let old = [ReportRow {
        slice_ms: None,
        ..row("2g.20gb", 1_028_571, 0)
    }];
    let text = render_report(&old, &cols, &[Field::MigProfile], Style::Parsable2, false);
    assert_eq!(text, "2g.20gb|0.29|\n");
}

#[test]
fn top_wasters_rank_by_idle_where_measured_else_allocated_minus_used() {
    let mut rows = rows();
    // bob: idle measured over his GPU time, 3 h of it idle although every GPU-hour was
    // "used" by utilization; alice: idle not measured
    rows[2].idle_gpu_ms = Some(3 * 3_600_000);
    rows[2].idle_measured_gpu_ms = Some(36_000_000);
    let agg = aggregate(&rows, &[Field::User]);
    assert_eq!(agg[&vec!["alice".to_string()]].idle_gpu_ms, None);
    let top = top_wasters(agg.clone(), 5);
    let order: Vec<&str> = top.iter().map(|(k, _)| k[0].as_str()).collect();
    assert_eq!(order, ["bob", "alice"]);
    assert_eq!(top[0].1.waste(), (3 * 3_600_000, WasteBy::Idle));
    assert_eq!(
        top[1].1.waste(),
        (9_000_000 - 3_600_000, WasteBy::AllocatedMinusUsed)
    );
    assert_eq!(top_wasters(agg.clone(), 1).len(), 1);
    let cols = parse_format(
        "User,GPUHours,UsedGPUHours,IdleGPUHours,WasteGPUHours,WasteBy",
        REPORT_FIELDS,
    )
    .unwrap();
    // unknown idle prints empty, never 0.00
    assert_eq!(
        render_groups(&top, &cols, &[Field::User], Style::Parsable2, false),
        "bob|10.00|10.00|3.00|3.00|idle\nalice|2.50|1.00||1.50|alloc-used\n"
    );
    let mut m = serde_json::Map::new();
    top[1].1.json(&mut m);
    assert_eq!(m["idle_gpu_hours"], Value::Null);
    assert_eq!(m["waste_by"], "alloc-used");
}

#[test]
fn a_slices_used_time_and_waste_are_empty_not_0_and_not_waste() {
    // a whole GPU (1 h, 0.5 h used) and a 2g.20gb slice (2/7 GPU-hour, no used-time samples)
    let row = |user: &str, profile: &str, alloc: u64, used: u64, measured: Option<u64>| ReportRow {
        user: Some(user.into()),
        mig_profile: Some(profile.into()),
        allocated_gpu_ms: alloc,
        used_gpu_ms: used,
        used_measured_gpu_ms: measured,
        ..ReportRow::default()
    };
    let rows = [
        row("alice", "", 3_600_000, 1_800_000, Some(3_600_000)),
        row("bob", "2g.20gb", 1_028_571, 0, Some(0)),
        row("carol", "", 3_600_000, 1_800_000, Some(3_600_000)),
        row("carol", "2g.20gb", 1_028_571, 0, Some(0)),
    ];
    let cols = parse_format(
        "User,GPUHours,UsedGPUHours,MeasuredGPUHours,GPUUtil,WasteGPUHours,WasteBy",
        REPORT_FIELDS,
    )
    .unwrap();
    let top = top_wasters(aggregate(&rows, &[Field::User]), 5);
    // bob's slice: used time and waste unknown (empty), ranked last; carol's slice time is
    // neither used nor waste: her figures are over her whole GPU's hour
    assert_eq!(
        render_groups(&top, &cols, &[Field::User], Style::Parsable2, false),
        "alice|1.00|0.50|1.00|50.0|0.50|alloc-used\n\
         carol|1.29|0.50|1.00|50.0|0.50|alloc-used\n\
         bob|0.29||0.00|||unmeasured\n"
    );
    let bob = &top[2].1;
    assert_eq!(bob.used(), None);
    let mut m = serde_json::Map::new();
    bob.json(&mut m);
    for k in [
        "used_gpu_ms",
        "used_gpu_hours",
        "gpu_util_pct",
        "waste_gpu_hours",
    ] {
        assert_eq!(m[k], Value::Null, "{k}");
    }
    assert_eq!(m["used_measured_gpu_ms"], 0);
    // an acctd that predates the measured time: all allocated time counts as measured
    let old = [ReportRow {
        used_measured_gpu_ms: None,
        ..row("dave", "", 3_600_000, 0, None)
    }];
    let s = &aggregate(&old, &[Field::User])[&vec!["dave".to_string()]];
    assert_eq!((s.used(), s.measured_gpu_ms()), (Some(0), 3_600_000));
}
