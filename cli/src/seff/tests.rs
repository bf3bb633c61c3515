use super::*;
use sgpu_wire::efficiency::Period;

#[test]
fn sacct_durations_and_sizes_read_as_slurm_prints_them() {
    assert_eq!(parse_duration("TotalCPU", "00:01.500").unwrap(), 1.5);
    assert_eq!(parse_duration("TotalCPU", "02:03").unwrap(), 123.0);
    assert_eq!(parse_duration("TotalCPU", "01:00:01").unwrap(), 3601.0);
    assert_eq!(parse_duration("TotalCPU", "1-00:00:00").unwrap(), 86_400.0);
    let e = parse_duration("TotalCPU", "soon").unwrap_err();
    assert_eq!(e.field, "TotalCPU");
    assert!(e.to_string().contains("TotalCPU"), "{e}");
    assert!(parse_duration("TotalCPU", "1:-2").is_err());
    assert_eq!(parse_size("MaxRSS", "1024K", 1).unwrap(), (1 << 20, None));
    assert_eq!(
        parse_size("ReqMem", "4000M", 1 << 20).unwrap().0,
        4000 << 20
    );
    assert_eq!(
        parse_size("ReqMem", "2Gc", 1 << 20).unwrap(),
        (2 << 30, Some('c'))
    );
    assert_eq!(parse_size("ReqMem", "100", 1 << 20).unwrap().0, 100 << 20);
    assert!(parse_size("ReqMem", "12Q", 1).is_err());
    assert!(parse_size("MaxRSS", "-5K", 1).is_err());
}

#[test]
fn sacct_lines_give_cpu_and_memory_efficiency() {
    let out = "\
42|COMPLETED|100|00:50.000|4||2000M|1
42.batch|COMPLETED|100|00:40.000|4|512000K||1
42.extern|COMPLETED|100|00:00:00|4|1000K||1
42.0|COMPLETED|90|00:10.000|4|256000K||1
";
    let e = parse_sacct(42, out).unwrap().unwrap();
    assert_eq!(e.state, "COMPLETED");
    assert_eq!(e.alloc_cpus, 4);
    assert_eq!(e.total_cpu_s, 50.0);
    assert!((e.cpu_efficiency_pct.unwrap() - 12.5).abs() < 1e-9);
    assert_eq!(e.max_rss_bytes, Some(512_000 * 1024));
    assert_eq!(e.req_mem_bytes, Some(2000 << 20));
    assert!((e.mem_efficiency_pct.unwrap() - 25.0).abs() < 0.01);
    // per-CPU request (older releases' `c` suffix)
    let e = parse_sacct(43, "43|RUNNING|10||2||500Mc|1\n")
        .unwrap()
        .unwrap();
    assert_eq!(e.req_mem_bytes, Some(1000 << 20));
    assert_eq!(e.max_rss_bytes, None);
    assert_eq!(e.mem_efficiency_pct, None);
    // sacct's unknown unit (22.05, a running job): the request is unknown, the rest reads
    let e = parse_sacct(44, "44|RUNNING|5|00:01|2||16?|1\n")
        .unwrap()
        .unwrap();
    assert_eq!((e.req_mem_bytes, e.alloc_cpus), (None, 2));
    // another job's lines are not this job's
    assert_eq!(
        parse_sacct(4, "42|COMPLETED|1|00:01|1||1M|1\n").unwrap(),
        None
    );
    let err = parse_sacct(42, "42|COMPLETED|ten|00:01|1||1M|1\n").unwrap_err();
    assert_eq!(err.field, "ElapsedRaw");
    let err = parse_sacct(42, "42|COMPLETED\n").unwrap_err();
    assert!(err.to_string().contains("8 fields"), "{err}");
}

fn gpu(node: &str, index: u32, util: Option<f64>, mem: Option<u64>) -> GpuEfficiency {
    let mut g = GpuEfficiency::new(node, index, "GPU-x", Some("NVIDIA H100 80GB HBM3".into()));
    g.allocated_gpu_ms = 3_600_000;
    g.util_mean_pct = util;
    g.util_max_pct = util.map(|u| u as u32);
    g.mem_peak_mib = mem;
    g.mem_total_mib = Some(81_920);
    g
}

