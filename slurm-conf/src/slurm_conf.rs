//! `slurm.conf`: the settings sgpu reads, every node with its GRES, and the
//! partitions.
//!
//! The syntax is Slurm's (see the crate's `conf` notes: comments, `\`
//! continuations, quoting, `Include`). As in Slurm:
//! - keys are case-insensitive; a repeated setting keeps the last value;
//! - outside `NodeName=`/`PartitionName=`/`NodeSet=`/`DownNodes=`/
//!   `FrontendName=` lines, a line holds exactly one `Key=Value`;
//! - `NodeName=DEFAULT` / `PartitionName=DEFAULT` lines set defaults for the
//!   lines that follow them (later DEFAULT lines add to or override earlier ones);
//! - `NodeName`, `NodeHostname`, `NodeAddr` and `Port` are hostlists.
//!
//! Unlike Slurm, unknown keys are kept (in [`SlurmConf::settings`] or a
//! line's `params`) rather than rejected, so a newer Slurm's options do not
//! break sgpu. Numeric node options and booleans are validated like Slurm.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::conf::{ConfError, Location, Pair, Stmt, StmtParser, dir_of, statement_file};
use crate::hostlist::{self, Hostlist, Span, SpanSet};

/// One top-level `Key=Value` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Setting {
    /// The key as written.
    pub key: String,
    /// The value, without quotes.
    pub value: String,
    /// Where it was set (the last time).
    pub at: Location,
}

/// One generic resource of a node, e.g. `gpu:a100:4(S:0-1)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GresSpec {
    /// GRES name, e.g. `gpu`.
    pub name: String,
    /// GRES type, e.g. `a100`.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub type_: Option<String>,
    /// How many (K/M/G/T/P suffixes multiply by powers of 1024).
    pub count: u64,
    /// Flags between type and count, e.g. `no_consume`.
    pub flags: Vec<String>,
    /// Socket binding suffix without parentheses, e.g. `S:0-1`.
    pub sockets: Option<String>,
}

/// A GRES item Slurm would refuse (each message shows the form it expects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GresError {
    /// `(` without a closing `)`.
    #[error("GRES `{0}`: expected `)` at the end of the socket suffix, e.g. gpu:4(S:0-1)")]
    SocketSuffix(String),
    /// No name before the first `:`.
    #[error("GRES `{0}`: expected a name first, e.g. gpu:a100:4")]
    NoName(String),
    /// `::`.
    #[error("GRES `{0}`: empty field between `:`")]
    EmptyField(String),
    /// Two types, e.g. `gpu:a:b:4`.
    #[error("GRES `{0}`: expected name[:type][:count], found more than one type")]
    TwoTypes(String),
}

/// A number or boolean value Slurm would refuse (Slurm's own wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a number `strtoul` takes.
    #[error("{key} value \"{value}\" is not a valid number (expected e.g. {key}=4)")]
    NotANumber {
        /// The key as written.
        key: String,
        /// The value as written.
        value: String,
    },
    /// Above the key's largest value.
    #[error("{key} value ({value}) is greater than {max}")]
    TooLarge {
        /// The key as written.
        key: String,
        /// The value as written.
        value: String,
        /// The largest value the key takes.
        max: u64,
    },
    /// Not one of Slurm's boolean words.
    #[error("\"{value}\" is not a valid option for \"{key}\" (expected YES or NO)")]
    NotABool {
        /// The key as written.
        key: String,
        /// The value as written.
        value: String,
    },
}

impl GresSpec {
    /// Whether this is a GPU (`gpu`, case-insensitive).
    pub fn is_gpu(&self) -> bool {
        self.name.eq_ignore_ascii_case("gpu")
    }

