//! `sgpu report`, `sgpu jobs` and `sgpu job <id>`: GPU-hours (allocated and used), energy
//! and cost from sgpu-acctd, with sacct's flags and output styles.
//!
//! - `sgpu report` sums per group (`--group-by`, default `account,user`) over the window
//!   `[-S, -E)` (default, like sreport: yesterday 00:00 to today 00:00). acctd counts only
//!   the part of a job inside the window. Cost comes from acctd, priced with the prices in
//!   its own configuration (acctd.toml) in force when the GPUs were used: nothing the
//!   caller's files say changes it.
//! - `sgpu jobs` lists jobs that ran in the window (default, like sacct: today 00:00 to now)
//!   with whole-job GPU figures.
//! - `sgpu job <id>` shows one job per node and per GPU.
//!
//! Times, `-S/-E` and periods are in the site's time zone, which acctd names
//! (`GET /v1/site`), or UTC with `--utc` ([`crate::timespec`]). acctd answers only with what
//! the caller may read (a user sees their own jobs and totals, a coordinator those of their
//! accounts too).

pub mod chart;
pub mod table;

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Args;
use jiff::tz::TimeZone;
use serde_json::{Value, json};
use sgpu_acct_client::Client;
use sgpu_nodelib::nodeconf;
use sgpu_spool::{Record, RecordBody};
use sgpu_wire::acctd::{
    ConflictsAnswer, JobAnswer, JobSummary, JobsAnswer, ReportAnswer, ReportRow, SiteAnswer,
};

use crate::settings::Settings;
use crate::timespec::{
    WindowArgs, format_elapsed, format_time, format_time_in, local_midnight, now_s,
};
use table::{Column, Field, Style, parse_format, render};

/// Flags shared by `sgpu report` and `sgpu jobs` (sacct's names).
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// `-S` and `-E`.
    #[command(flatten)]
    pub window: WindowArgs,
    /// Only these accounts (comma-separated).
    #[arg(short = 'A', long = "accounts", value_name = "LIST")]
    pub accounts: Option<String>,
    /// Only these users (comma-separated).
    #[arg(short = 'u', long = "user", value_name = "LIST")]
    pub users: Option<String>,
    /// Only these job ids (comma-separated; `sgpu jobs`).
    #[arg(short = 'j', long = "jobs", value_name = "LIST")]
    pub jobs: Option<String>,
    /// Only these partitions (comma-separated).
    #[arg(short = 'r', long = "partition", value_name = "LIST")]
    pub partitions: Option<String>,
    /// Only these clusters (comma-separated).
    #[arg(short = 'M', long = "clusters", value_name = "LIST")]
    pub clusters: Option<String>,
    /// Only these GPU models (comma-separated, as NVML names them); a model also selects
    /// its MIG slices (`NVIDIA H100 80GB HBM3` selects `NVIDIA H100 80GB HBM3 MIG 2g.20gb`),
    /// a slice's name only that profile.
    #[arg(short = 'G', long = "gpu-models", value_name = "LIST")]
    pub gpu_models: Option<String>,
    /// Fields to print, e.g. `Account,User,GPUHours%12` (case-insensitive, `%N` width,
    /// `%-N` left-justified).
    #[arg(short = 'o', long = "format", value_name = "FIELDS")]
    pub format: Option<String>,
    /// Output `|` after every field.
    #[arg(short = 'p', long = "parsable")]
    pub parsable: bool,
    /// Output `|` between fields.
    #[arg(short = 'P', long = "parsable2")]
    pub parsable2: bool,
    /// No header.
    #[arg(short = 'n', long = "noheader")]
    pub noheader: bool,
    /// JSON (every field, numbers as numbers) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `-S/-E`, periods and times in UTC instead of the site's time zone (acctd's).
    #[arg(long)]
    pub utc: bool,
}

/// `sgpu report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// What to select and how to print it.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Group by these: account,user,partition,gpu,profile (MIG profile; with gpu, the parent
    /// GPU's model),cluster and one of day|week|month (in the site's time zone, or UTC with
    /// --utc). GPU-hours of MIG slices are GPU-equivalents (a 2g slice of 7 for 1 h: 0.29);
    /// SliceHours counts each slice's hours once (1.00).
    #[arg(long = "group-by", value_name = "LIST")]
    pub group_by: Option<String>,
    /// Draw GPU-hours per group as a bar chart (used solid, idle shaded) instead of a table.
    #[arg(long, conflicts_with_all = ["json", "parsable", "parsable2"])]
    pub chart: bool,
    /// Only the N groups that wasted the most GPU-hours in the window: idle GPU-hours where
    /// healthd measured idle time, else allocated minus used where it measured used time
    /// (MIG slices: not; the WasteBy column says which).
    #[arg(long, value_name = "N", conflicts_with = "chart")]
    pub top: Option<usize>,
}

/// `sgpu jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// What to select and how to print it.
    #[command(flatten)]
    pub select: SelectArgs,
}

/// `sgpu conflicts`.
#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// acctd's answer as JSON (every record in full).
    #[arg(long)]
    pub json: bool,
}