fn answer(gpus: Vec<GpuEfficiency>) -> EfficiencyAnswer {
    EfficiencyAnswer {
        version: Some(1),
        cluster: "c".into(),
        job_id: 5,
        run: 0,
        user: "ann".into(),
        account: "phys".into(),
        partition: "gpu".into(),
        start_ms: 0,
        end_ms: Some(3_600_000),
        now_ms: 3_700_000,
        nodes: vec!["n1".into()],
        allocated_gpu_ms: gpus.iter().map(|g| g.allocated_gpu_ms).sum(),
        slice_ms: None,
        used_gpu_ms: None,
        energy_mj: None,
        idle_gpu_ms: None,
        actions: Vec::new(),
        gpus,
    }
}

#[test]
fn hints_name_unused_gpus_small_memory_idle_time_and_low_cpu() {
    let a = answer(vec![
        gpu("n1", 0, Some(80.0), Some(3 * 1024)),
        gpu("n1", 1, Some(0.0), Some(0)),
        gpu("n1", 2, Some(1.0), Some(0)),
        gpu("n1", 3, Some(0.0), Some(0)),
    ]);
    let slurm = SlurmAnswer::Figures(
        parse_sacct(5, "5|COMPLETED|100|00:10|8|4000M|16G|1\n")
            .unwrap()
            .unwrap(),
    );
    let h = hints(&a, &slurm);
    assert!(
        h.iter().any(|l| l.starts_with("asked for 4 GPUs, used 1")),
        "{h:?}"
    );
    assert!(
        h.iter()
            .any(|l| l == "GPU memory peak 3.0 GiB of 80 GiB: a smaller GPU or a MIG slice fits"),
        "{h:?}"
    );
    assert!(
        h.iter()
            .any(|l| l.starts_with("CPU efficiency 1% of 8 CPUs")),
        "{h:?}"
    );
    assert!(
        h.iter()
            .any(|l| l.starts_with("memory peak 3.9 GiB of 16.0 GiB")),
        "{h:?}"
    );
    // a busy job with its memory used: no hint
    let busy = answer(vec![gpu("n1", 0, Some(90.0), Some(70_000))]);
    let fine = SlurmAnswer::Figures(
        parse_sacct(5, "5|COMPLETED|100|01:30|1|900M|1000M|1\n")
            .unwrap()
            .unwrap(),
    );
    assert_eq!(hints(&busy, &fine), Vec::<String>::new());
    // idle time measured: a hint over the threshold, none under it
    let mut idle = answer(vec![gpu("n1", 0, Some(90.0), Some(70_000))]);
    idle.idle_gpu_ms = Some(1_800_000);
    assert!(
        hints(&idle, &fine)
            .iter()
            .any(|l| l.starts_with("GPUs idle 50%"))
    );
    idle.idle_gpu_ms = Some(60_000);
    assert!(hints(&idle, &fine).is_empty());
    // unknown figures give no hint at all (never read as zero)
    let unknown = answer(vec![gpu("n1", 0, None, None)]);
    assert!(hints(&unknown, &SlurmAnswer::Unavailable("no slurmdbd".into())).is_empty());
}

#[test]
fn the_report_says_what_is_unknown_and_shows_idle_periods() {
    let mut a = answer(vec![gpu("n1", 0, None, None)]);
    let text = render(
        &a,
        &SlurmAnswer::Unavailable(
            "Slurm's accounting storage (slurmdbd) is not configured on this cluster".into(),
        ),
        &[],
    );
    assert!(text.contains("utilization not sampled"), "{text}");
    assert!(text.contains("Idle GPU-hours: unknown"), "{text}");
    assert!(
        text.contains("CPU and memory efficiency: not available: Slurm's accounting storage"),
        "{text}"
    );
    a.gpus[0].idle_ms = Some(600_000);
    a.gpus[0].idle_periods = Some(vec![Period {
        start_ms: 60_000,
        end_ms: 660_000,
    }]);
    a.idle_gpu_ms = Some(600_000);
    let text = render(&a, &SlurmAnswer::Unavailable("x".into()), &[]);
    assert!(
        text.contains("Idle GPU-hours: 0.1667 (16.7% of allocated)"),
        "{text}"
    );
    assert!(
        text.contains("n1 gpu0: 1970-01-01T00:01:00 - 1970-01-01T00:11:00 (00:10:00)"),
        "{text}"
    );
}

