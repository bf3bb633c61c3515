//! `gres.conf`: which generic resources (above all GPUs) each node has, and
//! the one question sgpu asks of it: [`GresConf::expected_gpus`].
//!
//! Same syntax as `slurm.conf` (comments, continuations, quoting, `Include`).
//! Lines are `Name=gpu ...` (for every node), `NodeName=<hostlist> Name=gpu
//! ...` (for those nodes), `AutoDetect=nvml|rsmi|oneapi|nvidia|nrt|full|off` alone (global)
//! or `NodeName=<hostlist> AutoDetect=...` (per node). Checks follow Slurm
//! 22.05's `slurmd`: `File=` is a hostlist with one device per file, `Count=`
//! (with K/M/G/T/P suffixes) must match the number of files for GPUs, `File`
//! and `MultipleFiles` exclude each other, `Links=` must be numbers with
//! exactly one `-1`, and `AutoDetect` on a `Name=` line without `NodeName=`
//! has no effect.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::conf::{ConfError, Location, Stmt, StmtParser, statement_file};
use crate::hostlist::{self, Hostlist, Span};
use crate::slurm_conf::{Node, SlurmConf, parse_gres_count};

/// Most per-device entries [`GresConf::expected_gpus`] lists for one node.
const MAX_DEVICES: u64 = 1024;
/// Highest value Slurm accepts in `Links=` (`GRES_MAX_LINK`).
const GRES_MAX_LINK: i64 = 1023;

/// How `slurmd` discovers GPUs (`AutoDetect=`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AutoDetect {
    /// NVIDIA's NVML.
    Nvml,
    /// AMD's ROCm SMI.
    Rsmi,
    /// Intel's oneAPI.
    OneApi,
    /// NVIDIA's device files and sysfs, without NVML (Slurm 24.11+).
    Nvidia,
    /// AWS Neuron (Slurm 26.05).
    Nrt,
    /// Everything slurmd can detect (Slurm 26.05).
    Full,
    /// No autodetection: only what gres.conf lists.
    Off,
}

impl AutoDetect {
    /// Parses a value the way Slurm 26.05 does (`_handle_autodetect_flags` in
    /// src/interfaces/gres.c: `full`, `nvml`, `rsmi`, `oneapi`, `nrt` and `nvidia` may be part
    /// of a longer word and are tried in that order; `off` must be exact; case-insensitive).
    /// `nvidia` is new in 24.11, `nrt` and `full` in 26.05: an older slurmd logs them as
    /// unknown and detects nothing.
    pub fn parse(s: &str) -> Option<Self> {
        let l = s.to_ascii_lowercase();
        if l.contains("full") {
            Some(AutoDetect::Full)
        } else if l.contains("nvml") {
            Some(AutoDetect::Nvml)
        } else if l.contains("rsmi") {
            Some(AutoDetect::Rsmi)
        } else if l.contains("oneapi") {
            Some(AutoDetect::OneApi)
        } else if l.contains("nrt") {
            Some(AutoDetect::Nrt)
        } else if l.contains("nvidia") {
            Some(AutoDetect::Nvidia)
        } else if l == "off" {
            Some(AutoDetect::Off)
        } else {
            None
        }
    }

    /// Whether GPUs are detected by a library rather than listed.
    pub fn is_on(&self) -> bool {
        *self != AutoDetect::Off
    }
}

impl fmt::Display for AutoDetect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AutoDetect::Nvml => "nvml",
            AutoDetect::Rsmi => "rsmi",
            AutoDetect::OneApi => "oneapi",
            AutoDetect::Nvidia => "nvidia",
            AutoDetect::Nrt => "nrt",
            AutoDetect::Full => "full",
            AutoDetect::Off => "off",
        })
    }
}

