//! What Slurm's configuration says this node's GPUs should be, and how Slurm's GPU indices
//! map to NVML's.
//!
//! slurm.conf (`Gres=gpu:...`) and gres.conf (`File=/dev/nvidia[0-7]`) are read with
//! `sgpu-slurm-conf`. Slurm numbers a node's GPUs in gres.conf order (the `SLURM_JOB_GPUS`
//! indices); NVML numbers them in PCI bus order. The device file's minor number
//! (`/dev/nvidia3` is 3) is the link between the two, as it is for Slurm's own NVML plugin.

use std::path::{Path, PathBuf};

use sgpu_slurm_conf::{ConfError, GpuDevice, GresConf, NodeGpus, SlurmConf};

use crate::gpu::NodeSnapshot;
use crate::mig::{JobSlice, MigMinors, SliceKey};

/// slurm.conf when `SLURM_CONF` is not set.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// The slurm.conf in force: `$SLURM_CONF` (slurmd sets it for Prolog/Epilog), else the default.
pub fn slurm_conf_path() -> PathBuf {
    std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF))
}

/// The cluster the slurm.conf in force ([`slurm_conf_path`]) names, as sgpu carries it
/// ([`sgpu_slurm_conf::cluster_name`]); `None` when it names none or cannot be read.
pub fn cluster_name() -> Option<String> {
    sgpu_slurm_conf::cluster_name(slurm_conf_path())
}

/// This host's short name (the default Slurm node name).
pub fn short_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().split('.').next()?.to_string();
    (!h.is_empty()).then_some(h)
}

/// The node's GPUs according to slurm.conf and gres.conf, and what could not be read.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    /// The expected GPUs (count, types, device files).
    pub gpus: NodeGpus,
    /// Problems met while reading the files (each names file:line); the layout is what
    /// could be read despite them.
    pub notes: Vec<String>,
    /// The driver's MIG capability minors ([`crate::mig::MIG_MINORS_PATH`], else its fixed
    /// layout): which slice a gres.conf device's `nvidia-cap` files are. Read only when
    /// gres.conf lists a device with such files (nothing else asks).
    pub mig_minors: MigMinors,
}

/// One of the job's Slurm GPU devices, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDevice {
    /// Slurm's index (`SLURM_JOB_GPUS`; for a slice named only by UUID, its position in
    /// `CUDA_VISIBLE_DEVICES`).
    pub slurm_index: u32,
    /// NVML index of the GPU (`None`: a slice sgpu could not place).
    pub gpu: Option<u32>,
    /// The MIG slice, when the device is one.
    pub slice: Option<JobSlice>,
}

/// The job's GPUs and MIG slices on this node, resolved against NVML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDevices {
    /// Each Slurm index of the job, in order, with what it resolved to.
    pub by_index: Vec<JobDevice>,
    /// NVML indices of the job's GPUs (a slice counts as its GPU), one per Slurm index that
    /// could be resolved.
    pub gpus: Vec<u32>,
    /// The job's MIG slices (`None`: not known on a node with MIG, so not judged).
    pub slices: Option<Vec<JobSlice>>,
    /// What could not be resolved, and why (to be logged).
    pub notes: Vec<String>,
}

/// Why the node's GPU layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// No slurm.conf where sgpu looked.
    #[error("{} not found: the GPU count is not checked (set SLURM_CONF)", path.display())]
    NoSlurmConf {
        /// The path looked at.
        path: PathBuf,
    },
}

impl NodeLayout {
    /// Reads slurm.conf at `slurm_conf` and the gres.conf beside it, for `node`; `None` when
    /// slurm.conf does not exist (a note says so).
    pub fn load(slurm_conf: &Path, node: &str) -> Result<NodeLayout, LayoutError> {
        if !slurm_conf.is_file() {
            return Err(LayoutError::NoSlurmConf {
                path: slurm_conf.to_path_buf(),
            });
        }
        // read for this node only: the other nodes' host lists are checked, not expanded
        let (slurm, errs) = SlurmConf::load_lenient_for_node(slurm_conf, node);
        Ok(NodeLayout::of(&slurm, &errs, node))
    }

