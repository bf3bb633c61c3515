//! The store the unit tests run against: sled by default, MariaDB with
//! `SGPU_TEST_STORE=mariadb` (a private server per test process, one database per
//! [`Fixture`]; see [`crate::mariadb_server`]). CI runs the crate's tests once each way.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::mariadb_server::MariaDb;
use crate::mysql_store::MysqlStore;
use crate::sled_store::SledStore;
use crate::store::Store;

/// Which store `SGPU_TEST_STORE` names; anything but `sled` (or unset) and `mariadb` fails
/// the test, so a typo never runs the suite against the wrong store.
pub fn mariadb() -> bool {
    match std::env::var("SGPU_TEST_STORE").as_deref() {
        Err(_) | Ok("" | "sled") => false,
        Ok("mariadb") => true,
        Ok(other) => panic!("SGPU_TEST_STORE={other}: use sled or mariadb"),
    }
}

/// The process's MariaDB server, started on first use and stopped (its directory removed)
/// when the process ends.
pub fn server() -> &'static Mutex<MariaDb> {
    static SERVER: OnceLock<Mutex<MariaDb>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sgpu-mariadb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Mutex::new(
            MariaDb::create(&dir, None, true)
                .unwrap_or_else(|e| panic!("SGPU_TEST_STORE=mariadb: {e}")),
        )
    })
}

/// One test's store: a sled directory, or a database of its own on the process's server.
pub struct Fixture {
    dir: tempfile::TempDir,
    url: Option<String>,
}

impl Fixture {
    /// A new, empty store of the kind `SGPU_TEST_STORE` names.
    pub fn new() -> Fixture {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        let url = mariadb().then(|| {
            let db = format!("t{}", N.fetch_add(1, Ordering::SeqCst));
            let server = server().lock().unwrap_or_else(|e| e.into_inner());
            server.sql(&format!("CREATE DATABASE `{db}`")).unwrap();
            server.url(&db, "root")
        });
        Fixture { dir, url }
    }

    /// Opens the store (again: a reopen sees what was acknowledged before).
    pub fn open(&self) -> Box<dyn Store> {
        match &self.url {
            Some(url) => Box::new(MysqlStore::connect(url, None).unwrap()),
            None => Box::new(SledStore::open(&self.dir.path().join("db")).unwrap()),
        }
    }
}
