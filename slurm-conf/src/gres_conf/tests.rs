use super::*;
use crate::ConfFile;

const SLURM: &str = "GresTypes=gpu,mps\n\
NodeName=g[1-4] Gres=gpu:a100:4\n\
NodeName=g5 Gres=gpu:2,gpu:t4:1\n\
NodeName=h1 Gres=gpu:8\n\
NodeName=c1\n";

fn slurm() -> SlurmConf {
    SlurmConf::parse_str(SLURM, "/etc/slurm/slurm.conf").unwrap_or_else(|e| panic!("{e}"))
}

fn gres(text: &str) -> GresConf {
    GresConf::parse_str(text, "/etc/slurm/gres.conf").unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    GresConf::parse_str_lenient(text, "/etc/slurm/gres.conf")
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn files_expand_one_gpu_each() {
    let g = gres(
        "AutoDetect=off\n\
         NodeName=g[1-4] Name=gpu Type=a100 File=/dev/nvidia[0-3] Cores=0-15,32-47\n\
         NodeName=h1 Name=gpu File=/dev/nvidia[0-7] Links=-1,0,2,2,2,2,2,2\n",
    );
    let n = g.expected_gpus("g3", Some(&slurm()));
    assert_eq!(n.count, 4);
    assert_eq!(n.gres_conf_count, 4);
    assert_eq!(n.slurm_conf_count, Some(4));
    assert_eq!(n.autodetect, Some(AutoDetect::Off));
    assert!(n.issues.is_empty(), "{:?}", n.issues);
    assert_eq!(n.devices.len(), 4);
    let d = &n.devices[2];
    assert_eq!(d.index, 2);
    assert_eq!(d.minor, Some(2));
    assert_eq!(d.file.as_deref(), Some(Path::new("/dev/nvidia2")));
    assert_eq!(d.type_.as_deref(), Some("a100"));
    assert_eq!(d.cores.as_deref(), Some("0-15,32-47"));
    assert_eq!(d.at.line, 2);
    let h = g.expected_gpus("h1", Some(&slurm()));
    assert_eq!(h.devices.len(), 8);
    assert!(h.issues.is_empty(), "{:?}", h.issues);
}

#[test]
fn lines_without_nodename_apply_everywhere() {
    let g = gres("Name=gpu File=/dev/nvidia0\nName=gpu Type=x File=/dev/nvidia1\n");
    assert_eq!(g.expected_gpus("anything", None).count, 2);
    assert_eq!(g.records_for("anything").count(), 2);
    assert_eq!(g.expected_gpus("anything", None).slurm_conf_count, None);
}

#[test]
fn mismatches_are_values_not_errors() {
    let g = gres("Name=gpu Type=a100 File=/dev/nvidia[0-1]\n");
    let n = g.expected_gpus("g1", Some(&slurm()));
    assert_eq!(n.count, 4, "slurm.conf's count is what Slurm allocates");
    assert_eq!(n.gres_conf_count, 2);
    assert_eq!(
        n.issues,
        [GpuIssue::CountMismatch {
            slurm_conf: 4,
            gres_conf: 2
        }]
    );
    assert!(
        n.issues[0]
            .to_string()
            .contains("slurm.conf gives the node 4 GPU(s) but gres.conf lists 2")
    );
    // Same total, wrong type.
    let g = gres("Name=gpu Type=h100 File=/dev/nvidia[0-3]\n");
    let n = g.expected_gpus("g1", Some(&slurm()));
    assert_eq!(
        n.issues,
        [GpuIssue::TypeCountMismatch {
            type_: "a100".into(),
            slurm_conf: 4,
            gres_conf: 0
        }]
    );
    // Node not in slurm.conf; mixed typed and untyped GPUs; GresTypes.
    let n = g.expected_gpus("zz", Some(&slurm()));
    assert_eq!(n.issues, [GpuIssue::NodeNotInSlurmConf]);
    let n = gres("Name=gpu File=/dev/nvidia[0-2]\n").expected_gpus("g5", Some(&slurm()));
    assert_eq!(n.issues[0], GpuIssue::MixedTypedAndUntyped);
    assert!(matches!(&n.issues[1], GpuIssue::TypeCountMismatch { type_, .. } if type_ == "t4"));
    let sc = SlurmConf::parse_str("NodeName=x Gres=gpu:1\n", "s.conf").unwrap();
    let n = gres("Name=gpu File=/dev/nvidia0\n").expected_gpus("x", Some(&sc));
    assert_eq!(n.issues, [GpuIssue::GpuNotInGresTypes]);
}

#[test]
fn autodetect_global_and_per_node() {
    let g = gres(
        "AutoDetect=nvml\nNodeName=h1 AutoDetect=off\nNodeName=h1 Name=gpu File=/dev/nvidia[0-7]\n",
    );
    assert_eq!(g.autodetect_for("g1"), Some(AutoDetect::Nvml));
    assert_eq!(g.autodetect_for("h1"), Some(AutoDetect::Off));
    // Autodetected node: no records, slurm.conf count, no issue.
    let n = g.expected_gpus("g1", Some(&slurm()));
    assert_eq!((n.count, n.devices.len()), (4, 0));
    assert!(n.issues.is_empty(), "{:?}", n.issues);
    // Count without files and autodetect off: devices unknown.
    let n = gres("Name=gpu Type=a100 Count=4\n").expected_gpus("g1", Some(&slurm()));
    assert_eq!(n.devices.len(), 4);
    assert_eq!(n.issues, [GpuIssue::NoDeviceFiles]);
    assert_eq!(AutoDetect::parse("NVML"), Some(AutoDetect::Nvml));
    assert_eq!(AutoDetect::parse("Off"), Some(AutoDetect::Off));
    assert_eq!(AutoDetect::parse("offf"), None);
    // new in 24.11 (nvidia) and 26.05 (nrt, full), in Slurm's order of matching
    assert_eq!(AutoDetect::parse("nvidia"), Some(AutoDetect::Nvidia));
    assert_eq!(AutoDetect::parse("NRT"), Some(AutoDetect::Nrt));
    assert_eq!(AutoDetect::parse("full"), Some(AutoDetect::Full));
    assert_eq!(AutoDetect::parse("nvidia-nvml"), Some(AutoDetect::Nvml));
    assert_eq!(AutoDetect::parse("fullnvml"), Some(AutoDetect::Full));
    assert!(AutoDetect::Nvidia.is_on() && AutoDetect::Full.is_on());
    let g = GresConf::parse_str("AutoDetect=nvidia\n", "gres.conf").unwrap();
    assert_eq!(g.autodetect, Some(AutoDetect::Nvidia));
}

#[test]
fn multiple_files_and_shared_gres() {
    let g = gres(
        "Name=gpu MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap[21-22]\n\
         Name=mps Count=200 File=/dev/nvidia[0-1]\n",
    );
    let n = g.expected_gpus("x", None);
    assert_eq!(n.count, 1);
    assert_eq!(n.devices[0].extra_files.len(), 2);
    assert_eq!(
        n.devices[0].minor,
        Some(0),
        "the GPU's file, not a capability's"
    );
    assert_eq!(n.devices[0].mig_caps, [21, 22]);
    assert_eq!(
        g.records[1].count, 200,
        "mps counts may exceed the file count"
    );
}

#[test]
fn count_suffixes_and_defaults() {
    let g = gres("Name=mps Count=1K\nName=nic\n");
    assert_eq!(g.records[0].count, 1024);
    assert_eq!(g.records[1].count, 1);
}

#[test]
fn errors_name_file_line_and_expectation() {
    let e = errors("Name=gpu Count=3 File=/dev/nvidia[0-3]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "/etc/slurm/gres.conf:1: Count=3 does not match File=/dev/nvidia[0-3], which names 4 device(s)"
        ),
        "{e:?}"
    );
    for (text, want) in [
        ("Name=gpu File=/dev/nvidia[3-0]\n", "File: invalid range"),
        ("Name=gpu Count=many\n", "Count `many` is not a number"),
        (
            "Name=gpu File=/dev/a MultipleFiles=/dev/b,/dev/c\n",
            "exclude each other",
        ),
        ("Name=gpu MultipleFiles=/dev/b\n", "fewer than two files"),
        ("Name=gpu File=/dev/nvidia0 Links=0,0\n", "has no -1"),
        ("Name=gpu File=/dev/nvidia0 Links=-1,x\n", "Links value `x`"),
        (
            "Name=gpu File=/dev/nvidia0 Cores=a-b\n",
            "Cores=a-b: expected core numbers",
        ),
        ("NodeName=n1 File=/dev/nvidia0\n", "expected Name=<gres>"),
        (
            "Name=gpu AutoDetect=nvml\n",
            "AutoDetect on a Name= line has no effect",
        ),
        ("AutoDetect=cuda\n", "unknown AutoDetect value `cuda`"),
        ("Count=4\n", "Count= outside a Name= or NodeName= line"),
        (
            "NodeName=n[1-2] AutoDetect=off\nNodeName=n2 AutoDetect=nvml\n",
            "contradicts AutoDetect=off at /etc/slurm/gres.conf:1",
        ),
        ("Name=gpu File=/dev/nvidia0 junk\n", "cannot parse `junk`"),
        ("NodeName=n[5-1] Name=gpu\n", "NodeName: invalid range"),
    ] {
        let e = errors(text);
        assert!(e.iter().any(|m| m.contains(want)), "{text:?}: {e:?}");
        assert!(
            e.iter().all(|m| m.starts_with("/etc/slurm/gres.conf:")),
            "{e:?}"
        );
    }
    assert!(errors("Name=gpu File=/dev/nvidia[0-1] Count=2 Flags=nvidia_gpu_env\n").is_empty());
}