/// `sgpu job <id>`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job id.
    pub job_id: u32,
    /// Cluster (default: ClusterName in slurm.conf).
    #[arg(short = 'M', long = "cluster", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Output `|` after every field.
    #[arg(short = 'p', long = "parsable")]
    pub parsable: bool,
    /// Output `|` between fields.
    #[arg(short = 'P', long = "parsable2")]
    pub parsable2: bool,
    /// No header.
    #[arg(short = 'n', long = "noheader")]
    pub noheader: bool,
    /// The job's records as JSON.
    #[arg(long)]
    pub json: bool,
}

const REPORT_FIELDS: &[Field] = &[
    Field::Cluster,
    Field::Account,
    Field::User,
    Field::Partition,
    Field::GpuModel,
    Field::MigProfile,
    Field::Period,
    Field::Jobs,
    Field::GpuHours,
    Field::SliceHours,
    Field::UsedGpuHours,
    Field::MeasuredGpuHours,
    Field::GpuUtil,
    Field::EnergyKwh,
    Field::AvgPowerW,
    Field::Cost,
    Field::IdleGpuHours,
    Field::WasteGpuHours,
    Field::WasteBy,
];

const JOBS_FIELDS: &[Field] = &[
    Field::JobId,
    Field::Cluster,
    Field::User,
    Field::Account,
    Field::Partition,
    Field::Start,
    Field::End,
    Field::Elapsed,
    Field::State,
    Field::NodeList,
    Field::Gpus,
    Field::GpuModel,
    Field::GpuHours,
    Field::UsedGpuHours,
    Field::GpuUtil,
    Field::EnergyKwh,
    Field::AvgPowerW,
    Field::Cost,
    Field::IdleGpuHours,
];

/// Percent-encodes a query-string value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~,".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The window `[start, end)` in seconds: the flags (read in `tz`), else the given defaults.
pub fn window(
    a: &SelectArgs,
    now: i64,
    tz: &TimeZone,
    default_start: i64,
    default_end: i64,
) -> anyhow::Result<(i64, i64)> {
    let (start, end) = a.window.read_in(now, tz).map_err(anyhow::Error::msg)?;
    let (start, end) = (start.unwrap_or(default_start), end.unwrap_or(default_end));
    if start < 0 {
        bail!("-S/--starttime {} is before 1970", format_time(start));
    }
    if end <= start {
        bail!(
            "the window is empty: -E/--endtime {} is not after -S/--starttime {}",
            format_time(end),
            format_time(start)
        );
    }
    Ok((start, end))
}

/// The query string for acctd: window, filters (and `group_by` when given).
pub fn query(a: &SelectArgs, start: i64, end: i64, group_by: Option<&str>) -> String {
    let mut q = format!("start={start}&end={end}");
    for (k, v) in [
        ("account", &a.accounts),
        ("user", &a.users),
        ("jobs", &a.jobs),
        ("partition", &a.partitions),
        ("cluster", &a.clusters),
        ("gpu_model", &a.gpu_models),
    ] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", enc(v)));
        }
    }
    if let Some(g) = group_by {
        q.push_str(&format!("&group_by={}", enc(g)));
    }
    if a.utc {
        q.push_str("&tz=UTC");
    }
    q
}

fn style(parsable: bool, parsable2: bool) -> Style {
    if parsable2 {
        Style::Parsable2
    } else if parsable {
        Style::Parsable
    } else {
        Style::Table
    }
}

/// The group-by fields of a report: `--group-by`, else the group fields of `--format`, else
/// `account,user`. Returns (acctd names, the Fields).
pub fn group_fields(
    group_by: Option<&str>,
    columns: Option<&[Column]>,
) -> anyhow::Result<(Vec<String>, Vec<Field>)> {
    let as_field = |g: &str| -> Option<(String, Field)> {
        Some(match g.to_ascii_lowercase().as_str() {
            "account" => ("account".into(), Field::Account),
            "user" => ("user".into(), Field::User),
            "partition" => ("partition".into(), Field::Partition),
            "gpu" | "gpumodel" | "gpu_model" | "model" => ("gpu".into(), Field::GpuModel),
            "profile" | "mig_profile" | "mig" => ("profile".into(), Field::MigProfile),
            "cluster" => ("cluster".into(), Field::Cluster),
            p @ ("day" | "week" | "month") => (p.to_string(), Field::Period),
            _ => return None,
        })
    };
    let mut out: Vec<(String, Field)> = Vec::new();
    match (group_by, columns) {
        (Some(g), _) => {
            for item in g.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let f = as_field(item).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--group-by: unknown field {item:?}; valid: account, user, partition, \
                         gpu, profile, cluster, day, week, month"
                    )
                })?;
                if f.1 == Field::Period && out.iter().any(|o| o.1 == Field::Period) {
                    bail!("--group-by: only one of day, week and month");
                }
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        (None, Some(cols)) => {
            for c in cols {
                let name = match c.field {
                    Field::Account => "account",
                    Field::User => "user",
                    Field::Partition => "partition",
                    Field::GpuModel => "gpu",
                    Field::MigProfile => "profile",
                    Field::Cluster => "cluster",
                    Field::Period => {
                        bail!("--format Period needs --group-by with day, week or month")
                    }
                    _ => continue,
                };
                if let Some(f) = as_field(name).filter(|f| !out.contains(f)) {
                    out.push(f);
                }
            }
        }
        (None, None) => {
            out.push(("account".into(), Field::Account));
            out.push(("user".into(), Field::User));
        }
    }
    if let Some(cols) = columns {
        for c in cols {
            let grouping = matches!(
                c.field,
                Field::Account
                    | Field::User
                    | Field::Partition
                    | Field::GpuModel
                    | Field::MigProfile
                    | Field::Cluster
                    | Field::Period
            );
            if grouping && !out.iter().any(|o| o.1 == c.field) {
                bail!(
                    "--format {} is not grouped by; add it to --group-by",
                    c.field.name()
                );
            }
        }
    }
    Ok(out.into_iter().unzip())
}

