use super::*;
use crate::conf::ConfFile;

const SAMPLE: &str = r#"
# Cluster
ClusterName=Gpu1
SlurmctldHost=head1(10.0.0.1)
SlurmctldHost=head2
slurmuser = slurm
Prolog=/usr/lib/sgpu/sgpu-prolog
Epilog=/usr/lib/sgpu/sgpu-epilog   # runs after every job
PrologFlags=Alloc,Contain
GresTypes=gpu,nic
SlurmdSpoolDir=/var/spool/slurmd
SomeFutureKey="a value with spaces"

NodeName=DEFAULT CPUs=64 RealMemory=512000 State=UNKNOWN
NodeName=gpu[01-04] Gres=gpu:a100:4(S:0-1),nic:1 \
    Features=a100,ib NodeAddr=10.1.0.[1-4] Port=[6001-6004]
NodeName=DEFAULT CPUs=32
NodeName=cpu[1-2] Weight=10 Reason="being tested" FutureNodeKey=x
NodeName=login Gres=gpu:2,gpu:t4:1 CPUs=8

PartitionName=DEFAULT State=UP MaxTime=INFINITE
PartitionName=gpu Nodes=gpu[01-04] Default=YES
PartitionName=all Nodes=ALL State=DOWN
PartitionName=cpu Nodes=cpu[1-2],login
"#;

fn sample() -> SlurmConf {
    SlurmConf::parse_str(SAMPLE, "/etc/slurm/slurm.conf").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn typed_settings() {
    let c = sample();
    assert_eq!(c.cluster_name.as_deref(), Some("Gpu1"));
    assert_eq!(c.slurm_user(), "slurm");
    assert_eq!(c.prolog.as_deref(), Some("/usr/lib/sgpu/sgpu-prolog"));
    assert_eq!(c.epilog.as_deref(), Some("/usr/lib/sgpu/sgpu-epilog"));
    assert_eq!(c.prolog_flags, ["Alloc", "Contain"]);
    assert_eq!(c.gres_types, ["gpu", "nic"]);
    assert_eq!(c.slurmctld_hosts, ["head1(10.0.0.1)", "head2"]);
    assert_eq!(c.slurmd_spool_dir.as_deref(), Some("/var/spool/slurmd"));
    assert_eq!(c.get("somefuturekey"), Some("a value with spaces"));
    assert_eq!(c.get("SLURMUSER"), Some("slurm"));
    assert_eq!(
        c.plugstack_path(),
        PathBuf::from("/etc/slurm/plugstack.conf")
    );
    assert_eq!(c.gres_conf_path(), PathBuf::from("/etc/slurm/gres.conf"));
    assert_eq!(c.settings["prolog"].at.line, 7);
}

#[test]
fn nodes_with_defaults_and_hostlists() {
    let c = sample();
    assert_eq!(c.nodes.len(), 7);
    let n = c.node("gpu03").expect("gpu03");
    assert_eq!(n.cpus, Some(64));
    assert_eq!(n.real_memory, Some(512000));
    assert_eq!(n.addr, "10.1.0.3");
    assert_eq!(n.hostname, "gpu03");
    assert_eq!(n.port, Some(6003));
    assert_eq!(n.features, ["a100", "ib"]);
    assert_eq!(n.state.as_deref(), Some("UNKNOWN"));
    assert_eq!(n.gpu_count(), 4);
    assert_eq!(
        n.gres[0],
        GresSpec {
            name: "gpu".into(),
            type_: Some("a100".into()),
            count: 4,
            flags: vec![],
            sockets: Some("S:0-1".into()),
        }
    );
    assert_eq!(n.gres[1].name, "nic");
    assert_eq!(n.at.line, 15);
    let cpu = c.node("cpu2").expect("cpu2");
    assert_eq!(cpu.cpus, Some(32), "later DEFAULT overrides");
    assert_eq!(cpu.real_memory, Some(512000), "earlier DEFAULT kept");
    assert_eq!(cpu.param("reason"), Some("being tested"));
    assert_eq!(cpu.param("FutureNodeKey"), Some("x"));
    assert!(cpu.gres.is_empty());
    let login = c.node("login").expect("login");
    assert_eq!(login.cpus, Some(8));
    assert_eq!(login.gpu_count(), 3);
    assert_eq!(c.gres_of("login").len(), 2);
    assert!(c.node("nope").is_none());
    assert!(c.gres_of("nope").is_empty());
}

#[test]
fn partitions() {
    let c = sample();
    let names: Vec<&str> = c
        .partitions_of("gpu02")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["gpu", "all"]);
    let names: Vec<&str> = c
        .partitions_of("login")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["all", "cpu"]);
    let all = &c.partitions[1];
    assert_eq!(all.nodes.len(), 7);
    assert_eq!(all.state.as_deref(), Some("DOWN"));
    assert_eq!(all.param("maxtime"), Some("INFINITE"));
    assert_eq!(c.default_partition().map(|p| p.name.as_str()), Some("gpu"));
    assert_eq!(c.partitions[0].state.as_deref(), Some("UP"));
}

