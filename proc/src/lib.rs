//! Running the child processes sgpu depends on (`scontrol`, `squeue`, ...) so that no child
//! can stall or flood the caller.
//!
//! [`run`] reads the child's stdout and stderr *while it runs* (one `poll(2)` loop, no threads),
//! so a child printing more than a pipe holds (64 KiB on Linux: `scontrol show node -o` on a
//! cluster past ~100 nodes) never blocks on a full pipe. It enforces:
//!
//! - a deadline: past it the child's process group is killed (`SIGKILL`) and reaped, and the
//!   caller gets [`ProcError::Timeout`];
//! - a cap on stdout ([`Limits::max_stdout`], default [`DEFAULT_MAX_STDOUT`] = 64 MiB, about
//!   ten times `scontrol show node -o` of a 10,000-node cluster): past it the child is killed
//!   and the caller gets [`ProcError::TooLarge`] naming the command;
//! - a cap on the stderr kept ([`Limits::max_stderr`], default [`DEFAULT_MAX_STDERR`] = 64 KiB):
//!   stderr past it is still read (so the child never blocks on it) but dropped, and counted.
//!
//! A spawn that fails with `ETXTBSY` (the binary was just replaced and another thread's fork
//! still holds it open for writing) is retried for up to 200 ms.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default cap on a child's stdout: 64 MiB.
pub const DEFAULT_MAX_STDOUT: usize = 64 << 20;
/// Default cap on the stderr kept for error messages: 64 KiB (the rest is read and dropped).
pub const DEFAULT_MAX_STDERR: usize = 64 << 10;

/// How long, how much: the bounds one child runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline from spawn to exit.
    pub timeout: Duration,
    /// Most stdout bytes accepted; more is an error.
    pub max_stdout: usize,
    /// Most stderr bytes kept; more is read and dropped.
    pub max_stderr: usize,
}

impl Limits {
    /// `timeout` with the default caps.
    pub fn new(timeout: Duration) -> Limits {
        Limits {
            timeout,
            max_stdout: DEFAULT_MAX_STDOUT,
            max_stderr: DEFAULT_MAX_STDERR,
        }
    }

    /// The same limits with another stdout cap.
    pub fn max_stdout(mut self, bytes: usize) -> Limits {
        self.max_stdout = bytes;
        self
    }
}

/// What a child left behind.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// All of its stdout.
    pub stdout: Vec<u8>,
    /// The first [`Limits::max_stderr`] bytes of its stderr.
    pub stderr: Vec<u8>,
    /// How many stderr bytes were read past the cap and dropped.
    pub stderr_dropped: u64,
}

impl Output {
    /// The kept stderr as text, trimmed, with a note of what was dropped.
    pub fn stderr_text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.stderr).trim().to_string();
        if self.stderr_dropped > 0 {
            s.push_str(&format!(" [... {} more bytes]", self.stderr_dropped));
        }
        s
    }
}

/// Why a child did not give a complete answer.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The program could not be started.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading its output or waiting for it failed.
    #[error("reading the output of `{command}` failed: {source}")]
    Io {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It did not exit within the deadline; it was killed.
    #[error("`{command}` did not finish within {timeout:?}; it was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline.
        timeout: Duration,
    },
    /// It printed more than the stdout cap; it was killed.
    #[error(
        "`{command}` printed more than {limit} bytes on stdout and was killed: sgpu reads no \
         more than that of one command; run it by hand to see what it prints"
    )]
    TooLarge {
        /// The command line.
        command: String,
        /// The cap, bytes.
        limit: usize,
    },
}

/// The command line of `cmd` as one string (program and arguments, space-separated).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Starts `cmd` (stdin from /dev/null, stdout and stderr piped, in a process group of its
/// own) and collects its output under `limits`; see the crate documentation.
pub fn run(cmd: &mut Command, limits: &Limits) -> Result<Output, ProcError> {
    let command = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut attempt = cmd.spawn();
    for _ in 0..20 {
        match &attempt {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10));
                attempt = cmd.spawn();
            }
            _ => break,
        }
    }
    let mut child = attempt.map_err(|source| ProcError::Spawn {
        command: command.clone(),
        source,
    })?;
    let deadline = Instant::now() + limits.timeout;
    let result = collect(&mut child, limits, deadline, &command);
    if result.is_err() {
        kill(&mut child);
    }
    result
}

