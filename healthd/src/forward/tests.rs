use std::collections::BTreeMap;
use std::sync::Mutex;

use sgpu_acct_client::{RecordAnswer, RecordStatus};
use sgpu_spool::{GpuUsage, JobStart, Record, RecordBody, RecordId, RecordKind, Usage};

use super::*;

/// What the fake acctd does with a batch.
#[derive(Clone)]
enum Mode {
    /// Stores records (accepted the first time, duplicate after), rejects job ids >= 900.
    Store,
    /// Fails the request as unreachable.
    Down,
    /// Refuses batches of more than this many records with 413.
    MaxRecords(usize),
    /// Answers only the first n records.
    Partial(usize),
}

#[derive(Clone)]
struct Fake {
    mode: Arc<Mutex<Mode>>,
    stored: Arc<Mutex<BTreeMap<String, u32>>>,
    requests: Arc<Mutex<Vec<usize>>>,
}

impl Fake {
    fn new(mode: Mode) -> Fake {
        Fake {
            mode: Arc::new(Mutex::new(mode)),
            stored: Arc::default(),
            requests: Arc::default(),
        }
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    fn stored(&self) -> BTreeMap<String, u32> {
        self.stored.lock().unwrap().clone()
    }
    fn requests(&self) -> Vec<usize> {
        self.requests.lock().unwrap().clone()
    }
}

impl Sink for Fake {
    fn post_records(&self, batch_json: &[u8]) -> Result<IngestAnswer, ClientError> {
        let records: Vec<serde_json::Value> = serde_json::from_slice(batch_json)
            .map_err(|e| ClientError::Decode(format!("test sink: {e}")))?;
        self.requests.lock().unwrap().push(records.len());
        let mode = self.mode.lock().unwrap().clone();
        let answered = match mode {
            Mode::Down => return Err(ClientError::Transport("connection refused".into())),
            Mode::MaxRecords(n) if records.len() > n => {
                return Err(ClientError::Http {
                    status: 413,
                    message: "too large".into(),
                });
            }
            Mode::Partial(n) => n,
            _ => records.len(),
        };
        let mut reply = IngestAnswer {
            version: Some(sgpu_wire::acctd::VERSION),
            accepted: 0,
            duplicate: 0,
            conflict: Some(0),
            rejected: 0,
            results: vec![],
        };
        let mut stored = self.stored.lock().unwrap();
        for (index, v) in records.iter().enumerate().take(answered) {
            let r = Record::from_json(v.to_string().as_bytes()).unwrap();
            let key = r.id().key();
            let status = if r.id().job_id() >= 900 {
                reply.rejected += 1;
                "rejected"
            } else if r.id().job_id() >= 800 {
                // acctd holds another record under this identity
                *reply.conflict.get_or_insert(0) += 1;
                "conflict"
            } else if r.id().job_id() >= 700 {
                // the same, answered by an acctd from before conflicts were kept
                reply.duplicate += 1;
                "duplicate"
            } else {
                let n = stored.entry(key.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    reply.accepted += 1;
                    "accepted"
                } else {
                    reply.duplicate += 1;
                    "duplicate"
                }
            };
            reply.results.push(RecordAnswer {
                index,
                key: Some(key),
                status: match status {
                    "accepted" => RecordStatus::Accepted,
                    "duplicate" => RecordStatus::Duplicate,
                    "conflict" => RecordStatus::Conflict,
                    _ => RecordStatus::Rejected,
                },
                differs: r.id().job_id() >= 700,
                field: (status == "rejected").then(|| "id.job_id".into()),
                error: match status {
                    "rejected" => Some("job ids from 900 are refused".into()),
                    "conflict" => Some("kept by acctd as a conflict".into()),
                    _ => None,
                },
            });
        }
        Ok(reply)
    }
}

fn start(job: u32) -> Record {
    let id = RecordId::new("alpha", job, None, "node1", RecordKind::JobStart).unwrap();
    Record::new(
        id,
        1_000,
        RecordBody::JobStart(JobStart {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            start_time: 1_000,
            gpus: vec![],
        }),
    )
    .unwrap()
}

fn usage(job: u32) -> Record {
    let id = RecordId::new("alpha", job, None, "node1", RecordKind::JobUsage).unwrap();
    Record::new(
        id,
        5_000,
        RecordBody::JobUsage(Usage {
            user: "alice".into(),
            uid: 1001,
            account: Some("physics".into()),
            partition: Some("gpu".into()),
            window_start: 1_000,
            window_end: 5_000,
            allocated_gpu_ms: 4_000,
            used_gpu_ms: 2_000,
            gpus: vec![GpuUsage {
                index: 0,
                uuid: "GPU-0".into(),
                name: None,
                samples: 4,
                util_mean_pct: 50.0,
                util_max_pct: 80,
                mem_peak_mib: 1024,
                energy_mj: Some(1_000_000),
                used_gpu_ms: 2_000,
                idle_ms: None,
                idle_periods: None,
            }],
            idle_gpu_ms: None,
        }),
    )
    .unwrap()
}

fn setup(n: u32, fake: &Fake, batch: usize) -> (tempfile::TempDir, Spool, Forwarder) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    for job in 1..=n {
        spool.write(&start(job)).unwrap();
    }
    let f = Forwarder::new(spool.dir(), Box::new(fake.clone()), batch, Gate::Open);
    (dir, spool, f)
}

