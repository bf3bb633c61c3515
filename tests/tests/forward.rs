//! The node spool forwarder (issue 5 §2, issue 6 §1): `sgpu-healthd` in the test cluster
//! sends its node's spool to a real `sgpu-acctd` and removes what acctd acknowledged.

use std::net::TcpStream;

use sgpu_tests::acctd::Acctd;

/// The test support itself: acctd keeps its port and database across kill -9 and restart.
#[test]
fn acctd_keeps_port_and_db_across_kill9() {
    let mut acctd = Acctd::start(&[]).unwrap();
    assert!(acctd.url().starts_with("http://127.0.0.1:"));
    TcpStream::connect(acctd.addr()).unwrap();
    acctd.kill9();
    assert!(!acctd.running());
    assert!(TcpStream::connect(acctd.addr()).is_err());
    acctd.restart().unwrap();
    assert!(acctd.running());
    TcpStream::connect(acctd.addr()).unwrap();
    assert!(acctd.db().exists());
    let db = acctd.db();
    drop(acctd);
    assert!(!db.exists(), "the temporary database is removed on drop");
}