    /// The layout of `node` from a slurm.conf already read (`slurm`, with the problems
    /// `errors` met reading it): the gres.conf beside it and the driver's MIG minors. For a
    /// caller that needs slurm.conf for more (the SPANK plugin: the cluster's name), so the
    /// file is parsed once. `slurm` may be read for `node` only
    /// ([`SlurmConf::load_lenient_for_node`]); gres.conf is read so.
    pub fn of(slurm: &SlurmConf, errors: &[ConfError], node: &str) -> NodeLayout {
        let mut notes: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let gres_path = slurm.gres_conf_path();
        let (gres, errs) = GresConf::load_lenient_for_node(&gres_path, node);
        notes.extend(errs.iter().map(|e| e.to_string()));
        let gpus = gres.expected_gpus(node, Some(slurm));
        // the driver's file lists every GPU it could hold (32 x 15 GPU instances x 9 minors:
        // 4,322 lines, about 0.6 ms to read): read only when a device is a slice
        let slices_listed = gpus.devices.iter().any(|d| !d.mig_caps.is_empty());
        let mig_minors = if slices_listed {
            match MigMinors::load(Path::new(crate::mig::MIG_MINORS_PATH)) {
                Ok(m) => m,
                Err(e) => {
                    notes.push(format!(
                        "{}: {e}; MIG capability minors read by the driver's fixed layout",
                        crate::mig::MIG_MINORS_PATH
                    ));
                    MigMinors::default()
                }
            }
        } else {
            MigMinors::default()
        };
        NodeLayout {
            gpus,
            notes,
            mig_minors,
        }
    }

    /// The job's GPUs and MIG slices: Slurm's indices (`SLURM_JOB_GPUS`) through gres.conf's
    /// device files (a slice's `nvidia-cap` files name its GPU instance), else, on a node
    /// with MIG, the `MIG-` UUIDs of `CUDA_VISIBLE_DEVICES` (`mig_uuids`). Without MIG this is
    /// [`NodeLayout::nvml_indices`] and no slices. An index that names a slice sgpu cannot
    /// place is left out with a note, never mapped to a whole GPU.
    pub fn job_devices(
        &self,
        slurm_indices: &[u32],
        mig_uuids: &[String],
        snapshot: &NodeSnapshot,
    ) -> JobDevices {
        job_devices(Some(self), slurm_indices, mig_uuids, snapshot)
    }

    /// The expected GPU count, when the configuration declares any GPU for the node.
    pub fn expected_count(&self) -> Option<u32> {
        if self.gpus.slurm_conf_count.is_none() && self.gpus.gres_conf_count == 0 {
            return None;
        }
        u32::try_from(self.gpus.count).ok()
    }

    /// Maps Slurm GPU indices (`SLURM_JOB_GPUS`) to NVML indices through device minor
    /// numbers. An index whose device file or minor number is unknown maps to itself (the
    /// usual identity when gres.conf lists `/dev/nvidia0..N` in order), and so does one whose
    /// minor number may belong to a GPU that cannot be read (lost); one whose minor number no
    /// readable GPU shows maps past the last GPU, so `gpu.job_gpus_exist` fails.
    pub fn nvml_indices(&self, slurm_indices: &[u32], snapshot: &NodeSnapshot) -> Vec<u32> {
        slurm_indices
            .iter()
            .map(|&i| {
                let minor = self
                    .gpus
                    .devices
                    .iter()
                    .find(|d| d.index == i)
                    .and_then(|d| d.minor);
                let all_minors_known = snapshot
                    .gpus
                    .iter()
                    .all(|g| g.minor_number.value().is_some());
                match minor {
                    None => i,
                    Some(m) => match snapshot
                        .gpus
                        .iter()
                        .find(|g| g.minor_number.value() == Some(&m))
                    {
                        Some(g) => g.index,
                        // a GPU whose minor number cannot be read (lost, driver error) may be
                        // this one: keep the index, and let gpu.lost report the real fault
                        None if !all_minors_known => i,
                        // every GPU answered and none is this device: past the end, so
                        // gpu.job_gpus_exist reports it missing, never another GPU
                        None => u32::try_from(snapshot.gpus.len())
                            .unwrap_or(u32::MAX)
                            .saturating_add(i),
                    },
                }
            })
            .collect()
    }
}

/// The NVML index of the GPU whose minor number is `minor`; past the last GPU when every GPU
/// answered and none has it, `None` when one could not be read (it may be that one).
fn index_of_minor(minor: u32, snapshot: &NodeSnapshot) -> Option<u32> {
    if let Some(g) = snapshot
        .gpus
        .iter()
        .find(|g| g.minor_number.value() == Some(&minor))
    {
        return Some(g.index);
    }
    snapshot
        .gpus
        .iter()
        .all(|g| g.minor_number.value().is_some())
        .then(|| u32::try_from(snapshot.gpus.len()).unwrap_or(u32::MAX))
}

