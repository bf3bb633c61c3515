use super::*;

/// A one-node cluster in memory that records what the policy did.
#[derive(Debug, Default)]
struct Fake {
    state: String,
    reason: Option<String>,
    trip: Option<Trip>,
    unreachable: bool,
    breaker_error: bool,
    fail_drain: bool,
    fail_resume: bool,
    /// The recount after a drain gives the node back.
    give_back: Option<Trip>,
    /// Changes the reason between the policy's two looks (an admin racing it).
    admin_races: Option<String>,
    looks: u32,
    drains: Vec<String>,
    resumes: u32,
}

impl Fake {
    fn idle() -> Fake {
        Fake {
            state: "IDLE".into(),
            ..Fake::default()
        }
    }

    fn drained(reason: &str) -> Fake {
        Fake {
            state: "IDLE+DRAIN".into(),
            reason: Some(reason.into()),
            ..Fake::default()
        }
    }

    fn admin_drain(&mut self, reason: &str) {
        self.state = "IDLE+DRAIN".into();
        self.reason = Some(reason.into());
    }

    fn admin_resume(&mut self) {
        self.state = "IDLE".into();
        self.reason = None;
    }
}

fn failed(command: &str, stderr: &str) -> ControlError {
    ControlError::Slurm(SlurmctlError::Failed {
        command: command.into(),
        status: "exit status: 1".into(),
        stderr: stderr.into(),
    })
}

fn timeout(command: &str) -> ControlError {
    ControlError::Slurm(SlurmctlError::Timeout {
        command: command.into(),
        timeout: std::time::Duration::from_secs(10),
    })
}

impl NodeControl for Fake {
    fn node_state(&mut self) -> Result<NodeState, ControlError> {
        if self.unreachable {
            return Err(failed("scontrol show node", "slurmctld down"));
        }
        self.looks += 1;
        if self.looks > 1 {
            if let Some(r) = self.admin_races.take() {
                self.admin_drain(&r);
            }
        }
        Ok(NodeState {
            state: self.state.clone(),
            reason: self.reason.clone(),
        })
    }

    fn breaker(&mut self) -> Result<Option<Trip>, ControlError> {
        if self.breaker_error {
            return Err(failed("scontrol show node -o", "slurmctld down"));
        }
        Ok(self.trip.clone())
    }

    fn drain(&mut self, reason: &str) -> Result<Option<Trip>, ControlError> {
        if self.fail_drain {
            return Err(timeout("scontrol update"));
        }
        self.drains.push(reason.into());
        if let Some(t) = self.give_back.clone() {
            return Ok(Some(t));
        }
        self.admin_drain(reason);
        Ok(None)
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        if self.fail_resume {
            return Err(timeout("scontrol update"));
        }
        self.resumes += 1;
        self.admin_resume();
        Ok(())
    }
}

fn fail(check: &str, gpu: u32, detail: &str) -> Failure {
    Failure {
        check: check.into(),
        gpu: Some(gpu),
        reason: format!("sgpu: {check} gpu{gpu}: {detail}"),
    }
}

fn temp() -> Failure {
    fail("gpu.temperature", 1, "temperature 92 C >= 90 C")
}

fn xid79() -> Failure {
    fail("gpu.xid", 2, "xid 79 GPU has fallen off the bus")
}

fn policy(resume_after: u32) -> Policy {
    Policy::new(&Catalogue::default(), resume_after, Memory::default())
}

/// Runs `n` steps with the same failures; returns the decisions.
fn run(p: &mut Policy, ctl: &mut Fake, failures: &[Failure], n: usize) -> Vec<Decision> {
    (0..n)
        .map(|i| p.step(failures, ctl, 1000 + i as i64).decision)
        .collect()
}

fn trip() -> Trip {
    Trip {
        scope: "cluster".into(),
        drained: 1,
        total: 2,
        limit: 1,
    }
}

#[test]
fn reason_names_its_check() {
    assert_eq!(
        check_of_reason("sgpu: gpu.xid gpu2: xid 79"),
        Some("gpu.xid")
    );
    assert_eq!(
        check_of_reason("sgpu: nvml.responsive: hung"),
        Some("nvml.responsive")
    );
    assert_eq!(check_of_reason("bad dimm"), None);
    assert_eq!(check_of_reason("sgpu:"), None);
}

#[test]
fn healthy_node_is_left_alone() {
    let mut p = policy(3);
    let mut c = Fake::idle();
    let d = run(&mut p, &mut c, &[], 5);
    assert!(d.iter().all(|d| *d == Decision::Healthy), "{d:?}");
    assert!(c.drains.is_empty() && c.resumes == 0);
    assert_eq!(p.memory(), &Memory::default());
}

