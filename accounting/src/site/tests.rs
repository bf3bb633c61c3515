use std::os::unix::fs::PermissionsExt;

use super::*;

const FULL: &str = r#"
time_zone = "Europe/Berlin"

[prices]
currency = "EUR"

[[prices.period]]
gpu_hour = 1.00
kwh = 0.25

[[prices.period]]
from = "2026-03-29"
gpu_hour = 1.50
kwh = 0.30
partition = { gpu = 2.00 }
gpu_model = { "NVIDIA H100 80GB HBM3" = 3 }
partition_gpu_model = { gpu = { "NVIDIA H100 80GB HBM3" = 4.125 } }

[coordinators]
slurm = true
refresh_s = 60
accounts = { physics = ["alice", "bob"], chem = ["bob"] }
"#;

fn parse(text: &str) -> Result<SiteConfig, SiteError> {
    SiteConfig::parse(Path::new("/etc/sgpu/acctd.toml"), text)
}

#[test]
fn a_full_configuration() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.zone.name(), "Europe/Berlin");
    let p = c.prices.unwrap();
    assert_eq!(p.currency.as_deref(), Some("EUR"));
    assert_eq!(p.periods.len(), 2);
    assert_eq!(
        p.periods[0].0, 0,
        "the first period without from: from the start"
    );
    // Berlin's midnight of 2026-03-29 is 23:00 UTC on the 28th
    assert_eq!(p.periods[1].0, 1_774_738_800_000);
    let r = &p.periods[1].1;
    assert_eq!(r.gpu_hour_micro("gpu", "NVIDIA H100 80GB HBM3"), 4_125_000);
    assert_eq!(
        r.gpu_hour_micro("debug", "NVIDIA H100 80GB HBM3"),
        3_000_000
    );
    assert_eq!(r.gpu_hour_micro("gpu", "A100"), 2_000_000);
    assert_eq!(r.gpu_hour_micro("debug", "A100"), 1_500_000);
    assert_eq!(r.kwh, Some(300_000));
    assert!(c.coordinators.slurm);
    assert_eq!(c.coordinators.refresh_s, 60);
    assert_eq!(c.coordinators.accounts["physics"].len(), 2);
    // nothing: the system's zone, no prices, no coordinators
    let c = parse("").unwrap();
    assert!(c.prices.is_none() && c.coordinators.accounts.is_empty() && !c.coordinators.slurm);
    assert_eq!(c.coordinators.refresh_s, DEFAULT_COORDINATOR_REFRESH_S);
}

/// The error of `text`, which must name `line` and `field`.
fn refused(text: &str, line: usize, field: &str) -> String {
    match parse(text) {
        Err(SiteError::Invalid {
            file,
            line: l,
            field: f,
            message,
        }) => {
            assert_eq!(file, Path::new("/etc/sgpu/acctd.toml"));
            assert_eq!((l, f.as_str()), (line, field), "{message}");
            message
        }
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn bad_values_name_file_line_and_field() {
    let m = refused("time_zone = \"Mars/Olympus\"\n", 1, "time_zone");
    assert!(m.contains("Mars/Olympus"), "{m}");
    let m = refused(
        "[prices]\n[[prices.period]]\ngpu_hour = -1\n",
        3,
        "prices.period[1].gpu_hour",
    );
    assert!(m.contains("not a price"), "{m}");
    refused(
        "[prices]\n[[prices.period]]\n[prices.period.partition]\ngpu = nan\n",
        4,
        "prices.period[1].partition.gpu",
    );
    refused(
        "[prices]\n[[prices.period]]\nfrom = \"2026-02-30\"\n",
        3,
        "prices.period[1].from",
    );
    refused(
        "[prices]\n[[prices.period]]\nfrom = \"2026-03-01\"\n[[prices.period]]\nfrom = \"2026-02-01\"\n",
        5,
        "prices.period[2].from",
    );
    refused(
        "[prices]\n[[prices.period]]\ngpu_hour = 1\n[[prices.period]]\ngpu_hour = 2\n",
        4,
        "prices.period[2].from",
    );
    refused("[prices]\ncurrency = \"EUR\"\n", 1, "prices.period");
    let m = refused("\n[prices]\ncurency = \"EUR\"\n", 3, "(file)");
    assert!(m.contains("curency"), "{m}");
    refused(
        "[coordinators]\nrefresh_s = 0\n",
        2,
        "coordinators.refresh_s",
    );
    refused(
        "[coordinators]\naccounts = { physics = [\"\"] }\n",
        2,
        "coordinators.accounts.physics",
    );
}

#[test]
fn a_file_others_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acctd.toml");
    std::fs::write(&path, FULL).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(SiteConfig::load(&path).is_ok());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    match SiteConfig::load(&path) {
        Err(SiteError::Untrusted { file, message }) => {
            assert!(message.contains("writable"), "{message}");
            assert!(file.ends_with("acctd.toml"));
        }
        other => panic!("{other:?}"),
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        SiteConfig::load(&path),
        Err(SiteError::Untrusted { .. })
    ));
}