fn errors(text: &str) -> Vec<String> {
    let (_, errs) = SlurmConf::parse_str_lenient(text, "/etc/slurm/slurm.conf");
    errs.iter().map(ToString::to_string).collect()
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}

#[test]
fn errors_name_file_line_and_expectation() {
    let e = one_error("ClusterName=x\nClusterName=x SlurmUser=slurm\n");
    assert!(e.starts_with("/etc/slurm/slurm.conf:2: "), "{e}");
    assert!(e.contains("one Key=Value per line"), "{e}");
    let e = one_error("NodeName=n1 CPUs=abc\n");
    assert!(
        e.contains(":1: CPUs value \"abc\" is not a valid number"),
        "{e}"
    );
    let e = one_error("NodeName=n1 CPUs=70000\n");
    assert!(e.contains("greater than 65535"), "{e}");
    let e = one_error("NodeName=DEFAULT NodeAddr=x\n");
    assert!(e.contains("not allowed with NodeName=DEFAULT"), "{e}");
    let e = one_error("NodeName=n[1-2]\nNodeName=n2\n");
    assert!(
        e.contains(":2: node n2 is defined again (first defined at /etc/slurm/slurm.conf:1)"),
        "{e}"
    );
    let e = one_error("NodeName=n[5-1]\n");
    assert!(e.contains("NodeName: invalid range"), "{e}");
    let e = one_error("NodeName=n1\nPartitionName=p Nodes=n[1-3]\n");
    assert!(e.contains(":2: partition p: Nodes= names n[2-3]"), "{e}");
    let e = one_error("PartitionName=p Default=maybe\n");
    assert!(
        e.contains("\"maybe\" is not a valid option for \"Default\""),
        "{e}"
    );
    let e = one_error("NodeName=n[1-2] NodeAddr=a1\n");
    assert!(e.contains("NodeAddr lists 1 names for 2 nodes"), "{e}");
    let e = one_error("NodeName=n[1-3] Port=[1-2]\n");
    assert!(e.contains("Port lists 2 ports for 3 nodes"), "{e}");
    let e = one_error("  garbage here\n");
    assert!(
        e.contains(":1: expected Key=Value, found `garbage here`"),
        "{e}"
    );
    let e = one_error("NodeName=n1 Feature=\"a b\"c\n");
    assert!(
        e.contains("cannot parse `b\"c` in the NodeName line"),
        "{e}"
    );
    let e = one_error("NodeName=n1 Gres=gpu:4(S:0\n");
    assert!(e.contains("expected `)`"), "{e}");
    assert!(SlurmConf::parse_str("NodeName=n1 CPUs=abc\n", "x.conf").is_err());
}

