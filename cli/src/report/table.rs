//! sacct-style output: `-o/--format` field lists with `%width`, the aligned table (header,
//! dashes line), `-p/--parsable` (`|` after every field), `-P/--parsable2` (`|` between
//! fields) and `-n/--noheader`.

/// A column `sgpu report`, `sgpu jobs` or `sgpu job` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// Slurm cluster.
    Cluster,
    /// Slurm account.
    Account,
    /// User name.
    User,
    /// Slurm partition.
    Partition,
    /// GPU model (the parent GPU's for a MIG slice when the profile is shown apart).
    GpuModel,
    /// MIG profile (empty for whole GPUs); in `sgpu job` with the slice's share of its GPU.
    MigProfile,
    /// Allocated slice-hours of a MIG slice (device-hours; GPUHours counts them by share).
    SliceHours,
    /// Day, ISO week or month (UTC), when grouped by one.
    Period,
    /// Jobs ended in the window.
    Jobs,
    /// Job id.
    JobId,
    /// Start time.
    Start,
    /// End time.
    End,
    /// Elapsed time.
    Elapsed,
    /// Nodes.
    NodeList,
    /// Node (per-GPU rows).
    Node,
    /// GPU index on its node.
    GpuIndex,
    /// GPU UUID.
    Uuid,
    /// GPUs allocated.
    Gpus,
    /// Allocated GPU-hours.
    GpuHours,
    /// Used GPU-hours (healthd's samples).
    UsedGpuHours,
    /// Allocated GPU-hours over which used time was measured (MIG slices have no utilization
    /// samples); `UsedGPUHours` and `GPUUtil` are over these only.
    MeasuredGpuHours,
    /// Used / allocated (measured), percent.
    GpuUtil,
    /// Energy, kWh.
    EnergyKwh,
    /// Mean power per allocated GPU, W.
    AvgPowerW,
    /// Peak GPU memory, MiB.
    MemPeakMib,
    /// Cost from `[prices]`.
    Cost,
    /// RUNNING or COMPLETED.
    State,
    /// Idle GPU-hours (allocated, idle by healthd's detection); empty when not measured.
    IdleGpuHours,
    /// GPU-hours wasted: idle GPU-hours where measured, else allocated minus used.
    WasteGpuHours,
    /// What `WasteGPUHours` is: `idle`, `alloc-used` (over measured time), or `unmeasured`
    /// (neither measured: waste unknown, empty).
    WasteBy,
}

/// Every field with its name (as printed) and default width.
const FIELDS: &[(Field, &str, usize)] = &[
    (Field::Cluster, "Cluster", 10),
    (Field::Account, "Account", 10),
    (Field::User, "User", 10),
    (Field::Partition, "Partition", 10),
    (Field::GpuModel, "GPUModel", 22),
    (Field::MigProfile, "Profile", 14),
    (Field::SliceHours, "SliceHours", 10),
    (Field::Period, "Period", 10),
    (Field::Jobs, "Jobs", 6),
    (Field::JobId, "JobID", 12),
    (Field::Start, "Start", 19),
    (Field::End, "End", 19),
    (Field::Elapsed, "Elapsed", 10),
    (Field::NodeList, "NodeList", 15),
    (Field::Node, "Node", 10),
    (Field::GpuIndex, "GPU", 4),
    (Field::Uuid, "UUID", 20),
    (Field::Gpus, "GPUs", 5),
    (Field::GpuHours, "GPUHours", 10),
    (Field::UsedGpuHours, "UsedGPUHours", 12),
    (Field::MeasuredGpuHours, "MeasuredGPUHours", 16),
    (Field::GpuUtil, "GPUUtil", 7),
    (Field::EnergyKwh, "EnergyKWh", 10),
    (Field::AvgPowerW, "AvgPowerW", 9),
    (Field::MemPeakMib, "MemPeakMiB", 10),
    (Field::Cost, "Cost", 10),
    (Field::State, "State", 10),
    (Field::IdleGpuHours, "IdleGPUHours", 12),
    (Field::WasteGpuHours, "WasteGPUHours", 13),
    (Field::WasteBy, "WasteBy", 10),
];

impl Field {
    /// The field's printed name.
    pub fn name(self) -> &'static str {
        FIELDS.iter().find(|f| f.0 == self).map_or("?", |f| f.1)
    }

    fn default_width(self) -> usize {
        FIELDS.iter().find(|f| f.0 == self).map_or(10, |f| f.2)
    }

    /// The field a name stands for (case-insensitive; `GPU` and `Model` mean the model in
    /// reports).
    pub fn parse(name: &str) -> Option<Field> {
        let lower = name.to_ascii_lowercase();
        if let Some(f) = FIELDS.iter().find(|f| f.1.to_ascii_lowercase() == lower) {
            return Some(f.0);
        }
        Field::alias(&lower)
    }

    fn alias(lower: &str) -> Option<Field> {
        Some(match lower {
            "model" | "gpu_model" | "gpu" => Field::GpuModel,
            "mig_profile" | "mig" => Field::MigProfile,
            "jobid" | "job" => Field::JobId,
            "nodes" => Field::NodeList,
            "energy" => Field::EnergyKwh,
            "power" => Field::AvgPowerW,
            "idle" | "idlegpuhours" => Field::IdleGpuHours,
            "waste" => Field::WasteGpuHours,
            _ => return None,
        })
    }
}

/// One output column: a field, its width, and whether it is left-justified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The field.
    pub field: Field,
    /// Width in characters.
    pub width: usize,
    /// `%-N`: left-justified (sacct right-justifies by default).
    pub left: bool,
}

