use super::*;
use crate::id::RecordKind;
use crate::record::tests::{example_end, example_start, example_usage, examples};
use crate::record::{JobStart, RecordBody};
use std::collections::HashSet;
use std::process::{Command, Stdio};

fn spool() -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("sgpu")).unwrap();
    (dir, spool)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn open_creates_private_directories() {
    let (_d, s) = spool();
    for sub in ["", "tmp", "new", "bad"] {
        let m = mode(&s.dir().join(sub));
        assert_eq!(m & 0o077, 0, "{sub}: {m:o}");
    }
    // Opening again is fine.
    Spool::open(s.dir()).unwrap();
}

#[test]
fn open_refuses_world_writable() {
    let (_d, s) = spool();
    fs::set_permissions(s.dir(), fs::Permissions::from_mode(0o777)).unwrap();
    let e = Spool::open(s.dir()).unwrap_err();
    assert!(matches!(e, SpoolError::WorldWritable { .. }), "{e}");
    assert!(e.to_string().contains("world-writable"), "{e}");
    fs::set_permissions(s.dir(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(s.dir().join("new"), fs::Permissions::from_mode(0o1777)).unwrap();
    let e = Spool::open(s.dir()).unwrap_err();
    assert!(matches!(e, SpoolError::WorldWritable { .. }), "{e}");
    fs::set_permissions(s.dir().join("new"), fs::Permissions::from_mode(0o700)).unwrap();
    // group-writable is refused too
    fs::set_permissions(s.dir(), fs::Permissions::from_mode(0o770)).unwrap();
    let e = Spool::open(s.dir()).unwrap_err();
    assert!(
        e.to_string()
            .contains("group- or world-writable (mode 770)"),
        "{e}"
    );
    fs::set_permissions(s.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    Spool::open(s.dir()).unwrap();
}

#[test]
fn open_refuses_a_spool_owned_by_someone_else() {
    // only root can hand a directory to another user
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let (_d, s) = spool();
    std::os::unix::fs::chown(s.dir(), Some(4242), None).unwrap();
    let e = Spool::open(s.dir()).unwrap_err();
    assert!(matches!(e, SpoolError::NotOwned { uid: 4242, .. }), "{e}");
    assert!(e.to_string().contains("owned by uid 4242, not root"), "{e}");
    std::os::unix::fs::chown(s.dir(), Some(0), None).unwrap();
    std::os::unix::fs::chown(s.dir().join("bad"), Some(4242), None).unwrap();
    assert!(Spool::open(s.dir()).is_err(), "subdirectories too");
}

#[test]
fn open_refuses_symlinked_subdirectory_and_files() {
    let (d, s) = spool();
    let elsewhere = d.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir(s.dir().join("bad")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.dir().join("bad")).unwrap();
    let e = Spool::open(s.dir()).unwrap_err();
    assert!(matches!(e, SpoolError::NotADirectory { .. }), "{e}");
    let file = d.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        Spool::open(&file).unwrap_err(),
        SpoolError::NotADirectory { .. }
    ));
}

#[test]
fn write_list_read_remove() {
    let (_d, s) = spool();
    let records = examples();
    let mut paths = Vec::new();
    for r in &records {
        paths.push(s.write(r).unwrap());
    }
    let entries = s.list().unwrap();
    assert_eq!(entries.len(), records.len());
    for ((e, r), p) in entries.iter().zip(&records).zip(&paths) {
        assert_eq!(e.path(), p.as_path(), "list is in write order");
        assert_eq!(e.key(), Some(r.id().key().as_str()));
        assert_eq!(&s.read(e).unwrap(), r);
        assert_eq!(mode(e.path()) & 0o077, 0);
    }
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
    for e in &entries {
        s.remove(e).unwrap();
        s.remove(e).unwrap(); // idempotent
    }
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn same_identity_twice_keeps_both() {
    let (_d, s) = spool();
    let r = example_start(7);
    let a = s.write(&r).unwrap();
    let b = s.write(&r).unwrap();
    assert_ne!(a, b);
    let entries = s.list().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].key(), entries[1].key());
    assert_eq!(s.find_latest(r.id()).unwrap().unwrap().path(), b.as_path());
    assert!(s.find_latest(example_end().id()).unwrap().is_none());
}

