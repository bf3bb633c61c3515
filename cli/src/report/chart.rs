//! `sgpu report --chart`: GPU-hours per group as a terminal bar chart, the used part solid,
//! the allocated-but-idle part shaded and the unmeasured part (MIG slices) marked, for
//! people who would rather look than read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Sums;

/// Bar characters: used GPU time, allocated time the GPUs were idle, and allocated time
/// whose use was not measured (MIG slices: healthd samples no utilization of them).
const USED: char = '█';
const IDLE: char = '░';
const UNMEASURED: char = '?';

/// The chart: one line per group (label, bar scaled to the largest allocation in `width`
/// cells, allocated and used GPU-hours), then a legend.
pub fn render_chart(groups: &BTreeMap<Vec<String>, Sums>, width: usize) -> String {
    let label = |key: &[String]| {
        let l = key.join(" ");
        if l.trim().is_empty() {
            "(none)".to_string()
        } else {
            l
        }
    };
    let label_w = groups
        .keys()
        .map(|k| label(k).chars().count())
        .max()
        .unwrap_or(0);
    let max = groups
        .values()
        .map(|s| s.allocated_gpu_ms)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, s) in groups {
        let cells = |ms: u64| {
            if max == 0 {
                0
            } else {
                ((ms as f64 / max as f64) * width as f64).round() as usize
            }
        };
        let alloc = cells(s.allocated_gpu_ms);
        let measured = cells(s.measured_gpu_ms().min(s.allocated_gpu_ms)).min(alloc);
        let used = cells(s.used_gpu_ms.min(s.allocated_gpu_ms)).min(measured);
        let bar: String = std::iter::repeat_n(USED, used)
            .chain(std::iter::repeat_n(IDLE, measured - used))
            .chain(std::iter::repeat_n(UNMEASURED, alloc - measured))
            .collect();
        let used_text = match s.used() {
            Some(u) => format!("{:.2} used", u as f64 / 3_600_000.0),
            None => "used unknown".to_string(),
        };
        let _ = writeln!(
            out,
            "{:>label_w$} {bar:<width$} {:.2} GPU-h ({used_text})",
            label(key),
            s.allocated_gpu_ms as f64 / 3_600_000.0,
        );
    }
    let _ = writeln!(
        out,
        "{:>label_w$} {USED} used GPU-hours  {IDLE} allocated but idle  {UNMEASURED} not measured",
        ""
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(alloc_h: f64, used_h: f64) -> Sums {
        Sums {
            allocated_gpu_ms: (alloc_h * 3_600_000.0) as u64,
            used_gpu_ms: (used_h * 3_600_000.0) as u64,
            ..Sums::default()
        }
    }

    #[test]
    fn bars_scale_to_the_largest_and_split_used_from_idle() {
        let mut g = BTreeMap::new();
        g.insert(vec!["physics".to_string()], sums(100.0, 25.0));
        g.insert(vec!["chem".to_string()], sums(50.0, 50.0));
        g.insert(vec![String::new()], sums(0.0, 0.0));
        let chart = render_chart(&g, 8);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines[0], " (none)          0.00 GPU-h (0.00 used)");
        assert_eq!(lines[1], "   chem ████     50.00 GPU-h (50.00 used)");
        assert_eq!(lines[2], "physics ██░░░░░░ 100.00 GPU-h (25.00 used)");
        assert!(lines[3].ends_with("█ used GPU-hours  ░ allocated but idle  ? not measured"));
    }

    #[test]
    fn unmeasured_time_is_neither_used_nor_idle() {
        let mut g = BTreeMap::new();
        // a MIG slice's group: nothing measured
        let slice = Sums {
            used_measured_gpu_ms: Some(0),
            ..sums(100.0, 0.0)
        };
        g.insert(vec!["mig".to_string()], slice);
        // half measured (a whole GPU beside a slice), a quarter of it used
        let half = Sums {
            used_measured_gpu_ms: Some(50 * 3_600_000),
            ..sums(100.0, 25.0)
        };
        g.insert(vec!["mix".to_string()], half);
        let chart = render_chart(&g, 8);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines[0], "mig ???????? 100.00 GPU-h (used unknown)");
        assert_eq!(lines[1], "mix ██░░???? 100.00 GPU-h (25.00 used)");
    }

    #[test]
    fn no_rows_gives_just_the_legend() {
        let chart = render_chart(&BTreeMap::new(), 10);
        assert_eq!(chart.lines().count(), 1);
    }
}
