//! acctd's own configuration, `acctd.toml` (`sgpu-acctd --config`, default
//! `/etc/sgpu/acctd.toml` when it exists): the site's time zone, the prices and the account
//! coordinators. Only acctd reads it, and only from a file root (or acctd's own user) owns
//! and nobody else can write, so no user's file sets a price or a coordinator.
//!
//! ```toml
//! time_zone = "Europe/Berlin"     # default: the system's (/etc/localtime)
//!
//! [prices]
//! currency = "EUR"
//! [[prices.period]]               # in force from its date until the next period's
//! from = "2026-01-01"             # the site's midnight; or YYYY-MM-DDTHH:MM[:SS]
//! gpu_hour = 1.00                 # default price per allocated GPU-hour
//! kwh = 0.30
//! partition = { gpu = 2.00 }
//! gpu_model = { "NVIDIA H100 80GB HBM3" = 3.00 }
//! partition_gpu_model = { gpu = { "NVIDIA H100 80GB HBM3" = 4.00 } }
//! slurm_billing = { unit = 0.05, slurm_conf = "/etc/slurm/slurm.conf" }  # TRESBillingWeights
//!
//! [coordinators]
//! slurm = true                    # Slurm's coordinators (sacctmgr show account withcoord)
//! refresh_s = 300
//! accounts = { physics = ["alice"] }   # and/or a list of our own
//! ```
//!
//! Every error names the file, the line and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::coordinators::Coordinators;
use crate::prices::{PriceList, Rates, price_micro};
use crate::zone::SiteZone;

/// Where acctd looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/sgpu/acctd.toml";

/// Default seconds between two reads of Slurm's coordinators.
pub const DEFAULT_COORDINATOR_REFRESH_S: u64 = 300;

/// A configuration that cannot be used: names the file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file is not one only root (or acctd's user) can change.
    #[error("{file}: {message}")]
    Untrusted {
        /// The file or directory.
        file: PathBuf,
        /// Why, and what to do.
        message: String,
    },
    /// A value is wrong.
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field, dotted (`prices.period[2].from`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the coordinators come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Read Slurm's coordinators through `sacctmgr` (refreshed every `refresh_s`).
    pub slurm: bool,
    /// Seconds between two reads of Slurm's coordinators.
    pub refresh_s: u64,
    /// Coordinators of our own: account to user names.
    pub accounts: BTreeMap<String, BTreeSet<String>>,
}

/// acctd's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// The site's time zone.
    pub zone: SiteZone,
    /// Prices (`None`: no `[prices]`, reports carry no cost).
    pub prices: Option<PriceList>,
    /// Account coordinators.
    pub coordinators: CoordinatorConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    time_zone: Option<Spanned<String>>,
    prices: Option<Spanned<RawPrices>>,
    coordinators: Option<RawCoordinators>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    currency: Option<String>,
    #[serde(default)]
    period: Vec<Spanned<RawPeriod>>,
}

type Price = Spanned<f64>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriod {
    from: Option<Spanned<String>>,
    gpu_hour: Option<Price>,
    kwh: Option<Price>,
    #[serde(default)]
    partition: BTreeMap<String, Price>,
    #[serde(default)]
    gpu_model: BTreeMap<String, Price>,
    #[serde(default)]
    partition_gpu_model: BTreeMap<String, BTreeMap<String, Price>>,
    slurm_billing: Option<Spanned<RawBilling>>,
}

/// `slurm_billing = { unit = 0.05, slurm_conf = "/etc/slurm/slurm.conf" }`: a partition's
/// GPU-hour price is its `TRESBillingWeights` weight of `GRES/gpu` times `unit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    unit: Price,
    slurm_conf: Option<Spanned<String>>,
}

