//! No thread of the plugin is alive when slurmstepd forks.
//!
//! The plugin prepares a step on a thread of its own (`sgpu-start`, started in
//! `task_post_fork`), which opens the step's NVML session and reads the start counters, so
//! NVML's initialisation overlaps the tasks' start instead of delaying it; the session stays
//! open, held by no thread, until `exit` reads the end counters on another short thread
//! (`sgpu-end`) and closes it.
//! slurmstepd forks again after that point: a user's `srun --task-epilog=...` and slurm.conf's
//! `TaskEpilog` run right after a task exits (before `task_exit` and `exit`, Slurm's
//! `_wait_for_any_task`), `UnkillableStepProgram` when a step will not die. A child forked
//! while another thread is inside `dlopen` or the driver inherits their locks held. So every
//! `fork()` of the process first runs [`prepare_fork`] (a `pthread_atfork` prepare handler),
//! which waits until no thread of the plugin is alive any more.
//!
//! "Alive" is what the kernel says: a thread whose name starts with [`THREAD_PREFIX`] is
//! listed in `/proc/self/task` (a thread leaves it only once it has fully exited), plus the
//! threads the plugin has asked for but that have not named themselves yet ([`spawn`]).
//!
//! The wait is bounded (`nvml_timeout_ms` plus [`MARGIN`]): a driver that hangs past its
//! deadline keeps its thread, and slurmstepd must never hang on sgpu. Then the fork goes
//! ahead, the plugin logs it once, and later forks of that step do not wait again; the step
//! keeps running (and gets no record if its start was never read).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use crate::ffi;

/// Every thread the plugin runs is named so (and so is the node library's NVML worker).
pub const THREAD_PREFIX: &str = "sgpu-";

/// Added to the NVML deadline for what a preparation does besides NVML (files, NSS).
pub const MARGIN: Duration = Duration::from_millis(1000);

/// How often a waiting fork looks again.
const POLL: Duration = Duration::from_millis(1);

/// The handler is registered (the plugin started a thread in this process).
static ARMED: AtomicBool = AtomicBool::new(false);
/// The bound of one wait, ms.
static BOUND_MS: AtomicU64 = AtomicU64::new(1500);
/// A wait ran out: later forks do not wait again.
static GAVE_UP: AtomicBool = AtomicBool::new(false);
/// Threads spawned by [`spawn`] that have not started running yet (not yet named).
static STARTING: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    // glibc's (libc_nonshared) registration: tied to this library, undone by its dlclose
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> std::ffi::c_int;
}

/// Makes every later fork of this process wait for the plugin's threads (at most `bound`
/// each). Call before starting a thread.
pub fn arm(bound: Duration) {
    static REGISTER: Once = Once::new();
    BOUND_MS.store(
        u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
        Ordering::SeqCst,
    );
    REGISTER.call_once(|| {
        // SAFETY: `prepare_fork` is a plain function of this library; the registration is
        // removed when the library is unloaded (glibc ties it to the library's dso handle).
        let rc = unsafe { pthread_atfork(Some(prepare_fork), None, None) };
        if rc != 0 {
            ffi::log_error(&format!(
                "sgpu: cannot register the fork handler (error {rc}); forks do not wait for \
                 sgpu's threads"
            ));
        }
    });
    ARMED.store(true, Ordering::SeqCst);
}

/// Starts a named plugin thread (the name should start with [`THREAD_PREFIX`]); until it
/// runs (and so carries its name), forks count it as alive.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    STARTING.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            STARTING.fetch_sub(1, Ordering::SeqCst);
            f()
        });
    if spawned.is_err() {
        STARTING.fetch_sub(1, Ordering::SeqCst);
    }
    spawned
}

/// A plugin thread's result, waited for under a deadline.
#[derive(Debug)]
pub struct Pending<T> {
    result: mpsc::Receiver<T>,
    handle: std::thread::JoinHandle<()>,
}

/// Runs `f` on a plugin thread named `name`; `Err` if no thread could be started.
pub fn run<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Pending<T>> {
    let (tx, rx) = mpsc::channel();
    let handle = spawn(name, move || {
        let _ = tx.send(f());
    })?;
    Ok(Pending { result: rx, handle })
}