    /// Parses one GRES item such as `gpu`, `gpu:4`, `gpu:a100:4` or
    /// `gpu:a100:4(S:0-1)`.
    pub fn parse(item: &str) -> Result<Self, GresError> {
        let item = item.trim();
        let (main, sockets) = match item.find('(') {
            Some(p) => {
                let Some(inner) = item[p + 1..].strip_suffix(')') else {
                    return Err(GresError::SocketSuffix(item.to_string()));
                };
                (&item[..p], Some(inner.to_string()))
            }
            None => (item, None),
        };
        let parts: Vec<&str> = main.split(':').collect();
        let name = parts[0];
        if name.is_empty() {
            return Err(GresError::NoName(item.to_string()));
        }
        let (count, middle) = match parts.len() {
            1 => (1, &parts[1..]),
            n => match parse_gres_count(parts[n - 1]) {
                Some(c) => (c, &parts[1..n - 1]),
                // No count: the last field is the type (`gpu:a100`, `gpu:1g.5gb`).
                None => (1, &parts[1..]),
            },
        };
        let mut type_ = None;
        let mut flags = Vec::new();
        for m in middle {
            if m.eq_ignore_ascii_case("no_consume") {
                flags.push(m.to_string());
            } else if m.is_empty() {
                return Err(GresError::EmptyField(item.to_string()));
            } else if type_.is_some() {
                return Err(GresError::TwoTypes(item.to_string()));
            } else {
                type_ = Some(m.to_string());
            }
        }
        Ok(GresSpec {
            name: name.to_string(),
            type_,
            count,
            flags,
            sockets,
        })
    }

    /// Parses a comma-separated GRES list (commas inside `(...)` do not split).
    pub fn parse_list(s: &str) -> Result<Vec<Self>, GresError> {
        let mut out = Vec::new();
        let mut depth = 0i32;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth <= 0 => {
                    out.push(Self::parse(&s[start..i])?);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !s.trim().is_empty() || !out.is_empty() {
            out.push(Self::parse(&s[start..])?);
        }
        Ok(out)
    }
}

/// A GRES count: digits with an optional K/M/G/T/P (×1024ⁿ) suffix.
pub(crate) fn parse_gres_count(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// One node, with `NodeName=DEFAULT` values applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Node {
    /// The node name.
    pub name: String,
    /// `NodeHostname` (defaults to the name).
    pub hostname: String,
    /// `NodeAddr` (defaults to the hostname).
    pub addr: String,
    /// `Port`, when set.
    pub port: Option<u16>,
    /// `CPUs` (or `Procs`), when set.
    pub cpus: Option<u16>,
    /// `RealMemory` in MiB, when set.
    pub real_memory: Option<u64>,
    /// `Gres`, parsed.
    pub gres: Vec<GresSpec>,
    /// `Feature`/`Features`, split on commas.
    pub features: Vec<String>,
    /// `State`, when set.
    pub state: Option<String>,
    /// Every option of the line (and defaults), keys lower-cased.
    pub params: BTreeMap<String, String>,
    /// The `NodeName=` line that defined the node.
    pub at: Location,
}

impl Node {
    /// Total GPUs in the node's `Gres=`.
    pub fn gpu_count(&self) -> u64 {
        self.gres
            .iter()
            .filter(|g| g.is_gpu())
            .fold(0u64, |a, g| a.saturating_add(g.count))
    }

    /// The GPU entries of the node's `Gres=`.
    pub fn gpus(&self) -> impl Iterator<Item = &GresSpec> {
        self.gres.iter().filter(|g| g.is_gpu())
    }

    /// An option of the node's line, by case-insensitive key.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One partition, with `PartitionName=DEFAULT` values applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Partition {
    /// The partition name.
    pub name: String,
    /// `Nodes=` as written.
    pub nodes_expr: Option<String>,
    /// Node names (`ALL` and NodeSet names resolved).
    pub nodes: Vec<String>,
    /// `Default=YES`.
    pub default: bool,
    /// `State`, when set.
    pub state: Option<String>,
    /// Every option of the line (and defaults), keys lower-cased.
    pub params: BTreeMap<String, String>,
    /// The `PartitionName=` line.
    pub at: Location,
}

impl Partition {
    /// An option of the partition's line, by case-insensitive key.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A `NodeSet=` definition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeSet {
    /// The set name.
    pub name: String,
    /// Member nodes (from `Nodes=` and `Feature=`).
    pub nodes: Vec<String>,
    /// Options of the line, keys lower-cased.
    pub params: BTreeMap<String, String>,
    /// Where it was defined.
    pub at: Location,
}

/// Another multi-key line kept as is (`DownNodes=`, `FrontendName=`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Record {
    /// The first key, e.g. `DownNodes`.
    pub kind: String,
    /// Its value.
    pub value: String,
    /// The other options, keys lower-cased.
    pub params: BTreeMap<String, String>,
    /// Where.
    pub at: Location,
}