/// One summed report row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums {
    /// Allocated GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy, mJ.
    pub energy_mj: u64,
    /// Jobs.
    pub jobs: u64,
    /// Cost, millionths of the currency, as acctd priced it (`None`: acctd has no prices).
    pub cost_micro: Option<u64>,
    /// Idle GPU-ms where measured (`None`: measured for no job of the group: unknown).
    pub idle_gpu_ms: Option<u64>,
    /// GPU-ms over which idle time was measured (`None`: as `idle_gpu_ms`).
    pub idle_measured_gpu_ms: Option<u64>,
    /// Allocated MIG slice time, slice-ms, each slice once (`None`: acctd predates it).
    pub slice_ms: Option<u64>,
    /// Allocated GPU-ms over which used time was measured (MIG slices' is not: healthd has
    /// no utilization per slice); `None`: all of `allocated_gpu_ms`.
    pub used_measured_gpu_ms: Option<u64>,
}

fn hours(ms: u64) -> f64 {
    ms as f64 / 3_600_000.0
}

fn kwh(mj: u64) -> f64 {
    mj as f64 / 3_600_000_000.0
}

/// What a group's wasted GPU time is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasteBy {
    /// Idle GPU time, as healthd measured it.
    Idle,
    /// Allocated minus used GPU time over the time where used time was measured (idle
    /// time not measured).
    AllocatedMinusUsed,
    /// Neither idle nor used time measured (MIG slices): waste unknown, shown empty.
    Unmeasured,
}

impl WasteBy {
    /// The name printed in `WasteBy`.
    pub fn name(self) -> &'static str {
        match self {
            WasteBy::Idle => "idle",
            WasteBy::AllocatedMinusUsed => "alloc-used",
            WasteBy::Unmeasured => "unmeasured",
        }
    }
}

impl Sums {
    /// Wasted GPU-ms: idle where measured, else allocated minus used over the time where
    /// used time was measured (unmeasured time, a MIG slice's, is not counted as waste);
    /// 0 with [`WasteBy::Unmeasured`] when neither was measured.
    pub fn waste(&self) -> (u64, WasteBy) {
        match (self.idle_gpu_ms, self.used()) {
            (Some(idle), _) => (idle, WasteBy::Idle),
            (None, Some(used)) => (
                self.measured_gpu_ms().saturating_sub(used),
                WasteBy::AllocatedMinusUsed,
            ),
            (None, None) => (0, WasteBy::Unmeasured),
        }
    }

    /// Allocated GPU-ms over which used time was measured.
    pub fn measured_gpu_ms(&self) -> u64 {
        self.used_measured_gpu_ms.unwrap_or(self.allocated_gpu_ms)
    }

    /// Used GPU-ms; `None` when GPU time was allocated but none of it measured (MIG
    /// slices): unknown, not 0.
    pub fn used(&self) -> Option<u64> {
        let unknown =
            self.allocated_gpu_ms > 0 && self.measured_gpu_ms() == 0 && self.used_gpu_ms == 0;
        (!unknown).then_some(self.used_gpu_ms)
    }

    /// Used / measured GPU time, percent.
    fn util(&self) -> Option<f64> {
        let measured = self.measured_gpu_ms();
        (measured > 0).then(|| 100.0 * self.used_gpu_ms as f64 / measured as f64)
    }

    /// Wasted GPU-ms where known ([`Sums::waste`]).
    fn known_waste(&self) -> Option<u64> {
        let (waste, by) = self.waste();
        (by != WasteBy::Unmeasured).then_some(waste)
    }

    fn power(&self) -> Option<f64> {
        // mJ / ms = W.
        (self.allocated_gpu_ms > 0).then(|| self.energy_mj as f64 / self.allocated_gpu_ms as f64)
    }

    fn cell(&self, f: Field) -> Option<String> {
        Some(match f {
            Field::Jobs => self.jobs.to_string(),
            Field::GpuHours => format!("{:.2}", hours(self.allocated_gpu_ms)),
            Field::UsedGpuHours => self
                .used()
                .map_or(String::new(), |u| format!("{:.2}", hours(u))),
            Field::MeasuredGpuHours => format!("{:.2}", hours(self.measured_gpu_ms())),
            Field::GpuUtil => self.util().map_or(String::new(), |u| format!("{u:.1}")),
            Field::EnergyKwh => format!("{:.3}", kwh(self.energy_mj)),
            Field::AvgPowerW => self.power().map_or(String::new(), |p| format!("{p:.1}")),
            Field::Cost => self
                .cost_micro
                .map_or(String::new(), |c| format!("{:.2}", money(c))),
            Field::IdleGpuHours => self
                .idle_gpu_ms
                .map_or(String::new(), |i| format!("{:.2}", hours(i))),
            Field::WasteGpuHours => self
                .known_waste()
                .map_or(String::new(), |w| format!("{:.2}", hours(w))),
            Field::WasteBy => self.waste().1.name().to_string(),
            Field::SliceHours => self
                .slice_ms
                .map_or(String::new(), |m| format!("{:.2}", hours(m))),
            _ => return None,
        })
    }

