//! `PrologFlags=RunInJob` (Slurm 24.05+): slurmd starts the Prolog inside the job's extern
//! step, so it runs in the job's cgroup. With `ConstrainDevices=yes` in cgroup.conf the
//! prolog may then open only the job's GPUs: the node's other GPUs are not readable there.
//!
//! Measured on 26.05.3 (test cluster, `CgroupPlugin=disabled`): with RunInJob the prolog's
//! parent is `slurmstepd: [<job>.extern]` (slurmd otherwise) and its environment is the
//! usual one (`SLURM_SCRIPT_CONTEXT=prolog_slurmd`, `SLURM_JOB_GPUS`). The prolog tells
//! from its parent that it runs in the job, and from cgroup.conf (beside `SLURM_CONF`)
//! whether devices are constrained; then it judges only the job's GPUs and node-level
//! results, and leaves the other GPUs to sgpu-healthd, which runs outside any job.

use std::path::Path;

use sgpu_nodelib::checks::CheckResult;

/// Where the prolog runs, as far as it can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInJob {
    /// The parent's command line when it is the job's extern step (`slurmstepd: [J.extern]`).
    pub extern_step: Option<String>,
    /// cgroup.conf says `ConstrainDevices=yes` and does not disable the cgroup plugin.
    pub constrain_devices: bool,
}

impl RunInJob {
    /// Looks at this process's parent and at the cgroup.conf beside `slurm_conf`.
    pub fn detect(slurm_conf: &Path) -> RunInJob {
        let ppid = std::os::unix::process::parent_id();
        let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
        let cgroup_conf = slurm_conf
            .parent()
            .map(|d| d.join("cgroup.conf"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        RunInJob::from_parts(&cmdline, &cgroup_conf)
    }

    /// From the parent's `/proc/PID/cmdline` and cgroup.conf's text.
    pub fn from_parts(parent_cmdline: &[u8], cgroup_conf: &str) -> RunInJob {
        let parent = String::from_utf8_lossy(parent_cmdline)
            .split('\0')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let extern_step =
            (parent.starts_with("slurmstepd: [") && parent.ends_with(".extern]")).then_some(parent);
        let value = |key: &str| {
            cgroup_conf
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
                .next_back()
        };
        let plugin_off = value("CgroupPlugin").is_some_and(|v| v == "disabled");
        let constrain_devices =
            !plugin_off && value("ConstrainDevices").is_some_and(|v| v == "yes");
        RunInJob {
            extern_step,
            constrain_devices,
        }
    }

    /// Whether the prolog can read only the job's GPUs (runs in the job, devices constrained).
    pub fn job_gpus_only(&self) -> bool {
        self.extern_step.is_some() && self.constrain_devices
    }

    /// The log line for a prolog that runs in the job (`None`: it does not).
    pub fn note(&self, job_id: u32, job_gpus: &[u32]) -> Option<String> {
        let parent = self.extern_step.as_ref()?;
        Some(if self.constrain_devices {
            format!(
                "PrologFlags=RunInJob: sgpu-prolog runs in job {job_id}'s cgroup ({parent}) \
                 with ConstrainDevices=yes: it judges only the job's GPUs {job_gpus:?} and \
                 node-level checks; the node's other GPUs are sgpu-healthd's to check"
            )
        } else {
            format!(
                "PrologFlags=RunInJob: sgpu-prolog runs in job {job_id}'s cgroup ({parent}); \
                 devices are not constrained (cgroup.conf), so every GPU is judged"
            )
        })
    }

    /// Keeps the results the prolog can stand behind: node-level ones and those of the job's
    /// GPUs (NVML indices), when it can read only those; all of them otherwise.
    pub fn scope(&self, results: Vec<CheckResult>, job_gpus: &[u32]) -> Vec<CheckResult> {
        if !self.job_gpus_only() {
            return results;
        }
        results
            .into_iter()
            .filter(|r| r.gpu.is_none_or(|g| job_gpus.contains(&g)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTERN: &[u8] = b"slurmstepd: [7.extern]\0";

    #[test]
    fn the_extern_step_parent_means_run_in_job() {
        let r = RunInJob::from_parts(EXTERN, "ConstrainDevices=yes\n");
        assert_eq!(r.extern_step.as_deref(), Some("slurmstepd: [7.extern]"));
        assert!(r.job_gpus_only());
        let note = r.note(7, &[1]).unwrap();
        assert!(note.contains("only the job's GPUs [1]"), "{note}");
        // slurmd as the parent: the usual prolog
        let r = RunInJob::from_parts(b"/usr/sbin/slurmd\0-N\0node1\0", "ConstrainDevices=yes");
        assert_eq!((r.extern_step.clone(), r.job_gpus_only()), (None, false));
        assert_eq!(r.note(7, &[1]), None);
        // a job step's slurmstepd is not the extern step
        assert!(
            RunInJob::from_parts(b"slurmstepd: [7.0]\0", "")
                .extern_step
                .is_none()
        );
    }

    #[test]
    fn devices_are_constrained_only_by_a_working_cgroup_plugin() {
        let on = |conf: &str| RunInJob::from_parts(EXTERN, conf).constrain_devices;
        assert!(on("constraindevices = Yes # comment\n"));
        assert!(!on("ConstrainDevices=no\n"));
        assert!(!on(""));
        // the test cluster's: no cgroups at all
        assert!(!on("CgroupPlugin=disabled\nConstrainDevices=yes\n"));
        assert!(on("CgroupPlugin=autodetect\nConstrainDevices=yes\n"));
        let r = RunInJob::from_parts(EXTERN, "CgroupPlugin=disabled\n");
        assert!(r.note(7, &[0]).unwrap().contains("every GPU is judged"));
    }

    #[test]
    fn only_the_jobs_gpus_and_node_results_are_kept() {
        let result = |gpu: Option<u32>| CheckResult {
            check: "gpu.temperature",
            gpu,
            uuid: None,
            observed: String::new(),
            threshold: String::new(),
            severity: sgpu_nodelib::catalogue::Severity::Drain,
            status: sgpu_nodelib::checks::Status::Fail,
            message: String::new(),
            enforced: true,
        };
        let all = vec![
            result(None),
            result(Some(0)),
            result(Some(1)),
            result(Some(2)),
        ];
        let r = RunInJob::from_parts(EXTERN, "ConstrainDevices=yes");
        let kept: Vec<Option<u32>> = r.scope(all.clone(), &[1]).iter().map(|r| r.gpu).collect();
        assert_eq!(kept, [None, Some(1)]);
        let open = RunInJob::from_parts(EXTERN, "ConstrainDevices=no");
        assert_eq!(open.scope(all, &[1]).len(), 4);
    }
}