#[test]
fn prices_from_slurms_tres_billing_weights() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("slurm.conf");
    std::fs::write(
        &conf,
        "ClusterName=t\nSlurmctldHost=h\nGresTypes=gpu\nNodeName=n[1-2] Gres=gpu:2\n\
         PartitionName=gpu Nodes=n1 TRESBillingWeights=\"CPU=1.0,Mem=0.25G,GRES/gpu=2.0\"\n\
         PartitionName=long Nodes=n2 TRESBillingWeights=CPU=1.0,gres/GPU=0.5\n\
         PartitionName=cpu Nodes=n2 TRESBillingWeights=CPU=1.0\n\
         PartitionName=debug Nodes=n1\n\
         PartitionName=mine Nodes=n1 TRESBillingWeights=GRES/gpu=9\n",
    )
    .unwrap();
    let text = format!(
        "time_zone = \"UTC\"\n[prices]\n[[prices.period]]\ngpu_hour = 0.10\n\
         partition = {{ mine = 1.00 }}\n\
         slurm_billing = {{ unit = 0.40, slurm_conf = {:?} }}\n",
        conf.display()
    );
    let c = parse(&text).unwrap();
    let r = &c.prices.unwrap().periods[0].1;
    assert_eq!(r.gpu_hour_micro("gpu", "H100"), 800_000, "2.0 x 0.40");
    assert_eq!(r.gpu_hour_micro("long", "H100"), 200_000, "0.5 x 0.40");
    // no GRES/gpu weight, no weights: the default; a price of the period's own wins
    assert_eq!(r.gpu_hour_micro("cpu", "H100"), 100_000);
    assert_eq!(r.gpu_hour_micro("debug", "H100"), 100_000);
    assert_eq!(r.gpu_hour_micro("mine", "H100"), 1_000_000);

    // a bad weight names slurm.conf's line; a missing slurm.conf names acctd.toml's field
    std::fs::write(
        &conf,
        "ClusterName=t\nSlurmctldHost=h\nNodeName=n1\n\
         PartitionName=gpu Nodes=n1 TRESBillingWeights=GRES/gpu=lots\n",
    )
    .unwrap();
    match parse(&text) {
        Err(SiteError::Invalid {
            file, line, field, ..
        }) => {
            assert_eq!((file, line), (conf.clone(), 4));
            assert!(field.contains("TRESBillingWeights"), "{field}");
        }
        other => panic!("{other:?}"),
    }
    let missing = text.replace(&conf.display().to_string(), "/nonexistent/slurm.conf");
    refused(&missing, 6, "prices.period[1].slurm_billing.slurm_conf");
    assert_eq!(gpu_billing_weight("CPU=1"), Ok(None));
    assert!(gpu_billing_weight("GRES/gpu=-1").is_err());
    assert!(gpu_billing_weight("GRES/gpu").is_err());
}