/// [`NodeLayout::job_devices`], also without a layout (slurm.conf unreadable).
pub fn job_devices(
    layout: Option<&NodeLayout>,
    slurm_indices: &[u32],
    mig_uuids: &[String],
    snapshot: &NodeSnapshot,
) -> JobDevices {
    let mig_node = snapshot
        .gpus
        .iter()
        .any(|g| g.mig_mode.value() == Some(&true));
    let mut placed = Placement::default();
    for &i in slurm_indices {
        placed.slurm_index(i, layout, mig_node, snapshot);
    }
    // MIG UUIDs of CUDA_VISIBLE_DEVICES that gres.conf's files did not already place
    let mig_uuids = placed.uuids_not_placed(mig_uuids, snapshot);
    // a job whose prolog got no SLURM_JOB_GPUS but MIG UUIDs: its slices are those
    if slurm_indices.is_empty() && mig_node && !mig_uuids.is_empty() {
        placed
            .unplaced
            .extend((0..mig_uuids.len()).filter_map(|i| u32::try_from(i).ok()));
    }
    if !placed.unplaced.is_empty() {
        if mig_uuids.is_empty() {
            return placed.slices_unknown();
        }
        placed.mig_uuids(&mig_uuids, snapshot);
    }
    JobDevices {
        by_index: placed.by_index,
        gpus: placed.gpus,
        slices: (mig_node || !placed.slices.is_empty()).then_some(placed.slices),
        notes: placed.notes,
    }
}

/// What [`job_devices`] has resolved so far.
#[derive(Default)]
struct Placement {
    /// As [`JobDevices::gpus`].
    gpus: Vec<u32>,
    /// The slices placed.
    slices: Vec<JobSlice>,
    /// As [`JobDevices::notes`].
    notes: Vec<String>,
    /// Slurm indices of MIG slices gres.conf's files could not place (yet).
    unplaced: Vec<u32>,
    /// As [`JobDevices::by_index`] (in order once finished).
    by_index: Vec<JobDevice>,
}

impl Placement {
    /// Records that `slurm_index` is `gpu` (a slice of it when `slice` is given), or could
    /// not be placed (`gpu` `None`).
    fn add(&mut self, slurm_index: u32, gpu: Option<u32>, slice: Option<JobSlice>) {
        if let Some(g) = gpu {
            self.gpus.push(g);
        }
        if let Some(s) = &slice {
            self.slices.push(s.clone());
        }
        self.by_index.push(JobDevice {
            slurm_index,
            gpu,
            slice,
        });
    }

    /// Places Slurm index `i` through gres.conf's device for it: a slice by its
    /// `nvidia-cap` files, a GPU by its minor number; without either, a node with MIG leaves
    /// it unplaced and one without maps it to itself.
    fn slurm_index(
        &mut self,
        i: u32,
        layout: Option<&NodeLayout>,
        mig_node: bool,
        snapshot: &NodeSnapshot,
    ) {
        let device = layout.and_then(|l| l.gpus.devices.iter().find(|d| d.index == i));
        match device {
            Some(d) if !d.mig_caps.is_empty() => self.gres_slice(i, d, layout, snapshot),
            Some(d) if d.minor.is_some() || !mig_node => {
                let one = match layout {
                    Some(l) => l.nvml_indices(&[i], snapshot),
                    None => vec![i],
                };
                for g in one {
                    self.add(i, Some(g), None);
                }
            }
            _ if mig_node => self.unplaced.push(i),
            _ => self.add(i, Some(i), None),
        }
    }

    /// Places Slurm index `i`, gres.conf's device `d` whose capability files name a MIG
    /// slice, on the GPU whose minor number the driver's MIG minors give.
    fn gres_slice(
        &mut self,
        i: u32,
        d: &GpuDevice,
        layout: Option<&NodeLayout>,
        snapshot: &NodeSnapshot,
    ) {
        let minors = layout.map(|l| &l.mig_minors);
        let fixed = MigMinors::default();
        match minors.unwrap_or(&fixed).slice(d.minor, &d.mig_caps) {
            Ok(addr) => match index_of_minor(addr.gpu_minor, snapshot) {
                Some(gpu) => {
                    let slice = JobSlice {
                        gpu,
                        key: SliceKey::Instance {
                            gpu_instance: addr.gpu_instance,
                            compute_instance: addr.compute_instance,
                        },
                    };
                    self.add(i, Some(gpu), Some(slice));
                }
                None => {
                    self.notes.push(format!(
                        "GPU {i} (gres.conf {}): its GPU /dev/nvidia{} cannot be told among GPUs that did not answer",
                        d.at, addr.gpu_minor
                    ));
                    self.add(i, None, None);
                }
            },
            Err(e) => {
                self.notes
                    .push(format!("GPU {i} (gres.conf {}): {e}", d.at));
                self.unplaced.push(i);
            }
        }
    }

