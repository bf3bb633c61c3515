//! Synthetic usage records for the accounting benchmark: deterministic (a seed), and spread
//! like a real site's year.
//!
//! Job `i` (ids from 1) gets one `job_end` record from one node, and with `usage` also the
//! `job_usage` record healthd would send. The spread: 400 users in 40 accounts (user `u`
//! is in account `u % 40`; a tenth of the users are 10x as active), four partitions (`gpu`
//! 60%, `gpu-long` 15%, `debug` 15%, `interactive` 10%), three GPU models (H100 50%, A100
//! 35%, L40S 15%), 1, 2, 4 or 8 GPUs (45/30/15/10%), starts spread evenly over the year in
//! job-id order (plus up to an hour of jitter: records reach acctd roughly as jobs end, as
//! they do from a site's forwarders), duration
//! from 1 minute to 2 days (log-uniform; `debug` and `interactive` at most 2 hours), 500
//! nodes, power 60-700 W per GPU, used time 0-100% of allocated.

use sgpu_spool::{GpuEnd, GpuUsage, JobEnd, Record, RecordBody, RecordId, RecordKind, Usage};

/// The benchmark's cluster name.
pub const CLUSTER: &str = "bench";
/// Accounts.
pub const ACCOUNTS: u32 = 40;
/// Users.
pub const USERS: u32 = 400;
/// 2025-01-01T00:00:00Z, ms: the year the records cover.
pub const YEAR_START_MS: u64 = 1_735_689_600_000;
/// A year, ms.
pub const YEAR_MS: u64 = 365 * 86_400_000;

/// splitmix64: small, fast, good enough to spread records.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks by cumulative percentages.
fn pick<T: Copy>(rng: &mut Rng, table: &[(u64, T)]) -> T {
    let r = rng.below(100);
    let mut acc = 0;
    for &(p, v) in table {
        acc += p;
        if r < acc {
            return v;
        }
    }
    table[table.len() - 1].1
}

/// The account of a user.
pub fn account_of(user: u32) -> String {
    format!("acct{:02}", user % ACCOUNTS)
}

