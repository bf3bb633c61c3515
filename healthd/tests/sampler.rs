//! The per-job sampler against the simulated NVML and a real spool: a job is followed from
//! its start record, sampled, survives a restart through the sled job database, and is
//! finalised into a valid `job_usage` record; `/status` and `/metrics` show it.

mod common;

use std::time::Duration;

use common::{Sim, library};
use nvml_sim::State;
use sgpu_healthd::sampler::Sampler;
use sgpu_healthd::status::Shared;
use sgpu_healthd::store::SledStore;
use sgpu_nodelib::config::Config;
use sgpu_spool::{
    GpuEnd, GpuRef, JobEnd, JobStart, Record, RecordBody, RecordId, RecordKind, Spool,
};

fn config(dir: &std::path::Path) -> Config {
    Config {
        nvml_library: Some(library().to_path_buf()),
        nvml_timeout: common::TIMEOUT,
        state_dir: dir.join("state"),
        spool_dir: dir.join("spool"),
        ..Config::default()
    }
}

fn sampler(config: &Config, shared: &std::sync::Arc<Shared>) -> Sampler {
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let store = SledStore::open(&config.state_dir).unwrap();
    Sampler::new(config, Box::new(store), shared.clone())
}

#[test]
fn a_job_is_sampled_survives_a_restart_and_is_finalised() {
    let sim = Sim::start(&State::healthy(4));
    let state = sim.update(|s| {
        s.gpus[1].utilization_gpu = Some(50);
        s.gpus[2].utilization_gpu = Some(70);
        s.gpus[3].utilization_gpu = Some(100);
    });
    let config = config(sim.dir.path());
    let spool = Spool::open(&config.spool_dir).unwrap();
    let shared = Shared::new("node1", Duration::from_secs(1));

    // a record from before healthd started, for a job that already ended: left alone
    let old = |kind| RecordId::new("alpha", 1, None, "node1", kind).unwrap();
    let start0 = JobStart {
        user: "bob".into(),
        uid: 1002,
        account: None,
        partition: None,
        start_time: 1_000,
        gpus: vec![],
    };
    spool
        .write(
            &Record::new(
                old(RecordKind::JobStart),
                1_000,
                RecordBody::JobStart(start0),
            )
            .unwrap(),
        )
        .unwrap();

    let end0 = JobEnd {
        user: "bob".into(),
        uid: 1002,
        account: None,
        partition: None,
        start_time: 2_000,
        end_time: 2_000,
        gpus: vec![],
        allocated_gpu_ms: 0,
        exit: None,
        slurm_window: None,
    };
    spool
        .write(&Record::new(old(RecordKind::JobEnd), 2_000, RecordBody::JobEnd(end0)).unwrap())
        .unwrap();
    let mut s = sampler(&config, &shared);
    let r = s.cycle();
    assert!(r.followed.is_empty() && r.sampled, "{r:?}");

    // the prolog starts job 42 on GPUs 1 and 2
    let t0 = sgpu_spool::now_ms();
    let gpus: Vec<GpuRef> = [1usize, 2]
        .iter()
        .map(|&i| GpuRef {
            index: i as u32,
            uuid: state.gpus[i].uuid.clone(),
            name: None,
            energy_mj: None,
            mig: None,
        })
        .collect();
    let id = |kind| RecordId::new("alpha", 42, None, "node1", kind).unwrap();
    let start = JobStart {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: t0,
        gpus: gpus.clone(),
    };
    spool
        .write(&Record::new(id(RecordKind::JobStart), t0, RecordBody::JobStart(start)).unwrap())
        .unwrap();
    let r = s.cycle();
    assert_eq!(r.followed, vec![format!("alpha,42,{t0}")]);
    assert!(r.sampled);
    std::thread::sleep(Duration::from_millis(50));
    s.cycle();

    let status = shared.status();
    assert_eq!(status.jobs.len(), 1);
    let job = &status.jobs[0];
    assert_eq!((job.job_id, job.samples), (42, 2));
    assert_eq!(job.util_mean_pct, 60.0);
    assert_eq!(job.util_max_pct, 70);
    assert_eq!(
        status.gpus.iter().filter(|g| g.job_id == Some(42)).count(),
        2,
        "{:?}",
        status.gpus
    );
    let text =
        sgpu_healthd::metrics::render(&sgpu_healthd::metrics::registry(shared.clone())).unwrap();
    let labelled = text
        .lines()
        .filter(|l| {
            l.starts_with("sgpu_gpu_utilization_ratio{")
                && l.contains("job_id=\"42\",user=\"alice\",account=\"physics\"")
        })
        .count();
    assert_eq!(labelled, 2, "{text}");
    assert!(text.contains("sgpu_jobs_running 1"), "{text}");

    // healthd stops (the database was flushed after the last batch) and starts again
    drop(s);
    let shared = Shared::new("node1", Duration::from_secs(1));
    let mut s = sampler(&config, &shared);
    assert_eq!(s.jobs().len(), 1, "the job comes back from the database");
    assert_eq!(s.jobs().values().next().map(|j| j.samples()), Some(2));
    s.cycle();
    assert_eq!(s.jobs().values().next().map(|j| j.samples()), Some(3));

    // the epilog ends it
    let t1 = sgpu_spool::now_ms().max(t0 + 1);
    let end = JobEnd {
        user: "alice".into(),
        uid: 1001,
        account: Some("physics".into()),
        partition: Some("gpu".into()),
        start_time: t0,
        end_time: t1,
        gpus: gpus
            .iter()
            .map(|g| GpuEnd {
                index: g.index,
                uuid: g.uuid.clone(),
                name: None,
                energy_start_mj: None,
                energy_end_mj: None,
                energy_delta_mj: None,
                mig: None,
            })
            .collect(),
        allocated_gpu_ms: 2 * (t1 - t0),
        exit: None,
        slurm_window: None,
    };
    spool
        .write(&Record::new(id(RecordKind::JobEnd), t1, RecordBody::JobEnd(end)).unwrap())
        .unwrap();
    let r = s.cycle();
    assert_eq!(r.finalised, vec![format!("alpha,42,{t0}")]);
    assert!(s.jobs().is_empty());
    assert!(shared.status().jobs.is_empty());

    let usage: Vec<_> = spool
        .list()
        .unwrap()
        .iter()
        .filter_map(|e| match spool.read(e).unwrap().into_parts() {
            (id, _, RecordBody::JobUsage(u)) => Some((id, u)),
            _ => None,
        })
        .collect();
    assert_eq!(usage.len(), 1);
    let (uid, u) = &usage[0];
    assert_eq!((uid.job_id(), uid.node()), (42, "node1"));
    assert_eq!(u.gpus.len(), 2);
    assert_eq!((u.gpus[0].samples, u.gpus[0].util_mean_pct), (3, 50.0));
    assert_eq!((u.gpus[1].samples, u.gpus[1].util_max_pct), (3, 70));
    assert!(
        u.gpus.iter().all(|g| g.energy_mj.is_some()),
        "sampled energy: {u:?}"
    );
    assert_eq!(u.allocated_gpu_ms, 2 * (t1 - t0));

    // nothing is finalised twice, and a later restart leaves the finished pair alone
    assert!(s.cycle().finalised.is_empty());
    drop(s);
    let mut s = sampler(&config, &shared);
    let r = s.cycle();
    assert!(r.followed.is_empty() && r.finalised.is_empty(), "{r:?}");
}