#[test]
fn failure_drains_once_and_is_remembered() {
    let mut p = policy(3);
    let mut c = Fake::idle();
    let o = p.step(&[xid79(), temp()], &mut c, 1000);
    assert_eq!(
        o,
        Outcome {
            decision: Decision::Drained {
                reason: xid79().reason
            },
            mark_xids_reported: true
        }
    );
    assert_eq!(c.drains, vec![xid79().reason]);
    let rec = p.memory().drained.clone().unwrap();
    assert_eq!(rec.reason, xid79().reason);
    assert_eq!(rec.since, 1000);
    assert_eq!(
        rec.checks,
        ["gpu.temperature", "gpu.xid"].map(String::from).into()
    );
    // consecutive failures: no re-drain
    let d = run(&mut p, &mut c, &[temp()], 3);
    assert!(
        d.iter()
            .all(|d| matches!(d, Decision::AlreadyDrained { .. })),
        "{d:?}"
    );
    assert_eq!(c.drains.len(), 1);
}

#[test]
fn recoverable_fault_resumes_after_n_healthy_runs() {
    let mut p = policy(3);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    assert_eq!(c.drains.len(), 1);
    let d = run(&mut p, &mut c, &[], 3);
    assert_eq!(
        d,
        vec![
            Decision::WaitingToResume {
                healthy_runs: 1,
                needed: 3
            },
            Decision::WaitingToResume {
                healthy_runs: 2,
                needed: 3
            },
            Decision::Resumed {
                reason: temp().reason
            },
        ]
    );
    assert_eq!(c.resumes, 1);
    assert_eq!(c.state, "IDLE");
    assert_eq!(p.memory().drained, None);
    // and it stays resumed
    assert_eq!(run(&mut p, &mut c, &[], 2), vec![Decision::Healthy; 2]);
}

#[test]
fn a_failure_in_between_restarts_the_count() {
    let mut p = policy(2);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    p.step(&[], &mut c, 2);
    p.step(&[temp()], &mut c, 3);
    assert_eq!(p.healthy_runs(), 0);
    let d = p.step(&[], &mut c, 4).decision;
    assert!(
        matches!(
            d,
            Decision::WaitingToResume {
                healthy_runs: 1,
                ..
            }
        ),
        "{d:?}"
    );
    assert!(matches!(
        p.step(&[], &mut c, 5).decision,
        Decision::Resumed { .. }
    ));
    assert_eq!(c.drains.len(), 1, "never drained twice");
}

#[test]
fn non_recoverable_drain_is_held() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[xid79()], &mut c, 1);
    let d = run(&mut p, &mut c, &[], 5);
    assert!(
        d.iter().all(|d| *d
            == Decision::Holding {
                checks: vec!["gpu.xid".into()]
            }),
        "{d:?}"
    );
    assert_eq!(c.resumes, 0);
    // a drain for a recoverable check and a non-recoverable one together: held too
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp(), xid79()], &mut c, 1);
    assert!(matches!(
        p.step(&[], &mut c, 2).decision,
        Decision::Holding { .. }
    ));
    assert_eq!(c.resumes, 0);
}

#[test]
fn a_new_failure_while_drained_keeps_it_drained() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    // while drained for temperature, an ECC error shows up, then everything clears
    p.step(&[fail("gpu.ecc_uncorrectable", 0, "1 errors")], &mut c, 2);
    let d = p.step(&[], &mut c, 3).decision;
    assert_eq!(
        d,
        Decision::Holding {
            checks: vec!["gpu.ecc_uncorrectable".into()]
        }
    );
}

#[test]
fn resume_after_zero_never_resumes() {
    let mut p = policy(0);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    let d = run(&mut p, &mut c, &[], 4);
    assert!(
        d.iter().all(|d| matches!(d, Decision::Holding { .. })),
        "{d:?}"
    );
    assert_eq!(c.resumes, 0);
}

#[test]
fn admin_drain_is_never_touched() {
    let mut p = policy(1);
    let mut c = Fake::drained("bad dimm, ticket 42");
    let d = run(&mut p, &mut c, &[], 4);
    assert!(
        d.iter().all(|d| *d
            == Decision::AdminDrained {
                reason: "bad dimm, ticket 42".into()
            }),
        "{d:?}"
    );
    // a failure on an admin-drained node: not drained over (that would replace the reason)
    let d = p.step(&[temp()], &mut c, 9).decision;
    assert!(matches!(d, Decision::AdminDrained { .. }), "{d:?}");
    assert!(c.drains.is_empty() && c.resumes == 0);
    assert_eq!(c.reason.as_deref(), Some("bad dimm, ticket 42"));
}

