//! UTC days and the proportional split of a time span over them.
//!
//! Rollups are per UTC day (days since 1970-01-01). A span `[start, end)` in milliseconds
//! covers one or more days; its *allocated* time on each day is exactly the overlap, and any
//! other amount measured over the span (energy, used GPU time) is split in proportion to the
//! overlap, with the integer remainder on the last day, so the parts always add up to the
//! whole.

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The UTC day (days since the epoch) holding the instant `ms`.
pub fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The days a span `[start, end)` touches, each with its overlap in ms.
///
/// An empty span (`start == end`) yields its one day with overlap 0; `end < start` is
/// treated as empty (records are validated before they get here).
pub fn split_span(start: u64, end: u64) -> Vec<(u32, u64)> {
    if end <= start {
        return vec![(day_of(start), 0)];
    }
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        let day_end = (t / DAY_MS).saturating_add(1).saturating_mul(DAY_MS);
        let piece_end = day_end.min(end);
        out.push((day_of(t), piece_end - t));
        t = piece_end;
    }
    out
}

/// Splits `amount` over `parts` (day, overlap ms) in proportion to the overlaps.
///
/// With `C(i)` the overlap of the first `i` parts and `S` the whole span, part `i` gets
/// `floor(amount × C(i+1) / S) − floor(amount × C(i) / S)`, so the parts add up to `amount`
/// exactly, and [`share_of`] over any sub-span gives the same figure as these parts do for
/// whole days (reports that clip a window to part of a day agree with the rollups). A
/// zero-length span puts everything on its day.
pub fn split_amount(amount: u64, parts: &[(u32, u64)]) -> Vec<(u32, u64)> {
    let span: u64 = parts.iter().map(|&(_, o)| o).fold(0, u64::saturating_add);
    let Some(&(first_day, _)) = parts.first() else {
        return Vec::new();
    };
    if span == 0 {
        return vec![(first_day, amount)];
    }
    let mut out = Vec::with_capacity(parts.len());
    let mut covered: u64 = 0;
    for &(day, overlap) in parts {
        let before = cumulative(amount, covered, span);
        covered = covered.saturating_add(overlap);
        out.push((day, cumulative(amount, covered, span) - before));
    }
    out
}

/// `floor(amount × done / span)` for `done <= span`, `span > 0`.
fn cumulative(amount: u64, done: u64, span: u64) -> u64 {
    let v = u128::from(amount) * u128::from(done.min(span)) / u128::from(span);
    // v <= amount, so it fits.
    u64::try_from(v).unwrap_or(amount)
}

/// The part of `amount`, measured over `[start, end)`, that falls in `[from, to)`: the same
/// proportional rule as [`split_amount`] (so whole days agree exactly with the rollups).
/// A zero-length span counts entirely at `start`.
pub fn share_of(amount: u64, start: u64, end: u64, from: u64, to: u64) -> u64 {
    if end <= start {
        return if (from..to).contains(&start) {
            amount
        } else {
            0
        };
    }
    let a = from.clamp(start, end);
    let b = to.clamp(start, end);
    if b <= a {
        return 0;
    }
    let span = end - start;
    cumulative(amount, b - start, span) - cumulative(amount, a - start, span)
}

/// The overlap of `[start, end)` with `[from, to)`, ms.
pub fn overlap(start: u64, end: u64, from: u64, to: u64) -> u64 {
    end.min(to).saturating_sub(start.max(from))
}

pub use sgpu_spool::calendar::{civil_from_days, days_from_civil};

/// Formats a day number as `YYYY-MM-DD`.
pub fn format_day(day: u32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` (a UTC date on or after 1970-01-01) into a day number.
pub fn parse_day(s: &str) -> Option<u32> {
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let y: i64 = y.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    let d: u32 = d.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let n = days_from_civil(y, m, d);
    // Reject 2023-02-30 and the like: the date must round-trip.
    if civil_from_days(n) != (y, m, d) {
        return None;
    }
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_day("2024-03-01"), Some(19_783));
        assert_eq!(format_day(19_783), "2024-03-01");
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
        assert_eq!(parse_day("2023-02-29"), None);
        assert_eq!(parse_day("1969-12-31"), None);
        assert_eq!(parse_day("2024-3-01"), None);
        for day in (0..40_000).step_by(37) {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
    }

    #[test]
    fn span_within_one_day() {
        assert_eq!(split_span(1_000, 5_000), vec![(0, 4_000)]);
        assert_eq!(split_span(DAY_MS, DAY_MS), vec![(1, 0)]);
    }

    #[test]
    fn span_straddling_midnight_splits_exactly() {
        // 23:00 on day 10 to 02:00 on day 11: one hour, then two.
        let start = 10 * DAY_MS + 23 * 3_600_000;
        let end = 11 * DAY_MS + 2 * 3_600_000;
        assert_eq!(
            split_span(start, end),
            vec![(10, 3_600_000), (11, 7_200_000)]
        );
        // Three days: a full middle day.
        let parts = split_span(start, 12 * DAY_MS + 1);
        assert_eq!(parts, vec![(10, 3_600_000), (11, DAY_MS), (12, 1)]);
        // Ending exactly at midnight does not touch the next day.
        assert_eq!(split_span(start, 11 * DAY_MS), vec![(10, 3_600_000)]);
    }

    #[test]
    fn amounts_split_in_proportion_and_add_up() {
        let parts = [(10, 3_600_000), (11, 7_200_000)];
        assert_eq!(split_amount(900, &parts), vec![(10, 300), (11, 600)]);
        // Remainder on the last day.
        assert_eq!(split_amount(10, &parts), vec![(10, 3), (11, 7)]);
        assert_eq!(
            split_amount(u64::MAX, &parts)
                .iter()
                .map(|p| p.1)
                .sum::<u64>(),
            u64::MAX
        );
        assert_eq!(split_amount(5, &[(3, 0)]), vec![(3, 5)]);
        assert_eq!(split_amount(5, &[]), vec![]);
    }

    #[test]
    fn share_of_whole_days_equals_the_day_split() {
        let start = 10 * DAY_MS + 23 * 3_600_000 + 17;
        let end = 13 * DAY_MS + 5 * 3_600_000 + 3;
        let days = split_span(start, end);
        for amount in [0, 1, 7, 999_983, u64::MAX / 3] {
            let parts = split_amount(amount, &days);
            for (day, part) in &parts {
                let d = u64::from(*day) * DAY_MS;
                assert_eq!(share_of(amount, start, end, d, d + DAY_MS), *part);
            }
            // Any cut point splits the amount exactly.
            let cut = 11 * DAY_MS + 12_345;
            assert_eq!(
                share_of(amount, start, end, 0, cut) + share_of(amount, start, end, cut, u64::MAX),
                amount
            );
        }
        assert_eq!(share_of(9, 5, 5, 0, 10), 9);
        assert_eq!(share_of(9, 5, 5, 6, 10), 0);
        assert_eq!(overlap(10, 20, 15, 30), 5);
        assert_eq!(overlap(10, 20, 25, 30), 0);
    }
}
