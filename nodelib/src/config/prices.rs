//! The `[prices]` table: what `sgpu report` and `sgpu jobs` charge in their `Cost` column.
//!
//! ```toml
//! [prices]
//! currency = "EUR"                 # a label for the Cost column's header, nothing else
//! gpu_hour = 1.20                  # per allocated GPU-hour, when no price below applies
//! kwh = 0.25                       # per kWh of GPU energy, added to the GPU-hour price
//!
//! [prices.partition]               # per allocated GPU-hour in that partition
//! gpu = 2.00
//!
//! [prices.gpu_model]               # per allocated GPU-hour on that model (exact name)
//! "NVIDIA H100 80GB HBM3" = 3.50
//! ```
//!
//! A GPU-hour costs the partition's price when it has one, else the GPU model's, else
//! `gpu_hour`, else nothing; energy costs `kwh` per kWh. Prices must be finite and >= 0.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::accounting::Invalid;

/// The `[prices]` table, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PricesConfig {
    /// Whether the file has a `[prices]` table at all.
    pub configured: bool,
    /// Currency label.
    pub currency: Option<String>,
    /// Default price per allocated GPU-hour.
    pub gpu_hour: Option<f64>,
    /// Price per kWh.
    pub kwh: Option<f64>,
    /// Price per allocated GPU-hour by partition.
    pub partition: BTreeMap<String, f64>,
    /// Price per allocated GPU-hour by GPU model.
    pub gpu_model: BTreeMap<String, f64>,
}

impl PricesConfig {
    /// The price of one allocated GPU-hour in `partition` on `gpu_model`.
    pub fn gpu_hour_price(&self, partition: &str, gpu_model: &str) -> f64 {
        self.partition
            .get(partition)
            .or_else(|| self.gpu_model.get(gpu_model))
            .copied()
            .or(self.gpu_hour)
            .unwrap_or(0.0)
    }

    /// The cost of `gpu_hours` allocated GPU-hours and `kwh` kWh in that partition/model.
    pub fn cost(&self, partition: &str, gpu_model: &str, gpu_hours: f64, kwh: f64) -> f64 {
        gpu_hours * self.gpu_hour_price(partition, gpu_model) + kwh * self.kwh.unwrap_or(0.0)
    }
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrices {
    currency: Option<String>,
    gpu_hour: Option<Spanned<f64>>,
    kwh: Option<Spanned<f64>>,
    #[serde(default)]
    partition: BTreeMap<String, Spanned<f64>>,
    #[serde(default)]
    gpu_model: BTreeMap<String, Spanned<f64>>,
}

fn price(v: Spanned<f64>, key: String) -> Result<f64, Invalid> {
    let p = *v.get_ref();
    if p.is_finite() && p >= 0.0 {
        Ok(p)
    } else {
        Err((
            v.span().start,
            key,
            format!("{p} is not a price (a number >= 0, e.g. 1.25)"),
        ))
    }
}

impl RawPrices {
    /// Validates the table.
    pub(super) fn validate(self) -> Result<PricesConfig, Invalid> {
        let mut c = PricesConfig {
            configured: true,
            currency: self.currency,
            ..PricesConfig::default()
        };
        if let Some(v) = self.gpu_hour {
            c.gpu_hour = Some(price(v, "prices.gpu_hour".into())?);
        }
        if let Some(v) = self.kwh {
            c.kwh = Some(price(v, "prices.kwh".into())?);
        }
        for (k, v) in self.partition {
            let p = price(v, format!("prices.partition.{k:?}"))?;
            c.partition.insert(k, p);
        }
        for (k, v) in self.gpu_model {
            let p = price(v, format!("prices.gpu_model.{k:?}"))?;
            c.gpu_model.insert(k, p);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sgpu/sgpu.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn partition_then_model_then_default() {
        let c = parse(
            "[prices]\ncurrency = \"EUR\"\ngpu_hour = 1.0\nkwh = 0.5\n\
             [prices.partition]\ngpu = 2.0\n[prices.gpu_model]\n\"H100\" = 3.0\n",
        )
        .unwrap()
        .prices;
        assert!(c.configured);
        assert_eq!(c.currency.as_deref(), Some("EUR"));
        assert_eq!(c.gpu_hour_price("gpu", "H100"), 2.0);
        assert_eq!(c.gpu_hour_price("debug", "H100"), 3.0);
        assert_eq!(c.gpu_hour_price("debug", "A100"), 1.0);
        assert_eq!(c.cost("debug", "H100", 2.0, 4.0), 8.0);
        let none = parse("").unwrap().prices;
        assert!(!none.configured);
        assert_eq!(none.cost("gpu", "H100", 10.0, 10.0), 0.0);
    }

    #[test]
    fn bad_prices_name_line_and_key() {
        let e = parse("[prices]\nkwh = -1.0\n").unwrap_err();
        assert!(e.contains(":2") && e.contains("prices.kwh"), "{e}");
        let e = parse("[prices.partition]\ngpu = nan\n").unwrap_err();
        assert!(e.contains("prices.partition.\"gpu\""), "{e}");
        let e = parse("[prices]\ngpu_hours = 1.0\n").unwrap_err();
        assert!(e.contains("gpu_hours"), "{e}");
    }
}