/// One `Name=` record of gres.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GresRecord {
    /// GRES name, e.g. `gpu`.
    pub name: String,
    /// `Type=`, e.g. `a100`.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub type_: Option<String>,
    /// Number of resources (from `Count=`, or the number of files, or 1).
    pub count: u64,
    /// Device files from `File=`/`Files=` (or `MultipleFiles=`), expanded.
    pub files: Vec<PathBuf>,
    /// Whether the files came from `MultipleFiles=` (all files are one device).
    pub multiple_files: bool,
    /// `Cores=` (or the deprecated `CPUs=`).
    pub cores: Option<String>,
    /// `Links=`.
    pub links: Option<String>,
    /// `Flags=`, split on commas.
    pub flags: Vec<String>,
    /// `NodeName=` as written; `None` means every node.
    pub nodes_expr: Option<String>,
    /// `NodeName=` expanded.
    pub nodes: Option<Vec<String>>,
    /// Every option of the line, keys lower-cased.
    pub params: BTreeMap<String, String>,
    /// Where the record is.
    pub at: Location,
}

impl GresRecord {
    /// Whether the record applies to node `name`.
    pub fn applies_to(&self, name: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == name))
    }

    /// Whether this is a GPU record.
    pub fn is_gpu(&self) -> bool {
        self.name.eq_ignore_ascii_case("gpu")
    }
}

/// A `NodeName=... AutoDetect=...` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeAutoDetect {
    /// Node names it applies to.
    pub nodes: Vec<String>,
    /// The setting.
    pub value: AutoDetect,
    /// Where.
    pub at: Location,
}

/// A parsed `gres.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GresConf {
    /// The file it was read from (or the origin given to `parse_str`).
    pub path: PathBuf,
    /// Every file read (with includes).
    pub files: Vec<PathBuf>,
    /// Global `AutoDetect=`.
    pub autodetect: Option<AutoDetect>,
    /// Per-node `AutoDetect=`.
    pub node_autodetect: Vec<NodeAutoDetect>,
    /// Every `Name=` record, in order.
    pub records: Vec<GresRecord>,
}

/// One GPU a node should have.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GpuDevice {
    /// Position among the node's GPUs in gres.conf order (0-based).
    pub index: u32,
    /// Device minor number of the GPU, from the first of its files named `nvidia<N>`
    /// (`/dev/nvidia3` is 3); a MIG slice's capability files do not count.
    pub minor: Option<u32>,
    /// Minor numbers of the NVIDIA capability files among its files
    /// (`/dev/nvidia-caps/nvidia-cap21` is 21): the MIG slice the device is, when not empty
    /// (a MIG GPU instance's and compute instance's access files, as `nvidia-smi` and Slurm's
    /// NVML autodetection name them). Which GPU instance a minor stands for is the driver's
    /// `/proc/driver/nvidia-caps/mig-minors`.
    pub mig_caps: Vec<u32>,
    /// GPU type, e.g. `a100`.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub type_: Option<String>,
    /// Device file, when gres.conf lists one.
    pub file: Option<PathBuf>,
    /// Further files of a `MultipleFiles=` device.
    pub extra_files: Vec<PathBuf>,
    /// `Cores=` of the record.
    pub cores: Option<String>,
    /// `Links=` of the record.
    pub links: Option<String>,
    /// The gres.conf record it comes from.
    pub at: Location,
}

/// A disagreement between gres.conf and slurm.conf about a node's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GpuIssue {
    /// The GPU totals differ.
    CountMismatch {
        /// GPUs in the node's `Gres=` in slurm.conf.
        slurm_conf: u64,
        /// GPUs listed in gres.conf for the node.
        gres_conf: u64,
    },
    /// The count of one GPU type differs.
    TypeCountMismatch {
        /// The type (as in slurm.conf).
        type_: String,
        /// GPUs of that type in slurm.conf.
        slurm_conf: u64,
        /// GPUs of that type in gres.conf.
        gres_conf: u64,
    },
    /// slurm.conf has no `NodeName=` line for the node.
    NodeNotInSlurmConf,
    /// The node has GPUs but slurm.conf's `GresTypes` lacks `gpu`.
    GpuNotInGresTypes,
    /// slurm.conf gives the node typed and untyped GPUs (slurmd refuses that).
    MixedTypedAndUntyped,
    /// gres.conf lists GPUs without `File=` and autodetection is off, so the
    /// devices cannot be checked.
    NoDeviceFiles,
}

