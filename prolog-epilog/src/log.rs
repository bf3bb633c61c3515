//! Logging for programs slurmd starts: syslog (journald on systemd nodes) and stderr.
//!
//! slurmd discards what Prolog/Epilog print, so everything that matters goes to syslog as
//! well, under the program's name.

use std::ffi::CString;

/// Writes log lines to syslog and stderr.
#[derive(Debug)]
pub struct Logger {
    // syslog keeps the pointer given to openlog: the string lives as long as the logger
    _ident: CString,
    name: &'static str,
}

impl Logger {
    /// Opens syslog under `name` (facility daemon).
    pub fn open(name: &'static str) -> Logger {
        let ident = CString::new(name).unwrap_or_default();
        // SAFETY: ident is a valid C string kept alive in the returned Logger.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Logger {
            _ident: ident,
            name,
        }
    }

    fn log(&self, priority: libc::c_int, level: &str, msg: &str) {
        eprintln!("{}: {level}: {msg}", self.name);
        let clean: String = msg.chars().filter(|c| *c != '\0').collect();
        if let Ok(c) = CString::new(clean) {
            // SAFETY: a constant "%s" format and a valid C string argument.
            unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
        }
    }

    /// Logs at info level.
    pub fn info(&self, msg: &str) {
        self.log(libc::LOG_INFO, "info", msg);
    }

    /// Logs at error level.
    pub fn error(&self, msg: &str) {
        self.log(libc::LOG_ERR, "error", msg);
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        // SAFETY: closelog takes no arguments and is always safe to call.
        unsafe { libc::closelog() };
    }
}
