//! Prices with effective dates, from acctd's configuration ([`crate::site`]) only: a user's
//! own files never change a bill.
//!
//! A price list is a series of periods, each in force from its `from` instant until the
//! next one's, so a change applies from its date and what ran before keeps the old price.
//! Within a period, one allocated GPU-hour costs the first of: the (partition, GPU model)
//! price, the partition's, the GPU model's, the default `gpu_hour` (else 0); a kWh costs
//! `kwh` (else 0). Usage before the first period is not priced (0).
//!
//! Money is counted in millionths of the currency ("micro"): a price is stored as an integer
//! number of micro per GPU-hour or per kWh, and a cost is summed exactly as a numerator over
//! [`COST_DENOMINATOR`] (`ms x micro/h x 1000 + mJ x micro/kWh`, both in micro / 3.6e9), so
//! no sum depends on the order it was added in; [`micro`] rounds it once, at the end.

use std::collections::BTreeMap;

/// The denominator of cost numerators: 3.6e9 (ms per hour x 1000, and mJ per kWh).
pub const COST_DENOMINATOR: u128 = 3_600_000_000;

/// Prices of one period, in micro (millionths of the currency).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rates {
    /// Default price of an allocated GPU-hour.
    pub gpu_hour: Option<u64>,
    /// Price of a kWh.
    pub kwh: Option<u64>,
    /// Price of a GPU-hour by partition.
    pub partition: BTreeMap<String, u64>,
    /// Price of a GPU-hour by GPU model.
    pub gpu_model: BTreeMap<String, u64>,
    /// Price of a GPU-hour by partition, then GPU model.
    pub partition_gpu_model: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Rates {
    /// The price of one allocated GPU-hour in `partition` on `gpu_model`, micro. A MIG
    /// slice (`<GPU> MIG <profile>`, its hours already GPU-equivalents) takes a price named
    /// for its own model first, else its parent GPU's at the same step.
    pub fn gpu_hour_micro(&self, partition: &str, gpu_model: &str) -> u64 {
        let (parent, _) = crate::rollup::split_mig_model(gpu_model);
        fn by_model<'a>(
            m: &'a BTreeMap<String, u64>,
            model: &str,
            parent: &str,
        ) -> Option<&'a u64> {
            m.get(model).or_else(|| m.get(parent))
        }
        self.partition_gpu_model
            .get(partition)
            .and_then(|m| by_model(m, gpu_model, parent))
            .or_else(|| self.partition.get(partition))
            .or_else(|| by_model(&self.gpu_model, gpu_model, parent))
            .copied()
            .or(self.gpu_hour)
            .unwrap_or(0)
    }

    /// The cost of `gpu_ms` allocated GPU-ms and `energy_mj` mJ, as a numerator over
    /// [`COST_DENOMINATOR`] (micro).
    pub fn cost(&self, partition: &str, gpu_model: &str, gpu_ms: u64, energy_mj: u64) -> u128 {
        u128::from(gpu_ms) * u128::from(self.gpu_hour_micro(partition, gpu_model)) * 1000
            + u128::from(energy_mj) * u128::from(self.kwh.unwrap_or(0))
    }
}

/// A price list: periods by start instant, and the currency's label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceList {
    /// Currency label (`EUR`, `CHF`, `core-hours`...), shown beside costs.
    pub currency: Option<String>,
    /// Each period's first instant (ms) and its rates, ascending by instant.
    pub periods: Vec<(u64, Rates)>,
}

impl PriceList {
    /// The rates in force at `ms` (`None` before the first period).
    pub fn at(&self, ms: u64) -> Option<&Rates> {
        let i = self.periods.partition_point(|(from, _)| *from <= ms);
        i.checked_sub(1).map(|i| &self.periods[i].1)
    }

    /// The instants strictly inside `(start, end)` where the price changes.
    pub fn changes_in(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        self.periods
            .iter()
            .map(|(from, _)| *from)
            .filter(move |f| *f > start && *f < end)
    }

    /// The cost numerator of amounts spread over their windows: `alloc` is allocated GPU-ms
    /// (in GPU-equivalents) with the window it was allocated over, `energy` mJ with the window
    /// it was measured over; each is split over the price periods by the rollups' proportional
    /// rule ([`crate::day::share_of`]: a whole GPU's window exactly by overlap).
    #[allow(clippy::too_many_arguments)]
    pub fn cost_over(
        &self,
        partition: &str,
        gpu_model: &str,
        alloc: (u64, u64, u64),
        energy: (u64, u64, u64),
    ) -> u128 {
        let (a_amount, a_start, a_end) = alloc;
        let (e_amount, e_start, e_end) = energy;
        let mut total = 0u128;
        for (i, (from, rates)) in self.periods.iter().enumerate() {
            let to = self.periods.get(i + 1).map_or(u64::MAX, |p| p.0);
            let gpu_ms = crate::day::share_of(a_amount, a_start, a_end, *from, to);
            let mj = crate::day::share_of(e_amount, e_start, e_end, *from, to);
            total += rates.cost(partition, gpu_model, gpu_ms, mj);
        }
        total
    }
}

