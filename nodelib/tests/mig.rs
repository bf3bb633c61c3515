//! MIG end to end against the simulated `libnvidia-ml.so.1`: a job on a slice is judged on
//! its slice and its GPU, never on its neighbours' slices; the drain reason names the GPU and
//! the slice; the node's slices count as Slurm's devices; healthy MIG captures stay healthy.

mod common;

use std::path::Path;

use common::{Sim, TIMEOUT, context, failures, options};
use nvml_sim::{Capture, Process, State};
use sgpu_nodelib::catalogue::{Catalogue, Profile, Severity};
use sgpu_nodelib::checks::{self, CheckContext, CheckResult, Status, Verdict};
use sgpu_nodelib::gpu::{self, NodeSnapshot};
use sgpu_nodelib::mig::{MigMinors, SliceKey};
use sgpu_nodelib::nodeconf::NodeLayout;
use sgpu_slurm_conf::{ConfFile, GresConf};

/// Node n1: GPU 0 (/dev/nvidia0) split into 3g.40gb + 2g.20gb + 1g.10gb x2, GPU 1 whole.
fn node() -> State {
    let mut state = State::healthy_seeded(2, 1818);
    state
        .gpu_mut(0)
        .unwrap()
        .split_mig(&["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
        .unwrap();
    state
}

/// gres.conf as a site writes it for [`node`]: one line per slice with the GPU's device file
/// and the GPU instance's capability file (driver layout: GPU 0's GI g is 3 + 9g), then the
/// whole GPU. Slurm indices: 0 = GI 1 (3g), 1 = GI 3 (2g), 2 = GI 7, 3 = GI 8, 4 = GPU 1.
fn layout() -> NodeLayout {
    let cap = |gi: u32| 3 + 9 * gi;
    let text = format!(
        "NodeName=n1 Name=gpu Type=3g.40gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap{}\n\
         NodeName=n1 Name=gpu Type=2g.20gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap{}\n\
         NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap{},/dev/nvidia-caps/nvidia-cap{}\n\
         NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap{}\n\
         NodeName=n1 Name=gpu Type=h100 File=/dev/nvidia1\n",
        cap(1),
        cap(3),
        cap(7),
        cap(7) + 1,
        cap(8)
    );
    let gres = GresConf::parse_str(&text, "/etc/slurm/gres.conf").unwrap();
    NodeLayout {
        gpus: gres.expected_gpus("n1", None),
        notes: Vec::new(),
        mig_minors: MigMinors::default(),
    }
}

fn snapshot() -> NodeSnapshot {
    gpu::collect(&options(TIMEOUT), false).unwrap().snapshot
}

/// The quick profile for a job holding Slurm GPUs `slurm`, as the prolog builds it.
fn job_context(slurm: &[u32], snap: &NodeSnapshot) -> CheckContext {
    let l = layout();
    let mut ctx = context(Profile::Quick, l.expected_count().unwrap());
    let job = l.job_devices(slurm, &[], snap);
    assert!(job.notes.is_empty(), "{:?}", job.notes);
    ctx.job_gpus = Some(job.gpus);
    ctx.job_slices = job.slices;
    ctx
}

fn evaluate(snap: &NodeSnapshot, ctx: &CheckContext) -> Vec<CheckResult> {
    checks::evaluate(snap, ctx, &Catalogue::default())
}

#[test]
fn slurm_indices_resolve_to_slices_of_their_gpu() {
    let _sim = Sim::start(&node());
    let snap = snapshot();
    let l = layout();
    assert_eq!(l.expected_count(), Some(5));
    let job = l.job_devices(&[2, 4], &[], &snap);
    assert_eq!(job.gpus, vec![0, 1]);
    let by: Vec<(u32, Option<u32>, bool)> = job
        .by_index
        .iter()
        .map(|d| (d.slurm_index, d.gpu, d.slice.is_some()))
        .collect();
    assert_eq!(by, [(2, Some(0), true), (4, Some(1), false)]);
    let slices = job.slices.unwrap();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].gpu, 0);
    assert_eq!(
        slices[0].key,
        SliceKey::Instance {
            gpu_instance: 7,
            compute_instance: Some(0)
        }
    );
    // under MIG, an index gres.conf does not place is left out, never taken as GPU 5
    let job = l.job_devices(&[9], &[], &snap);
    assert!(job.gpus.is_empty() && job.slices.is_none(), "{job:?}");
    assert!(job.notes[0].contains("not judged"), "{:?}", job.notes);
    assert_eq!(job.by_index.len(), 1);
    assert_eq!(
        (job.by_index[0].slurm_index, job.by_index[0].gpu),
        (9, None)
    );
    // ... unless CUDA_VISIBLE_DEVICES names the slice by UUID
    let uuid = snap.gpus[0].mig_devices.value().unwrap()[3]
        .uuid
        .value()
        .unwrap()
        .clone();
    let job = l.job_devices(&[9], std::slice::from_ref(&uuid), &snap);
    assert_eq!(job.gpus, vec![0]);
    assert_eq!(job.by_index[0].gpu, Some(0));
    assert_eq!(job.slices.unwrap()[0].key, SliceKey::Uuid(uuid.clone()));
    // no SLURM_JOB_GPUS at all: the UUIDs alone say which slices
    let job = l.job_devices(&[], std::slice::from_ref(&uuid), &snap);
    assert_eq!(
        (job.gpus.clone(), job.by_index.len()),
        (vec![0], 1),
        "{job:?}"
    );
    // a UUID of a slice gres.conf already placed is not counted twice
    let placed = snap.gpus[0].mig_devices.value().unwrap()[2]
        .uuid
        .value()
        .unwrap()
        .clone();
    let job = l.job_devices(&[2], &[placed], &snap);
    assert_eq!(job.gpus, vec![0]);
    assert_eq!(job.slices.unwrap().len(), 1);
}