/// Where `slurm_billing` reads the partitions when it names no `slurm_conf`.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// The `GRES/gpu` weight of a `TRESBillingWeights` value (`CPU=1.0,Mem=0.25G,GRES/gpu=2.0`;
/// keys case-insensitive), `None` when it has none; an error says what is wrong with it.
pub fn gpu_billing_weight(weights: &str) -> Result<Option<f64>, String> {
    for item in weights.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{item:?} is not TRES=WEIGHT"));
        };
        if key.trim().eq_ignore_ascii_case("gres/gpu") {
            let w: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("GRES/gpu weight {value:?} is not a number"))?;
            if !w.is_finite() || w < 0.0 {
                return Err(format!("GRES/gpu weight {value:?} is not a weight (>= 0)"));
            }
            return Ok(Some(w));
        }
    }
    Ok(None)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinators {
    #[serde(default)]
    slurm: bool,
    refresh_s: Option<Spanned<u64>>,
    #[serde(default)]
    accounts: BTreeMap<String, Spanned<Vec<String>>>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Checks that `path` and its directory are owned by root or by `me` and not group- or
/// world-writable (the rule of `sgpu_nodelib::trust` for sgpu.toml).
fn check_trusted(path: &Path, me: u32) -> Result<(), SiteError> {
    let one = |p: &Path, what: &str| -> Result<(), SiteError> {
        let md = std::fs::metadata(p).map_err(|e| SiteError::Read {
            file: p.to_path_buf(),
            message: e.to_string(),
        })?;
        let bad = |message: String| SiteError::Untrusted {
            file: p.to_path_buf(),
            message,
        };
        if md.uid() != 0 && md.uid() != me {
            return Err(bad(format!(
                "the {what} is owned by uid {}, not root or acctd's uid {me}: its owner could \
                 set prices and coordinators; chown root it",
                md.uid()
            )));
        }
        let mode = md.mode() & 0o7777;
        if mode & 0o022 != 0 && !(md.is_dir() && mode & 0o1000 != 0) {
            return Err(bad(format!(
                "the {what} is group- or world-writable (mode {mode:o}); chmod go-w it"
            )));
        }
        Ok(())
    };
    let real = std::fs::canonicalize(path).map_err(|e| SiteError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    one(&real, "file")?;
    if let Some(dir) = real.parent() {
        one(dir, "directory")?;
    }
    Ok(())
}

/// Adds the GPU-hour price of every partition whose `TRESBillingWeights` has a `GRES/gpu`
/// weight (weight x `unit`) to `rates`, unless `rates` names that partition itself.
fn billing_prices(
    file: &Path,
    text: &str,
    field: &str,
    billing: &Spanned<RawBilling>,
    rates: &mut Rates,
) -> Result<(), SiteError> {
    use sgpu_slurm_conf::{ConfFile, SlurmConf};
    let at = |offset: usize, name: &str, message: String| SiteError::Invalid {
        file: file.to_path_buf(),
        line: line_of(text, offset),
        field: format!("{field}.slurm_billing{name}"),
        message,
    };
    let b = billing.get_ref();
    let unit = price_micro(*b.unit.get_ref()).ok_or_else(|| {
        at(
            b.unit.span().start,
            ".unit",
            format!(
                "{} is not a price (a number from 0 to 10^12: the price of one billing unit-hour)",
                b.unit.get_ref()
            ),
        )
    })?;
    let (conf_path, offset) = match &b.slurm_conf {
        Some(p) => (PathBuf::from(p.get_ref()), p.span().start),
        None => (PathBuf::from(DEFAULT_SLURM_CONF), billing.span().start),
    };
    let conf = SlurmConf::load(&conf_path).map_err(|e| {
        at(
            offset,
            ".slurm_conf",
            format!("{}: {e}", conf_path.display()),
        )
    })?;
    for p in &conf.partitions {
        let Some(weights) = p.param("TRESBillingWeights") else {
            continue;
        };
        let weight = gpu_billing_weight(weights).map_err(|message| SiteError::Invalid {
            file: p.at.file.clone(),
            line: p.at.line,
            field: format!("PartitionName={} TRESBillingWeights", p.name),
            message,
        })?;
        if let Some(w) = weight
            && !rates.partition.contains_key(&p.name)
        {
            // weight x unit; both bounded (unit <= 10^18 micro, the weight checked finite)
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let micro = (w * unit as f64).round().min(u64::MAX as f64) as u64;
            rates.partition.insert(p.name.clone(), micro);
        }
    }
    Ok(())
}

impl SiteConfig {
    /// Reads `path` after checking that only root (or this process's user) can change it.
    pub fn load(path: &Path) -> Result<SiteConfig, SiteError> {
        check_trusted(path, nix::unistd::geteuid().as_raw())?;
        let text = std::fs::read_to_string(path).map_err(|e| SiteError::Read {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        SiteConfig::parse(path, &text)
    }

    /// The default: no file (the system's zone, no prices, no coordinators).
    pub fn system_default() -> Result<SiteConfig, SiteError> {
        let zone = SiteZone::system().map_err(|e| SiteError::Read {
            file: PathBuf::from("/etc/localtime"),
            message: e.to_string(),
        })?;
        Ok(SiteConfig {
            zone,
            ..SiteConfig::default()
        })
    }

    /// Parses the text of `file` (named in errors).
    pub fn parse(file: &Path, text: &str) -> Result<SiteConfig, SiteError> {
        let src = Source { file, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // a syntax error or an unknown key: toml's message names the key or what it expected
            src.invalid(offset, "(file)", e.message().to_string())
        })?;
        let zone = match &raw.time_zone {
            Some(name) => SiteZone::named(name.get_ref().trim())
                .map_err(|e| src.invalid(name.span().start, "time_zone", e.to_string()))?,
            None => SiteZone::system().map_err(|e| src.invalid(0, "time_zone", e.to_string()))?,
        };
        let prices = match raw.prices {
            None => None,
            Some(p) => Some(price_list(src, &zone, p)?),
        };
        let coordinators = coordinator_config(src, raw.coordinators)?;
        Ok(SiteConfig {
            zone,
            prices,
            coordinators,
        })
    }
}

/// The file being parsed: names an error by the line of a byte offset in its text.
#[derive(Clone, Copy)]
struct Source<'a> {
    /// The file.
    file: &'a Path,
    /// Its text.
    text: &'a str,
}

impl Source<'_> {
    /// The error of `field` whose value starts at byte `offset`.
    fn invalid(&self, offset: usize, field: &str, message: String) -> SiteError {
        SiteError::Invalid {
            file: self.file.to_path_buf(),
            line: line_of(self.text, offset),
            field: field.to_string(),
            message,
        }
    }
}

/// `[prices]`: its periods in order of their dates, each one's rates.
fn price_list(
    src: Source<'_>,
    zone: &SiteZone,
    p: Spanned<RawPrices>,
) -> Result<PriceList, SiteError> {
    let at = p.span().start;
    let p = p.into_inner();
    if p.period.is_empty() {
        return Err(src.invalid(
            at,
            "prices.period",
            "no [[prices.period]]: give at least one (gpu_hour, kwh, partition, \
             gpu_model, partition_gpu_model; from = \"YYYY-MM-DD\")"
                .into(),
        ));
    }
    let mut periods: Vec<(u64, Rates)> = Vec::new();
    for (i, period) in p.period.into_iter().enumerate() {
        let field = format!("prices.period[{}]", i + 1);
        let at = period.span().start;
        let period = period.into_inner();
        let prev = periods.last().map(|(from, _)| *from);
        let from = period_from(src, zone, &field, (i, at), &period, prev)?;
        let rates = period_rates(src, &field, &period)?;
        periods.push((from, rates));
    }
    Ok(PriceList {
        currency: p.currency.map(|c| c.trim().to_string()),
        periods,
    })
}

/// When period `i` (at byte `at`, named `field`) applies, Unix s: its `from` in the site's
/// time (the first may leave it out: from the start), after the previous period's (`prev`).
fn period_from(
    src: Source<'_>,
    zone: &SiteZone,
    field: &str,
    (i, at): (usize, usize),
    period: &RawPeriod,
    prev: Option<u64>,
) -> Result<u64, SiteError> {
    let from = match &period.from {
        Some(f) => zone
            .parse_local(f.get_ref().trim())
            .ok_or_else(|| {
                src.invalid(
                    f.span().start,
                    &format!("{field}.from"),
                    format!(
                        "{:?} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (the \
                         site's time, {})",
                        f.get_ref(),
                        zone.name()
                    ),
                )
            })?
            .map_err(|e| src.invalid(f.span().start, &format!("{field}.from"), e.to_string()))?,
        None if i == 0 => 0,
        None => {
            return Err(src.invalid(
                at,
                &format!("{field}.from"),
                "missing: every period but the first says from when it applies".into(),
            ));
        }
    };
    if let Some(prev) = prev
        && from <= prev
    {
        return Err(src.invalid(
            period.from.as_ref().map_or(at, |f| f.span().start),
            &format!("{field}.from"),
            "periods must be in order of their dates, each after the last".into(),
        ));
    }
    Ok(from)
}

/// A period's prices (named `field`): the defaults, per partition, per GPU model, from
/// Slurm's billing weights, per partition and GPU model.
fn period_rates(src: Source<'_>, field: &str, period: &RawPeriod) -> Result<Rates, SiteError> {
    let price = |v: &Price, name: String| -> Result<u64, SiteError> {
        price_micro(*v.get_ref()).ok_or_else(|| {
            src.invalid(
                v.span().start,
                &name,
                format!(
                    "{} is not a price (a number from 0 to 10^12, e.g. 1.25)",
                    v.get_ref()
                ),
            )
        })
    };
    let mut rates = Rates::default();
    if let Some(v) = &period.gpu_hour {
        rates.gpu_hour = Some(price(v, format!("{field}.gpu_hour"))?);
    }
    if let Some(v) = &period.kwh {
        rates.kwh = Some(price(v, format!("{field}.kwh"))?);
    }
    for (k, v) in &period.partition {
        let p = price(v, format!("{field}.partition.{k}"))?;
        rates.partition.insert(k.clone(), p);
    }
    for (k, v) in &period.gpu_model {
        let p = price(v, format!("{field}.gpu_model.{k:?}"))?;
        rates.gpu_model.insert(k.clone(), p);
    }
    if let Some(b) = &period.slurm_billing {
        billing_prices(src.file, src.text, field, b, &mut rates)?;
    }
    for (part, models) in &period.partition_gpu_model {
        for (m, v) in models {
            let p = price(v, format!("{field}.partition_gpu_model.{part}.{m:?}"))?;
            rates
                .partition_gpu_model
                .entry(part.clone())
                .or_default()
                .insert(m.clone(), p);
        }
    }
    Ok(rates)
}

/// `[coordinators]` (absent: none, Slurm's not read, the default refresh).
fn coordinator_config(
    src: Source<'_>,
    raw: Option<RawCoordinators>,
) -> Result<CoordinatorConfig, SiteError> {
    let mut coordinators = CoordinatorConfig {
        refresh_s: DEFAULT_COORDINATOR_REFRESH_S,
        ..CoordinatorConfig::default()
    };
    if let Some(c) = raw {
        coordinators.slurm = c.slurm;
        if let Some(r) = c.refresh_s {
            if *r.get_ref() == 0 {
                return Err(src.invalid(
                    r.span().start,
                    "coordinators.refresh_s",
                    "0 is not an interval; give seconds, at least 1".into(),
                ));
            }
            coordinators.refresh_s = *r.get_ref();
        }
        for (account, users) in c.accounts {
            let at = users.span().start;
            let users: BTreeSet<String> = users
                .into_inner()
                .into_iter()
                .map(|u| u.trim().to_string())
                .collect();
            if account.trim().is_empty() || users.iter().any(String::is_empty) {
                return Err(src.invalid(
                    at,
                    &format!("coordinators.accounts.{account}"),
                    "an empty account or user name".into(),
                ));
            }
            coordinators.accounts.insert(account, users);
        }
    }
    Ok(coordinators)
}

/// What acctd serves from its configuration: the zone, the prices, the coordinators.
#[derive(Debug, Default)]
pub struct Site {
    /// The site's time zone.
    pub zone: SiteZone,
    /// Prices (`None`: reports carry no cost).
    pub prices: Option<PriceList>,
    /// Account coordinators (Slurm's refreshed by [`crate::coordinators::refresh_slurm`]).
    pub coordinators: std::sync::Arc<Coordinators>,
}

impl Site {
    /// From acctd.toml (Slurm's coordinators still to be read).
    pub fn new(cfg: &SiteConfig) -> Site {
        Site {
            zone: cfg.zone.clone(),
            prices: cfg.prices.clone(),
            coordinators: std::sync::Arc::new(Coordinators::new(&cfg.coordinators)),
        }
    }
}

#[cfg(test)]
mod tests;