impl fmt::Display for GpuIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuIssue::CountMismatch {
                slurm_conf,
                gres_conf,
            } => write!(
                f,
                "slurm.conf gives the node {slurm_conf} GPU(s) but gres.conf lists {gres_conf}; make Gres=gpu:N and the gres.conf records agree"
            ),
            GpuIssue::TypeCountMismatch {
                type_,
                slurm_conf,
                gres_conf,
            } => write!(
                f,
                "slurm.conf gives the node {slurm_conf} GPU(s) of type {type_} but gres.conf lists {gres_conf} with Type={type_}"
            ),
            GpuIssue::NodeNotInSlurmConf => f.write_str("slurm.conf has no NodeName line for this node"),
            GpuIssue::GpuNotInGresTypes => f.write_str("the node has GPUs but slurm.conf's GresTypes does not include gpu"),
            GpuIssue::MixedTypedAndUntyped => f.write_str(
                "slurm.conf gives the node both typed and untyped GPUs (e.g. gpu:a100:2,gpu:2); slurmd refuses this",
            ),
            GpuIssue::NoDeviceFiles => f.write_str(
                "gres.conf lists GPUs without File= and AutoDetect is off, so their device files are unknown",
            ),
        }
    }
}

/// What GPUs a node should have, according to gres.conf and slurm.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeGpus {
    /// The node.
    pub node: String,
    /// GPUs the node should have: slurm.conf's count when known (it is what
    /// Slurm allocates), otherwise gres.conf's.
    pub count: u64,
    /// The GPUs gres.conf describes (empty when they are autodetected).
    pub devices: Vec<GpuDevice>,
    /// Effective `AutoDetect` for the node (per-node setting, else global).
    pub autodetect: Option<AutoDetect>,
    /// GPUs in slurm.conf's `Gres=` for the node (`None` without slurm.conf
    /// or when the node is not in it).
    pub slurm_conf_count: Option<u64>,
    /// GPUs gres.conf lists for the node.
    pub gres_conf_count: u64,
    /// Disagreements to report (empty when all is consistent).
    pub issues: Vec<GpuIssue>,
}

/// The trailing number of a device file name (`/dev/nvidia12` is 12).
fn file_minor(p: &Path) -> Option<u32> {
    let name = p.file_name()?.to_str()?;
    let digits = name.bytes().rev().take_while(u8::is_ascii_digit).count();
    name.get(name.len() - digits..)?.parse().ok()
}

/// Whether a device file is an NVIDIA capability file (`/dev/nvidia-caps/nvidia-cap21`).
fn is_cap_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("nvidia-cap"))
}

/// The GPU minor of a device's files (the first that is not a capability file) and the
/// minors of its capability files.
fn device_minors(files: &[&Path]) -> (Option<u32>, Vec<u32>) {
    let minor = files
        .iter()
        .find(|f| !is_cap_file(f))
        .and_then(|f| file_minor(f));
    let caps = files
        .iter()
        .filter(|f| is_cap_file(f))
        .filter_map(|f| file_minor(f))
        .collect();
    (minor, caps)
}

/// Validates a `Cores=`/`CPUs=` list such as `0-7,16-23`.
fn valid_cpu_list(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(x), Ok(y)) => x <= y,
                _ => false,
            }
        })
}

/// Slurm's `gres_links_validate`: numbers in `[-2, 1023]`, exactly one `-1`.
fn links_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("Links is empty".to_string());
    }
    let mut selves = 0;
    for tok in s.split(',').filter(|t| !t.is_empty()) {
        match tok.parse::<i64>() {
            Ok(v) if (-2..=GRES_MAX_LINK).contains(&v) => selves += usize::from(v == -1),
            _ => {
                return Some(format!(
                    "Links value `{tok}` is not a number between -2 and {GRES_MAX_LINK}"
                ));
            }
        }
    }
    match selves {
        1 => None,
        0 => Some(format!(
            "Links={s} has no -1 (the entry for the GPU itself)"
        )),
        _ => Some(format!("Links={s} has more than one -1")),
    }
}