/// A parsed `slurm.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlurmConf {
    /// The file it was read from (or the origin given to `parse_str`).
    pub path: PathBuf,
    /// Every file read (the main one and its includes).
    pub files: Vec<PathBuf>,
    /// `ClusterName` as written (Slurm uses it lower-cased).
    pub cluster_name: Option<String>,
    /// `SlurmUser` (Slurm's default is `root`; see [`SlurmConf::slurm_user`]).
    pub slurm_user: Option<String>,
    /// `Prolog`.
    pub prolog: Option<String>,
    /// `Epilog`.
    pub epilog: Option<String>,
    /// Every `Prolog=` line's value, in order: Slurm 24.05+ runs them all, 22.05 only the
    /// last ([`SlurmConf::prolog_paths_of`]).
    pub prolog_lines: Vec<String>,
    /// Every `Epilog=` line's value, in order (as `prolog_lines`).
    pub epilog_lines: Vec<String>,
    /// `PlugStackConfig` as written (see [`SlurmConf::plugstack_path`]).
    pub plugstack_config: Option<String>,
    /// `GresTypes`, split on commas.
    pub gres_types: Vec<String>,
    /// Every `SlurmctldHost` in order (primary first), or `ControlMachine`.
    pub slurmctld_hosts: Vec<String>,
    /// `SlurmdSpoolDir`.
    pub slurmd_spool_dir: Option<String>,
    /// `PrologFlags`, split on commas.
    pub prolog_flags: Vec<String>,
    /// Every single-line setting, by lower-cased key (the typed fields included).
    pub settings: BTreeMap<String, Setting>,
    /// Nodes in definition order.
    pub nodes: Vec<Node>,
    /// Partitions in definition order.
    pub partitions: Vec<Partition>,
    /// `NodeSet` definitions.
    pub node_sets: Vec<NodeSet>,
    /// `DownNodes=` and `FrontendName=` lines.
    pub other_records: Vec<Record>,
}

/// Value types Slurm checks for node options.
const NODE_U16: &[&str] = &[
    "boards",
    "corespeccount",
    "corespersocket",
    "cpus",
    "procs",
    "sockets",
    "socketsperboard",
    "threadspercore",
];
const NODE_U32: &[&str] = &["tmpdisk", "weight"];
const NODE_U64: &[&str] = &["memspeclimit", "realmemory"];
const PART_BOOL: &[&str] = &[
    "default",
    "disablerootjobs",
    "exclusiveuser",
    "hidden",
    "lln",
    "reqresv",
    "rootonly",
];
/// Top-level keys whose line holds more `Key=Value` pairs.
const LINE_KEYS: &[&str] = &[
    "nodename",
    "partitionname",
    "nodeset",
    "downnodes",
    "frontendname",
];

/// Slurm's `s_p_handle_uint*`: `strtoul(value, 0)` (decimal, `0x` hex or
/// leading-zero octal), `UNLIMITED`/`INFINITE` meaning the maximum.
pub(crate) fn parse_slurm_uint(key: &str, value: &str, max: u64) -> Result<u64, ValueError> {
    if value.eq_ignore_ascii_case("UNLIMITED") || value.eq_ignore_ascii_case("INFINITE") {
        return Ok(max);
    }
    let v = value.trim_start();
    let (v, neg) = match v.as_bytes().first() {
        Some(b'+') => (&v[1..], false),
        Some(b'-') => (&v[1..], true),
        _ => (v, false),
    };
    let invalid = || ValueError::NotANumber {
        key: key.to_string(),
        value: value.to_string(),
    };
    let signed_digits = |d: &str| d.starts_with(['+', '-']);
    let parsed = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if signed_digits(h) {
            return Err(invalid());
        }
        u64::from_str_radix(h, 16)
    } else if v.len() > 1 && v.starts_with('0') {
        if signed_digits(&v[1..]) {
            return Err(invalid());
        }
        u64::from_str_radix(&v[1..], 8)
    } else {
        v.parse::<u64>()
    };
    let n = match parsed {
        Ok(n) if !v.is_empty() && !v.starts_with('+') => n,
        Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => u64::MAX,
        _ => return Err(invalid()),
    };
    let n = if neg && n != 0 { u64::MAX } else { n };
    if n > max {
        return Err(ValueError::TooLarge {
            key: key.to_string(),
            value: value.to_string(),
            max,
        });
    }
    Ok(n)
}

