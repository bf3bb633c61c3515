use crate::acctd::{IngestAnswer, RecordStatus, ReportAnswer};
use crate::healthd::StatusDoc;
use crate::{Answer, DecodeError, decode};

/// An acctd from before versioning and conflicts: no `version`, no `conflict`.
#[test]
fn an_older_answer_reads_with_its_missing_fields_as_none() {
    let old = br#"{"accepted":1,"duplicate":0,"rejected":0,
        "results":[{"index":0,"key":"k","status":"accepted"}]}"#;
    let a: IngestAnswer = decode(old).unwrap();
    assert_eq!(a.version, None);
    assert_eq!(a.conflict, None);
    assert_eq!(a.results[0].status, RecordStatus::Accepted);
    assert!(!a.results[0].differs);
}

/// A newer acctd of the same major version: fields this build does not know are ignored,
/// and so is a record status it does not know (read as `Unknown`, never as a known one).
#[test]
fn a_newer_answer_of_the_same_major_version_reads() {
    let newer = br#"{"version":1,"start_ms":0,"end_ms":86400000,"currency":"EUR",
        "rows":[{"user":"ann","allocated_gpu_ms":5,"used_gpu_ms":4,"energy_mj":3,"jobs":1,
                 "co2_g":17}]}"#;
    let r: ReportAnswer = decode(newer).unwrap();
    assert_eq!(r.rows[0].user.as_deref(), Some("ann"));
    assert_eq!(r.rows[0].allocated_gpu_ms, 5);
    let status = br#"{"version":1,"accepted":0,"duplicate":0,"conflict":0,"rejected":0,
        "results":[{"index":0,"key":null,"status":"quarantined"}]}"#;
    let a: IngestAnswer = decode(status).unwrap();
    assert_eq!(a.results[0].status, RecordStatus::Unknown);
}

/// A required number that is missing is an error naming it, not a 0.
#[test]
fn a_missing_required_number_is_an_error() {
    let e = decode::<ReportAnswer>(
        br#"{"version":1,"start_ms":0,"end_ms":1,"rows":[{"allocated_gpu_ms":5,
            "used_gpu_ms":4,"energy_mj":3}]}"#,
    )
    .unwrap_err();
    assert!(matches!(e, DecodeError::Malformed { .. }), "{e:?}");
    assert!(e.to_string().contains("jobs"), "{e}");
}

/// A new major version is refused with both versions and what to upgrade, also when it
/// no longer parses as this one.
#[test]
fn another_major_version_is_refused_by_name() {
    let e =
        decode::<ReportAnswer>(br#"{"version":2,"start_ms":0,"end_ms":1,"rows":[]}"#).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Version {
            document: ReportAnswer::DOCUMENT,
            got: 2,
            understood: 1
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("version 2") && text.contains("version 1") && text.contains("upgrade sgpu"),
        "{text}"
    );
    let e = decode::<StatusDoc>(br#"{"version":2,"node":{"name":"n1"}}"#).unwrap_err();
    assert!(matches!(e, DecodeError::Version { got: 2, .. }), "{e:?}");
    let e = decode::<StatusDoc>(br#"{"version":0}"#).unwrap_err();
    assert!(e.to_string().contains("upgrade the server"), "{e}");
}

/// What a server writes, a client reads back equal.
#[test]
fn documents_round_trip() {
    let doc = br#"{"version":1,"node":"n1","healthd_version":"0.1.0","now_ms":5,
        "started_at_ms":1,"health":{"checked_at_ms":4,"trigger":"xid","verdict":"drain",
        "decision":"drained","decision_detail":"sgpu: gpu.xid gpu1: XID 79",
        "would_drain":null,"results":[{"check":"gpu.xid","gpu":1,"uuid":"GPU-1",
        "observed":"79","threshold":"none","severity":"drain","status":"fail",
        "message":"XID 79","enforced":true}]},"drained":null,
        "breaker":{"open":true,"trip":{"scope":"cluster","drained":1,"total":2,"limit":1},
        "refusals_total":1},"sampling":{"interval_s":10,"last_sample_ms":null,
        "last_duration_ms":null,"error":null,"samples_total":0,"jobs_finalised_total":0},
        "gpus":[],"jobs":[]}"#;
    let s: StatusDoc = decode(doc).unwrap();
    assert!(s.health.as_ref().unwrap().results[0].drains());
    let again: StatusDoc = decode(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(again, s);
}