/// Parsing state.
#[derive(Default)]
struct Builder {
    conf: GresConf,
    errors: Vec<ConfError>,
    /// First per-node AutoDetect seen for each node.
    node_ad: HashMap<String, (AutoDetect, Location)>,
    /// Keep only this node's records ([`GresConf::read_for_node`]).
    scope: Option<String>,
    /// Scoped: every per-node AutoDetect line's value and names (as spans).
    ad_spans: Vec<(AutoDetect, Vec<Span>)>,
    /// The scoped parse cannot give the full parse's answer without the names.
    unsure: bool,
}

impl Builder {
    fn err(&mut self, at: &Location, msg: impl Into<String>) {
        self.errors.push(ConfError::at(at, msg));
    }

    fn stmt(&mut self, s: &Stmt) {
        let Some(first) = s.pairs.first() else {
            if let Some(left) = &s.leftover {
                self.err(&s.at, format!("expected Key=Value, found `{left}`"));
            }
            return;
        };
        if let Some(left) = &s.leftover {
            self.err(
                &s.at,
                format!("cannot parse `{left}`: expected Key=Value pairs"),
            );
        }
        if first.is("NodeName") || first.is("Name") {
            self.record(s);
        } else if first.is("AutoDetect") {
            if s.pairs.len() > 1 {
                self.err(
                    &s.at,
                    "a global AutoDetect= line takes no other keys (use NodeName=... AutoDetect=... for some nodes)",
                );
            }
            match AutoDetect::parse(&first.value) {
                Some(a) => self.conf.autodetect = Some(a),
                None => self.err(
                    &s.at,
                    format!(
                        "unknown AutoDetect value `{}` (expected nvml, rsmi, oneapi, nvidia, nrt, full or off)",
                        first.value
                    ),
                ),
            }
        } else {
            self.err(
                &s.at,
                format!(
                    "{}= outside a Name= or NodeName= line has no effect; lines start with Name=, NodeName= or AutoDetect=",
                    first.key
                ),
            );
        }
    }

    /// `AutoDetect=` on a `Name=`/`NodeName=` line: an unknown value, one without nodes
    /// (Slurm ignores it) and one that contradicts an earlier setting for a node are errors;
    /// the first setting of each node is kept.
    fn line_autodetect(&mut self, at: &Location, a: &str, nodes: Option<&Vec<String>>) {
        match (AutoDetect::parse(a), nodes) {
            (None, _) => self.err(
                at,
                format!("unknown AutoDetect value `{a}` (expected nvml, rsmi, oneapi, nvidia, nrt, full or off)"),
            ),
            (Some(_), None) => self.err(
                at,
                "AutoDetect on a Name= line has no effect (Slurm ignores it): put it on its own line or on a NodeName= line",
            ),
            (Some(v), Some(n)) => {
                let mut conflict = None;
                for node in n {
                    match self.node_ad.get(node) {
                        Some((prev, prev_at)) if *prev != v && conflict.is_none() => {
                            conflict = Some(format!(
                                "AutoDetect={v} for node {node} contradicts AutoDetect={prev} at {prev_at}"
                            ));
                        }
                        Some(_) => {}
                        None => {
                            self.node_ad.insert(node.clone(), (v.clone(), at.clone()));
                        }
                    }
                }
                if let Some(msg) = conflict {
                    self.errors.push(ConfError::at(at, msg));
                }
                self.conf.node_autodetect.push(NodeAutoDetect {
                    nodes: n.clone(),
                    value: v,
                    at: at.clone(),
                });
            }
        }
    }