    fn json(&self, v: &mut serde_json::Map<String, Value>) {
        v.insert("jobs".into(), json!(self.jobs));
        v.insert("allocated_gpu_ms".into(), json!(self.allocated_gpu_ms));
        v.insert("used_gpu_ms".into(), json!(self.used()));
        v.insert("energy_mj".into(), json!(self.energy_mj));
        v.insert("gpu_hours".into(), json!(hours(self.allocated_gpu_ms)));
        v.insert("used_gpu_hours".into(), json!(self.used().map(hours)));
        v.insert("used_measured_gpu_ms".into(), json!(self.measured_gpu_ms()));
        v.insert(
            "used_measured_gpu_hours".into(),
            json!(hours(self.measured_gpu_ms())),
        );
        v.insert("gpu_util_pct".into(), json!(self.util()));
        v.insert("energy_kwh".into(), json!(kwh(self.energy_mj)));
        v.insert("avg_power_w".into(), json!(self.power()));
        v.insert("cost".into(), json!(self.cost_micro.map(money)));
        v.insert("idle_gpu_ms".into(), json!(self.idle_gpu_ms));
        v.insert("idle_gpu_hours".into(), json!(self.idle_gpu_ms.map(hours)));
        v.insert(
            "idle_measured_gpu_ms".into(),
            json!(self.idle_measured_gpu_ms),
        );
        v.insert("slice_ms".into(), json!(self.slice_ms));
        v.insert("slice_hours".into(), json!(self.slice_ms.map(hours)));
        v.insert(
            "waste_gpu_hours".into(),
            json!(self.known_waste().map(hours)),
        );
        v.insert("waste_by".into(), json!(self.waste().1.name()));
    }
}

/// A grouped field of a report row (empty when the row is not grouped by it).
fn row_field(row: &ReportRow, f: Field) -> String {
    let value = match f {
        Field::Cluster => &row.cluster,
        Field::Account => &row.account,
        Field::User => &row.user,
        Field::Partition => &row.partition,
        Field::GpuModel => &row.gpu_model,
        Field::MigProfile => &row.mig_profile,
        Field::Period => &row.period,
        _ => return String::new(),
    };
    value.clone().unwrap_or_default()
}

/// An amount in millionths of the currency, in the currency.
fn money(micro: u64) -> f64 {
    micro as f64 / 1e6
}

/// Sums acctd's rows into the requested groups (costs as acctd priced each row); keys are
/// the values of `groups` in order.
pub fn aggregate(rows: &[ReportRow], groups: &[Field]) -> BTreeMap<Vec<String>, Sums> {
    let mut out: BTreeMap<Vec<String>, Sums> = BTreeMap::new();
    for r in rows {
        let key: Vec<String> = groups.iter().map(|&f| row_field(r, f)).collect();
        let s = out.entry(key).or_default();
        let (alloc, used, energy) = (r.allocated_gpu_ms, r.used_gpu_ms, r.energy_mj);
        s.allocated_gpu_ms += alloc;
        s.used_gpu_ms += used;
        s.energy_mj += energy;
        s.jobs += r.jobs;
        let add = |sum: &mut Option<u64>, v: Option<u64>| {
            if let Some(v) = v {
                *sum = Some(sum.unwrap_or(0).saturating_add(v));
            }
        };
        add(&mut s.idle_gpu_ms, r.idle_gpu_ms);
        add(&mut s.idle_measured_gpu_ms, r.idle_measured_gpu_ms);
        add(&mut s.cost_micro, r.cost_micro);
        add(&mut s.slice_ms, r.slice_ms);
        // an acctd that predates it measured all allocated time
        add(
            &mut s.used_measured_gpu_ms,
            Some(r.used_measured_gpu_ms.unwrap_or(r.allocated_gpu_ms)),
        );
    }
    out
}

/// acctd, its site settings, and the time zone times are read and shown in.
struct Env {
    client: Client,
    site: SiteAnswer,
    tz: TimeZone,
    zone_name: String,
}

/// Asks acctd for its site settings (`GET /v1/site`); `utc`: UTC whatever the site's zone.
fn env(settings: &Settings, utc: bool) -> anyhow::Result<Env> {
    if settings.config.prices.configured {
        eprintln!(
            "sgpu: warning: [prices] in sgpu.toml is not used: costs come from acctd, priced \
             with the prices in its acctd.toml (docs/operations.md, \"Prices\")"
        );
    }
    let client = settings.acctd_client()?;
    let site: SiteAnswer = match client.get("/v1/site") {
        Ok(site) => site,
        // an acctd that predates time zones and server-side prices: UTC, no costs
        Err(sgpu_acct_client::ClientError::Http { status: 404, .. }) => SiteAnswer {
            version: None,
            time_zone: "UTC".into(),
            prices: false,
            currency: None,
            coordinates: Vec::new(),
        },
        Err(e) => bail!("acctd at {}: {e}", client.base_url()),
    };
    let (tz, zone_name) = if utc {
        (TimeZone::UTC, "UTC".to_string())
    } else {
        let tz = TimeZone::get(&site.time_zone).map_err(|e| {
            anyhow::anyhow!(
                "acctd's time zone {:?} is not in this host's tz database (/usr/share/zoneinfo:                  {e}); install tzdata, or pass --utc",
                site.time_zone
            )
        })?;
        (tz, site.time_zone.clone())
    };
    Ok(Env {
        client,
        site,
        tz,
        zone_name,
    })
}