/// Slurm's `s_p_handle_boolean`.
pub(crate) fn parse_slurm_bool(key: &str, value: &str) -> Result<bool, ValueError> {
    let v = value.to_ascii_lowercase();
    match v.as_str() {
        "yes" | "up" | "true" | "1" => Ok(true),
        "no" | "down" | "false" | "0" => Ok(false),
        _ => Err(ValueError::NotABool {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Splits a comma list, dropping empty items.
fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// A node line's per-node lists ([`Builder::per_node_lists`]).
struct PerNode {
    /// NodeHostname, one or more per node.
    hostnames: Option<Hostlist>,
    /// NodeAddr, one or more per node.
    addrs: Option<Hostlist>,
    /// Port: none, one for all, or one per node.
    ports: Vec<u16>,
}

/// A node line's NodeHostname or NodeAddr names: expanded, or (scoped parse) read by
/// position.
enum PerName {
    /// Every name, in order.
    All(Vec<String>),
    /// The list, not expanded.
    Listed(Hostlist),
}

impl PerName {
    /// The `i`-th name.
    fn get(&self, i: usize) -> Option<String> {
        match self {
            PerName::All(v) => v.get(i).cloned(),
            PerName::Listed(h) => h.nth(i),
        }
    }
}

/// Options of a line (all pairs after the first), keys lower-cased, last wins.
fn line_params(pairs: &[Pair]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .skip(1)
        .map(|p| (p.key.to_ascii_lowercase(), p.value.clone()))
        .collect()
}

/// Parsing state.
#[derive(Default)]
struct Builder {
    conf: SlurmConf,
    errors: Vec<ConfError>,
    node_defaults: BTreeMap<String, String>,
    part_defaults: BTreeMap<String, String>,
    node_index: HashMap<String, usize>,
    part_index: HashMap<String, usize>,
    /// NodeSet `Feature=` filters to resolve after all nodes are known.
    nodeset_features: Vec<(usize, String)>,
    /// Keep only this node's records ([`SlurmConf::read_for_node`]).
    scope: Option<String>,
    /// The names of every node line kept, as spans (scoped parse).
    node_spans: Vec<Span>,
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
        let key = first.key.to_ascii_lowercase();
        if LINE_KEYS.contains(&key.as_str()) {
            if let Some(left) = &s.leftover {
                self.err(
                    &s.at,
                    format!(
                        "cannot parse `{left}` in the {} line: expected Key=Value pairs",
                        first.key
                    ),
                );
            }
            match key.as_str() {
                "nodename" => self.node_line(s),
                "partitionname" => self.partition_line(s),
                "nodeset" => self.nodeset_line(s),
                _ => self.conf.other_records.push(Record {
                    kind: first.key.clone(),
                    value: first.value.clone(),
                    params: line_params(&s.pairs),
                    at: s.at.clone(),
                }),
            }
            return;
        }
        if s.pairs.len() > 1 || s.leftover.is_some() {
            let extra = match (s.pairs.get(1), &s.leftover) {
                (Some(p), _) => format!("{}={}", p.key, p.value),
                (None, Some(l)) => l.clone(),
                (None, None) => String::new(),
            };
            self.err(
                &s.at,
                format!(
                    "unexpected `{extra}` after {}={}: Slurm allows one Key=Value per line \
                     (except on NodeName/PartitionName/NodeSet/DownNodes/FrontendName lines); \
                     quote values that contain spaces",
                    first.key, first.value
                ),
            );
        }
        if key == "slurmctldhost" {
            self.conf.slurmctld_hosts.push(first.value.clone());
        }
        if key == "prolog" {
            self.conf.prolog_lines.push(first.value.clone());
        }
        if key == "epilog" {
            self.conf.epilog_lines.push(first.value.clone());
        }
        self.conf.settings.insert(
            key,
            Setting {
                key: first.key.clone(),
                value: first.value.clone(),
                at: s.at.clone(),
            },
        );
    }

    /// Checks the typed node options, reporting errors at `at`.
    fn check_node_params(&mut self, pairs: &[Pair], at: &Location) {
        for p in pairs.iter().skip(1) {
            let k = p.key.to_ascii_lowercase();
            let max = if NODE_U16.contains(&k.as_str()) {
                u64::from(u16::MAX)
            } else if NODE_U32.contains(&k.as_str()) {
                u64::from(u32::MAX)
            } else if NODE_U64.contains(&k.as_str()) {
                u64::MAX
            } else {
                continue;
            };
            if let Err(e) = parse_slurm_uint(&p.key, &p.value, max) {
                self.err(at, e.to_string());
            }
        }
    }

    fn expand(&mut self, what: &str, expr: &str, at: &Location) -> Option<Vec<String>> {
        self.hostlist(what, expr, at).map(|h| h.to_vec())
    }

    /// The host list `expr`, not expanded (the same errors as [`Builder::expand`]).
    fn hostlist(&mut self, what: &str, expr: &str, at: &Location) -> Option<Hostlist> {
        match Hostlist::parse(expr) {
            Ok(h) => Some(h),
            Err(e) => {
                self.err(at, format!("{what}: {e}"));
                None
            }
        }
    }

    fn node_line(&mut self, s: &Stmt) {
        let names_expr = s.pairs[0].value.clone();
        let params = line_params(&s.pairs);
        self.check_node_params(&s.pairs, &s.at);
        if names_expr.eq_ignore_ascii_case("DEFAULT") {
            self.node_default_line(s, params);
            return;
        }
        let mut merged = self.node_defaults.clone();
        merged.extend(params);
        let Some(names) = self.hostlist("NodeName", &names_expr, &s.at) else {
            return;
        };
        let Some(PerNode {
            hostnames,
            addrs,
            ports: port_nums,
        }) = self.per_node_lists(&merged, names.len(), &s.at)
        else {
            return;
        };
        // a scoped parse reads only its node's names, by position
        let scoped = self.scope.is_some();
        let per_name = |l: Option<Hostlist>| {
            l.map(|h| {
                if scoped {
                    PerName::Listed(h)
                } else {
                    PerName::All(h.to_vec())
                }
            })
        };
        let (hostnames, addrs) = (per_name(hostnames), per_name(addrs));
        let gres = match merged.get("gres") {
            Some(g) => match GresSpec::parse_list(g) {
                Ok(g) => g,
                Err(e) => {
                    self.err(&s.at, e.to_string());
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let num = |k: &str, max: u64| merged.get(k).and_then(|v| parse_slurm_uint(k, v, max).ok());
        let cpus = num("cpus", u64::from(u16::MAX))
            .or_else(|| num("procs", u64::from(u16::MAX)))
            .and_then(|v| u16::try_from(v).ok());
        let real_memory = num("realmemory", u64::MAX);
        let features = merged
            .get("features")
            .or_else(|| merged.get("feature"))
            .map(|f| comma_list(f))
            .unwrap_or_default();
        let state = merged.get("state").cloned();
        let chosen: Vec<(usize, String)> = match self.scope.clone() {
            None => names.iter().enumerate().collect(),
            Some(node) => {
                match names.spans() {
                    Some(spans) => self.node_spans.extend(spans),
                    None => self.unsure = true,
                }
                names
                    .position(&node)
                    .map(|i| (i, node))
                    .into_iter()
                    .collect()
            }
        };
        for (i, name) in chosen {
            if let Some(&prev) = self.node_index.get(&name) {
                let first = self.conf.nodes[prev].at.clone();
                self.err(
                    &s.at,
                    format!("node {name} is defined again (first defined at {first})"),
                );
                continue;
            }
            let hostname = hostnames
                .as_ref()
                .and_then(|h| h.get(i))
                .unwrap_or_else(|| name.clone());
            let addr = addrs
                .as_ref()
                .and_then(|a| a.get(i))
                .unwrap_or_else(|| hostname.clone());
            let port = match port_nums.len() {
                0 => None,
                1 => port_nums.first().copied(),
                _ => port_nums.get(i).copied(),
            };
            self.node_index.insert(name.clone(), self.conf.nodes.len());
            self.conf.nodes.push(Node {
                name,
                hostname,
                addr,
                port,
                cpus,
                real_memory,
                gres: gres.clone(),
                features: features.clone(),
                state: state.clone(),
                params: merged.clone(),
                at: s.at.clone(),
            });
        }
    }

    /// `NodeName=DEFAULT`: its parameters apply to the node lines after it; per-node
    /// address keys are refused there.
    fn node_default_line(&mut self, s: &Stmt, params: BTreeMap<String, String>) {
        for p in &s.pairs[1..] {
            if ["nodehostname", "nodeaddr", "bcastaddr"]
                .iter()
                .any(|k| p.is(k))
            {
                self.err(
                    &s.at,
                    format!(
                        "{} is not allowed with NodeName=DEFAULT (set it on the node lines)",
                        p.key
                    ),
                );
            }
        }
        self.node_defaults.extend(params);
    }

    /// The per-node lists of a node line of `count` nodes: NodeHostname and NodeAddr (at
    /// least one name per node) and Port (one, or one per node); `None` after an error.
    fn per_node_lists(
        &mut self,
        merged: &BTreeMap<String, String>,
        count: usize,
        at: &Location,
    ) -> Option<PerNode> {
        let per_node = |key: &str, this: &mut Self| -> Option<Hostlist> {
            let v = merged.get(key)?;
            this.hostlist(key, v, at)
        };
        let hostnames = per_node("nodehostname", self);
        let addrs = per_node("nodeaddr", self);
        let ports = per_node("port", self).map(|p| p.to_vec());
        for (key, list) in [("NodeHostname", &hostnames), ("NodeAddr", &addrs)] {
            if let Some(l) = list {
                if l.len() < count {
                    self.err(
                        at,
                        format!(
                            "{key} lists {} names for {} nodes: expected at least as many as NodeName",
                            l.len(),
                            count
                        ),
                    );
                    return None;
                }
            }
        }
        let mut port_nums = Vec::new();
        if let Some(p) = &ports {
            if p.len() != 1 && p.len() != count {
                self.err(
                    at,
                    format!(
                        "Port lists {} ports for {} nodes: expected one port or one per node",
                        p.len(),
                        count
                    ),
                );
                return None;
            }
            for v in p {
                match v.parse::<u16>() {
                    Ok(n) => port_nums.push(n),
                    Err(_) => {
                        self.err(
                            at,
                            format!("Port `{v}` is not a port number (expected 1-65535)"),
                        );
                        return None;
                    }
                }
            }
        }
        Some(PerNode {
            hostnames,
            addrs,
            ports: port_nums,
        })
    }

    fn partition_line(&mut self, s: &Stmt) {
        let name = s.pairs[0].value.clone();
        let params = line_params(&s.pairs);
        for p in &s.pairs[1..] {
            if PART_BOOL.contains(&p.key.to_ascii_lowercase().as_str()) {
                if let Err(e) = parse_slurm_bool(&p.key, &p.value) {
                    self.err(&s.at, e.to_string());
                }
            }
        }
        if name.eq_ignore_ascii_case("DEFAULT") {
            self.part_defaults.extend(params);
            return;
        }
        if let Some(&i) = self.part_index.get(&name) {
            let first = self.conf.partitions[i].at.clone();
            self.err(
                &s.at,
                format!("partition {name} is defined again (first defined at {first})"),
            );
            return;
        }
        self.part_index
            .insert(name.clone(), self.conf.partitions.len());
        let mut merged = self.part_defaults.clone();
        merged.extend(params);
        let default = merged
            .get("default")
            .and_then(|v| parse_slurm_bool("Default", v).ok())
            .unwrap_or(false);
        self.conf.partitions.push(Partition {
            name,
            nodes_expr: merged.get("nodes").cloned(),
            nodes: Vec::new(),
            default,
            state: merged.get("state").cloned(),
            params: merged,
            at: s.at.clone(),
        });
    }

    fn nodeset_line(&mut self, s: &Stmt) {
        let params = line_params(&s.pairs);
        let idx = self.conf.node_sets.len();
        let mut nodes = Vec::new();
        if let Some(expr) = params.get("nodes") {
            match self.scope.clone() {
                None => {
                    if let Some(v) = self.expand("NodeSet Nodes", expr, &s.at) {
                        nodes = v;
                    }
                }
                Some(node) => {
                    if let Some(h) = self.hostlist("NodeSet Nodes", expr, &s.at) {
                        if h.contains(&node) {
                            nodes.push(node);
                        }
                    }
                }
            }
        }
        if let Some(f) = params.get("feature") {
            self.nodeset_features.push((idx, f.clone()));
        }
        if !params.contains_key("nodes") && !params.contains_key("feature") {
            self.err(&s.at, "NodeSet needs Nodes= or Feature=");
        }
        self.conf.node_sets.push(NodeSet {
            name: s.pairs[0].value.clone(),
            nodes,
            params,
            at: s.at.clone(),
        });
    }

    /// A partition's `Nodes=` (not `ALL`) in a scoped parse: the node of the scope if the
    /// partition holds it (by name or through a NodeSet), and whether every name is a node
    /// or a NodeSet (else the full parse, which names the others, is needed).
    fn partition_nodes_scoped(
        &mut self,
        node: &str,
        known: &SpanSet,
        sets: &HashMap<String, usize>,
        expr: &str,
        at: &Location,
        pname: &str,
    ) -> Vec<String> {
        let mut nodes = Vec::new();
        let Some(h) = self.hostlist(&format!("partition {pname} Nodes"), expr, at) else {
            return nodes;
        };
        if h.contains(node) && !sets.contains_key(node) && self.node_index.contains_key(node) {
            nodes.push(node.to_string());
        }
        for (name, &i) in sets {
            if h.contains(name) {
                if let Some(set) = self.conf.node_sets.get(i) {
                    nodes.extend(set.nodes.iter().cloned());
                }
            }
        }
        match h.spans() {
            Some(spans) => {
                let all_known = spans.iter().all(|sp| {
                    known.covers(sp) || (sp.lo == sp.hi && sets.contains_key(&sp.name(sp.lo)))
                });
                if !all_known {
                    self.unsure = true;
                }
            }
            None => self.unsure = true,
        }
        nodes
    }

    /// Resolves NodeSet features and partition node lists once every node is known.
    fn finish(&mut self) {
        for (idx, feature) in std::mem::take(&mut self.nodeset_features) {
            let members: Vec<String> = self
                .conf
                .nodes
                .iter()
                .filter(|n| n.features.iter().any(|f| f == &feature))
                .map(|n| n.name.clone())
                .collect();
            if let Some(set) = self.conf.node_sets.get_mut(idx) {
                let mut have: HashSet<String> = set.nodes.iter().cloned().collect();
                for m in members {
                    if have.insert(m.clone()) {
                        set.nodes.push(m);
                    }
                }
            }
        }
        // scoped: two node lines that may share a name need the full parse (it names them)
        let known = self.scope.is_some().then(|| {
            let mut spans = std::mem::take(&mut self.node_spans);
            if hostlist::spans_overlap(&mut spans) {
                self.unsure = true;
            }
            SpanSet::new(spans)
        });
        let sets: HashMap<String, usize> = self
            .conf
            .node_sets
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        for i in 0..self.conf.partitions.len() {
            let (expr, at, pname) = {
                let p = &self.conf.partitions[i];
                (p.nodes_expr.clone(), p.at.clone(), p.name.clone())
            };
            let Some(expr) = expr else { continue };
            let mut nodes: Vec<String> = Vec::new();
            let mut unknown: Vec<String> = Vec::new();
            if expr.eq_ignore_ascii_case("ALL") {
                nodes = self.conf.nodes.iter().map(|n| n.name.clone()).collect();
            } else if let (Some(node), Some(known)) = (self.scope.clone(), &known) {
                nodes = self.partition_nodes_scoped(&node, known, &sets, &expr, &at, &pname);
            } else if let Some(names) = self.expand(&format!("partition {pname} Nodes"), &expr, &at)
            {
                for n in names {
                    if let Some(set) = sets.get(&n).and_then(|&i| self.conf.node_sets.get(i)) {
                        nodes.extend(set.nodes.iter().cloned());
                    } else if self.node_index.contains_key(&n) {
                        nodes.push(n);
                    } else {
                        unknown.push(n);
                    }
                }
            }
            if !unknown.is_empty() {
                self.err(
                    &at,
                    format!(
                        "partition {pname}: Nodes= names {}, which no NodeName line defines",
                        hostlist::compress(&unknown)
                    ),
                );
            }
            self.conf.partitions[i].nodes = nodes;
        }
        let get = |k: &str| self.conf.settings.get(k).map(|s| s.value.clone());
        self.conf.cluster_name = get("clustername");
        self.conf.slurm_user = get("slurmuser");
        self.conf.prolog = get("prolog");
        self.conf.epilog = get("epilog");
        self.conf.plugstack_config = get("plugstackconfig");
        self.conf.gres_types = get("grestypes").map(|v| comma_list(&v)).unwrap_or_default();
        self.conf.slurmd_spool_dir = get("slurmdspooldir");
        self.conf.prolog_flags = get("prologflags")
            .map(|v| comma_list(&v))
            .unwrap_or_default();
        if self.conf.slurmctld_hosts.is_empty() {
            if let Some(cm) = get("controlmachine") {
                self.conf.slurmctld_hosts.push(cm);
            }
        }
    }
}

/// The cluster name records and node events carry when slurm.conf names none.
pub const UNKNOWN_CLUSTER: &str = "unknown";

/// The cluster's name as sgpu's records, node events and acctd queries carry it: the
/// `ClusterName` of the slurm.conf at `path`, lower-cased as Slurm uses it; `None` when the
/// file names none or cannot be read (callers use [`UNKNOWN_CLUSTER`] or ask for one).
pub fn cluster_name(path: impl AsRef<Path>) -> Option<String> {
    // read for no node: `ClusterName` does not depend on the node lines, so no host list
    // is expanded (the gates' drains and healthd's active checks ask this on big clusters)
    let (conf, _) = SlurmConf::load_lenient_for_node(path, "");
    conf.cluster()
}

/// Slurm's rule for the cluster's name: `ClusterName` as written, lower-cased (slurmctld
/// lower-cases it, and so do `%c` in an `Include` path and every name sgpu carries).
pub(crate) fn cluster_name_rule(written: &str) -> String {
    written.to_ascii_lowercase()
}

statement_file!(SlurmConf, Builder, for_node);

impl StmtParser for Builder {
    type Conf = SlurmConf;

    fn stmt(&mut self, s: &Stmt) {
        Builder::stmt(self, s);
    }

    fn finish(&mut self) {
        Builder::finish(self);
    }

    fn into_parts(self) -> (SlurmConf, Vec<ConfError>) {
        (self.conf, self.errors)
    }
}

impl SlurmConf {
    /// The cluster's name as sgpu carries it ([`cluster_name`], for a slurm.conf already
    /// read): `ClusterName` lower-cased; `None` when the file names none.
    pub fn cluster(&self) -> Option<String> {
        self.cluster_name.as_deref().map(cluster_name_rule)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The GRES of node `name` (empty when the node is unknown).
    pub fn gres_of(&self, name: &str) -> &[GresSpec] {
        self.node(name).map_or(&[], |n| n.gres.as_slice())
    }

    /// The partitions node `name` belongs to.
    pub fn partitions_of(&self, name: &str) -> Vec<&Partition> {
        self.partitions
            .iter()
            .filter(|p| p.nodes.iter().any(|n| n == name))
            .collect()
    }

    /// The default partition (`Default=YES`), if any.
    pub fn default_partition(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.default)
    }

    /// Any single-line setting by case-insensitive key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .get(&key.to_ascii_lowercase())
            .map(|s| s.value.as_str())
    }

    /// `SlurmUser`, or Slurm's default `root`.
    pub fn slurm_user(&self) -> &str {
        self.slurm_user.as_deref().unwrap_or("root")
    }

    /// The directory holding `slurm.conf`, where Slurm looks for its other files.
    pub fn conf_dir(&self) -> PathBuf {
        dir_of(&self.path)
    }

    /// `PlugStackConfig`, or `plugstack.conf` next to `slurm.conf` (Slurm's default).
    pub fn plugstack_path(&self) -> PathBuf {
        match &self.plugstack_config {
            Some(p) => self.conf_dir().join(p),
            None => self.conf_dir().join("plugstack.conf"),
        }
    }

    /// `gres.conf` next to `slurm.conf`, where slurmd reads it.
    pub fn gres_conf_path(&self) -> PathBuf {
        self.conf_dir().join("gres.conf")
    }

    /// `Prolog`/`Epilog` may list several programs separated by commas.
    pub fn prolog_paths(&self) -> Vec<String> {
        self.prolog.as_deref().map(comma_list).unwrap_or_default()
    }

    /// The programs in `Epilog`, split on commas.
    pub fn epilog_paths(&self) -> Vec<String> {
        self.epilog.as_deref().map(comma_list).unwrap_or_default()
    }

    /// The Prolog (`epilog` false) or Epilog (`epilog` true) programs the running Slurm
    /// runs: every line's since 24.05 (`accumulate`), else the last line's (as
    /// [`SlurmConf::prolog_paths`]); each line split on commas.
    pub fn prolog_paths_of(&self, epilog: bool, accumulate: bool) -> Vec<String> {
        let lines = if epilog {
            &self.epilog_lines
        } else {
            &self.prolog_lines
        };
        if !accumulate {
            return if epilog {
                self.epilog_paths()
            } else {
                self.prolog_paths()
            };
        }
        lines.iter().flat_map(|l| comma_list(l)).collect()
    }
}

#[cfg(test)]
mod tests;