    /// The MIG UUIDs among `mig_uuids` that are not one of the slices already placed.
    fn uuids_not_placed<'a>(
        &self,
        mig_uuids: &'a [String],
        snapshot: &NodeSnapshot,
    ) -> Vec<&'a String> {
        let placed_uuids: Vec<&String> = self
            .slices
            .iter()
            .flat_map(|s: &JobSlice| {
                snapshot
                    .gpus
                    .iter()
                    .flat_map(|g| s.devices(g))
                    .filter_map(|d| d.uuid.value())
                    .collect::<Vec<_>>()
            })
            .collect();
        mig_uuids
            .iter()
            .filter(|u| !placed_uuids.contains(u))
            .collect()
    }

    /// The answer when slices are left unplaced and no MIG UUID says which they are: those
    /// indices resolve to nothing and the job's slices are not known.
    fn slices_unknown(mut self) -> JobDevices {
        let unplaced = &self.unplaced;
        self.notes.push(format!(
            "GPU(s) {unplaced:?}: MIG is on and neither gres.conf device files nor MIG \
             UUIDs in CUDA_VISIBLE_DEVICES say which slices they are: their slices are \
             not judged"
        ));
        self.by_index
            .extend(self.unplaced.iter().map(|&i| JobDevice {
                slurm_index: i,
                gpu: None,
                slice: None,
            }));
        self.by_index.sort_by_key(|d| d.slurm_index);
        JobDevices {
            by_index: self.by_index,
            gpus: self.gpus,
            slices: None,
            notes: self.notes,
        }
    }

    /// Places the unplaced indices by the MIG UUIDs left, in order (each found among the
    /// GPUs' MIG devices), and sorts [`JobDevices::by_index`].
    fn mig_uuids(&mut self, mig_uuids: &[&String], snapshot: &NodeSnapshot) {
        let all_read = snapshot
            .gpus
            .iter()
            .filter(|g| g.mig_mode.value() == Some(&true))
            .all(|g| g.mig_devices.value().is_some());
        let mut uuids_left: Vec<u32> = self.unplaced.clone();
        for &u in mig_uuids {
            // the UUIDs left stand for the unplaced indices in order (CUDA_VISIBLE_DEVICES
            // lists the job's devices in SLURM_JOB_GPUS's order)
            let slurm_index = if uuids_left.is_empty() {
                u32::try_from(self.by_index.len()).unwrap_or(u32::MAX)
            } else {
                uuids_left.remove(0)
            };
            let parent = snapshot.gpus.iter().find(|g| {
                g.mig_devices
                    .value()
                    .is_some_and(|ds| ds.iter().any(|d| d.uuid.value() == Some(u)))
            });
            let gpu = match parent {
                Some(g) => g.index,
                // every MIG device was read and none is this one: past the last GPU, so
                // gpu.job_gpus_exist reports it missing
                None if all_read => u32::try_from(snapshot.gpus.len()).unwrap_or(u32::MAX),
                None => {
                    self.notes.push(format!(
                        "{u}: not found among the MIG devices that could be read"
                    ));
                    self.add(slurm_index, None, None);
                    continue;
                }
            };
            let slice = JobSlice {
                gpu,
                key: SliceKey::Uuid(u.clone()),
            };
            self.add(slurm_index, Some(gpu), Some(slice));
        }
        self.by_index.extend(uuids_left.iter().map(|&i| JobDevice {
            slurm_index: i,
            gpu: None,
            slice: None,
        }));
        self.by_index.sort_by_key(|d| d.slurm_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{GpuSnapshot, Reading};
    use sgpu_slurm_conf::{ConfFile, GresConf};

    fn layout() -> NodeLayout {
        let gres = GresConf::parse_str(
            "NodeName=n1 Name=gpu File=/dev/nvidia[0-3]\n",
            "/etc/slurm/gres.conf",
        )
        .unwrap();
        NodeLayout {
            gpus: gres.expected_gpus("n1", None),
            notes: Vec::new(),
            mig_minors: MigMinors::default(),
        }
    }

    fn snapshot(minors: &[Option<u32>]) -> NodeSnapshot {
        NodeSnapshot {
            driver_version: Reading::Unsupported,
            gpus: minors
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut g = GpuSnapshot::unknown(i as u32);
                    g.minor_number = m.map_or(Reading::Error("lost".into()), Reading::Value);
                    g
                })
                .collect(),
        }
    }

    #[test]
    fn slurm_indices_follow_minor_numbers() {
        // NVML (PCI order) lists the devices /dev/nvidia2, 0, 3, 1
        let snap = snapshot(&[Some(2), Some(0), Some(3), Some(1)]);
        assert_eq!(
            layout().nvml_indices(&[0, 1, 2, 3], &snap),
            vec![1, 3, 0, 2]
        );
    }

    #[test]
    fn a_missing_device_maps_past_the_end_but_an_unreadable_one_keeps_its_index() {
        let three = snapshot(&[Some(0), Some(1), Some(2)]);
        assert_eq!(layout().nvml_indices(&[3], &three), vec![6]);
        let lost = snapshot(&[Some(0), None, Some(2), Some(3)]);
        assert_eq!(layout().nvml_indices(&[1, 2], &lost), vec![1, 2]);
    }
}