fn get<T: sgpu_wire::Answer>(client: &Client, path: &str) -> anyhow::Result<T> {
    client
        .get(path)
        .map_err(|e| anyhow::anyhow!("acctd at {}: {e}", client.base_url()))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn check_cost(columns: &[Column], site: &SiteAnswer) -> anyhow::Result<()> {
    if columns.iter().any(|c| c.field == Field::Cost) && !site.prices {
        bail!(
            "--format Cost: acctd has no prices; its admin sets them in acctd.toml \
             ([prices], [[prices.period]]; see docs/operations.md, \"Prices\")"
        );
    }
    Ok(())
}

/// Renders a report from acctd's answer (`rows`).
pub fn render_report(
    rows: &[ReportRow],
    columns: &[Column],
    groups: &[Field],
    style: Style,
    header: bool,
) -> String {
    let sums = aggregate(rows, groups);
    render_groups(
        &sums.into_iter().collect::<Vec<_>>(),
        columns,
        groups,
        style,
        header,
    )
}

/// The `top` groups that wasted the most GPU time ([`Sums::waste`]), most first (ties: by
/// group).
pub fn top_wasters(sums: BTreeMap<Vec<String>, Sums>, top: usize) -> Vec<(Vec<String>, Sums)> {
    let mut v: Vec<(Vec<String>, Sums)> = sums.into_iter().collect();
    v.sort_by(|a, b| {
        b.1.waste()
            .0
            .cmp(&a.1.waste().0)
            .then_with(|| a.0.cmp(&b.0))
    });
    v.truncate(top);
    v
}

/// Renders grouped sums in the order given.
pub fn render_groups(
    sums: &[(Vec<String>, Sums)],
    columns: &[Column],
    groups: &[Field],
    style: Style,
    header: bool,
) -> String {
    let lines: Vec<Vec<String>> = sums
        .iter()
        .map(|(key, s)| {
            columns
                .iter()
                .map(|c| match groups.iter().position(|g| *g == c.field) {
                    Some(i) => key[i].clone(),
                    None => s.cell(c.field).unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    render(columns, &lines, style, header)
}

/// `sgpu report`.
pub fn report(settings: &Settings, a: &ReportArgs) -> anyhow::Result<i32> {
    if a.select.jobs.is_some() {
        bail!("-j/--jobs selects jobs in `sgpu jobs`; reports sum over accounts and users");
    }
    let columns = match &a.select.format {
        Some(f) => Some(parse_format(f, REPORT_FIELDS).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let (names, groups) = group_fields(a.group_by.as_deref(), columns.as_deref())?;
    let env = env(settings, a.select.utc)?;
    let now = now_s();
    let (start, end) = window(
        &a.select,
        now,
        &env.tz,
        local_midnight(now, &env.tz, -1),
        local_midnight(now, &env.tz, 0),
    )?;
    let columns = match columns {
        Some(c) => c,
        None => default_report_columns(&groups, a.top.is_some(), env.site.prices)?,
    };
    check_cost(&columns, &env.site)?;
    let q = query(&a.select, start, end, Some(&names.join(",")));
    let answer: ReportAnswer = get(&env.client, &format!("/v1/report?{q}"))?;
    let currency = answer.currency.clone();
    let rows = answer.rows;
    // some allocated time without used-time samples (MIG slices): say over what time
    // UsedGPUHours and GPUUtil are
    let columns = if a.select.format.is_none()
        && aggregate(&rows, &groups)
            .values()
            .any(|s| s.measured_gpu_ms() < s.allocated_gpu_ms)
    {
        with_measured(columns)
    } else {
        columns
    };
    let ordered: Vec<(Vec<String>, Sums)> = match a.top {
        Some(n) => top_wasters(aggregate(&rows, &groups), n),
        None => aggregate(&rows, &groups).into_iter().collect(),
    };
    let at = |t: i64| format_time_in(t, &env.tz);
    let zone = &env.zone_name;
    if a.select.json {
        let mut doc = json!({
            "start": at(start),
            "end": at(end),
            "time_zone": zone,
            "group_by": names,
            "currency": currency,
            "rows": report_json_rows(ordered, &names),
        });
        if let (Some(n), Some(m)) = (a.top, doc.as_object_mut()) {
            m.insert("top".into(), json!(n));
            m.insert("ranked_by".into(), json!(TOP_RANKING));
        }
        print_json(&doc)?;
        return Ok(0);
    }
    if a.chart {
        println!("GPU-hours {} - {} ({zone})", at(start), at(end));
        print!("{}", chart::render_chart(&aggregate(&rows, &groups), 50));
        return Ok(0);
    }
    let st = style(a.select.parsable, a.select.parsable2);
    if st == Style::Table && !a.select.noheader {
        let window = format!("{} - {} ({zone})", at(start), at(end));
        match a.top {
            Some(n) => println!("Top {n} GPU wasters {window}, {TOP_RANKING}"),
            None => println!(
                "GPU usage {window}{}",
                currency
                    .as_ref()
                    .filter(|_| columns.iter().any(|c| c.field == Field::Cost))
                    .map(|c| format!(", cost in {c}"))
                    .unwrap_or_default()
            ),
        }
    }
    print!(
        "{}",
        render_groups(&ordered, &columns, &groups, st, !a.select.noheader)
    );
    Ok(0)
}

/// `sgpu report`'s columns without `-o`: the groups, jobs and GPU-hours (and a MIG
/// profile's slice-hours), use and energy, with `--top` idle and waste, with prices cost.
fn default_report_columns(
    groups: &[Field],
    top: bool,
    prices: bool,
) -> anyhow::Result<Vec<Column>> {
    let mut spec: Vec<&str> = groups.iter().map(|g| g.name()).collect();
    spec.extend(["Jobs", "GPUHours"]);
    if groups.contains(&Field::MigProfile) {
        // by MIG profile: the slices' own hours beside their GPU-equivalents
        spec.push("SliceHours");
    }
    spec.extend(["UsedGPUHours", "GPUUtil", "EnergyKWh", "AvgPowerW"]);
    if top {
        spec.extend(["IdleGPUHours", "WasteGPUHours", "WasteBy"]);
    }
    if prices {
        spec.push("Cost");
    }
    parse_format(&spec.join(","), REPORT_FIELDS).map_err(anyhow::Error::msg)
}

/// `columns` with `MeasuredGPUHours` after `UsedGPUHours` (or at the end).
fn with_measured(mut columns: Vec<Column>) -> Vec<Column> {
    let Ok(mut measured) = parse_format("MeasuredGPUHours", REPORT_FIELDS) else {
        return columns;
    };
    let at = columns
        .iter()
        .position(|c| c.field == Field::UsedGpuHours)
        .map_or(columns.len(), |i| i + 1);
    if let Some(c) = measured.pop() {
        columns.insert(at, c);
    }
    columns
}

/// `sgpu report --json`'s rows: each group's key by name (`day`, `week` and `month` as
/// `period`) beside its sums.
fn report_json_rows(ordered: Vec<(Vec<String>, Sums)>, names: &[String]) -> Vec<Value> {
    ordered
        .into_iter()
        .map(|(key, s)| {
            let mut m = serde_json::Map::new();
            for (name, v) in names.iter().zip(key) {
                let name = if matches!(name.as_str(), "day" | "week" | "month") {
                    "period"
                } else {
                    name
                };
                m.insert(name.to_string(), json!(v));
            }
            s.json(&mut m);
            Value::Object(m)
        })
        .collect()
}

/// How `--top` ranks, as the output states it.
pub const TOP_RANKING: &str = "ranked by idle GPU-hours where healthd measured idle time, \
                               else by allocated minus used GPU-hours where it measured used \
                               time (column WasteBy)";

fn job_sums(j: &JobSummary) -> Sums {
    Sums {
        allocated_gpu_ms: j.allocated_gpu_ms,
        used_gpu_ms: j.used_gpu_ms,
        used_measured_gpu_ms: j.used_measured_gpu_ms,
        energy_mj: j.energy_mj,
        jobs: 1,
        cost_micro: j.cost_micro,
        idle_gpu_ms: j.idle_gpu_ms,
        ..Sums::default()
    }
}

/// One `sgpu jobs` line from acctd's job summary, times in `tz`.
pub fn job_cells(j: &JobSummary, columns: &[Column], tz: &TimeZone) -> Vec<String> {
    let s = job_sums(j);
    let secs = |ms: u64| i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    columns
        .iter()
        .map(|c| match c.field {
            Field::JobId => j.job_id.to_string(),
            Field::Cluster => j.cluster.clone(),
            Field::User => j.user.clone(),
            Field::Account => j.account.clone(),
            Field::Partition => j.partition.clone(),
            Field::Start => format_time_in(secs(j.start_ms), tz),
            Field::End => j
                .end_ms
                .map_or("Unknown".into(), |t| format_time_in(secs(t), tz)),
            Field::Elapsed => j.end_ms.map_or(String::new(), |e| {
                format_elapsed(e.saturating_sub(j.start_ms) / 1000)
            }),
            Field::State => {
                if j.end_ms.is_some() {
                    "COMPLETED".into()
                } else {
                    "RUNNING".into()
                }
            }
            Field::NodeList => j.nodes.join(","),
            Field::Gpus => j.gpus.to_string(),
            Field::GpuModel => j.gpu_models.join(","),
            f => s.cell(f).unwrap_or_default(),
        })
        .collect()
}

/// `sgpu jobs`.
pub fn jobs(settings: &Settings, a: &JobsArgs) -> anyhow::Result<i32> {
    let env = env(settings, a.select.utc)?;
    let now = now_s();
    // sacct: with -j and no -S, any time (acctd still needs a window: from 1970).
    let default_start = if a.select.jobs.is_some() {
        0
    } else {
        local_midnight(now, &env.tz, 0)
    };
    let (start, end) = window(&a.select, now, &env.tz, default_start, now + 1)?;
    let spec = a.select.format.clone().unwrap_or_else(|| {
        "JobID,User,Account,Partition,Start,Elapsed,State,GPUs,GPUHours,UsedGPUHours,GPUUtil,\
         EnergyKWh"
            .into()
    });
    let columns = parse_format(&spec, JOBS_FIELDS).map_err(anyhow::Error::msg)?;
    check_cost(&columns, &env.site)?;
    let answer: JobsAnswer = get(
        &env.client,
        &format!("/v1/jobs?{}", query(&a.select, start, end, None)),
    )?;
    let jobs = answer.jobs;
    if answer.truncated {
        eprintln!("sgpu: warning: more jobs matched than acctd returns; narrow -S/-E or filter");
    }
    if a.select.json {
        print_json(&json!({
            "start": format_time_in(start, &env.tz),
            "end": format_time_in(end, &env.tz),
            "time_zone": env.zone_name,
            "currency": answer.currency,
            "jobs": jobs,
        }))?;
        return Ok(0);
    }
    let lines: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| job_cells(j, &columns, &env.tz))
        .collect();
    let st = style(a.select.parsable, a.select.parsable2);
    print!("{}", render(&columns, &lines, st, !a.select.noheader));
    Ok(0)
}

/// Per node and GPU figures of one job, from its records: node, GPU, model (a MIG slice's
/// parent's), profile (a slice's, with its share: `2g.20gb (2/7)`), UUID, GPU-hours (a
/// slice's by its share), slice-hours (slices only), used GPU-hours, utilization, energy,
/// mean power, peak memory.
pub fn per_gpu_lines(records: &[Record]) -> Vec<Vec<String>> {
    gpu_figures(records)
        .into_iter()
        .map(|((node, index), g)| g.cells(node, index))
        .collect()
}

/// A record's GPU name split into the parent's model and the MIG profile.
fn split_mig_name(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once(" MIG ") {
        Some((parent, p)) if !parent.trim().is_empty() && !p.trim().is_empty() => {
            (parent.trim_end(), Some(p.trim()))
        }
        _ => (name, None),
    }
}

/// One GPU's figures of a job, summed over its records ([`per_gpu_lines`]).
#[derive(Default)]
struct GpuFigures {
    model: String,
    profile: String,
    uuid: String,
    alloc: u64,
    slice: Option<u64>,
    used: u64,
    energy: u64,
    util_sum: f64,
    util_n: u64,
    mem: u64,
}

/// Each GPU's figures in a job's records, by node and GPU index: allocated time and energy
/// from the job_end records, use from healthd's job_usage, names from whichever came first.
fn gpu_figures(records: &[Record]) -> BTreeMap<(String, u32), GpuFigures> {
    let mut gpus: BTreeMap<(String, u32), GpuFigures> = BTreeMap::new();
    for r in records {
        let node = r.id().node().to_string();
        match r.body() {
            RecordBody::JobEnd(b) => {
                // Slurm's window when the epilog read it, as acctd counts it
                let (alloc_start, alloc_end) = b.allocated_window();
                let span = alloc_end.saturating_sub(alloc_start);
                for g in &b.gpus {
                    let e = gpus.entry((node.clone(), g.index)).or_default();
                    e.model = g.name.clone().unwrap_or_default();
                    e.uuid = g.uuid.clone();
                    // a MIG slice: billed by its share, its slice-hours apart
                    e.alloc += g.gpu_equiv_ms(span);
                    if let Some(m) = &g.mig {
                        e.profile = format!("{} ({}/{})", m.profile, m.slices, m.of);
                        e.slice = Some(e.slice.unwrap_or(0) + span);
                    }
                    e.energy += g
                        .energy_delta_mj
                        .or_else(|| g.energy_end_mj?.checked_sub(g.energy_start_mj?))
                        .unwrap_or(0);
                }
            }
            RecordBody::JobUsage(b) => {
                for g in &b.gpus {
                    let e = gpus.entry((node.clone(), g.index)).or_default();
                    e.name_unless_named(g.name.as_ref(), &g.uuid);
                    e.used += g.used_gpu_ms;
                    e.util_sum += g.util_mean_pct * g.samples as f64;
                    e.util_n += g.samples;
                    e.mem = e.mem.max(g.mem_peak_mib);
                }
            }
            RecordBody::JobStart(b) => {
                for g in &b.gpus {
                    let e = gpus.entry((node.clone(), g.index)).or_default();
                    e.name_unless_named(g.name.as_ref(), &g.uuid);
                }
            }
            RecordBody::StepUsage(_) => {}
        }
    }
    gpus
}

impl GpuFigures {
    /// The GPU's model and UUID from a record, unless one named it already.
    fn name_unless_named(&mut self, name: Option<&String>, uuid: &str) {
        if self.model.is_empty() {
            self.model = name.cloned().unwrap_or_default();
            self.uuid = uuid.to_string();
        }
    }

    /// The GPU's row of [`per_gpu_lines`].
    fn cells(mut self, node: String, index: u32) -> Vec<String> {
        // a slice: no utilization per slice, so its used time is unknown (empty), not 0
        let slice = self.slice.is_some() || split_mig_name(&self.model).1.is_some();
        // a slice: the parent GPU's model beside its profile
        if let (parent, Some(p)) = split_mig_name(&self.model) {
            if self.profile.is_empty() {
                self.profile = p.to_string();
            }
            self.model = parent.to_string();
        }
        let s = Sums {
            allocated_gpu_ms: self.alloc,
            used_gpu_ms: self.used,
            energy_mj: self.energy,
            used_measured_gpu_ms: slice.then_some(0),
            ..Sums::default()
        };
        vec![
            node,
            index.to_string(),
            self.model,
            self.profile,
            self.uuid,
            s.cell(Field::GpuHours).unwrap_or_default(),
            self.slice.map_or(String::new(), |ms| {
                format!("{:.2}", ms as f64 / 3_600_000.0)
            }),
            s.cell(Field::UsedGpuHours).unwrap_or_default(),
            if self.util_n > 0 {
                format!("{:.1}", self.util_sum / self.util_n as f64)
            } else {
                String::new()
            },
            s.cell(Field::EnergyKwh).unwrap_or_default(),
            s.cell(Field::AvgPowerW).unwrap_or_default(),
            self.mem.to_string(),
        ]
    }
}

/// `sgpu job <id>`.
pub fn job(settings: &Settings, a: &JobArgs) -> anyhow::Result<i32> {
    let cluster = match a.cluster.clone().or_else(nodeconf::cluster_name) {
        Some(c) => c,
        None => bail!("which cluster? pass -M NAME (slurm.conf has no ClusterName)"),
    };
    let client = settings.acctd_client()?;
    let answer: JobAnswer<Record> =
        get(&client, &format!("/v1/jobs/{}/{}", enc(&cluster), a.job_id))?;
    if a.json {
        // acctd's answer as it was before answers carried their schema version
        print_json(&json!({
            "cluster": answer.cluster,
            "job_id": answer.job_id,
            "records": answer.records,
        }))?;
        return Ok(0);
    }
    let records = answer.records;
    let columns = parse_format(
        "Node,GPU,GPUModel,Profile,UUID%40,GPUHours,SliceHours,UsedGPUHours,GPUUtil,EnergyKWh,\
         AvgPowerW,MemPeakMiB",
        &[
            Field::Node,
            Field::GpuIndex,
            Field::GpuModel,
            Field::MigProfile,
            Field::Uuid,
            Field::GpuHours,
            Field::SliceHours,
            Field::UsedGpuHours,
            Field::GpuUtil,
            Field::EnergyKwh,
            Field::AvgPowerW,
            Field::MemPeakMib,
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let st = style(a.parsable, a.parsable2);
    if st == Style::Table && !a.noheader {
        println!("Job {} on cluster {cluster}", a.job_id);
    }
    print!(
        "{}",
        render(&columns, &per_gpu_lines(&records), st, !a.noheader)
    );
    if st == Style::Table {
        // idle periods and idle actions, from acctd's efficiency answer (an acctd that
        // predates it: nothing more to show)
        let path = format!("/v1/jobs/{}/{}/efficiency", enc(&cluster), a.job_id);
        if let Ok(e) = client.get::<sgpu_wire::efficiency::EfficiencyAnswer>(&path) {
            print!("{}", crate::seff::idle_sections(&e));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests;

/// `sgpu conflicts`: records acctd kept apart because a different record was stored under
/// their identity (admins only): per conflict its key, when it arrived, and what differs.
pub fn conflicts(settings: &Settings, a: &ConflictsArgs) -> anyhow::Result<i32> {
    let client = settings.acctd_client()?;
    let answer: ConflictsAnswer<Record> = get(&client, "/v1/conflicts")?;
    if a.json {
        // acctd's answer as it was before answers carried their schema version
        print_json(&json!({
            "conflicts": answer.conflicts,
            "truncated": answer.truncated,
        }))?;
        return Ok(0);
    }
    let list = answer.conflicts;
    if list.is_empty() {
        println!("no conflicts");
        return Ok(0);
    }
    let mut rows = vec![
        ["RECEIVED (UTC)", "KEY", "DIFFERS IN"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &list {
        let received = i64::try_from(c.received_ms / 1000)
            .ok()
            .map_or_else(|| "-".into(), format_time);
        let mut differs = Vec::new();
        let as_value = |r: Option<&Record>| serde_json::to_value(r).unwrap_or(Value::Null);
        diff_paths(
            "",
            &as_value(c.stored.as_ref()),
            &as_value(Some(&c.record)),
            &mut differs,
        );
        rows.push(vec![
            received,
            c.key.clone(),
            if differs.is_empty() {
                "-".into()
            } else {
                differs.join(",")
            },
        ]);
    }
    print!("{}", crate::admin::table(&rows));
    if answer.truncated {
        eprintln!("sgpu: warning: acctd listed only the first conflicts; see --json");
    }
    Ok(0)
}

/// The paths (`body.user`, `body.gpus`) at which two JSON values differ, at most 8.
fn diff_paths(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if out.len() >= 8 || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                diff_paths(
                    &path,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ => out.push(if at.is_empty() {
            "record".into()
        } else {
            at.to_string()
        }),
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    #[test]
    fn diff_names_the_fields_that_differ() {
        let a = json!({"id": {"kind": "job_end"}, "body": {"user": "bob", "gpus": [1], "uid": 1}});
        let b = json!({"id": {"kind": "job_end"}, "body": {"user": "eve", "gpus": [2], "uid": 1}});
        let mut out = Vec::new();
        diff_paths("", &a, &b, &mut out);
        assert_eq!(out, vec!["body.gpus", "body.user"]);
        let mut none = Vec::new();
        diff_paths("", &a, &a, &mut none);
        assert!(none.is_empty());
        let mut gone = Vec::new();
        diff_paths("", &Value::Null, &a, &mut gone);
        assert_eq!(gone, vec!["record"]);
    }
}
