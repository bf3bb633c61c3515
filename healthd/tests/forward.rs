//! The spool forwarder next to the real sampler (simulated NVML, real spool and job
//! database): a `job_start` leaves the spool only once the sampler took the job in, a
//! `job_end` only once the job's `job_usage` is written, and a healthd restart in between
//! loses nothing. acctd is an in-memory double here (the cluster tests use the real one).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Sim, library};
use nvml_sim::State;
use sgpu_acct_client::{ClientError, IngestAnswer, RecordAnswer, RecordStatus};
use sgpu_healthd::forward::{Forwarder, Gate, Sink};
use sgpu_healthd::sampler::Sampler;
use sgpu_healthd::status::Shared;
use sgpu_healthd::store::SledStore;
use sgpu_nodelib::config::Config;
use sgpu_spool::{
    GpuEnd, GpuRef, JobEnd, JobStart, Record, RecordBody, RecordId, RecordKind, Spool,
};

/// acctd as a map from record key to times received.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<BTreeMap<String, u32>>>);

impl Sink for Ledger {
    fn post_records(&self, batch_json: &[u8]) -> Result<IngestAnswer, ClientError> {
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(batch_json).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut m = self.0.lock().unwrap();
        let mut reply = IngestAnswer {
            version: Some(1),
            accepted: 0,
            duplicate: 0,
            conflict: Some(0),
            rejected: 0,
            results: vec![],
        };
        for (index, v) in records.iter().enumerate() {
            let r = Record::from_json(v.to_string().as_bytes())
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            let key = r.id().key();
            let n = m.entry(key.clone()).or_insert(0);
            *n += 1;
            let status = if *n == 1 {
                RecordStatus::Accepted
            } else {
                RecordStatus::Duplicate
            };
            reply.accepted += usize::from(*n == 1);
            reply.duplicate += usize::from(*n > 1);
            reply.results.push(RecordAnswer {
                index,
                key: Some(key),
                status,
                differs: false,
                field: None,
                error: None,
            });
        }
        Ok(reply)
    }
}

impl Ledger {
    fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, n)| format!("{}x{n}", k.rsplit(',').next().unwrap_or("")))
            .collect()
    }
}

fn kinds_in(spool: &Spool) -> Vec<String> {
    spool
        .list()
        .unwrap()
        .iter()
        .map(|e| spool.read(e).unwrap().id().kind().to_string())
        .collect()
}

#[test]
fn start_and_end_wait_for_the_sampler_and_arrive_once() {
    let sim = Sim::start(&State::healthy(2));
    let state = sim.update(|s| s.gpus[0].utilization_gpu = Some(40));
    let dir = sim.dir.path();
    let config = Config {
        nvml_library: Some(library().to_path_buf()),
        nvml_timeout: common::TIMEOUT,
        state_dir: dir.join("state"),
        spool_dir: dir.join("spool"),
        ..Config::default()
    };
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let spool = Spool::open(&config.spool_dir).unwrap();
    let new_sampler = |shared: &Arc<Shared>| {
        Sampler::new(
            &config,
            Box::new(SledStore::open(&config.state_dir).unwrap()),
            shared.clone(),
        )
    };
    let shared = Shared::new("node1", Duration::from_secs(1));
    let mut sampler = new_sampler(&shared);
    let acctd = Ledger::default();
    let mut fwd = Forwarder::new(
        &config.spool_dir,
        Box::new(acctd.clone()),
        500,
        Gate::Sampler(shared.clone()),
    );
    sampler.cycle();

    // the prolog writes job 7's start: held until a sampler cycle has taken the job in
    let t0 = sgpu_spool::now_ms();
    let id = |kind| RecordId::new("alpha", 7, None, "node1", kind).unwrap();
    let gpu = GpuRef {
        index: 0,
        uuid: state.gpus[0].uuid.clone(),
        name: None,
        energy_mj: None,
        mig: None,
    };
    let start = JobStart {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: t0,
        gpus: vec![gpu],
    };
    spool
        .write(&Record::new(id(RecordKind::JobStart), t0, RecordBody::JobStart(start)).unwrap())
        .unwrap();
    let r = fwd.round();
    assert_eq!((r.batches, r.held, r.backlog), (0, 1, 1), "{r:?}");
    assert!(sampler.cycle().followed.len() == 1);
    let r = fwd.round();
    assert_eq!((r.accepted, r.held, r.backlog), (1, 0, 0), "{r:?}");
    assert_eq!(acctd.kinds(), vec!["job_startx1"]);

    // healthd restarts mid-job: the job comes back from its database, not from the spool
    drop(sampler);
    let shared = Shared::new("node1", Duration::from_secs(1));
    let mut sampler = new_sampler(&shared);
    let mut fwd = Forwarder::new(
        &config.spool_dir,
        Box::new(acctd.clone()),
        500,
        Gate::Sampler(shared.clone()),
    );
    assert_eq!(sampler.jobs().len(), 1);
    sampler.cycle();

    // the epilog writes the end: held until the usage record is written, then both go
    let t1 = sgpu_spool::now_ms().max(t0 + 1);
    let end = JobEnd {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: t0,
        end_time: t1,
        gpus: vec![GpuEnd {
            index: 0,
            uuid: state.gpus[0].uuid.clone(),
            name: None,
            energy_start_mj: None,
            energy_end_mj: None,
            energy_delta_mj: None,
            mig: None,
        }],
        allocated_gpu_ms: t1 - t0,
        exit: None,
        slurm_window: None,
    };
    spool
        .write(&Record::new(id(RecordKind::JobEnd), t1, RecordBody::JobEnd(end)).unwrap())
        .unwrap();
    let r = fwd.round();
    assert_eq!((r.batches, r.held), (0, 1), "{r:?}");
    assert_eq!(kinds_in(&spool), vec!["job_end"]);
    assert_eq!(sampler.cycle().finalised.len(), 1);
    let r = fwd.round();
    assert_eq!((r.accepted, r.held, r.backlog), (2, 0, 0), "{r:?}");
    assert_eq!(
        acctd.kinds(),
        vec!["job_endx1", "job_startx1", "job_usagex1"]
    );
    // the sampler does not take the job up again, and nothing is sent twice
    let r = sampler.cycle();
    assert!(r.followed.is_empty() && r.finalised.is_empty(), "{r:?}");
    assert_eq!(fwd.round().batches, 0);
    assert!(spool.list().unwrap().is_empty());
}
