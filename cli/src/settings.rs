//! The command's settings, resolved once: the raw global flags (`--config`, `--acctd`), the
//! environment (`$SGPU_CONFIG`, `$SGPU_ACCTD_URL`, `$SGPU_ACCTD_AUTH`) and sgpu.toml become
//! one validated [`Settings`] before a subcommand runs (raw arguments to settings, as ripgrep
//! does), so no subcommand loads sgpu.toml or picks acctd's URL on its own.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sgpu_acct_client::{Client, ClientAuth};
use sgpu_nodelib::config::{AcctAuth, Config};

use crate::admin::acctd;

/// Whether an sgpu.toml that `$SGPU_CONFIG` names must exist (one `--config` names must,
/// always; the default path may be absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvConfig {
    /// A missing file is an error (report, jobs, job, conflicts).
    Required,
    /// A missing file means built-in defaults (the admin commands: drain, resume, status,
    /// history, breaker).
    Optional,
}

/// What every acctd- or Slurm-facing subcommand reads.
#[derive(Debug)]
pub struct Settings {
    /// The sgpu.toml read: `--config`, else `$SGPU_CONFIG`, else the default path.
    pub config_path: PathBuf,
    /// Its content: built-in defaults when nobody named a file and the default one is absent.
    pub config: Config,
    /// acctd's URL: `--acctd`, else `[accounting] url`, else `$SGPU_ACCTD_URL`, else
    /// [`acctd::DEFAULT_ACCTD_URL`].
    pub acctd_url: String,
    /// How requests to acctd authenticate (MUNGE unless sgpu.toml or the environment says
    /// `none`).
    pub acctd_auth: ClientAuth,
}

impl Settings {
    /// Resolves the global flags; an sgpu.toml that is unreadable, untrusted or invalid, or
    /// named and missing (by `--config`, or by `$SGPU_CONFIG` where `env` says so), is an
    /// error that names the file.
    pub fn resolve(
        config: Option<&Path>,
        acctd_url: Option<&str>,
        env: EnvConfig,
    ) -> anyhow::Result<Settings> {
        let (config_path, named) = Config::locate(config);
        let must_exist = config.is_some() || (named && env == EnvConfig::Required);
        let config = if must_exist || config_path.exists() {
            Config::load(&config_path)
                .with_context(|| format!("{}: fix it or pass --config", config_path.display()))?
        } else {
            Config::default()
        };
        let from_file = acctd::AcctdSettings {
            url: config.accounting.url.clone(),
            no_auth: config.accounting.auth == AcctAuth::None,
            munge_socket: config.accounting.munge_socket.clone(),
        };
        let (acctd_url, acctd_auth) =
            acctd::resolve(acctd_url, &from_file, |k| std::env::var(k).ok());
        Ok(Settings {
            config_path,
            config,
            acctd_url,
            acctd_auth,
        })
    }

    /// A client for acctd.
    pub fn acctd_client(&self) -> anyhow::Result<Client> {
        acctd::client(&self.acctd_url, self.acctd_auth.clone()).map_err(anyhow::Error::msg)
    }
}