#[test]
fn file_name_scheme() {
    let (_d, s) = spool();
    let p = s.write(&example_usage(RecordKind::StepUsage)).unwrap();
    let name = p.file_name().unwrap().to_str().unwrap();
    let (prefix, rest) = name.split_once('_').unwrap();
    assert_eq!(rest, "alpha,42,0,node1,step_usage.json");
    let parts: Vec<&str> = prefix.split('.').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [20, 10, 10, 16]
    );
    assert_eq!(parts[1].parse::<u32>().unwrap(), std::process::id());
    assert_eq!(key_of_name(name), Some("alpha,42,0,node1,step_usage"));
    assert_eq!(key_of_name("foreign_thing.json"), None);
    assert_eq!(key_of_name("1.2.3.zz_k.json"), None);
}

#[test]
fn invalid_record_is_not_written() {
    // Records are valid by construction; an id with a hostile node never gets this far.
    let e = RecordId::new("alpha", 1, None, "../../etc", RecordKind::JobStart).unwrap_err();
    assert_eq!(e.field(), Some("id.node"));
}

#[test]
fn crash_mid_write_is_invisible_and_cleaned() {
    let (_d, s) = spool();
    s.write(&example_start(1)).unwrap();
    // A writer that died before its rename leaves a partial file in tmp/.
    let leftover = s
        .dir()
        .join("tmp")
        .join(format!("{}_alpha,2,,node1,job_start.json", unique_prefix()));
    fs::write(&leftover, br#"{"version":1,"id":{"clus"#).unwrap();
    let fresh = s.dir().join("tmp").join("fresh-writer");
    fs::write(&fresh, b"{").unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let entries = s.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key(), Some("alpha,1,,node1,job_start"));

    assert_eq!(s.clean_tmp(Duration::from_secs(3600)).unwrap(), 1);
    assert!(!leftover.exists());
    assert!(fresh.exists(), "a writer still at work is left alone");
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn corrupt_files_are_quarantined_with_a_reason() {
    let (_d, s) = spool();
    let good = s.write(&example_start(1)).unwrap();
    let new = s.dir().join("new");
    // Truncated JSON, an unknown field, a mismatched name, a symlink, a directory, a huge file.
    fs::write(new.join("a-truncated.json"), b"{\"version\":1,").unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&example_end().to_json().unwrap()).unwrap();
    v["body"]["surprise"] = 1.into();
    fs::write(new.join("b-unknown.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let renamed = new.join(format!("{}_alpha,9,,node9,job_start.json", unique_prefix()));
    fs::write(&renamed, example_start(1).to_json().unwrap()).unwrap();
    std::os::unix::fs::symlink(&good, new.join("c-link.json")).unwrap();
    fs::create_dir(new.join("d-dir")).unwrap();
    let big = File::create(new.join("e-big.json")).unwrap();
    big.set_len(MAX_RECORD_BYTES + 1).unwrap();
    fs::write(new.join(".hidden"), b"x").unwrap();

    let mut reasons = Vec::new();
    let mut ok = 0;
    for e in s.list().unwrap() {
        match s.read(&e) {
            Ok(_) => ok += 1,
            Err(err) => {
                assert!(err.is_corrupt(), "{err}");
                let to = s.quarantine(&e, &err.to_string()).unwrap();
                let mut why = to.clone().into_os_string();
                why.push(".why");
                let note = fs::read_to_string(&why).unwrap();
                assert!(note.contains(&err.to_string()));
                assert!(
                    fs::symlink_metadata(&to).is_ok(),
                    "moved, not deleted: {to:?}"
                );
                reasons.push(err.to_string());
            }
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    let all = reasons.join("\n");
    for needle in [
        "malformed record",
        "unknown field `surprise`",
        "file name says alpha,9,,node9,job_start",
        "symbolic link",
        "not a regular file",
        "record limit",
    ] {
        assert!(all.contains(needle), "{needle} in {all}");
    }
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn quarantine_never_overwrites() {
    let (_d, s) = spool();
    let new = s.dir().join("new");
    for _ in 0..2 {
        fs::write(new.join("same-name"), b"junk").unwrap();
        let e = s.list().unwrap().remove(0);
        s.quarantine(&e, "junk").unwrap();
    }
    let bad: HashSet<String> = fs::read_dir(s.dir().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expect: HashSet<String> = [
        "same-name",
        "same-name.why",
        "same-name.1",
        "same-name.1.why",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(bad, expect);
}

// ---- concurrency ----------------------------------------------------------------------

const DIR_ENV: &str = "SGPU_SPOOL_TEST_DIR";
const WRITER_ENV: &str = "SGPU_SPOOL_TEST_WRITER";
const PER_WRITER: u32 = 150;

fn writer_record(writer: u32, seq: u32) -> Record {
    let id = RecordId::new(
        "alpha",
        writer * 10_000 + seq + 1,
        None,
        format!("w{writer}"),
        RecordKind::JobStart,
    )
    .unwrap();
    let body = RecordBody::JobStart(JobStart {
        user: format!("user-{writer}-{seq}-{}", "x".repeat(200)),
        uid: seq,
        account: None,
        partition: None,
        start_time: u64::from(seq),
        gpus: Vec::new(),
    });
    Record::new(id, u64::from(seq), body).unwrap()
}

fn write_all(spool: &Spool, writer: u32) {
    for seq in 0..PER_WRITER {
        spool.write(&writer_record(writer, seq)).unwrap();
    }
}

/// Child half of `processes_write_concurrently`: does nothing unless spawned by it.
#[test]
#[ignore = "spawned as a child process by processes_write_concurrently"]
fn child_writer() {
    let (Ok(dir), Ok(writer)) = (std::env::var(DIR_ENV), std::env::var(WRITER_ENV)) else {
        return;
    };
    let spool = Spool::open(dir).unwrap();
    write_all(&spool, writer.parse().unwrap());
}

#[test]
fn processes_and_threads_write_concurrently() {
    let (_d, s) = spool();
    let exe = std::env::current_exe().unwrap();
    const PROCS: u32 = 4;
    const THREADS: u32 = 2;
    let children: Vec<_> = (0..PROCS)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "spool::tests::child_writer",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(DIR_ENV, s.dir())
                .env(WRITER_ENV, w.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (PROCS..PROCS + THREADS)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || write_all(&s, w))
        })
        .collect();
    // Meanwhile, a reader sees only complete records.
    let mut children = children;
    let mut reads = 0;
    loop {
        for e in s.list().unwrap() {
            s.read(&e).unwrap();
            reads += 1;
        }
        let running = children.iter_mut().any(|c| c.try_wait().unwrap().is_none());
        if !running {
            break;
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(reads > 0);

    let entries = s.list().unwrap();
    let total = (PROCS + THREADS) * PER_WRITER;
    assert_eq!(entries.len() as u32, total);
    let mut seen = HashSet::new();
    for e in &entries {
        let r = s.read(e).unwrap();
        let w: u32 = r.id().node()[1..].parse().unwrap();
        let seq = r.id().job_id() - w * 10_000 - 1;
        assert_eq!(r, writer_record(w, seq), "torn or altered");
        assert!(seen.insert((w, seq)), "duplicate {w}/{seq}");
    }
    assert_eq!(seen.len() as u32, total);
    // Each writer's records are listed in its own write order.
    for w in 0..PROCS + THREADS {
        let seqs: Vec<u32> = entries
            .iter()
            .filter(|e| e.key().unwrap().ends_with(&format!(",w{w},job_start")))
            .map(|e| {
                e.key()
                    .unwrap()
                    .split(',')
                    .nth(1)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
            })
            .collect();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "writer {w} out of order"
        );
    }
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
}