#[test]
fn live_figures_fill_a_running_job() {
    let mut a = answer(vec![gpu("n1", 0, None, None)]);
    a.end_ms = None;
    let doc: StatusDoc = serde_json::from_value(serde_json::json!({
        "version": 1, "node": "n1", "healthd_version": "x", "now_ms": 1, "started_at_ms": 0,
        "health": null, "drained": null,
        "breaker": {"open": false, "trip": null, "refusals_total": 0},
        "sampling": {"interval_s": 10, "last_sample_ms": null, "last_duration_ms": null,
                     "error": null, "samples_total": 0, "jobs_finalised_total": 0},
        "gpus": [],
        "jobs": [{"cluster": "c", "job_id": 5, "user": "ann", "account": null,
                  "partition": null, "start_time_ms": 0, "samples": 4,
                  "util_mean_pct": 50.0, "util_max_pct": 70, "energy_mj": 9000,
                  "gpus": [{"index": 0, "uuid": "GPU-x", "samples": 4, "util_mean_pct": 50.0,
                            "util_max_pct": 70, "mem_peak_mib": 100, "energy_mj": 9000,
                            "idle": false, "idle_ms": 120000}]}]
    }))
    .unwrap();
    assert!(merge_live(&mut a, "n1", &doc));
    assert_eq!(a.gpus[0].util_mean_pct, Some(50.0));
    assert_eq!(a.gpus[0].used_gpu_ms, Some(1_800_000));
    assert_eq!(a.used_gpu_ms, Some(1_800_000));
    assert_eq!(a.energy_mj, Some(9000));
    assert_eq!(
        (a.gpus[0].idle_ms, a.idle_gpu_ms),
        (Some(120_000), Some(120_000))
    );
    // another cluster's job of the same id is not this one
    a.cluster = "other".into();
    assert!(!merge_live(&mut a, "n1", &doc));
}

#[test]
fn a_job_on_mig_slices_shows_each_slice_under_its_gpu_by_share() {
    // a 2g.20gb slice for 1 h, counted 2/7 GPU-hour; its utilization is unknown
    let mut g = gpu("n1", 0, None, Some(512));
    g.model = Some("NVIDIA H100 80GB HBM3 MIG 2g.20gb".into());
    g.mig = Some(sgpu_wire::efficiency::MigSlice {
        profile: "2g.20gb".into(),
        parent_model: Some("NVIDIA H100 80GB HBM3".into()),
        slices: Some(2),
        of: Some(7),
    });
    (g.allocated_gpu_ms, g.slice_ms, g.mem_total_mib) = (1_028_571, Some(3_600_000), Some(20_480));
    let mut whole = gpu("n1", 1, Some(80.0), Some(1024));
    whole.used_gpu_ms = Some(2_880_000);
    let mut a = answer(vec![g, whole]);
    (a.slice_ms, a.used_gpu_ms) = (Some(3_600_000), Some(2_880_000));
    let text = render(&a, &SlurmAnswer::Unavailable("x".into()), &[]);
    // used time is a share of the sampled GPU's hour, not of the slice's unsampled share
    assert!(
        text.contains("GPU-hours: allocated 1.2857, used 0.8000 (80.0% of the 1.0000 sampled)"),
        "1 h whole + 2/7 h: {text}"
    );
    assert!(
        text.contains("MIG slice-hours: 1.0000 (GPU-hours count each slice by its share"),
        "{text}"
    );
    let table: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .take(3)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        table[0],
        [
            "NODE",
            "GPU",
            "MODEL",
            "SLICE",
            "UTIL MEAN",
            "UTIL MAX",
            "MEM PEAK",
            "GPU-HOURS",
            "SLICE-HOURS",
            "USED",
            "ENERGY KWH",
            "IDLE"
        ]
    );
    assert_eq!(
        table[1][..9],
        [
            "n1",
            "0",
            "NVIDIA H100 80GB HBM3",
            "2g.20gb (2/7)",
            "-",
            "-",
            "512 / 20480 MiB",
            "0.2857",
            "1.0000"
        ]
    );
    assert_eq!(table[2][3], "-", "a whole GPU has no slice: {text}");
    // a job without slices keeps the table it had
    let text = render(
        &answer(vec![gpu("n1", 0, Some(1.0), None)]),
        &SlurmAnswer::Unavailable("x".into()),
        &[],
    );
    assert!(
        !text.contains("SLICE") && !text.contains("slice-hours"),
        "{text}"
    );
}

#[test]
fn idle_actions_are_listed_with_the_reason_the_user_was_told() {
    let mut a = answer(vec![gpu("n1", 0, Some(0.0), Some(0))]);
    assert_eq!(idle_sections(&a), "");
    a.actions.push(sgpu_wire::efficiency::IdleAction {
        time_ms: 600_000,
        node: "n1".into(),
        action: "idle_warn".into(),
        reason: "GPU 0 idle for 10 minutes".into(),
    });
    assert_eq!(
        idle_sections(&a),
        "Idle actions:\n  1970-01-01T00:10:00 n1 idle_warn: GPU 0 idle for 10 minutes\n"
    );
}