#[test]
fn slurm_accepts_these() {
    for ok in [
        "NodeName=n1 CPUs=\"4\"\n",
        "NodeName=n1 CPUs=0x10\n",
        "NodeName=n1 CPUs=UNLIMITED\n",
        "clustername = x\n",
        "NodeName=n1 CPUs=4 \\\n RealMemory=100\n",
        "NodeName=n1 Gres=gpu:4 Gres=gpu:2\n",
        "NodeName=n1 State=UNKNOWN # foo\n",
        "Prolog=/a\\#b\n",
        "\n\n   \n",
        "",
    ] {
        assert!(errors(ok).is_empty(), "{ok:?}: {:?}", errors(ok));
    }
    let c = SlurmConf::parse_str("Prolog=/a\\#b\n", "s.conf").unwrap();
    assert_eq!(c.prolog.as_deref(), Some("/a#b"));
    let c = SlurmConf::parse_str("NodeName=n1 Gres=gpu:4 Gres=gpu:2\n", "s.conf").unwrap();
    assert_eq!(c.nodes[0].gpu_count(), 2, "last value wins");
}

#[test]
fn gres_spec_forms() {
    let p = |s: &str| GresSpec::parse(s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((p("gpu").count, p("gpu").type_), (1, None));
    assert_eq!((p("gpu:4").count, p("gpu:4").type_), (4, None));
    let g = p("gpu:a100:4");
    assert_eq!((g.count, g.type_.as_deref()), (4, Some("a100")));
    let g = p("gpu:a100");
    assert_eq!((g.count, g.type_.as_deref()), (1, Some("a100")));
    let g = p("gpu:1g.5gb:7");
    assert_eq!((g.count, g.type_.as_deref()), (7, Some("1g.5gb")));
    assert_eq!(p("mps:1K").count, 1024);
    let g = p("gpu:no_consume:2");
    assert_eq!((g.count, g.flags.len()), (2, 1));
    assert!(GresSpec::parse(":4").is_err());
    assert!(GresSpec::parse("gpu:a:b:4").is_err());
    let l = GresSpec::parse_list("gpu:a100:4(S:0,1),nic:1").unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].sockets.as_deref(), Some("S:0,1"));
    assert!(GresSpec::parse_list("").unwrap().is_empty());
    assert!(GresSpec::parse_list("gpu:4,").is_err());
}

#[test]
fn numbers_like_slurm() {
    assert_eq!(parse_slurm_uint("CPUs", "010", 65535), Ok(8));
    assert_eq!(parse_slurm_uint("CPUs", "0x10", 65535), Ok(16));
    assert_eq!(parse_slurm_uint("CPUs", "INFINITE", 65535), Ok(65535));
    assert!(parse_slurm_uint("CPUs", "08", 65535).is_err());
    assert!(parse_slurm_uint("CPUs", "-1", 65535).is_err());
    assert!(parse_slurm_uint("CPUs", "", 65535).is_err());
    assert!(parse_slurm_uint("CPUs", "0x+1", 65535).is_err());
    assert!(parse_slurm_uint("CPUs", "++1", 65535).is_err());
    assert_eq!(parse_slurm_bool("Default", "Yes"), Ok(true));
    assert_eq!(parse_slurm_bool("Default", "down"), Ok(false));
}

#[test]
fn nodesets() {
    let c = SlurmConf::parse_str(
        "NodeName=a[1-2] Features=big\nNodeName=b1\nNodeSet=bigs Feature=big\nNodeSet=bs Nodes=b1\n\
         PartitionName=p Nodes=bigs,bs\n",
        "s.conf",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.partitions[0].nodes, ["a1", "a2", "b1"]);
    assert_eq!(c.partitions_of("b1").len(), 1);
}

mod files {
    use super::*;
    use std::fs;

