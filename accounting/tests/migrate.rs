//! `sgpu-acctd migrate` end to end: the real acctd ingests into sled over HTTP, is stopped,
//! the move copies its history into a MariaDB of the test's own (password from a root-only
//! file), a second run writes nothing, and acctd started on the database answers the same
//! reports and job lists as it did on sled. Bad input (a sled store acctd holds open, a
//! missing directory, a readable password file, an unreachable server) is refused with a
//! message that names it and says what to do.

mod common;

use std::process::{Child, Output};

use common::*;
use sgpu_spool::Record;

fn records() -> Vec<Record> {
    let t0 = 20_000 * DAY;
    let mut out = Vec::new();
    for job in 1..=30u32 {
        let start = t0 + u64::from(job) * 5 * HOUR;
        let end = start + HOUR + u64::from(job) * 60_000;
        let account = if job % 3 == 0 { "chemistry" } else { "physics" };
        let user = if job % 2 == 0 { "bob" } else { "alice" };
        out.push(job_end(
            "alpha",
            job,
            "n1",
            account,
            user,
            start,
            end,
            &[1_000 * u64::from(job), 7],
        ));
        if job % 4 == 0 {
            // a second node, ending later
            out.push(job_end(
                "alpha",
                job,
                "n2",
                account,
                user,
                start,
                end + DAY,
                &[5],
            ));
        }
        out.push(job_usage(
            "alpha",
            job,
            "n1",
            account,
            user,
            start,
            end,
            &[HOUR / 2, HOUR / 3],
        ));
    }
    out
}

/// Stops acctd (kill -9: what it acknowledged is durable, and its sled lock goes with it).
fn stop(mut acctd: Child) {
    acctd.kill().unwrap();
    acctd.wait().unwrap();
}

fn migrate(args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sgpu-acctd"))
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The answers acctd gives to the reads a site makes.
fn answers(addr: std::net::SocketAddr) -> Vec<String> {
    let (start, end) = (20_000 * DAY / 1000, 20_010 * DAY / 1000);
    let mid = (20_001 * DAY + 7 * HOUR) / 1000;
    [
        format!("/v1/report?start={start}&end={end}&group_by=account,user,day"),
        format!("/v1/report?start={mid}&end={end}&group_by=account,gpu"),
        format!("/v1/jobs?start={start}&end={end}"),
        "/v1/jobs/alpha/8".to_string(),
    ]
    .iter()
    .map(|path| {
        let (status, body) = request(addr, "GET", path, b"").unwrap();
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        format!("{path}: {}", String::from_utf8_lossy(&body))
    })
    .collect()
}

#[test]
fn a_sled_history_moves_into_mariadb_once_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let sled = dir.path().join("acctd.sled");
    let log = || std::fs::File::create(dir.path().join("acctd.log")).unwrap();

    // acctd on sled, fed over HTTP
    let (acctd, addr) = spawn_acctd(&["--db".into(), sled.clone().into()], log());
    let (status, body) = request(addr, "POST", "/v1/records", &batch(&records())).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let on_sled = answers(addr);

    let db = TestDb::new_mariadb(dir.path());
    let TestDb::MariaDb { url, password_file } = &db else {
        unreachable!()
    };
    let to_db = [
        "--from".as_ref(),
        sled.as_os_str(),
        "--db".as_ref(),
        url.as_ref(),
        "--db-password-file".as_ref(),
        password_file.as_os_str(),
        "--state-dir".as_ref(),
        dir.path().as_os_str(),
    ];

    // while acctd holds the sled store: refused, nothing written
    let o = migrate(&to_db);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("another process holds this sled store open")
            && text(&o).contains("stop it"),
        "{}",
        text(&o)
    );
    stop(acctd);

    // the wrong password: named, with what to check
    let wrong = dir.path().join("wrong-password");
    write_private(&wrong, "not-the-password");
    let mut args = to_db;
    args[5] = wrong.as_os_str();
    let o = migrate(&args);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Access denied") && text(&o).contains("--db-password-file"),
        "{}",
        text(&o)
    );

    // two jobs still waiting for their AdminComment (acctd --admin-comment's queue)
    std::fs::write(
        sled.join("admin-comment-due.json"),
        br#"[["alpha",29],["alpha",30]]"#,
    )
    .unwrap();

    let o = migrate(&to_db);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("both hold the same"), "{out}");
    assert!(
        out.contains("2 jobs waiting for their AdminComment"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("acctd-admin-comment-due.json")).unwrap(),
        r#"[["alpha",29],["alpha",30]]"#
    );
    assert!(out.contains("job_end records: 37"), "{out}");
    assert!(out.contains("job_usage records: 30"), "{out}");
    assert!(out.contains("account physics: "), "{out}");
    assert!(
        out.contains("written now: 67 records (0 were there already)"),
        "{out}"
    );

    // a second run: nothing new, nothing twice
    let o = migrate(&to_db);
    assert!(o.status.success(), "{}", text(&o));
    let again = String::from_utf8_lossy(&o.stdout);
    assert!(
        again.contains("written now: 0 records (67 were there already)"),
        "{again}"
    );

    // acctd on the database answers as it did on sled
    let (acctd, addr) = spawn_acctd(&db.acctd_args(), log());
    let on_db = answers(addr);
    stop(acctd);
    assert_eq!(on_db, on_sled);
    let store = db.open();
    assert_rollups_match(store.as_ref());
    assert_eq!(stored_once(store.as_ref()).0.len(), 67);
}

#[test]
fn bad_input_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sled = dir.path().join("acctd.sled");
    drop(sgpu_accounting::sled_store::SledStore::open(&sled).unwrap());
    let pw = dir.path().join("pw");
    write_private(&pw, "secret");
    let bogus = format!(
        "mysql://sgpu@localhost/sgpu?socket={}",
        dir.path().join("no-such.sock").display()
    );

    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![
                "--from".into(),
                dir.path().join("nope").into(),
                "--db".into(),
                bogus.clone().into(),
            ],
            "no such directory",
        ),
        (
            vec![
                "--from".into(),
                dir.path().into(),
                "--db".into(),
                bogus.clone().into(),
            ],
            "not a sled store",
        ),
        (
            vec![
                "--from".into(),
                sled.clone().into(),
                "--db".into(),
                bogus.clone().into(),
                "--db-password-file".into(),
                pw.clone().into(),
            ],
            "check that the server runs",
        ),
        (
            vec![
                "--from".into(),
                sled.clone().into(),
                "--db".into(),
                sled.clone().into(),
            ],
            "is a MariaDB/MySQL database",
        ),
    ];
    for (args, expect) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let o = migrate(&args);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(expect), "{expect}: {}", text(&o));
    }

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = migrate(&[
        "--from".as_ref(),
        sled.as_os_str(),
        "--db".as_ref(),
        bogus.as_ref(),
        "--db-password-file".as_ref(),
        pw.as_os_str(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));
}