/// A cost numerator ([`COST_DENOMINATOR`]) in micro, rounded half up (saturating).
pub fn micro(numerator: u128) -> u64 {
    u64::try_from((numerator + COST_DENOMINATOR / 2) / COST_DENOMINATOR).unwrap_or(u64::MAX)
}

/// A price as written (a number of currency units, at most 6 decimals kept) in micro; `None`
/// when it is not a price (negative, not finite, over 10^12).
pub fn price_micro(p: f64) -> Option<u64> {
    if !p.is_finite() || !(0.0..=1e12).contains(&p) {
        return None;
    }
    // in range: at most 1e18, which fits
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((p * 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(gpu_hour: f64) -> Rates {
        Rates {
            gpu_hour: price_micro(gpu_hour),
            ..Rates::default()
        }
    }

    #[test]
    fn the_most_specific_price_wins() {
        let r = Rates {
            gpu_hour: Some(1_000_000),
            kwh: Some(300_000),
            partition: BTreeMap::from([("gpu".into(), 2_000_000)]),
            gpu_model: BTreeMap::from([("H100".into(), 3_000_000)]),
            partition_gpu_model: BTreeMap::from([(
                "gpu".into(),
                BTreeMap::from([("H100".into(), 4_000_000)]),
            )]),
        };
        assert_eq!(r.gpu_hour_micro("gpu", "H100"), 4_000_000);
        assert_eq!(r.gpu_hour_micro("gpu", "A100"), 2_000_000);
        assert_eq!(r.gpu_hour_micro("cpu", "H100"), 3_000_000);
        assert_eq!(r.gpu_hour_micro("cpu", "A100"), 1_000_000);
        // 1.5 GPU-hours at 4.00 and 2 kWh at 0.30: 6.60
        let n = r.cost("gpu", "H100", 5_400_000, 7_200_000_000);
        assert_eq!(micro(n), 6_600_000);
        assert_eq!(Rates::default().gpu_hour_micro("gpu", "H100"), 0);
        // a MIG slice takes its parent GPU's price at each step, unless priced itself
        assert_eq!(r.gpu_hour_micro("gpu", "H100 MIG 2g.20gb"), 4_000_000);
        assert_eq!(r.gpu_hour_micro("cpu", "H100 MIG 2g.20gb"), 3_000_000);
        assert_eq!(r.gpu_hour_micro("cpu", "A100 MIG 2g.20gb"), 1_000_000);
        let mut own = r.clone();
        own.gpu_model.insert("H100 MIG 1g.10gb".into(), 500_000);
        assert_eq!(own.gpu_hour_micro("cpu", "H100 MIG 1g.10gb"), 500_000);
        assert_eq!(own.gpu_hour_micro("cpu", "H100 MIG 2g.20gb"), 3_000_000);
    }

    #[test]
    fn a_change_applies_from_its_instant_and_history_keeps_the_old_price() {
        let list = PriceList {
            currency: Some("EUR".into()),
            periods: vec![(1_000, rates(1.0)), (10_000, rates(2.0))],
        };
        assert_eq!(list.at(999), None);
        assert_eq!(list.at(1_000).and_then(|r| r.gpu_hour), Some(1_000_000));
        assert_eq!(list.at(9_999).and_then(|r| r.gpu_hour), Some(1_000_000));
        assert_eq!(list.at(10_000).and_then(|r| r.gpu_hour), Some(2_000_000));
        assert_eq!(
            list.changes_in(0, 20_000).collect::<Vec<_>>(),
            [1_000, 10_000]
        );
        assert_eq!(list.changes_in(1_000, 10_000).count(), 0);
        // one GPU-hour before the change and one after: 1.00 + 2.00; before the list: 0
        let h = 3_600_000;
        let list = PriceList {
            currency: None,
            periods: vec![(h, rates(1.0)), (2 * h, rates(2.0))],
        };
        assert_eq!(
            micro(list.cost_over("p", "m", (2 * h, h, 3 * h), (0, 0, 0))),
            3_000_000
        );
        assert_eq!(micro(list.cost_over("p", "m", (h, 0, h), (0, 0, 0))), 0);
        // a 2g slice of 7 over the same two hours: 2/7 of each hour at its price
        // (2057143 GPU-equivalent ms, 1028571 before the change and 1028572 after)
        assert_eq!(
            micro(list.cost_over("p", "m", (2_057_143, h, 3 * h), (0, 0, 0))),
            (1_028_571 * 1_000_000 + 1_028_572 * 2_000_000 + h / 2) / h
        );
    }

    #[test]
    fn prices_in_micro_and_rounding() {
        assert_eq!(price_micro(1.25), Some(1_250_000));
        assert_eq!(price_micro(0.000_000_4), Some(0));
        assert_eq!(price_micro(-1.0), None);
        assert_eq!(price_micro(f64::NAN), None);
        assert_eq!(price_micro(1e13), None);
        assert_eq!(micro(COST_DENOMINATOR / 2 - 1), 0);
        assert_eq!(micro(COST_DENOMINATOR / 2), 1);
        assert_eq!(micro(u128::MAX / 2), u64::MAX);
    }
}
