use super::*;
use crate::test_records::{job_end, job_usage, with_slurm_window};
use sgpu_spool::{GpuRef, JobStart, RecordId, RecordKind};

fn job_start(job: u32, node: &str, start: u64) -> Record {
    let body = JobStart {
        user: "alice".into(),
        uid: 1001,
        account: None,
        partition: None,
        start_time: start,
        gpus: vec![GpuRef {
            index: 0,
            uuid: format!("GPU-{node}-0"),
            name: None,
            energy_mj: None,
            mig: None,
        }],
    };
    let id = RecordId::new("alpha", job, None, node, RecordKind::JobStart).unwrap();
    Record::new(id, start, RecordBody::JobStart(body)).unwrap()
}

#[test]
fn base32_is_rfc_4648_in_lower_case() {
    for (plain, coded) in [
        ("", ""),
        ("f", "my======"),
        ("fo", "mzxq===="),
        ("foo", "mzxw6==="),
        ("foob", "mzxw6yq="),
        ("fooba", "mzxw6ytb"),
        ("foobar", "mzxw6ytboi======"),
    ] {
        assert_eq!(base32_encode(plain.as_bytes()), coded);
        assert_eq!(base32_decode(coded).unwrap(), plain.as_bytes());
        assert_eq!(
            base32_decode(&coded.to_ascii_uppercase()).unwrap(),
            plain.as_bytes()
        );
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(base32_decode(&base32_encode(&all)).unwrap(), all);
    assert_eq!(base32_decode("my====="), None);
    assert_eq!(base32_decode("my======my======"), None);
    assert_eq!(base32_decode("m1======"), None);
    assert_eq!(base32_decode("my=====a"), None);
}

#[test]
fn the_summary_is_written_only_when_every_node_ended_and_reads_back() {
    let start = job_start(7, "n1", 1_000);
    let end = with_slurm_window(job_end(7, "n1", 1_000, 11_000, &[500]), 1, 11);
    assert_eq!(summary_of("alpha", 7, std::slice::from_ref(&start)), None);
    // node n2 started and has not ended: not yet
    let n2 = job_start(7, "n2", 1_000);
    assert_eq!(
        summary_of("alpha", 7, &[start.clone(), end.clone(), n2]),
        None
    );
    let usage = job_usage(7, "n1", 1_000, 11_000, &[5_000]);
    let s = summary_of("alpha", 7, &[start, end, usage]).unwrap();
    assert_eq!((s.v, s.gpus, s.alloc_gpu_ms), (1, 1, 10_000));
    assert_eq!(s.used_gpu_ms, Some(5_000));
    assert_eq!(s.energy_mj, Some(500));
    assert_eq!(s.idle_gpu_ms, None);
    let text = s.encode("sgpu1:").unwrap();
    assert!(text.starts_with("sgpu1:"));
    // nothing sacctmgr or SQL would change: no quote, no space, no separator, no capital
    // (22.05's sacctmgr writes AdminComment in lower case)
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"=:".contains(&b)),
        "{text}"
    );
    assert_eq!(text.to_ascii_lowercase(), text);
    assert_eq!(Summary::decode(&text, "sgpu1:").unwrap(), s);
    assert_eq!(
        Summary::decode(&text.to_ascii_uppercase(), "sgpu1:").unwrap(),
        s
    );
    // unknown figures are absent from the JSON, not 0
    let json = String::from_utf8(base32_decode(&text["sgpu1:".len()..]).unwrap()).unwrap();
    assert!(!json.contains("idle"), "{json}");
    assert!(Summary::decode(&text, "other:").is_err());
}

#[test]
fn a_summary_too_long_for_the_comment_leaves_out_the_gpus() {
    let mut records = Vec::new();
    for n in 0..64 {
        records.push(job_end(
            8,
            &format!("node{n:04}"),
            0,
            1_000,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ));
    }
    let s = summary_of("alpha", 8, &records).unwrap();
    assert_eq!(s.gpus, 512);
    let text = s.encode(DEFAULT_PREFIX).unwrap();
    assert!(text.len() <= MAX_ADMIN_COMMENT_BYTES);
    let back = Summary::decode(&text, DEFAULT_PREFIX).unwrap();
    assert!(back.per_gpu.is_empty());
    assert_eq!(back.gpus_omitted, Some(512));
    assert_eq!(back.alloc_gpu_ms, 512_000);
}

/// Fake `sacct` and `sacctmgr` in a directory: sacct prints `sacct_out`, sacctmgr logs its
/// arguments to `args` and prints `Modified jobs...`.
fn fake_slurm(sacct_out: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    std::fs::write(dir.path().join("sacct.out"), sacct_out).unwrap();
    let d = dir.path().display();
    write("sacct", format!("#!/bin/sh\ncat {d}/sacct.out\n"));
    write(
        "sacctmgr",
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {d}/args\n\
             echo ' Modified jobs...'\necho '  124 submitted at 2026-12-04T05:00:00'\n"
        ),
    );
    dir
}

