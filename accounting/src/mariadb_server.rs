//! A private MariaDB server in a directory of its own (`mariadb-install-db`, then `mysqld`
//! from the distribution's `mariadb-server`), for the tests and benchmarks that run
//! [`crate::mysql_store::MysqlStore`] against a real server, and for trying the MySQL store
//! without a site database. It never touches the system's server: its own datadir, socket,
//! and a loopback port only when asked for one.
//!
//! `mysqld` runs under a small `sh` keeper whose standard input is a pipe from this process:
//! when the pipe closes (this process ends, however it ends) the keeper stops `mysqld` and,
//! for a server started with `remove_on_exit`, removes the directory. So a test that panics
//! or is killed leaves no server behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the server could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A program could not be run or failed.
    #[error("{what}: {message} (is mariadb-server installed? `apt-get install mariadb-server`)")]
    Program {
        /// What was run.
        what: String,
        /// What went wrong (its error output).
        message: String,
    },
    /// A file of the server's directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("mysqld in {dir} did not answer within {secs} s; its log: {log}")]
    NotStarted {
        /// The server's directory.
        dir: PathBuf,
        /// Seconds waited.
        secs: u64,
        /// The log's last lines.
        log: String,
    },
}

/// How a running server is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: a clean shutdown.
    Clean,
    /// SIGKILL: the server dies as in a crash (InnoDB recovers at the next start).
    Kill,
}

/// A private MariaDB server (see the module documentation).
pub struct MariaDb {
    dir: PathBuf,
    port: Option<u16>,
    remove_on_exit: bool,
    buffer_pool_mib: u32,
    keeper: Option<(Child, ChildStdin)>,
}