    #[test]
    fn include_relative_to_including_file_absolute_and_glob() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("inc/sub")).unwrap();
        fs::create_dir_all(root.join("conf.d")).unwrap();
        fs::write(
            root.join("slurm.conf"),
            format!(
                "ClusterName=Alpha\nInclude inc/a.conf\nInclude {}\nInclude conf.d/*.conf\nInclude nodes-%c.conf\n",
                root.join("abs.conf").display()
            ),
        )
        .unwrap();
        // Relative to inc/, the including file's directory.
        fs::write(
            root.join("inc/a.conf"),
            "SlurmUser=slurm\nInclude sub/b.conf\n",
        )
        .unwrap();
        fs::write(root.join("inc/sub/b.conf"), "NodeName=n1 Gres=gpu:2\n").unwrap();
        fs::write(root.join("abs.conf"), "NodeName=n2\n").unwrap();
        fs::write(root.join("conf.d/10-x.conf"), "NodeName=n3\n").unwrap();
        fs::write(root.join("conf.d/20-y.conf"), "NodeName=n4\n").unwrap();
        fs::write(
            root.join("nodes-alpha.conf"),
            "PartitionName=p Nodes=n[1-4]\n",
        )
        .unwrap();
        let c = SlurmConf::load(root.join("slurm.conf")).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3", "n4"]);
        assert_eq!(c.slurm_user(), "slurm");
        assert_eq!(c.partitions[0].nodes.len(), 4);
        assert_eq!(c.files.len(), 7);
        assert!(c.node("n1").unwrap().at.file.ends_with("inc/sub/b.conf"));
        assert_eq!(c.node("n1").unwrap().at.line, 1);
    }

    #[test]
    fn include_loop_is_reported() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.conf"), "ClusterName=x\nInclude b.conf\n").unwrap();
        fs::write(d.path().join("b.conf"), "NodeName=n1\nInclude a.conf\n").unwrap();
        let err = SlurmConf::load(d.path().join("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.conf:2: Include loop"), "{err}");
        // Self-include too.
        fs::write(d.path().join("c.conf"), "Include c.conf\n").unwrap();
        let err = SlurmConf::load(d.path().join("c.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.conf:1: Include loop"), "{err}");
    }

    #[test]
    fn missing_include_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.conf"), "Include nope.conf\nInclude\t\n").unwrap();
        let (_, errs) = SlurmConf::load_lenient(d.path().join("a.conf"));
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("a.conf:1: cannot read included file"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("a.conf:2: Include needs a file name"),
            "{msgs:?}"
        );
        let err = SlurmConf::load(d.path().join("missing.conf")).unwrap_err();
        assert!(matches!(err, ConfError::Io { .. }));
        assert!(
            err.to_string().contains("missing.conf: cannot read"),
            "{err}"
        );
        // A directory or device is refused rather than read forever.
        let err = SlurmConf::load(d.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn percent_c_needs_cluster_name() {
        let e = one_error("Include nodes-%c.conf\n");
        assert!(e.contains("uses %c but no ClusterName"), "{e}");
    }
}

#[test]
fn cluster_name_is_the_full_reads_on_files_that_scope_or_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // ranged node lines (read without expanding them)
        "ClusterName=Big\nNodeName=gpu[0001-4000] Gres=gpu:8\nPartitionName=p Nodes=ALL\n",
        // two node lines that may share a name: the read falls back to the full parse
        "NodeName=n[1-4]\nNodeName=n[3-6]\nClusterName=Clash\n",
        // no ClusterName
        "NodeName=n[1-4]\n",
    ];
    for (i, text) in cases.iter().enumerate() {
        let path = dir.path().join(format!("slurm{i}.conf"));
        std::fs::write(&path, text).unwrap();
        let (full, _) = SlurmConf::load_lenient(&path);
        assert_eq!(cluster_name(&path), full.cluster(), "{text}");
    }
    assert_eq!(
        cluster_name(dir.path().join("slurm0.conf")).as_deref(),
        Some("big")
    );
    assert_eq!(cluster_name(dir.path().join("none.conf")), None);
}