/// A `-o/--format` that cannot be printed; names the field or width and lists what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A field this command does not print.
    #[error("--format: unknown field {name:?}; valid: {valid}")]
    UnknownField {
        /// The name given.
        name: String,
        /// The fields this command prints, comma-separated.
        valid: String,
    },
    /// A `%N` that is not a positive number.
    #[error("--format: {item:?}: width {width:?} is not a positive number")]
    BadWidth {
        /// The item, e.g. `Account%x`.
        item: String,
        /// The width given.
        width: String,
    },
    /// Nothing but commas and blanks.
    #[error("--format names no field")]
    Empty,
}

/// Parses `-o/--format`: comma-separated field names, each with an optional `%N` (width) or
/// `%-N` (width, left-justified), case-insensitive. `allowed` lists the fields this command
/// prints; others are refused with the list.
pub fn parse_format(spec: &str, allowed: &[Field]) -> Result<Vec<Column>, FormatError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, width) = match item.split_once('%') {
            Some((n, w)) => (n, Some(w)),
            None => (item, None),
        };
        let valid = || {
            allowed
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        let field = Field::parse(name)
            .filter(|f| allowed.contains(f))
            .or_else(|| Field::alias(&name.to_ascii_lowercase()).filter(|f| allowed.contains(f)))
            .ok_or_else(|| FormatError::UnknownField {
                name: name.to_string(),
                valid: valid(),
            })?;
        let (width, left) = match width {
            None => (field.default_width().max(field.name().len()), false),
            Some(w) => {
                let (w, left) = match w.strip_prefix('-') {
                    Some(w) => (w, true),
                    None => (w, false),
                };
                let n: usize =
                    w.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| FormatError::BadWidth {
                            item: item.to_string(),
                            width: w.to_string(),
                        })?;
                (n, left)
            }
        };
        out.push(Column { field, width, left });
    }
    if out.is_empty() {
        return Err(FormatError::Empty);
    }
    Ok(out)
}

/// How rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns like sacct.
    Table,
    /// `-p`: every field followed by `|`.
    Parsable,
    /// `-P`: fields separated by `|`.
    Parsable2,
}

fn fit(value: &str, c: &Column) -> String {
    let n = value.chars().count();
    if n > c.width {
        // sacct marks a truncated value with a trailing '+'.
        let mut s: String = value.chars().take(c.width.saturating_sub(1)).collect();
        s.push('+');
        s
    } else if c.left {
        format!("{value:<w$}", w = c.width)
    } else {
        format!("{value:>w$}", w = c.width)
    }
}

/// Renders rows (one value per column, in column order) with an optional header.
pub fn render(columns: &[Column], rows: &[Vec<String>], style: Style, header: bool) -> String {
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let l = match style {
            Style::Table => cells.join(" "),
            Style::Parsable => cells.iter().map(|c| format!("{c}|")).collect(),
            Style::Parsable2 => cells.join("|"),
        };
        out.push_str(l.trim_end());
        out.push('\n');
    };
    let table = style == Style::Table;
    if header {
        line(
            columns
                .iter()
                .map(|c| {
                    if table {
                        fit(c.field.name(), c)
                    } else {
                        c.field.name().to_string()
                    }
                })
                .collect(),
        );
        if table {
            line(columns.iter().map(|c| "-".repeat(c.width)).collect());
        }
    }
    for row in rows {
        line(
            columns
                .iter()
                .zip(row)
                .map(|(c, v)| if table { fit(v, c) } else { v.clone() })
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Field] = &[
        Field::Account,
        Field::User,
        Field::GpuHours,
        Field::GpuModel,
        Field::Cost,
    ];

    #[test]
    fn formats_parse_case_insensitively_with_widths() {
        let c = parse_format("account,USER%4,GPUHours%-12,gpu", ALL).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (c[0].field, c[0].width, c[0].left),
            (Field::Account, 10, false)
        );
        assert_eq!((c[1].field, c[1].width), (Field::User, 4));
        assert_eq!(
            (c[2].field, c[2].width, c[2].left),
            (Field::GpuHours, 12, true)
        );
        assert_eq!(c[3].field, Field::GpuModel);
        let e = parse_format("Account,Colour", ALL).unwrap_err().to_string();
        assert!(
            e.contains("\"Colour\"") && e.contains("Account,User,GPUHours"),
            "{e}"
        );
        assert!(
            parse_format("Account%x", ALL)
                .unwrap_err()
                .to_string()
                .contains("width")
        );
        assert!(parse_format("Account%0", ALL).is_err());
        assert!(parse_format(" , ", ALL).is_err());
        assert!(
            parse_format("JobID", ALL)
                .unwrap_err()
                .to_string()
                .contains("JobID")
        );
    }

    #[test]
    fn table_like_sacct() {
        let cols = parse_format("Account,User%6,GPUHours%-9", ALL).unwrap();
        let rows = vec![
            vec!["physics".into(), "alice".into(), "12.50".into()],
            vec!["chemistry-lab".into(), "bobbybobby".into(), "0.25".into()],
        ];
        assert_eq!(
            render(&cols, &rows, Style::Table, true),
            "   Account   User GPUHours\n\
             ---------- ------ ---------\n   \
                physics  alice 12.50\n\
             chemistry+ bobby+ 0.25\n"
        );
        assert_eq!(
            render(&cols, &rows, Style::Parsable2, true),
            "Account|User|GPUHours\nphysics|alice|12.50\nchemistry-lab|bobbybobby|0.25\n"
        );
        assert_eq!(
            render(&cols, &rows[..1], Style::Parsable, false),
            "physics|alice|12.50|\n"
        );
        assert_eq!(render(&cols, &[], Style::Table, false), "");
    }
}