/// The records of job `job_id` (1 to `total`), from `seed`.
pub fn job_records(seed: u64, job_id: u32, total: u32, usage: bool) -> Vec<Record> {
    let mut rng = Rng::new(seed ^ u64::from(job_id).wrapping_mul(0x2545_f491_4f6c_dd1d));
    // A tenth of the users are ten times as active.
    let user = if rng.below(2) == 0 {
        u32::try_from(rng.below(u64::from(USERS / 10))).unwrap_or(0)
    } else {
        u32::try_from(rng.below(u64::from(USERS))).unwrap_or(0)
    };
    let partition = pick(
        &mut rng,
        &[
            (60, "gpu"),
            (15, "gpu-long"),
            (15, "debug"),
            (10, "interactive"),
        ],
    );
    let model = pick(
        &mut rng,
        &[
            (50, "NVIDIA H100 80GB HBM3"),
            (35, "NVIDIA A100-SXM4-80GB"),
            (15, "NVIDIA L40S"),
        ],
    );
    let gpus = pick(&mut rng, &[(45, 1u32), (30, 2), (15, 4), (10, 8)]);
    let max_s: f64 = if matches!(partition, "debug" | "interactive") {
        7_200.0
    } else {
        172_800.0
    };
    // log-uniform from 60 s to max_s
    let dur_ms = (60.0 * (max_s / 60.0).powf(rng.unit()) * 1000.0) as u64;
    let slot = u64::from(job_id.saturating_sub(1)) * YEAR_MS / u64::from(total.max(1));
    let start = YEAR_START_MS + (slot + rng.below(3_600_000)).min(YEAR_MS - 1);
    let end = start + dur_ms.max(1000);
    let node = format!("node{:03}", rng.below(500));
    let user_name = format!("user{user:03}");
    let account = Some(account_of(user));
    let partition = Some(partition.to_string());
    let mut ends = Vec::with_capacity(gpus as usize);
    let mut used = Vec::with_capacity(gpus as usize);
    for i in 0..gpus {
        let watts = 60 + rng.below(640);
        // W × ms = mJ
        let energy = watts * (end - start);
        ends.push(GpuEnd {
            index: i,
            uuid: format!("GPU-{node}-{i}"),
            name: Some(model.to_string()),
            energy_start_mj: Some(1_000_000),
            energy_end_mj: Some(1_000_000 + energy),
            energy_delta_mj: Some(energy),
            mig: None,
        });
        let u = ((end - start) as f64 * rng.unit()) as u64;
        used.push(GpuUsage {
            index: i,
            uuid: format!("GPU-{node}-{i}"),
            name: Some(model.to_string()),
            samples: (end - start) / 10_000 + 1,
            util_mean_pct: 100.0 * u as f64 / (end - start) as f64,
            util_max_pct: 100,
            mem_peak_mib: rng.below(81_920),
            energy_mj: None,
            used_gpu_ms: u,
            idle_ms: None,
            idle_periods: None,
        });
    }
    let mut out = Vec::with_capacity(2);
    let body = JobEnd {
        user: user_name.clone(),
        uid: 10_000 + user,
        account: account.clone(),
        partition: partition.clone(),
        start_time: start,
        end_time: end,
        allocated_gpu_ms: u64::from(gpus) * (end - start),
        gpus: ends,
        exit: None,
        slurm_window: None,
    };
    if let Ok(id) = RecordId::new(CLUSTER, job_id, None, node.clone(), RecordKind::JobEnd)
        && let Ok(r) = Record::new(id, end, RecordBody::JobEnd(body))
    {
        out.push(r);
    }
    if usage {
        let total: u64 = used.iter().map(|g| g.used_gpu_ms).sum();
        let body = Usage {
            user: user_name,
            uid: 10_000 + user,
            account,
            partition,
            window_start: start,
            window_end: end,
            allocated_gpu_ms: u64::from(gpus) * (end - start),
            used_gpu_ms: total,
            gpus: used,
            idle_gpu_ms: None,
        };
        if let Ok(id) = RecordId::new(CLUSTER, job_id, None, node, RecordKind::JobUsage)
            && let Ok(r) = Record::new(id, end, RecordBody::JobUsage(body))
        {
            out.push(r);
        }
    }
    out
}

/// A JSON batch (`[record, ...]`) of jobs `first..first + n` of `total`.
pub fn batch(seed: u64, first: u32, n: u32, total: u32, usage: bool) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(n as usize * 900);
    let mut count = 0;
    out.push(b'[');
    for j in first..first.saturating_add(n) {
        for r in job_records(seed, j, total, usage) {
            if let Ok(json) = r.to_json() {
                if count > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&json);
                count += 1;
            }
        }
    }
    out.push(b']');
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_valid_and_spread() {
        let a = job_records(7, 1, 2000, true);
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0].to_json().unwrap(),
            job_records(7, 1, 2000, true)[0].to_json().unwrap()
        );
        for r in &a {
            r.validate().unwrap();
        }
        let mut accounts = std::collections::BTreeSet::new();
        let mut parts = std::collections::BTreeSet::new();
        for j in 1..2000 {
            let r = &job_records(7, j, 2000, false)[0];
            let RecordBody::JobEnd(b) = r.body() else {
                panic!("not a job_end")
            };
            assert!(b.end_time > b.start_time);
            assert!(b.start_time >= YEAR_START_MS && b.start_time < YEAR_START_MS + YEAR_MS);
            accounts.insert(b.account.clone());
            parts.insert(b.partition.clone());
        }
        assert_eq!(accounts.len(), ACCOUNTS as usize);
        assert_eq!(parts.len(), 4);
        let (json, n) = batch(7, 1, 10, 2000, true);
        assert_eq!(n, 20);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 20);
    }
}
