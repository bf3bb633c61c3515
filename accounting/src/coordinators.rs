//! Account coordinators: users who read their accounts' jobs and totals (and their own),
//! nothing else. They come from acctd.toml (`[coordinators] accounts`) and, with
//! `slurm = true`, from Slurm's own coordinators in slurmdbd, read through
//! `sacctmgr -n -P show account withcoord format=Account,Coordinators` every `refresh_s`.
//!
//! Slurm makes a coordinator of an account a coordinator of its sub-accounts too, and lists
//! them there itself, so the list is taken as sacctmgr prints it. A failed read keeps the
//! last good list (logged); until the first read, only the configured ones count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::site::CoordinatorConfig;

/// Users to the accounts they coordinate.
pub type CoordinatorMap = BTreeMap<String, BTreeSet<String>>;

/// Why Slurm's coordinators could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// sacctmgr could not be run or failed.
    #[error("sacctmgr show account withcoord: {0}")]
    Sacctmgr(String),
    /// A line of its output is not `ACCOUNT|USER[,USER...]`.
    #[error("sacctmgr show account withcoord: line {line}: {text:?} is not ACCOUNT|COORDINATORS")]
    Line {
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Reads `sacctmgr -n -P show account withcoord format=Account,Coordinators`: one line per
/// account, `ACCOUNT|USER,USER` (no coordinator: `ACCOUNT|`).
pub fn parse_withcoord(out: &str) -> Result<CoordinatorMap, CoordinatorError> {
    let mut map = CoordinatorMap::new();
    for (i, line) in out.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || CoordinatorError::Line {
            line: i + 1,
            text: line.to_string(),
        };
        let (account, users) = line.split_once('|').ok_or_else(bad)?;
        // -P ends no line with a '|' (only -p does), but take either
        let users = users.strip_suffix('|').unwrap_or(users);
        if account.is_empty() || users.contains('|') {
            return Err(bad());
        }
        for u in users.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            map.entry(u.to_string())
                .or_default()
                .insert(account.to_string());
        }
    }
    Ok(map)
}

/// The configured coordinators, as [`CoordinatorMap`].
fn configured(cfg: &CoordinatorConfig) -> CoordinatorMap {
    let mut map = CoordinatorMap::new();
    for (account, users) in &cfg.accounts {
        for u in users {
            map.entry(u.clone()).or_default().insert(account.clone());
        }
    }
    map
}

/// The coordinators acctd knows now: the configured ones joined with Slurm's last read.
#[derive(Debug, Default)]
pub struct Coordinators {
    configured: CoordinatorMap,
    slurm: RwLock<CoordinatorMap>,
}

impl Coordinators {
    /// From acctd.toml's `[coordinators]` (Slurm's are added by [`Coordinators::set_slurm`]).
    pub fn new(cfg: &CoordinatorConfig) -> Coordinators {
        Coordinators {
            configured: configured(cfg),
            slurm: RwLock::new(CoordinatorMap::new()),
        }
    }

    /// Replaces Slurm's coordinators with a new read.
    pub fn set_slurm(&self, map: CoordinatorMap) {
        match self.slurm.write() {
            Ok(mut g) => *g = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
    }

    /// The accounts `user` coordinates (empty: none).
    pub fn accounts_of(&self, user: &str) -> BTreeSet<String> {
        let mut out = self.configured.get(user).cloned().unwrap_or_default();
        let slurm = match self.slurm.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(a) = slurm.get(user) {
            out.extend(a.iter().cloned());
        }
        out
    }
}

/// Runs sacctmgr once (under a 30 s deadline) and reads its answer.
pub async fn read_slurm(slurm_bin: Option<&PathBuf>) -> Result<CoordinatorMap, CoordinatorError> {
    let program = slurm_bin.map_or_else(|| PathBuf::from("sacctmgr"), |d| d.join("sacctmgr"));
    let run = tokio::process::Command::new(&program)
        .args([
            "-n",
            "-P",
            "show",
            "account",
            "withcoord",
            "format=Account,Coordinators",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| CoordinatorError::Sacctmgr("no answer within 30 s".into()))?
        .map_err(|e| CoordinatorError::Sacctmgr(format!("{}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(CoordinatorError::Sacctmgr(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_withcoord(&String::from_utf8_lossy(&out.stdout))
}

/// Reads Slurm's coordinators every `refresh` into `coordinators`, for ever.
pub async fn refresh_slurm(
    coordinators: Arc<Coordinators>,
    slurm_bin: Option<PathBuf>,
    refresh: Duration,
) {
    loop {
        match read_slurm(slurm_bin.as_ref()).await {
            Ok(map) => {
                tracing::debug!(coordinators = map.len(), "read Slurm's coordinators");
                coordinators.set_slurm(map);
            }
            Err(e) => tracing::error!("{e}; keeping the last list of Slurm's coordinators"),
        }
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withcoord_lines() {
        let map = parse_withcoord("root|\nphysics|alice,bob\nchem|bob\n\n").unwrap();
        assert_eq!(
            map.get("bob"),
            Some(&BTreeSet::from(["chem".to_string(), "physics".to_string()]))
        );
        assert_eq!(map.get("alice").map(BTreeSet::len), Some(1));
        assert!(!map.contains_key(""));
        for bad in ["physics", "|alice", "a|b|c"] {
            assert!(parse_withcoord(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configured_and_slurm_coordinators_join() {
        let cfg = CoordinatorConfig {
            slurm: true,
            refresh_s: 1,
            accounts: BTreeMap::from([(
                "physics".to_string(),
                BTreeSet::from(["alice".to_string()]),
            )]),
        };
        let c = Coordinators::new(&cfg);
        assert_eq!(c.accounts_of("alice").len(), 1);
        assert!(c.accounts_of("bob").is_empty());
        c.set_slurm(parse_withcoord("chem|alice,bob").unwrap());
        assert_eq!(c.accounts_of("alice").len(), 2);
        assert_eq!(c.accounts_of("bob").len(), 1);
        c.set_slurm(CoordinatorMap::new());
        assert!(c.accounts_of("bob").is_empty());
    }
}