    /// The device files of `File=`/`Files=` (`file_expr`) or `MultipleFiles=` (`multiple`,
    /// which makes them one device; the flag), expanded; both set, or a `MultipleFiles=` of
    /// fewer than two files, is an error.
    fn device_files(
        &mut self,
        at: &Location,
        file_expr: Option<&str>,
        multiple: Option<&str>,
    ) -> (Vec<PathBuf>, bool) {
        let mut files = Vec::new();
        let mut multiple_files = false;
        if let Some(f) = file_expr {
            match hostlist::expand(f) {
                Ok(v) => files = v.into_iter().map(PathBuf::from).collect(),
                Err(e) => self.err(at, format!("File: {e}")),
            }
        }
        if let Some(m) = multiple {
            if file_expr.is_some() {
                self.err(at, "File= and MultipleFiles= exclude each other: use one");
            } else {
                match hostlist::expand(m) {
                    Ok(v) if v.len() >= 2 => {
                        files = v.into_iter().map(PathBuf::from).collect();
                        multiple_files = true;
                    }
                    Ok(_) => self.err(
                        at,
                        "MultipleFiles= lists fewer than two files: use File= instead",
                    ),
                    Err(e) => self.err(at, format!("MultipleFiles: {e}")),
                }
            }
        }
        (files, multiple_files)
    }

    /// A record's count: `Count=` (a number with an optional K/M/G/T/P suffix, which must
    /// match the `from_files` devices its files name unless the GRES is shared, `mps` or
    /// `shard`), else the number of devices (at least 1). `files_as_written` names them in
    /// the error.
    fn record_count(
        &mut self,
        at: &Location,
        name: &str,
        count: Option<&str>,
        from_files: u64,
        files_as_written: impl Fn() -> String,
    ) -> u64 {
        let shared = name.eq_ignore_ascii_case("mps") || name.eq_ignore_ascii_case("shard");
        match count {
            Some(c) => match parse_gres_count(c) {
                Some(n) => {
                    if from_files > 0 && n != from_files && !shared {
                        let what = files_as_written();
                        self.err(
                            at,
                            format!(
                                "Count={c} does not match File={what}, which names {from_files} device(s): \
                                 one {name} per file (drop Count= or fix it)"
                            ),
                        );
                    }
                    n
                }
                None => {
                    self.err(
                        at,
                        format!("Count `{c}` is not a number (optionally with a K/M/G/T/P suffix)"),
                    );
                    from_files.max(1)
                }
            },
            None => from_files.max(1),
        }
    }