#[test]
fn a_healthy_split_gpu_passes_with_neighbours_busy() {
    let mut state = node();
    // another job runs on the 3g.40gb slice: its process and memory show on GPU 0's lists
    {
        let mig = state.gpu_mut(0).unwrap().mig.as_mut().unwrap();
        mig.instances[0].memory_used_mib = 30_000;
        mig.instances[0].processes.push(Process {
            pid: 777,
            used_memory_mib: Some(29_000),
            kind: Default::default(),
        });
    }
    state.gpu_mut(0).unwrap().memory_used_mib = 30_000;
    let _sim = Sim::start(&state);
    let snap = snapshot();
    assert!(snap.gpus[0].compute_processes.value().unwrap().len() == 1);
    let ctx = job_context(&[2], &snap);
    let results = evaluate(&snap, &ctx);
    assert_eq!(failures(&results), Vec::<&CheckResult>::new());
    assert_eq!(Verdict::of(&results), Verdict::Healthy);
    let leftover = results
        .iter()
        .find(|r| r.check == "gpu.leftover_processes" && r.gpu == Some(0))
        .unwrap();
    assert_eq!(leftover.status, Status::Pass);
    assert!(
        leftover
            .observed
            .contains("MIG 1g.10gb (GI 7 CI 0): 0 procs"),
        "{leftover:?}"
    );
    let count = results.iter().find(|r| r.check == "gpu.count").unwrap();
    assert_eq!(count.status, Status::Pass, "{count:?}");
    assert!(count.observed.contains("MIG slices counted"), "{count:?}");
    // the neighbour's own job is judged on its slice: that slice has a process
    let ctx = job_context(&[0], &snap);
    let f = failures(&evaluate(&snap, &ctx))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].check, "gpu.leftover_processes");
    let reason = checks::drain_reason_for_job(
        &f,
        ctx.job_slices.as_deref().unwrap_or_default(),
        Some(&snap),
    )
    .unwrap();
    assert!(
        reason.starts_with("sgpu: gpu.leftover_processes gpu0 MIG 3g.40gb (GI 1 CI 0): leftover"),
        "{reason}"
    );
}

#[test]
fn a_fault_of_the_parent_gpu_drains_naming_gpu_and_slice() {
    let mut state = node();
    // the A100/H100 driver keeps ECC counters per GPU under MIG (driver 535's capture)
    state.gpu_mut(0).unwrap().ecc.volatile_uncorrected = 2;
    let _sim = Sim::start(&state);
    let snap = snapshot();
    let ctx = job_context(&[3], &snap);
    let results = evaluate(&snap, &ctx);
    let f = failures(&results);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].check, f[0].gpu), ("gpu.ecc_uncorrectable", Some(0)));
    let reason = checks::drain_reason_for_job(
        &results,
        ctx.job_slices.as_deref().unwrap_or_default(),
        Some(&snap),
    )
    .unwrap();
    assert!(
        reason.starts_with("sgpu: gpu.ecc_uncorrectable gpu0 MIG 1g.10gb (GI 8 CI 0): "),
        "{reason}"
    );
    // a job on the whole GPU 1 gets today's reason
    let ctx = job_context(&[4], &snap);
    let reason = checks::drain_reason_for_job(
        &evaluate(&snap, &ctx),
        ctx.job_slices.as_deref().unwrap_or_default(),
        Some(&snap),
    )
    .unwrap();
    assert!(
        reason.starts_with("sgpu: gpu.ecc_uncorrectable gpu0: "),
        "{reason}"
    );
}