impl<T> Pending<T> {
    /// The result, waiting until `deadline`; `None` if the thread did not finish by then (it
    /// is left to finish on its own) or died.
    pub fn wait(self, deadline: Instant) -> Option<T> {
        let got = self
            .result
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok();
        if got.is_some() {
            // it has sent its result: it is about to return
            let _ = self.handle.join();
        }
        got
    }
}

/// The plugin's threads alive now other than the calling one (their names), and whether
/// one is still starting.
pub fn alive() -> (Vec<String>, bool) {
    let me = std::process::id();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(t) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if t == tid {
                continue;
            }
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
                continue; // it has just exited
            };
            let comm = comm.trim_end();
            if comm.starts_with(THREAD_PREFIX) {
                names.push(format!("{comm} ({me}/{t})"));
            }
        }
    }
    (names, STARTING.load(Ordering::SeqCst) > 0)
}

/// Whether the calling thread is one of the plugin's.
fn on_plugin_thread() -> bool {
    std::fs::read_to_string("/proc/thread-self/comm").is_ok_and(|c| c.starts_with(THREAD_PREFIX))
}

/// The plugin's threads still alive when a wait ran out (their names, and "one starting").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StillAlive(pub String);

/// Waits until no plugin thread other than the caller is alive, at most `bound`. `Err`
/// names the threads still alive then.
pub fn wait_quiet(bound: Duration) -> Result<(), StillAlive> {
    let deadline = Instant::now() + bound;
    loop {
        let (names, starting) = alive();
        if names.is_empty() && !starting {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut what = names.join(", ");
            if starting {
                what.push_str(if what.is_empty() { "" } else { ", " });
                what.push_str("one starting");
            }
            return Err(StillAlive(what));
        }
        std::thread::sleep(POLL);
    }
}

/// Stops forks from waiting: a plugin thread overran its bound and is left behind.
pub fn give_up() {
    GAVE_UP.store(true, Ordering::SeqCst);
}

/// [`wait_quiet`], unless a thread was already left behind ([`give_up`]).
pub fn settle(bound: Duration) -> Result<(), StillAlive> {
    if GAVE_UP.load(Ordering::SeqCst) {
        return Ok(());
    }
    wait_quiet(bound).inspect_err(|_| give_up())
}

/// The `pthread_atfork` prepare handler: runs in the forking thread, before the fork.
unsafe extern "C" fn prepare_fork() {
    let _ = std::panic::catch_unwind(|| {
        if !ARMED.load(Ordering::SeqCst) || on_plugin_thread() {
            // a fork by the plugin's own thread (the driver may run nvidia-modprobe) must not
            // wait for itself
            return;
        }
        let bound = if GAVE_UP.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            Duration::from_millis(BOUND_MS.load(Ordering::SeqCst))
        };
        if let Err(alive) = wait_quiet(bound) {
            if !GAVE_UP.swap(true, Ordering::SeqCst) {
                ffi::log_error(&format!(
                    "sgpu: slurmstepd forks while sgpu's threads are alive after {} ms: {alive} \
                     (NVML or NSS stuck past its deadline); the step goes on",
                    bound.as_millis()
                ));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_thread_is_not_alive_and_a_running_one_is() {
        let (tx, rx) = mpsc::channel::<()>();
        let p = run("sgpu-test-a", move || rx.recv().is_ok()).unwrap_or_else(|e| panic!("{e}"));
        // a running plugin thread is seen (by name), from another thread
        assert!(wait_quiet(Duration::from_millis(20)).is_err());
        let (names, _) = alive();
        assert!(
            names.iter().any(|n| n.starts_with("sgpu-test-a")),
            "{names:?}"
        );
        let _ = tx.send(());
        assert_eq!(p.wait(Instant::now() + Duration::from_secs(5)), Some(true));
        // joined: gone from /proc/self/task (other tests' threads are not named sgpu-*)
        assert!(wait_quiet(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn a_thread_that_overruns_its_deadline_is_left_running() {
        let p = run("sgpu-test-b", || {
            std::thread::sleep(Duration::from_millis(300))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        assert_eq!(p.wait(Instant::now() + Duration::from_millis(20)), None);
        assert!(
            t0.elapsed() < Duration::from_millis(250),
            "the wait is bounded"
        );
    }
}
