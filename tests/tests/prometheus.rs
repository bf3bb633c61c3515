//! A real Prometheus (Debian package `prometheus`) scrapes a test-cluster node's
//! `sgpu-healthd` `/metrics` while a GPU job runs; its HTTP API then returns the job's
//! per-GPU series, labelled with `job_id` and `user` (issue 5 §3).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sgpu_tests::Cluster;
use sgpu_tests::sgpu::{self, node_files};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A Prometheus server on a loopback port with its own storage, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (`host:port`) every second.
    fn start(target: SocketAddr) -> Result<Prometheus, Box<dyn std::error::Error>> {
        let dir = tempfile::Builder::new().prefix("sgpu-prom").tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sgpu-healthd\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run prometheus: {e} (apt-get install prometheus; .ci/run installs it)"
                )
            })?;
        Ok(Prometheus { child, addr, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=<q>`: the result vector (empty while Prometheus is not up
    /// yet or has no such series).
    fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let Ok(mut resp) = ureq::get(&url).query("query", q).call() else {
            return Vec::new();
        };
        let Ok(text) = resp.body_mut().read_to_string() else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Vec::new();
        };
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_job_labelled_gpu_series_from_healthd() -> TestResult {
    let cluster = Cluster::up()?;
    // shared: the test only runs a job and reads healthd
    let _lock = cluster.lock_shared()?;
    let node = "node1";
    let target = sgpu::healthd_status_addr(&cluster, node)?;
    let flag_dir = tempfile::tempdir()?;
    let flag = flag_dir.path().join("release");
    let script = format!(
        "for i in $(seq 600); do [ -e {f} ] && break; sleep 0.2; done",
        f = flag.display()
    );
    let id = cluster.sbatch(&["-w", node, "--gres=gpu:1", "-o", "/dev/null"], &script)?;
    // the job ends however the test ends
    struct Release<'a>(&'a Path);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, b"");
        }
    }
    let release = Release(&flag);

    let prom = Prometheus::start(target)?;
    let query = format!("sgpu_gpu_utilization_ratio{{job_id=\"{id}\"}}");
    let began = Instant::now();
    let series = loop {
        let r = prom.query(&query);
        if !r.is_empty() {
            break r;
        }
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "no {query} in Prometheus after 90 s; healthd log: {}\nprometheus log: {}",
            std::fs::read_to_string(node_files(&cluster, node).healthd_log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n"),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "Prometheus has {query} after {:.1} s: {series:?}",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(series.len(), 1, "one GPU is allocated: {series:?}");
    let m = &series[0]["metric"];
    assert_eq!(m["job_id"], id.to_string(), "{m}");
    assert_eq!(m["user"], "root", "{m}");
    assert_eq!(m["job"], "sgpu-healthd", "{m}");
    assert!(
        m["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-")),
        "{m}"
    );
    let value: f64 = series[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or("no sample value")?;
    assert!((0.0..=1.0).contains(&value), "{value}");
    // the scrape itself is healthy, and node-level series are there too
    let up = prom.query("up{job=\"sgpu-healthd\"}");
    assert_eq!(up.first().map(|u| u["value"][1].clone()), Some("1".into()));
    assert!(!prom.query("sgpu_node_verdict").is_empty());

    drop(release);
    let job = cluster.wait_job(id, Duration::from_secs(60))?;
    assert_eq!(job.get("JobState"), "COMPLETED", "{job:?}");
    Ok(())
}