#[test]
fn down_and_fail_are_never_drained_over_nor_resumed() {
    for state in ["DOWN", "IDLE+FAIL", "MIXED+FAILING", "DOWN+NOT_RESPONDING"] {
        let mut p = policy(1);
        let mut c = Fake {
            state: state.into(),
            reason: Some("x".into()),
            ..Fake::default()
        };
        // a fault on an admin's DOWN/FAIL node: no drain, the admin's reason stays
        for d in run(&mut p, &mut c, &[xid79()], 3) {
            assert_eq!(
                d,
                Decision::HeldByOthers {
                    state: state.into(),
                    reason: "x".into()
                }
            );
        }
        assert!(c.drains.is_empty(), "{state}: {:?}", c.drains);
        // healthy again: never resumed
        run(&mut p, &mut c, &[], 3);
        assert_eq!((c.resumes, c.reason.as_deref()), (0, Some("x")), "{state}");
    }
    // sgpu drained it, then slurmd died (DOWN+DRAIN, sgpu's reason): not resumed either
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.state = "DOWN+DRAIN".into();
    let d = run(&mut p, &mut c, &[], 3);
    assert!(
        d.iter().all(|d| matches!(d, Decision::HeldByOthers { .. })),
        "{d:?}"
    );
    assert_eq!(c.resumes, 0);
    // an admin sets an sgpu-drained node DOWN with a reason of their own: theirs now
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.state = "DOWN".into();
    c.reason = Some("swap the board".into());
    p.step(&[temp()], &mut c, 2);
    assert_eq!(p.memory().drained, None);
    assert!(p.memory().overridden.is_empty(), "a DOWN is no resume");
    assert_eq!(c.drains.len(), 1);
}

#[test]
fn admin_taking_over_an_sgpu_drain_is_never_resumed() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.admin_drain("investigating, do not resume");
    let d = run(&mut p, &mut c, &[], 3);
    assert!(
        d.iter().all(|d| matches!(d, Decision::AdminDrained { .. })),
        "{d:?}"
    );
    assert_eq!(c.resumes, 0);
    assert_eq!(p.memory().drained, None, "the drain is the admin's now");
}

#[test]
fn admin_changing_the_reason_during_the_step_is_respected() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.looks = 0;
    c.admin_races = Some("admin: keep out".into());
    let d = p.step(&[], &mut c, 2).decision;
    assert!(matches!(d, Decision::AdminDrained { .. }), "{d:?}");
    assert_eq!(c.resumes, 0);
}

#[test]
fn admin_resume_overrides_the_same_failure_but_not_a_new_one() {
    let mut p = policy(3);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.admin_resume();
    // still too hot: the admin chose to run it anyway
    let d = run(&mut p, &mut c, &[temp()], 3);
    assert!(
        d.iter().all(|d| *d
            == Decision::Overridden {
                keys: vec!["gpu.temperature gpu1".into()]
            }),
        "{d:?}"
    );
    assert_eq!(c.drains.len(), 1);
    // a different failure drains
    let d = p.step(&[temp(), xid79()], &mut c, 5).decision;
    assert_eq!(
        d,
        Decision::Drained {
            reason: xid79().reason
        }
    );
    // once the overridden check has passed, it drains again next time
    let mut p = policy(3);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.admin_resume();
    p.step(&[temp()], &mut c, 2);
    assert!(!p.memory().overridden.is_empty());
    assert_eq!(p.step(&[], &mut c, 3).decision, Decision::Healthy);
    assert!(p.memory().overridden.is_empty());
    assert!(matches!(
        p.step(&[temp()], &mut c, 4).decision,
        Decision::Drained { .. }
    ));
    assert_eq!(c.drains.len(), 2);
}

#[test]
fn breaker_open_keeps_the_node_up_and_retries() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.trip = Some(trip());
    let o = p.step(&[xid79()], &mut c, 1);
    assert_eq!(
        o,
        Outcome {
            decision: Decision::BreakerOpen {
                trip: trip(),
                reason: xid79().reason
            },
            mark_xids_reported: false
        }
    );
    assert!(o.decision.is_error());
    assert!(c.drains.is_empty());
    assert_eq!(p.memory().breaker_open, Some(trip()));
    // still open next run: still no drain
    assert!(matches!(
        p.step(&[xid79()], &mut c, 2).decision,
        Decision::BreakerOpen { .. }
    ));
    // the breaker closes: the pending failure drains
    c.trip = None;
    assert!(matches!(
        p.step(&[xid79()], &mut c, 3).decision,
        Decision::Drained { .. }
    ));
    assert_eq!(p.memory().breaker_open, None);
    assert_eq!(c.drains.len(), 1);
}

#[test]
fn given_back_after_the_recount_is_breaker_open() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.give_back = Some(trip());
    let o = p.step(&[xid79()], &mut c, 1);
    assert!(matches!(o.decision, Decision::BreakerOpen { .. }), "{o:?}");
    assert!(!o.mark_xids_reported, "tried again next run");
    assert_eq!(p.memory().breaker_open, Some(trip()));
    assert_eq!(p.memory().drained, None);
    c.give_back = None;
    assert!(matches!(
        p.step(&[xid79()], &mut c, 2).decision,
        Decision::Drained { .. }
    ));
    assert_eq!(p.memory().breaker_open, None);
}

