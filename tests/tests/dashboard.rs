//! The Grafana dashboard (`dashboards/sgpu.json`) against a real scrape: every metric its
//! queries name is one healthd exports, and every label they filter or group by is one
//! those metrics carry, taken from a node's `/metrics` while a GPU job runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sgpu_tests::Cluster;
use sgpu_tests::sgpu;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Labels Prometheus adds itself (target labels) or that histograms carry.
const SERVER_LABELS: &[&str] = &["instance", "job", "le"];

/// Metric sample names and their label names, from Prometheus text exposition. Families
/// declared by `# TYPE` without samples get their sample names with no labels.
fn scrape_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let names: Vec<String> = match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                _ => vec![name.to_string()],
            };
            for n in names {
                out.entry(n).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = out.entry(name.to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let inner = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
            for part in inner.split("\",") {
                if let Some((k, _)) = part.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// The `sgpu_*` metric names in a PromQL expression, each with the labels its selector
/// (`{...}`) names.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sgpu_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        let after = &tail[end..];
        if let Some(sel) = after.strip_prefix('{') {
            let close = sel.find('}').unwrap_or(sel.len());
            for m in sel[..close].split(',') {
                let key: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.push(key);
                }
            }
        }
        out.push((name, labels));
        rest = &tail[end..];
    }
    out
}

/// The label names in the expression's `by (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expr.split("by (").skip(1) {
        if let Some(list) = part.split(')').next() {
            out.extend(list.split(',').map(|s| s.trim().to_string()));
        }
    }
    out
}

/// Every `expr` in the dashboard, with its panel's title.
fn dashboard_exprs() -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let path = sgpu_tests::cluster::repo_root().join("dashboards/sgpu.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut out = Vec::new();
    for panel in v["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or("").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    Ok(out)
}

#[test]
fn dashboard_queries_name_metrics_and_labels_healthd_exports() -> TestResult {
    let exprs = dashboard_exprs()?;
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );

    let cluster = Cluster::up()?;
    // exclusive: the test injects an XID (13, the job's own fault: recorded, never drains)
    // so the XID series exist in the scrape
    let _lock = cluster.lock_exclusive()?;
    let node = "node1";
    let _restore = sgpu::Restore::new(&cluster, &[node]);
    let id = cluster.sbatch(
        &[
            "-w",
            node,
            "--gres=gpu:1",
            "--account=dashboard",
            "-o",
            "/dev/null",
        ],
        "sleep 20",
    )?;
    sgpu::update_gpus(&cluster, node, |s| {
        s.inject_xid(0, 13);
    })?;
    // A scrape with a series labelled with this job (healthd samples every second here),
    // and the XID counted.
    let needle = format!("job_id=\"{id}\"");
    let start = Instant::now();
    let scrape = loop {
        let (status, body) = sgpu::healthd_get(&cluster, node, "/metrics")?;
        if status == 200 && body.contains(&needle) && body.contains("xid=\"13\"") {
            break body;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = cluster.output("scancel", &[&id.to_string()]);
            return Err(format!("no series with {needle} on {node} within 60 s:\n{body}").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = cluster.output("scancel", &[&id.to_string()]);
    assert!(
        scrape.contains("account=\"dashboard\""),
        "the job's account label is missing:\n{scrape}"
    );

    let exported = scrape_labels(&scrape);
    let mut problems = Vec::new();
    for (title, expr) in &exprs {
        let sels = selectors(expr);
        if sels.is_empty() {
            problems.push(format!("{title}: no sgpu metric in {expr}"));
        }
        let mut known: BTreeSet<String> = SERVER_LABELS.iter().map(|s| s.to_string()).collect();
        for (name, labels) in &sels {
            let Some(have) = exported.get(name) else {
                problems.push(format!("{title}: {name} is not exported"));
                continue;
            };
            known.extend(have.iter().cloned());
            for l in labels {
                if !have.contains(l) && !SERVER_LABELS.contains(&l.as_str()) {
                    problems.push(format!("{title}: {name} has no label {l} (has {have:?})"));
                }
            }
        }
        for l in grouping_labels(expr) {
            if !known.contains(&l) {
                problems.push(format!("{title}: groups by {l}, which its metrics lack"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn expression_parsing_finds_names_selectors_and_groupings() {
    let e = r#"sum by (account) (increase(sgpu_gpu_energy_joules_total{job_id!="", instance=~"$instance"}[$__range])) / 3.6e6"#;
    assert_eq!(
        selectors(e),
        vec![(
            "sgpu_gpu_energy_joules_total".to_string(),
            vec!["job_id".to_string(), "instance".to_string()]
        )]
    );
    assert_eq!(grouping_labels(e), vec!["account".to_string()]);
    let scrape =
        "# TYPE sgpu_drains counter\n# TYPE sgpu_x gauge\nsgpu_x{gpu=\"0\",uuid=\"a,b\"} 1\n";
    let m = scrape_labels(scrape);
    assert!(m["sgpu_drains_total"].is_empty());
    assert_eq!(
        m["sgpu_x"],
        ["gpu", "uuid"].iter().map(|s| s.to_string()).collect()
    );
}