/// Kills the child's process group and reaps the child.
fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (process_group(0) made its pid the group id); no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One output pipe being read.
struct Stream<R> {
    pipe: Option<R>,
    buf: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl<R: Read + AsRawFd> Stream<R> {
    fn new(pipe: Option<R>, cap: usize) -> Stream<R> {
        Stream {
            pipe,
            buf: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    /// Reads what is there (one read: poll said it will not block). `Ok(false)`: the cap was
    /// passed.
    fn read_once(&mut self, chunk: &mut [u8], strict: bool) -> std::io::Result<bool> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(true);
        };
        let n = match pipe.read(chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if n == 0 {
            self.pipe = None;
            return Ok(true);
        }
        let room = self.cap.saturating_sub(self.buf.len());
        if n > room {
            if strict {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..room]);
            self.dropped += (n - room) as u64;
        } else {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }
}

fn collect(
    child: &mut Child,
    limits: &Limits,
    deadline: Instant,
    command: &str,
) -> Result<Output, ProcError> {
    let io = |source| ProcError::Io {
        command: command.to_string(),
        source,
    };
    let mut out = Stream::new(child.stdout.take(), limits.max_stdout);
    let mut err = Stream::new(child.stderr.take(), limits.max_stderr);
    let mut chunk = vec![0u8; 64 << 10];
    let mut status: Option<ExitStatus> = None;
    loop {
        if out.pipe.is_none() && err.pipe.is_none() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProcError::Timeout {
                command: command.to_string(),
                timeout: limits.timeout,
            });
        }
        if status.is_none() {
            status = child.try_wait().map_err(io)?;
        }
        // Once the child has exited, everything it wrote is already in the pipes: take what
        // is there without waiting (a grandchild may hold the pipes open for long).
        let wait_ms = if status.is_some() {
            0
        } else {
            (deadline - now).as_millis().clamp(1, 50) as i32
        };
        let Some(ready) = readable(&out, &err, wait_ms).map_err(io)? else {
            continue; // interrupted by a signal
        };
        if ready.is_empty() {
            if status.is_some() {
                break;
            }
            continue;
        }
        for is_out in ready {
            let ok = if is_out {
                out.read_once(&mut chunk, true).map_err(io)?
            } else {
                err.read_once(&mut chunk, false).map_err(io)?
            };
            if !ok {
                return Err(ProcError::TooLarge {
                    command: command.to_string(),
                    limit: limits.max_stdout,
                });
            }
        }
    }
    // both pipes closed (or the child exited): reap it within what is left of the deadline
    let status = match status {
        Some(s) => s,
        None => reap(child, limits, deadline, command)?,
    };
    Ok(Output {
        status,
        stdout: out.buf,
        stderr: err.buf,
        stderr_dropped: err.dropped,
    })
}

/// Waits up to `wait_ms` for the open pipes: which are readable (`true` for stdout), empty
/// when none is yet; `None` when a signal interrupted the wait.
fn readable<O: AsRawFd, E: AsRawFd>(
    out: &Stream<O>,
    err: &Stream<E>,
    wait_ms: i32,
) -> std::io::Result<Option<Vec<bool>>> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
    let mut which: Vec<bool> = Vec::with_capacity(2);
    if let Some(p) = &out.pipe {
        fds.push(pollfd(p.as_raw_fd()));
        which.push(true);
    }
    if let Some(p) = &err.pipe {
        fds.push(pollfd(p.as_raw_fd()));
        which.push(false);
    }
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs we own.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(
        fds.iter()
            .zip(which)
            .filter(|(fd, _)| fd.revents != 0)
            .map(|(_, is_out)| is_out)
            .collect(),
    ))
}

/// Waits for the child (its pipes are closed) until `deadline`.
fn reap(
    child: &mut Child,
    limits: &Limits,
    deadline: Instant,
    command: &str,
) -> Result<ExitStatus, ProcError> {
    loop {
        let exited = child.try_wait().map_err(|source| ProcError::Io {
            command: command.to_string(),
            source,
        })?;
        if let Some(s) = exited {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(ProcError::Timeout {
                command: command.to_string(),
                timeout: limits.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn reads_five_megabytes_while_the_child_writes_them() {
        let out = run(
            &mut sh("head -c 5000000 /dev/zero; echo done >&2"),
            &Limits::new(Duration::from_secs(20)),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 5_000_000);
        assert_eq!(out.stderr_text(), "done");
    }

    #[test]
    fn output_past_the_cap_is_an_error_naming_the_command() {
        let t = Instant::now();
        let e = run(
            &mut sh("yes sgpu-flood"),
            &Limits::new(Duration::from_secs(20)).max_stdout(1 << 20),
        )
        .unwrap_err();
        assert!(
            matches!(e, ProcError::TooLarge { limit, .. } if limit == 1 << 20),
            "{e}"
        );
        assert!(e.to_string().contains("/bin/sh -c yes sgpu-flood"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(15));
        // exactly at the cap is fine
        let out = run(
            &mut sh("head -c 1000 /dev/zero"),
            &Limits::new(Duration::from_secs(20)).max_stdout(1000),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), 1000);
    }

    #[test]
    fn a_hung_child_times_out_and_is_killed() {
        let dir = std::env::temp_dir().join(format!("sgpu-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let t = Instant::now();
        let e = run(
            &mut sh(&format!("echo $$ > {}; sleep 30", pidfile.display())),
            &Limits::new(Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the child {pid} is still there");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stderr_flood_does_not_deadlock() {
        let out = run(
            &mut sh("head -c 3000000 /dev/zero | tr '\\0' x >&2; echo ok"),
            &Limits::new(Duration::from_secs(20)),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"ok\n");
        assert_eq!(out.stderr.len(), DEFAULT_MAX_STDERR);
        assert_eq!(out.stderr_dropped, 3_000_000 - DEFAULT_MAX_STDERR as u64);
        assert!(out.stderr_text().ends_with("more bytes]"));
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_hold_the_caller() {
        let t = Instant::now();
        let out = run(
            &mut sh("sleep 5 & echo parent"),
            &Limits::new(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(out.stdout, b"parent\n");
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn failures_keep_status_and_stderr() {
        let out = run(
            &mut sh("echo 'no such node' >&2; exit 3"),
            &Limits::new(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr_text(), "no such node");
        let e = run(
            &mut Command::new("/nonexistent/scontrol"),
            &Limits::new(Duration::from_secs(1)),
        )
        .unwrap_err();
        assert!(matches!(e, ProcError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/scontrol"), "{e}");
    }
}