#[test]
fn breaker_clears_when_the_fault_does() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.trip = Some(trip());
    p.step(&[temp()], &mut c, 1);
    assert!(p.memory().breaker_open.is_some());
    assert_eq!(p.step(&[], &mut c, 2).decision, Decision::Healthy);
    assert_eq!(p.memory().breaker_open, None);
}

#[test]
fn unknown_breaker_refuses_to_drain() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.breaker_error = true;
    let o = p.step(&[temp()], &mut c, 1);
    assert!(matches!(o.decision, Decision::BreakerUnknown { .. }));
    assert!(!o.mark_xids_reported);
    assert!(c.drains.is_empty());
}

#[test]
fn failed_scontrol_is_retried_and_xids_kept() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.fail_drain = true;
    let o = p.step(&[xid79()], &mut c, 1);
    assert!(matches!(o.decision, Decision::DrainFailed { .. }));
    assert!(!o.mark_xids_reported);
    assert_eq!(p.memory().drained, None);
    c.fail_drain = false;
    assert!(matches!(
        p.step(&[xid79()], &mut c, 2).decision,
        Decision::Drained { .. }
    ));
    // resume failures are retried too
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp()], &mut c, 1);
    c.fail_resume = true;
    assert!(matches!(
        p.step(&[], &mut c, 2).decision,
        Decision::ResumeFailed { .. }
    ));
    c.fail_resume = false;
    assert!(matches!(
        p.step(&[], &mut c, 3).decision,
        Decision::Resumed { .. }
    ));
}

#[test]
fn unreachable_slurm_does_nothing() {
    let mut p = policy(1);
    let mut c = Fake::idle();
    c.unreachable = true;
    let o = p.step(&[xid79()], &mut c, 1);
    assert!(matches!(o.decision, Decision::SlurmUnreachable { .. }));
    assert!(!o.mark_xids_reported && c.drains.is_empty());
    assert_eq!(p.healthy_runs(), 0, "an unjudged run does not count");
}

#[test]
fn restart_remembers_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(1);
    let mut c = Fake::idle();
    p.step(&[temp(), xid79()], &mut c, 1);
    p.memory().save(dir.path()).unwrap();
    let memory = Memory::load(dir.path()).unwrap();
    assert_eq!(&memory, p.memory());
    // a new daemon: the reason names only gpu.xid... but memory says temperature too;
    // either way it holds (gpu.xid is not recoverable)
    let mut p = Policy::new(&Catalogue::default(), 1, memory);
    assert!(matches!(
        p.step(&[], &mut c, 2).decision,
        Decision::Holding { .. }
    ));
    assert_eq!(
        Memory::load(&dir.path().join("none")).unwrap(),
        Memory::default()
    );
    std::fs::write(dir.path().join(MEMORY_FILE), "what = 1\n").unwrap();
    assert!(Memory::load(dir.path()).is_err());
}

#[test]
fn prolog_drain_is_adopted_and_resumed_when_recoverable() {
    // the prolog drained for temperature; the daemon never saw it happen
    let mut p = policy(2);
    let mut c = Fake::drained("sgpu: gpu.temperature gpu1: temperature 92 C >= 90 C");
    let d = run(&mut p, &mut c, &[temp()], 1);
    assert!(matches!(d[0], Decision::AlreadyDrained { .. }));
    let d = run(&mut p, &mut c, &[], 2);
    assert!(matches!(d[1], Decision::Resumed { .. }), "{d:?}");
    // a prolog-only check (not in the full profile) cannot be confirmed: held
    let mut p = policy(1);
    let mut c = Fake::drained("sgpu: gpu.leftover_processes gpu0: 1 procs");
    assert!(matches!(
        p.step(&[], &mut c, 1).decision,
        Decision::Holding { .. }
    ));
    // an sgpu reason that names no check: held
    let mut p = policy(1);
    let mut c = Fake::drained("sgpu:");
    assert!(matches!(
        p.step(&[], &mut c, 1).decision,
        Decision::Holding { .. }
    ));
}

#[test]
fn admin_can_make_a_check_non_recoverable_by_turning_it_off() {
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert(
        "gpu.temperature".to_string(),
        sgpu_nodelib::catalogue::CheckOverride {
            enabled: Some(false),
            ..Default::default()
        },
    );
    let cat = Catalogue::effective(&overrides);
    let mut p = Policy::new(&cat, 1, Memory::default());
    let mut c = Fake::drained("sgpu: gpu.temperature gpu1: hot");
    assert!(matches!(
        p.step(&[], &mut c, 1).decision,
        Decision::Holding { .. }
    ));
}