    /// One `Name=` line (or a `NodeName=` line with only `AutoDetect=`).
    fn record(&mut self, s: &Stmt) {
        let at = &s.at;
        let params: BTreeMap<String, String> = s
            .pairs
            .iter()
            .map(|p| (p.key.to_ascii_lowercase(), p.value.clone()))
            .collect();
        let get = |k: &str| params.get(k).cloned();
        let nodes_expr = get("nodename");
        let listed = match &nodes_expr {
            Some(e) => match Hostlist::parse(e) {
                Ok(h) => Some(h),
                Err(err) => {
                    self.err(at, format!("NodeName: {err}"));
                    return;
                }
            },
            None => None,
        };
        // a scoped parse keeps, of each line's nodes, only its node
        let nodes = listed.as_ref().map(|h| match &self.scope {
            None => h.to_vec(),
            Some(node) => h.contains(node).then(|| node.clone()).into_iter().collect(),
        });
        if let Some(a) = get("autodetect") {
            if let (Some(_), Some(h), Some(v)) = (&self.scope, &listed, AutoDetect::parse(&a)) {
                match h.spans() {
                    Some(spans) => self.ad_spans.push((v, spans)),
                    None => self.unsure = true,
                }
            }
            self.line_autodetect(at, &a, nodes.as_ref());
        }
        let Some(name) = get("name") else {
            if get("autodetect").is_none() {
                self.err(
                    at,
                    "expected Name=<gres> (e.g. Name=gpu) on this NodeName= line",
                );
            }
            return;
        };
        let file_expr = get("file").or_else(|| get("files"));
        let (files, multiple_files) =
            self.device_files(at, file_expr.as_deref(), get("multiplefiles").as_deref());
        let from_files = match (multiple_files, files.len()) {
            (true, _) => 1,
            (false, n) => n as u64,
        };
        let count = self.record_count(at, &name, get("count").as_deref(), from_files, || {
            file_expr
                .clone()
                .or_else(|| get("multiplefiles"))
                .unwrap_or_default()
        });
        let cores = get("cores").or_else(|| get("cpus"));
        if let Some(c) = &cores {
            if !valid_cpu_list(c) {
                self.err(
                    at,
                    format!("Cores={c}: expected core numbers and ranges, e.g. Cores=0-7,16-23"),
                );
            }
        }
        let links = get("links").or_else(|| get("link"));
        if let Some(l) = &links {
            if let Some(e) = links_error(l) {
                self.err(at, e);
            }
        }
        let flags = get("flags")
            .map(|f| {
                f.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        self.conf.records.push(GresRecord {
            name,
            type_: get("type"),
            count,
            files,
            multiple_files,
            cores,
            links,
            flags,
            nodes_expr,
            nodes,
            params,
            at: at.clone(),
        });
    }
}

statement_file!(GresConf, Builder, for_node);

impl StmtParser for Builder {
    type Conf = GresConf;

    fn stmt(&mut self, s: &Stmt) {
        Builder::stmt(self, s);
    }

    fn finish(&mut self) {
        // scoped: per-node AutoDetect lines of different values that may share a node need
        // the full parse (it names the node they contradict on); lines of one value may
        // share nodes freely (no error), so each value's lines are merged first
        let mut by_value: BTreeMap<String, Vec<Span>> = BTreeMap::new();
        for (v, spans) in &self.ad_spans {
            by_value
                .entry(v.to_string())
                .or_default()
                .extend(spans.iter().cloned());
        }
        if by_value.len() > 1 {
            let mut all: Vec<Span> = by_value
                .into_values()
                .flat_map(|spans| hostlist::SpanSet::new(spans).into_spans())
                .collect();
            if hostlist::spans_overlap(&mut all) {
                self.unsure = true;
            }
        }
    }

    fn into_parts(self) -> (GresConf, Vec<ConfError>) {
        (self.conf, self.errors)
    }
}

impl GresConf {
    /// The records that apply to node `name`, in order.
    pub fn records_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a GresRecord> + 'a {
        self.records.iter().filter(move |r| r.applies_to(name))
    }

    /// The effective `AutoDetect` for node `name`: its own, else the global one.
    pub fn autodetect_for(&self, name: &str) -> Option<AutoDetect> {
        self.node_autodetect
            .iter()
            .find(|a| a.nodes.iter().any(|n| n == name))
            .map(|a| a.value.clone())
            .or_else(|| self.autodetect.clone())
    }

    /// The GPUs gres.conf lists for node `name`: one device per file (one per
    /// `MultipleFiles=` record, one per count without files), at most [`MAX_DEVICES`].
    fn listed_gpus(&self, name: &str) -> Listed {
        let mut devices = Vec::new();
        let mut gres_count: u64 = 0;
        let mut per_type: BTreeMap<Option<String>, u64> = BTreeMap::new();
        let mut without_files = false;
        for r in self.records_for(name).filter(|r| r.is_gpu()) {
            gres_count = gres_count.saturating_add(r.count);
            let t = r.type_.as_ref().map(|t| t.to_ascii_lowercase());
            let e = per_type.entry(t).or_insert(0);
            *e = e.saturating_add(r.count);
            let push =
                |file: Option<PathBuf>, extra: Vec<PathBuf>, devices: &mut Vec<GpuDevice>| {
                    if (devices.len() as u64) < MAX_DEVICES {
                        let all: Vec<&Path> = file
                            .iter()
                            .chain(extra.iter())
                            .map(PathBuf::as_path)
                            .collect();
                        let (minor, mig_caps) = device_minors(&all);
                        devices.push(GpuDevice {
                            index: devices.len() as u32,
                            minor,
                            mig_caps,
                            type_: r.type_.clone(),
                            file,
                            extra_files: extra,
                            cores: r.cores.clone(),
                            links: r.links.clone(),
                            at: r.at.clone(),
                        });
                    }
                };
            if r.multiple_files {
                let mut files = r.files.clone();
                let first = (!files.is_empty()).then(|| files.remove(0));
                push(first, files, &mut devices);
            } else if !r.files.is_empty() {
                for f in &r.files {
                    push(Some(f.clone()), Vec::new(), &mut devices);
                }
            } else {
                without_files = true;
                for _ in 0..r.count.min(MAX_DEVICES) {
                    push(None, Vec::new(), &mut devices);
                }
            }
        }
        Listed {
            devices,
            count: gres_count,
            per_type,
            without_files,
        }
    }

    /// What GPUs node `name` should have: count, types and device files from
    /// gres.conf, reconciled with the node's `Gres=` in `slurm_conf` when
    /// given. Disagreements are listed in [`NodeGpus::issues`].
    pub fn expected_gpus(&self, name: &str, slurm_conf: Option<&SlurmConf>) -> NodeGpus {
        let autodetect = self.autodetect_for(name);
        let listed = self.listed_gpus(name);
        let mut issues = Vec::new();
        let mut slurm_conf_count = None;
        if let Some(sc) = slurm_conf {
            match sc.node(name) {
                None => issues.push(GpuIssue::NodeNotInSlurmConf),
                Some(node) => {
                    slurm_conf_count = Some(node.gpu_count());
                    issues = slurm_conf_issues(node, &sc.gres_types, &listed, autodetect.as_ref());
                }
            }
        }
        if listed.without_files && autodetect.as_ref().is_none_or(|a| !a.is_on()) {
            issues.push(GpuIssue::NoDeviceFiles);
        }
        NodeGpus {
            node: name.to_string(),
            count: slurm_conf_count.unwrap_or(listed.count),
            devices: listed.devices,
            autodetect,
            slurm_conf_count,
            gres_conf_count: listed.count,
            issues,
        }
    }
}

/// What gres.conf lists for a node.
struct Listed {
    /// The devices, in gres.conf order.
    devices: Vec<GpuDevice>,
    /// The GPUs (the records' counts).
    count: u64,
    /// The GPUs by lower-cased type (`None`: untyped).
    per_type: BTreeMap<Option<String>, u64>,
    /// Whether a record names no device file.
    without_files: bool,
}

/// Where slurm.conf's `Gres=` for `node` (and `GresTypes`) disagrees with what gres.conf
/// lists: typed and untyped GPUs mixed, `gpu` not in `GresTypes`, the total or a type's count.
/// An autodetected node's listing is not compared when gres.conf lists none.
fn slurm_conf_issues(
    node: &Node,
    gres_types: &[String],
    listed: &Listed,
    autodetect: Option<&AutoDetect>,
) -> Vec<GpuIssue> {
    let mut issues = Vec::new();
    let sc_count = node.gpu_count();
    let typed = node.gpus().filter(|g| g.type_.is_some()).count();
    let untyped = node.gpus().count() - typed;
    if typed > 0 && untyped > 0 {
        issues.push(GpuIssue::MixedTypedAndUntyped);
    }
    if sc_count > 0 && !gres_types.iter().any(|t| t.eq_ignore_ascii_case("gpu")) {
        issues.push(GpuIssue::GpuNotInGresTypes);
    }
    let compared = listed.count > 0 || autodetect.is_none_or(|a| !a.is_on());
    if compared && sc_count != listed.count {
        issues.push(GpuIssue::CountMismatch {
            slurm_conf: sc_count,
            gres_conf: listed.count,
        });
    } else if compared && typed > 0 {
        let mut sc_types: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for g in node.gpus() {
            if let Some(t) = &g.type_ {
                let e = sc_types
                    .entry(t.to_ascii_lowercase())
                    .or_insert((t.clone(), 0));
                e.1 = e.1.saturating_add(g.count);
            }
        }
        for (lower, (t, n)) in sc_types {
            let have = listed.per_type.get(&Some(lower)).copied().unwrap_or(0);
            if have != n {
                issues.push(GpuIssue::TypeCountMismatch {
                    type_: t,
                    slurm_conf: n,
                    gres_conf: have,
                });
            }
        }
    }
    issues
}

#[cfg(test)]
mod tests;