/// The programs, found where Debian installs them.
fn program(names: &[&str]) -> PathBuf {
    for n in names {
        for d in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let p = Path::new(d).join(n);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from(names[0])
}

impl MariaDb {
    /// Creates a server in `dir` (which must not hold one yet), listening on its socket
    /// `dir/mysqld.sock` and, with `port`, on 127.0.0.1:`port`, and starts it. The root
    /// user has no password over the socket (`--auth-root-authentication-method=normal`).
    pub fn create(
        dir: &Path,
        port: Option<u16>,
        remove_on_exit: bool,
    ) -> Result<MariaDb, ServerError> {
        MariaDb::create_sized(dir, port, remove_on_exit, 256)
    }

    /// [`MariaDb::create`] with an InnoDB buffer pool of `buffer_pool_mib` MiB (a benchmark
    /// whose tables should stay in memory, as on a database server sized for them).
    pub fn create_sized(
        dir: &Path,
        port: Option<u16>,
        remove_on_exit: bool,
        buffer_pool_mib: u32,
    ) -> Result<MariaDb, ServerError> {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let install = program(&["mariadb-install-db", "mysql_install_db"]);
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ServerError::Program {
                what: install.display().to_string(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ServerError::Program {
                what: install.display().to_string(),
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut server = MariaDb {
            dir: dir.to_path_buf(),
            port,
            remove_on_exit,
            buffer_pool_mib,
            keeper: None,
        };
        server.start()?;
        Ok(server)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Its TCP port, if it listens on one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Starts `mysqld` (after [`MariaDb::stop`]), and waits until it answers.
    pub fn start(&mut self) -> Result<(), ServerError> {
        if self.keeper.is_some() {
            return Ok(());
        }
        let mysqld = program(&["mariadbd", "mysqld"]);
        let d = &self.dir;
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", d.join("data").display()),
            format!("--socket={}", self.socket().display()),
            format!("--pid-file={}", d.join("mysqld.pid").display()),
            format!("--log-error={}", d.join("mysqld.log").display()),
            format!("--tmpdir={}", d.display()),
            "--user=root".into(),
            "--skip-log-bin".into(),
            format!("--innodb-buffer-pool-size={}M", self.buffer_pool_mib),
            "--max-connections=200".into(),
        ];
        match self.port {
            Some(p) => {
                args.push("--bind-address=127.0.0.1".into());
                args.push(format!("--port={p}"));
            }
            None => args.push("--skip-networking".into()),
        }
        // The keeper: mysqld in the background; a line on stdin (or its end) says how to
        // stop it.
        let script = r#"
"$@" &
pid=$!
read how || how=EXIT
sig=$how
[ "$how" = EXIT ] && sig=TERM
kill -"$sig" "$pid" 2>/dev/null
wait "$pid"
if [ "$how" = EXIT ] && [ -n "$SGPU_MARIADB_REMOVE" ]; then rm -rf "$SGPU_MARIADB_REMOVE"; fi
exit 0
"#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sgpu-mariadb")
            .arg(&mysqld)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.remove_on_exit {
            cmd.env("SGPU_MARIADB_REMOVE", &self.dir);
        }
        let mut child = cmd.spawn().map_err(|e| ServerError::Program {
            what: mysqld.display().to_string(),
            message: e.to_string(),
        })?;
        let stdin = child.stdin.take().ok_or_else(|| ServerError::Program {
            what: "sh".into(),
            message: "no stdin pipe".into(),
        })?;
        self.keeper = Some((child, stdin));
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until the server accepts a connection on its socket.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        let started = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            let exited = match &mut self.keeper {
                Some((child, _)) => matches!(child.try_wait(), Ok(Some(_))),
                None => true,
            };
            if exited || started.elapsed() > limit {
                return Err(ServerError::NotStarted {
                    dir: self.dir.clone(),
                    secs: started.elapsed().as_secs(),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("mysqld.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Stops the server and waits until it has exited; the data stays for [`MariaDb::start`].
    pub fn stop(&mut self, how: Stop) {
        if let Some((mut child, mut stdin)) = self.keeper.take() {
            let word = match how {
                Stop::Clean => "TERM\n",
                Stop::Kill => "KILL\n",
            };
            let _ = stdin.write_all(word.as_bytes());
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Runs SQL (statements separated by `;`) as root over the socket, returning the rows
    /// of every result, tab-separated, a line each. It talks to the server through
    /// `mysql_async` in this process, not through the `mariadb` client: a test process that
    /// forks while another thread reopens a sled database can make sled's file lock fail.
    pub fn sql(&self, sql: &str) -> Result<String, ServerError> {
        use mysql_async::prelude::Queryable;
        let failed = |e: &dyn std::fmt::Display| ServerError::Program {
            what: format!("SQL {sql:?} on {}", self.socket().display()),
            message: e.to_string(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(&e))?;
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(self.socket().display().to_string()))
            .user(Some("root"));
        rt.block_on(async {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let mut out = String::new();
            let mut res = conn.query_iter(sql).await?;
            loop {
                while let Some(row) = res.next().await? {
                    let cells: Vec<String> = row
                        .unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql_async::Value::NULL => "NULL".to_string(),
                            mysql_async::Value::Bytes(b) => {
                                String::from_utf8_lossy(&b).into_owned()
                            }
                            other => other.as_sql(true),
                        })
                        .collect();
                    out.push_str(&cells.join("\t"));
                    out.push('\n');
                }
                if res.is_empty() {
                    break;
                }
            }
            drop(res);
            conn.disconnect().await?;
            Ok::<String, mysql_async::Error>(out)
        })
        .map_err(|e| failed(&e))
    }

    /// Creates database `db` and a user `user`@`localhost` (and `@127.0.0.1`) with
    /// `password` and every right on it; returns the store URL over the socket
    /// (`mysql://user@localhost/db?socket=...`).
    pub fn create_database(
        &self,
        db: &str,
        user: &str,
        password: &str,
    ) -> Result<String, ServerError> {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
        let (u, p) = (quote(user), quote(password));
        self.sql(&format!(
            "CREATE DATABASE IF NOT EXISTS `{db}`; \
             CREATE USER IF NOT EXISTS '{u}'@'localhost' IDENTIFIED BY '{p}'; \
             CREATE USER IF NOT EXISTS '{u}'@'127.0.0.1' IDENTIFIED BY '{p}'; \
             GRANT ALL ON `{db}`.* TO '{u}'@'localhost'; \
             GRANT ALL ON `{db}`.* TO '{u}'@'127.0.0.1';"
        ))?;
        Ok(self.url(db, user))
    }

    /// The store URL of database `db` for `user` over the socket.
    pub fn url(&self, db: &str, user: &str) -> String {
        format!(
            "mysql://{user}@localhost/{db}?socket={}",
            self.socket().display()
        )
    }

    /// The store URL of database `db` for `user` over TCP (a server started with a port).
    pub fn tcp_url(&self, db: &str, user: &str) -> Option<String> {
        self.port
            .map(|p| format!("mysql://{user}@127.0.0.1:{p}/{db}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.keeper.take() {
            // end of input: the keeper stops mysqld, then removes the directory if asked
            drop(stdin);
            let _ = child.wait();
        }
    }
}