#[test]
fn a_missing_slice_fails_and_mig_off_is_reported() {
    let _sim = Sim::start(&node());
    let snap = snapshot();
    // the job's slice (GI 8) was destroyed: gres.conf still lists it
    let mut state = node();
    state
        .gpu_mut(0)
        .unwrap()
        .mig
        .as_mut()
        .unwrap()
        .instances
        .retain(|m| m.gpu_instance_id != 8);
    _sim.update(|s| *s = state.clone());
    let snap2 = snapshot();
    let ctx = job_context(&[3], &snap);
    let results = evaluate(&snap2, &ctx);
    let f = failures(&results);
    let checks_failed: Vec<_> = f.iter().map(|r| (r.check, r.gpu)).collect();
    assert!(
        checks_failed.contains(&("gpu.job_gpus_exist", Some(0))),
        "{f:#?}"
    );
    assert!(
        checks_failed.contains(&("gpu.count", None)),
        "4 slices where gres.conf has 5"
    );
    let missing = f.iter().find(|r| r.check == "gpu.job_gpus_exist").unwrap();
    assert!(missing.message.contains("MIG slice GI 8"), "{missing:?}");
    // MIG turned off under a slice
    _sim.update(|s| {
        let g = s.gpu_mut(0).unwrap();
        g.mig_mode = Some(false);
        g.mig = None;
    });
    let snap3 = snapshot();
    let results = evaluate(&snap3, &ctx);
    let missing = results
        .iter()
        .find(|r| r.check == "gpu.job_gpus_exist" && r.gpu == Some(0))
        .unwrap();
    assert_eq!(missing.status, Status::Fail);
    assert!(missing.message.contains("not in MIG mode"), "{missing:?}");
}

/// Failures above `info` (the netdata capture's persistence mode is off: info only).
fn serious(results: &[CheckResult]) -> Vec<&CheckResult> {
    failures(results)
        .into_iter()
        .filter(|r| r.severity != Severity::Info)
        .collect()
}

/// Real-GPU fidelity: both shared MIG captures (A100 40 GB 2x 3g.20gb, driver 510; A100
/// 80 GB 4x 1g.20gb, driver 535) are healthy, for a job on a slice (quick) and for the
/// daemon (full).
#[test]
fn healthy_mig_captures_do_not_drain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu-captures");
    for file in ["netdata/a100-sxm4-mig.xml", "telegraf/a100-sxm4-v12.xml"] {
        let cap = Capture::load(root.join(file)).unwrap();
        let slices = cap.state.gpus[0].mig_instances().len() as u32;
        let _sim = Sim::start(&cap.state);
        let snap = snapshot();
        let devices = snap.gpus[0].mig_devices.value().unwrap();
        assert_eq!(devices.len() as u32, slices, "{file}");
        // gres.conf with one line per slice, as Compute Canada's generator writes it (the
        // GPU's own minor number: /dev/nvidia<minor>, its capabilities in gpu<minor>'s range)
        let minor = *snap.gpus[0].minor_number.value().unwrap();
        let text: String = devices
            .iter()
            .map(|d| {
                format!(
                    "NodeName=n1 Name=gpu MultipleFiles=/dev/nvidia{minor},/dev/nvidia-caps/nvidia-cap{}\n",
                    3 + 135 * minor + 9 * d.gpu_instance.value().unwrap()
                )
            })
            .collect();
        let l = NodeLayout {
            gpus: GresConf::parse_str(&text, "gres.conf")
                .unwrap()
                .expected_gpus("n1", None),
            notes: Vec::new(),
            mig_minors: MigMinors::default(),
        };
        let mut ctx = context(Profile::Quick, slices);
        let job = l.job_devices(&[0], &[], &snap);
        ctx.job_gpus = Some(job.gpus);
        ctx.job_slices = job.slices;
        let results = evaluate(&snap, &ctx);
        assert_eq!(serious(&results), Vec::<&CheckResult>::new(), "{file}");
        assert!(
            results.iter().any(|r| r.check == "gpu.job_gpus_exist"
                && r.status == Status::Pass
                && r.gpu == Some(0)),
            "{file}"
        );
        let full = evaluate(&snap, &context(Profile::Full, slices));
        assert_eq!(serious(&full), Vec::<&CheckResult>::new(), "{file}");
        assert_eq!(checks::drain_reason(&full), None, "{file}");
        // utilization and remapped rows are N/A under MIG: unknown, not failed
        assert!(snap.gpus[0].utilization_gpu_pct.value().is_none());
    }
}

