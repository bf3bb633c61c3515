use super::*;
use crate::checks::Verdict;
use crate::gpu::NodeSnapshot;
use crate::history::History;

fn gpu(links: Reading<Vec<Link>>) -> GpuSnapshot {
    let mut g = GpuSnapshot::unknown(0);
    g.uuid = Reading::Value("GPU-a".into());
    g.nvlink = links;
    g
}

/// `n` links, those in `down` inactive, each active link with `errors` of every counter
/// (`None`: counters not read, as in the gates).
fn links(n: u32, down: &[u32], errors: Option<u64>) -> Reading<Vec<Link>> {
    Reading::Value(
        (0..n)
            .map(|l| {
                let active = !down.contains(&l);
                Link {
                    link: l,
                    active,
                    errors: match errors {
                        Some(v) if active => ERROR_COUNTERS
                            .iter()
                            .map(|(name, _)| ((*name).to_string(), v))
                            .collect(),
                        _ => BTreeMap::new(),
                    },
                }
            })
            .collect(),
    )
}

fn judge(g: &GpuSnapshot, record: Option<&GpuRecord>, now: f64) -> Vec<CheckResult> {
    results(&Catalogue::default(), Profile::Full, g, record, now)
}

fn failing(r: &[CheckResult]) -> Vec<String> {
    r.iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| format!("{} {}", r.severity, r.drain_reason()))
        .collect()
}

#[test]
fn all_links_active_pass_and_a_board_without_nvlink_is_unknown() {
    let r = judge(&gpu(links(18, &[], None)), None, 0.0);
    assert_eq!(r.len(), 1, "no counters read: no gpu.nvlink_errors result");
    assert_eq!(r[0].status, Status::Pass);
    assert_eq!(r[0].observed, "18 of 18 links active");
    let r = judge(&gpu(Reading::Unsupported), None, 0.0);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, Status::Unknown);
    assert_eq!(Verdict::of(&r), Verdict::Healthy);
}

#[test]
fn inactive_links_beside_active_ones_drain() {
    // V100-SXM2 with links 3 and 5 <inactive> (Azure/azhpc-diagnostics#73)
    let r = judge(&gpu(links(6, &[3, 5], None)), None, 0.0);
    assert_eq!(
        failing(&r),
        [
            "drain sgpu: gpu.nvlink gpu0: NVLink 4 of 6 links active (inactive: 3,5), expected 6 \
          active (every link of the board)"
        ]
    );
}

#[test]
fn a_board_without_a_bridge_is_not_judged_until_it_had_links_up() {
    // A100 PCIe without a bridge: all 12 links report down (NVIDIA/NVSentinel#1481)
    let g = gpu(links(12, &(0..12).collect::<Vec<_>>(), None));
    let r = judge(&g, None, 0.0);
    assert_eq!(r[0].status, Status::Unknown, "{:?}", r[0]);
    // the same GPU after this node saw 12 active links: all down is a fault
    let mut h = History::default();
    let snap = |g: GpuSnapshot| NodeSnapshot {
        driver_version: Reading::Unsupported,
        gpus: vec![g],
    };
    h.observe(&snap(gpu(links(12, &[], None))), 0.0);
    let r = judge(&g, h.gpu("GPU-a"), 10.0);
    assert_eq!(
        failing(&r),
        [
            "drain sgpu: gpu.nvlink gpu0: NVLink 0 of 12 links active, expected 12 active (most \
          active on this node)"
        ]
    );
    // expected_active_links from sgpu.toml wins over the board's own count
    let mut o = BTreeMap::new();
    o.insert(
        cat::GPU_NVLINK.to_string(),
        crate::catalogue::CheckOverride {
            thresholds: [("expected_active_links".to_string(), 4.0)]
                .into_iter()
                .collect(),
            ..Default::default()
        },
    );
    let cat4 = Catalogue::effective(&o);
    let partly = gpu(links(12, &(4..12).collect::<Vec<_>>(), None));
    let r = results(&cat4, Profile::Quick, &partly, None, 0.0);
    assert_eq!(r[0].status, Status::Pass, "{:?}", r[0]);
    let r = results(&cat4, Profile::Quick, &g, None, 0.0);
    assert_eq!(r[0].status, Status::Fail);
}

#[test]
fn error_counters_warn_then_drain_by_rate() {
    let mut h = History::default();
    let snap = |g: GpuSnapshot| NodeSnapshot {
        driver_version: Reading::Unsupported,
        gpus: vec![g],
    };
    let first = gpu(links(4, &[], Some(10)));
    let r = judge(&first, h.gpu("GPU-a"), 0.0);
    let e = r
        .iter()
        .find(|r| r.check == cat::GPU_NVLINK_ERRORS)
        .unwrap();
    assert_eq!(e.status, Status::Unknown, "no reference yet");
    h.observe(&snap(first), 0.0);
    // 20 minutes later: +3 on every counter of every link: 3 per hour, a warning
    let r = judge(&gpu(links(4, &[], Some(13))), h.gpu("GPU-a"), 1200.0);
    assert_eq!(
        failing(&r),
        ["warn sgpu: gpu.nvlink_errors gpu0: NVLink link 0 crc_data errors 3.0/h (count 13)"]
    );
    // +500 within the hour: past drain_per_hour (100)
    let mut l = links(4, &[], Some(10));
    if let Reading::Value(v) = &mut l {
        v[2].errors.insert("replay".into(), 510);
    }
    let r = judge(&gpu(l), h.gpu("GPU-a"), 2400.0);
    assert_eq!(
        failing(&r),
        ["drain sgpu: gpu.nvlink_errors gpu0: NVLink link 2 replay errors 500.0/h (count 510)"]
    );
    // the quick profile never judges counters
    let r = results(
        &Catalogue::default(),
        Profile::Quick,
        &gpu(links(4, &[], Some(9999))),
        h.gpu("GPU-a"),
        2400.0,
    );
    assert!(r.iter().all(|r| r.check == cat::GPU_NVLINK));
}

#[test]
fn history_keeps_the_most_active_links_and_counter_references() {
    let mut rec = GpuRecord::default();
    observe(&mut rec, &gpu(links(6, &[], Some(1))), 0.0);
    observe(&mut rec, &gpu(links(6, &[1, 2], Some(5))), 100.0);
    assert_eq!(rec.nvlink_active_best, Some(6));
    assert_eq!(
        rec.nvlink_errors["0/crc_flit"].value, 1,
        "kept within the hour"
    );
    assert_eq!(
        rec.nvlink_errors["1/crc_flit"].value, 1,
        "an inactive link keeps its reference"
    );
    observe(&mut rec, &gpu(links(6, &[], Some(0))), 200.0);
    assert_eq!(
        rec.nvlink_errors["0/crc_flit"].value, 0,
        "a reset restarts it"
    );
    // a board without NVLink leaves the record alone
    observe(&mut rec, &gpu(Reading::Unsupported), 300.0);
    assert_eq!(rec.nvlink_active_best, Some(6));
}

#[test]
fn nvlink_xids_keep_their_classification() {
    use crate::xid::{XidClass, classify};
    // the link checks add no rule of their own for these: gpu.xid judges them as before
    assert_eq!(classify(74).class, XidClass::Hardware, "NVLink error");
    assert_eq!(
        classify(136).class,
        XidClass::Hardware,
        "NVLink link training failed"
    );
    for code in 144..=150 {
        assert_eq!(classify(code).class, XidClass::Driver, "NVLink5 xid {code}");
    }
}