#[test]
fn acknowledged_records_leave_the_spool_in_batches() {
    let fake = Fake::new(Mode::Store);
    let (_dir, spool, mut f) = setup(5, &fake, 2);
    let r = f.round();
    assert_eq!(r.error, None);
    assert_eq!(
        (r.batches, r.accepted, r.duplicate, r.backlog),
        (3, 5, 0, 0)
    );
    assert_eq!(fake.requests(), vec![2, 2, 1]);
    assert!(spool.list().unwrap().is_empty());
    assert_eq!(fake.stored().values().sum::<u32>(), 5);
    // a resend (the same record spooled again) is acknowledged as a duplicate and removed
    spool.write(&start(3)).unwrap();
    let r = f.round();
    assert_eq!((r.accepted, r.duplicate, r.backlog), (0, 1, 0));
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn an_unreachable_acctd_keeps_everything_then_gets_it_once() {
    let fake = Fake::new(Mode::Down);
    let (_dir, spool, mut f) = setup(3, &fake, 500);
    let r = f.round();
    assert!(
        r.error.as_deref().unwrap().contains("connection refused"),
        "{r:?}"
    );
    assert_eq!((r.accepted, r.backlog), (0, 3));
    assert_eq!(spool.list().unwrap().len(), 3);
    fake.set(Mode::Store);
    let r = f.round();
    assert_eq!((r.error, r.accepted, r.backlog), (None, 3, 0));
    assert!(fake.stored().values().all(|&n| n == 1));
}

#[test]
fn rejected_and_unreadable_records_go_to_bad_with_the_reason() {
    let fake = Fake::new(Mode::Store);
    let (dir, spool, mut f) = setup(2, &fake, 500);
    spool.write(&start(901)).unwrap();
    // a file that is not a record
    let junk = spool.dir().join("new").join("0000000000000_junk.json");
    std::fs::write(&junk, b"{not json").unwrap();
    let r = f.round();
    assert_eq!(r.error, None);
    assert_eq!((r.accepted, r.rejected, r.backlog), (2, 2, 0));
    let bad = dir.path().join("spool/bad");
    let whys: Vec<String> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "why"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(whys.len(), 2, "{whys:?}");
    assert!(
        whys.iter().any(|w| w.contains(
            "acctd rejected it: field id.job_id: job ids from 900 are refused"
        )),
        "{whys:?}"
    );
    // never retried: the next round sends nothing
    let before = fake.requests().len();
    assert_eq!(f.round().batches, 0);
    assert_eq!(fake.requests().len(), before);
}

#[test]
fn conflicts_go_to_bad_with_the_reason_never_silently() {
    let fake = Fake::new(Mode::Store);
    let (dir, spool, mut f) = setup(1, &fake, 500);
    spool.write(&start(801)).unwrap();
    spool.write(&start(701)).unwrap();
    let r = f.round();
    assert_eq!(r.error, None);
    assert_eq!(
        (r.accepted, r.conflict, r.duplicate, r.backlog),
        (1, 2, 0, 0)
    );
    let whys: Vec<String> = std::fs::read_dir(dir.path().join("spool/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "why"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(whys.len(), 2, "{whys:?}");
    assert!(
        whys.iter()
            .any(|w| w.contains("alpha,801,,node1,job_start): kept by acctd as a conflict")),
        "{whys:?}"
    );
    assert!(
        whys.iter().any(|w| w.contains("only this copy is left")),
        "{whys:?}"
    );
    assert_eq!(f.round().batches, 0);
}

#[test]
fn too_large_batches_are_split_and_a_too_large_record_is_quarantined() {
    let fake = Fake::new(Mode::MaxRecords(2));
    let (_dir, spool, mut f) = setup(5, &fake, 8);
    let r = f.round();
    assert_eq!((r.error, r.accepted, r.backlog), (None, 5, 0));
    assert_eq!(fake.requests()[0], 5);
    assert!(spool.list().unwrap().is_empty());
    fake.set(Mode::MaxRecords(0));
    spool.write(&start(7)).unwrap();
    let r = f.round();
    assert_eq!((r.rejected, r.backlog), (1, 0));
}

#[test]
fn records_without_an_answer_stay() {
    let fake = Fake::new(Mode::Partial(2));
    let (_dir, spool, mut f) = setup(3, &fake, 500);
    let r = f.round();
    assert!(
        r.error.as_deref().unwrap().contains("covered 2 of 3"),
        "{r:?}"
    );
    assert_eq!(r.accepted, 2);
    assert_eq!(spool.list().unwrap().len(), 1);
    fake.set(Mode::Store);
    assert_eq!(f.round().accepted, 1);
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn the_sampler_gate_holds_start_and_end_until_released() {
    let fake = Fake::new(Mode::Store);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let shared = Shared::new("node1", Duration::from_secs(1));
    let mut f = Forwarder::new(
        spool.dir(),
        Box::new(fake.clone()),
        500,
        Gate::Sampler(shared.clone()),
    );
    let start_path = spool.write(&start(1)).unwrap();
    spool.write(&usage(1)).unwrap();
    // before the sampler's first cycle: only the usage record goes
    let r = f.round();
    assert_eq!((r.accepted, r.held, r.backlog), (1, 1, 1));
    assert_eq!(spool.list().unwrap().len(), 1);
    let name = start_path.file_name().unwrap().to_os_string();
    shared.record_spool_released([name].into_iter().collect());
    let r = f.round();
    assert_eq!((r.accepted, r.held, r.backlog), (1, 0, 0));
    assert_eq!(
        fake.stored().keys().cloned().collect::<Vec<_>>(),
        vec!["alpha,1,,node1,job_start", "alpha,1,,node1,job_usage"]
    );
}

#[test]
fn a_stopping_daemon_ends_the_round() {
    let fake = Fake::new(Mode::Store);
    let (_dir, spool, mut f) = setup(3, &fake, 1);
    f.stop_flag().store(true, Ordering::SeqCst);
    let r = f.round();
    assert_eq!(r.batches, 0);
    assert!(r.error.is_some());
    assert_eq!(spool.list().unwrap().len(), 3);
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut caps = vec![];
    for _ in 0..8 {
        let d = b.next_delay();
        caps.push(d);
    }
    for (i, d) in caps.iter().enumerate() {
        let full = Duration::from_secs((1u64 << i).min(10));
        assert!(
            *d <= full && *d >= full / 2,
            "wait {i}: {d:?} not in [{full:?}/2, {full:?}]"
        );
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_secs(1));
}
