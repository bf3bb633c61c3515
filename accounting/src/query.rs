//! Rollup queries: filter rows by day range and fields, sum them per group.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::day::{format_day, parse_day};
use crate::rollup::{RollupKey, RollupValue};
use crate::store::{Store, StoreError};

/// A field rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupField {
    /// Slurm cluster.
    Cluster,
    /// Slurm account.
    Account,
    /// User name.
    User,
    /// Slurm partition.
    Partition,
    /// GPU model.
    GpuModel,
    /// UTC day.
    Day,
}

impl GroupField {
    fn parse(s: &str) -> Option<GroupField> {
        Some(match s {
            "cluster" => GroupField::Cluster,
            "account" => GroupField::Account,
            "user" => GroupField::User,
            "partition" => GroupField::Partition,
            "gpu" | "gpu_model" => GroupField::GpuModel,
            "day" => GroupField::Day,
            _ => return None,
        })
    }
}

/// A rollup query: inclusive UTC day range, exact-match filters, group-by fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupQuery {
    /// First day (inclusive).
    pub first_day: u32,
    /// Last day (inclusive).
    pub last_day: u32,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only this partition.
    pub partition: Option<String>,
    /// Only this GPU model.
    pub gpu_model: Option<String>,
    /// Fields to group by; none sums everything into one row.
    pub group_by: Vec<GroupField>,
}

/// Why a query string is refused; names the parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{param}: {message}")]
pub struct QueryError {
    /// The offending parameter.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn qerr(param: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_string(),
        message: message.into(),
    }
}

/// Decodes `%XX` and `+` in a query-string component.
pub(crate) fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl RollupQuery {
    /// Parses `start=YYYY-MM-DD&end=YYYY-MM-DD&cluster=&account=&user=&partition=&gpu_model=
    /// &group_by=account,user,...`; every parameter is optional, unknown ones are refused.
    pub fn parse(query: &str) -> Result<RollupQuery, QueryError> {
        let mut q = RollupQuery {
            first_day: 0,
            last_day: u32::MAX,
            cluster: None,
            account: None,
            user: None,
            partition: None,
            gpu_model: None,
            group_by: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v).ok_or_else(|| qerr(k, "bad percent-encoding"))?;
            let day = |v: &str| {
                parse_day(v).ok_or_else(|| qerr(k, format!("{v:?} is not a YYYY-MM-DD date")))
            };
            match k {
                "start" => q.first_day = day(&v)?,
                "end" => q.last_day = day(&v)?,
                "cluster" => q.cluster = Some(v),
                "account" => q.account = Some(v),
                "user" => q.user = Some(v),
                "partition" => q.partition = Some(v),
                "gpu_model" => q.gpu_model = Some(v),
                "group_by" => {
                    for f in v.split(',').filter(|f| !f.is_empty()) {
                        let g = GroupField::parse(f).ok_or_else(|| {
                            qerr(k, format!("unknown field {f:?} (cluster, account, user, partition, gpu_model, day)"))
                        })?;
                        if !q.group_by.contains(&g) {
                            q.group_by.push(g);
                        }
                    }
                }
                _ => return Err(qerr(k, "unknown parameter")),
            }
        }
        if q.first_day > q.last_day {
            return Err(qerr("end", "is before start"));
        }
        Ok(q)
    }

    fn matches(&self, k: &RollupKey) -> bool {
        let ok = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        ok(&self.cluster, &k.cluster)
            && ok(&self.account, &k.account)
            && ok(&self.user, &k.user)
            && ok(&self.partition, &k.partition)
            && ok(&self.gpu_model, &k.gpu_model)
    }
}

/// One result row: the grouped fields (others `None`) and the sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RollupRow {
    /// Cluster, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Account, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// User, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Partition, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// GPU model, when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Day (`YYYY-MM-DD`), when grouped by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Allocated GPU-ms.
    pub allocated_gpu_ms: u64,
    /// Used GPU-ms.
    pub used_gpu_ms: u64,
    /// Energy, mJ.
    pub energy_mj: u64,
    /// Jobs.
    pub jobs: u64,
}

/// Runs a query against a store; rows sorted by their group fields.
pub fn run(store: &dyn Store, q: &RollupQuery) -> Result<Vec<RollupRow>, StoreError> {
    let mut groups: BTreeMap<RollupRow, RollupValue> = BTreeMap::new();
    store.for_each_rollup(q.first_day, q.last_day, &mut |k, v| {
        if !q.matches(&k) {
            return;
        }
        let mut row = RollupRow::default();
        for g in &q.group_by {
            match g {
                GroupField::Cluster => row.cluster = Some(k.cluster.clone()),
                GroupField::Account => row.account = Some(k.account.clone()),
                GroupField::User => row.user = Some(k.user.clone()),
                GroupField::Partition => row.partition = Some(k.partition.clone()),
                GroupField::GpuModel => row.gpu_model = Some(k.gpu_model.clone()),
                GroupField::Day => row.day = Some(format_day(k.day)),
            }
        }
        groups.entry(row).or_default().add(&v);
    })?;
    Ok(groups
        .into_iter()
        .map(|(mut row, v)| {
            row.allocated_gpu_ms = v.allocated_gpu_ms;
            row.used_gpu_ms = v.used_gpu_ms;
            row.energy_mj = v.energy_mj;
            row.jobs = v.jobs;
            row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_group_by() {
        let q = RollupQuery::parse(
            "start=2024-03-01&end=2024-03-31&account=phys%20ics&user=a+b&group_by=user,day,user",
        )
        .unwrap();
        assert_eq!(q.first_day, 19_783);
        assert_eq!(q.last_day, 19_813);
        assert_eq!(q.account.as_deref(), Some("phys ics"));
        assert_eq!(q.user.as_deref(), Some("a b"));
        assert_eq!(q.group_by, vec![GroupField::User, GroupField::Day]);
        assert_eq!(RollupQuery::parse("").unwrap().last_day, u32::MAX);
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        assert_eq!(
            RollupQuery::parse("start=yesterday").unwrap_err().param,
            "start"
        );
        assert_eq!(
            RollupQuery::parse("group_by=colour").unwrap_err().param,
            "group_by"
        );
        assert_eq!(
            RollupQuery::parse("colour=red").unwrap_err().param,
            "colour"
        );
        assert_eq!(RollupQuery::parse("user=%zz").unwrap_err().param, "user");
        assert_eq!(
            RollupQuery::parse("start=2024-03-02&end=2024-03-01")
                .unwrap_err()
                .param,
            "end"
        );
    }
}