#[test]
fn include_is_supported() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("gres.conf"),
        "AutoDetect=off\nInclude gres.d/*.conf\n",
    )
    .unwrap();
    std::fs::create_dir(d.path().join("gres.d")).unwrap();
    std::fs::write(
        d.path().join("gres.d/a.conf"),
        "Name=gpu File=/dev/nvidia[0-1]\n",
    )
    .unwrap();
    let g = GresConf::load(d.path().join("gres.conf")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.expected_gpus("n", None).count, 2);
    assert_eq!(g.files.len(), 2);
}

#[test]
fn huge_counts_do_not_allocate() {
    let g = gres("Name=gpu Count=1P\n");
    let n = g.expected_gpus("x", None);
    assert_eq!(n.count, 1 << 50);
    assert_eq!(n.devices.len() as u64, MAX_DEVICES);
}

#[test]
fn mig_slices_as_sites_configure_them() {
    // one slice per line with MultipleFiles= (Slurm's MIG documentation), a slice given by
    // its capability files alone with File=, and a whole GPU beside them
    let g = gres(
        "NodeName=n1 Name=gpu Type=1g.10gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap66,/dev/nvidia-caps/nvidia-cap67\n\
         NodeName=n1 Name=gpu Type=3g.40gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap[12-13]\n\
         NodeName=n1 Name=gpu Type=1g.10gb File=/dev/nvidia-caps/nvidia-cap201\n\
         NodeName=n1 Name=gpu Type=h100 File=/dev/nvidia2\n",
    );
    let n = g.expected_gpus("n1", None);
    assert_eq!(n.count, 4);
    let got: Vec<(Option<u32>, Vec<u32>, Option<&str>)> = n
        .devices
        .iter()
        .map(|d| (d.minor, d.mig_caps.clone(), d.type_.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(0), vec![66, 67], Some("1g.10gb")),
            (Some(0), vec![12, 13], Some("3g.40gb")),
            (None, vec![201], Some("1g.10gb")),
            (Some(2), vec![], Some("h100")),
        ]
    );
    // MIG types in slurm.conf are compared like any type
    assert!(n.issues.is_empty(), "{:?}", n.issues);
}