#[tokio::test]
async fn an_array_task_is_named_as_sacct_names_it_and_a_foreign_comment_stays() {
    let dir = fake_slurm("124|123_4|\n");
    let mut cfg = AdminCommentConfig::new("sgpu1:");
    cfg.slurm_bin = Some(dir.path().to_path_buf());
    let got = write_one(&cfg, "alpha", 124, "sgpu1:e30=").await.unwrap();
    assert_eq!(got, Written::Written("123_4".into()));
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "-i",
            "modify",
            "job",
            "where",
            "jobid=123_4",
            "cluster=alpha",
            "set",
            "AdminComment=sgpu1:e30="
        ]
    );
    // an admin's note (with a '|' in it) is left alone
    let dir = fake_slurm("124|124|rack 4 | bad PSU\n");
    cfg.slurm_bin = Some(dir.path().to_path_buf());
    assert_eq!(
        write_one(&cfg, "alpha", 124, "sgpu1:e30=").await.unwrap(),
        Written::LeftAlone
    );
    assert!(!dir.path().join("args").exists());
    // sgpu's own older summary is replaced
    let dir = fake_slurm("124|124|sgpu1:old\n");
    cfg.slurm_bin = Some(dir.path().to_path_buf());
    assert_eq!(
        write_one(&cfg, "alpha", 124, "sgpu1:e30=").await.unwrap(),
        Written::Written("124".into())
    );
    // slurmdbd without the job
    let dir = fake_slurm("");
    cfg.slurm_bin = Some(dir.path().to_path_buf());
    assert!(matches!(
        write_one(&cfg, "alpha", 124, "sgpu1:e30=").await,
        Err(WriteError::NoJob(_))
    ));
}

/// A fake Slurm whose sacct knows every job (no comment yet) and whose sacctmgr appends
/// its arguments, one line per call, to `calls`.
fn fake_slurm_any_job() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    for (name, body) in [
        (
            "sacct",
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -j ] && id=$2; shift; done\n\
             echo \"$id|$id|\"\n"
                .to_string(),
        ),
        (
            "sacctmgr",
            format!("#!/bin/sh\necho \"$*\" >> {d}/calls\necho ' Modified jobs...'\n"),
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

async fn wait_for(path: &std::path::Path, text: &str) -> String {
    for _ in 0..100 {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(text) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never held {text:?}", path.display());
}

#[tokio::test]
async fn stored_job_ends_are_written_and_due_jobs_survive_a_restart() {
    let slurm = fake_slurm_any_job();
    let db = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> =
        Arc::new(crate::sled_store::SledStore::open(&db.path().join("db")).unwrap());
    // job 7 was due when acctd stopped: only the due file names it
    inner
        .put_batch(&[
            job_start(7, "n1", 1_000),
            job_end(7, "n1", 1_000, 5_000, &[9]),
        ])
        .unwrap();
    let due_file = db.path().join("due.json");
    std::fs::write(&due_file, r#"[["alpha",7]]"#).unwrap();
    let mut cfg = AdminCommentConfig::new("sgpu1:");
    cfg.slurm_bin = Some(slurm.path().to_path_buf());
    cfg.delay = Duration::from_millis(100);
    cfg.due_file = Some(due_file.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(inner.clone(), cfg, rx));
    let calls = slurm.path().join("calls");
    let got = wait_for(&calls, "jobid=7 ").await;
    let comment = got
        .split_whitespace()
        .find_map(|w| w.strip_prefix("AdminComment="))
        .unwrap();
    let s = Summary::decode(comment, "sgpu1:").unwrap();
    assert_eq!((s.gpus, s.alloc_gpu_ms, s.energy_mj), (1, 4_000, Some(9)));
    // job 8 arrives through the notifying store: its start alone is not the end
    let store = NotifyingStore::new(inner, tx);
    store.put_batch(&[job_start(8, "n1", 1_000)]).unwrap();
    store
        .put_batch(&[job_end(8, "n1", 1_000, 3_000, &[1])])
        .unwrap();
    wait_for(&calls, "jobid=8 ").await;
    // nothing is due any more, and the file says so
    wait_for(&due_file, "[]").await;
    drop(store);
    writer.await.unwrap();
}

#[test]
fn the_due_list_is_written_through_a_new_file_not_a_planted_link() {
    let dir = tempfile::tempdir().unwrap();
    let due = dir.path().join("due.json");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    // someone who may write the directory plants the temporary name as a link
    std::os::unix::fs::symlink(&victim, due.with_extension("tmp")).unwrap();
    let jobs = vec![("c1".to_string(), 7u32)];
    super::write_due_file(&due, &jobs).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    let back: Vec<(String, u32)> = serde_json::from_slice(&std::fs::read(&due).unwrap()).unwrap();
    assert_eq!(back, jobs);
    assert!(!due.with_extension("tmp").exists());
}