/// healthd's per-job sampling: each MIG device is a sample of its own (its UUID, its GPU's
/// index, its memory; what NVML reads per GPU only is unknown), after its GPU's.
#[test]
fn samples_include_each_slice() {
    let mut state = node();
    state.gpu_mut(0).unwrap().mig.as_mut().unwrap().instances[2].memory_used_mib = 3000;
    let _sim = Sim::start(&state);
    let mut worker = gpu::NvmlWorker::start(&options(TIMEOUT)).unwrap();
    let batch = worker.sample().unwrap();
    // GPU 0, its 4 slices, GPU 1
    assert_eq!(batch.len(), 6, "{batch:#?}");
    let gpu0 = &batch[0];
    assert_eq!(gpu0.mig_parent, None);
    assert_eq!(gpu0.utilization_gpu_pct, None, "N/A under MIG");
    let slices: Vec<_> = batch.iter().filter(|s| s.mig_parent.is_some()).collect();
    assert_eq!(slices.len(), 4);
    let want = &state.gpus[0].mig.as_ref().unwrap().instances;
    for (s, m) in slices.iter().zip(want) {
        assert_eq!(s.index, 0);
        assert_eq!(s.uuid.as_deref(), Some(m.uuid.as_str()));
        assert_eq!(s.mig_parent.as_deref(), Some(state.gpus[0].uuid.as_str()));
        assert_eq!(
            s.name.as_deref(),
            Some(format!("NVIDIA H100 80GB HBM3 MIG {}", m.profile).as_str())
        );
        assert_eq!(s.memory_used_bytes, Some(m.memory_used_mib * 1024 * 1024));
        assert_eq!(
            (s.utilization_gpu_pct, s.energy_mj, s.power_mw),
            (None, None, None)
        );
    }
    assert_eq!(batch[5].index, 1);
    assert!(batch[5].utilization_gpu_pct.is_some());
}

/// A site that keeps a MIG GPU whole in gres.conf (`File=/dev/nvidia0`, Slurm gives the
/// GPU, the job's CUDA sees its slices): the physical count is Slurm's, nothing drains.
#[test]
fn a_mig_gpu_given_whole_to_slurm_is_not_a_count_mismatch() {
    let _sim = Sim::start(&node());
    let snap = snapshot();
    let gres = GresConf::parse_str(
        "NodeName=n1 Name=gpu Type=h100 File=/dev/nvidia[0-1]\n",
        "/etc/slurm/gres.conf",
    )
    .unwrap();
    let l = NodeLayout {
        gpus: gres.expected_gpus("n1", None),
        notes: Vec::new(),
        mig_minors: MigMinors::default(),
    };
    let mut ctx = context(Profile::Quick, l.expected_count().unwrap());
    let job = l.job_devices(&[0], &[], &snap);
    assert_eq!(job.gpus, vec![0]);
    ctx.job_gpus = Some(job.gpus);
    ctx.job_slices = job.slices;
    let results = evaluate(&snap, &ctx);
    assert_eq!(failures(&results), Vec::<&CheckResult>::new());
    let count = results.iter().find(|r| r.check == "gpu.count").unwrap();
    assert_eq!((count.status, count.observed.as_str()), (Status::Pass, "2"));
    // the job holds the whole GPU: its slices are not known, so leftovers are not judged
    let leftover = results
        .iter()
        .find(|r| r.check == "gpu.leftover_processes" && r.gpu == Some(0))
        .unwrap();
    assert_eq!(leftover.status, Status::Unknown, "{leftover:?}");
    // and a count neither way fails
    let ctx = context(Profile::Quick, 3);
    let count = evaluate(&snap, &ctx)
        .into_iter()
        .find(|r| r.check == "gpu.count")
        .unwrap();
    assert_eq!(count.status, Status::Fail);
    assert_eq!(count.observed, "2 GPUs, 5 with MIG slices counted");
}
