use super::*;
use crate::test_records::job_end;
use serde_json::{Value, json};

fn value(r: &Record) -> Value {
    serde_json::from_slice(&r.to_json().unwrap()).unwrap()
}

#[test]
fn valid_and_invalid_records_are_told_apart() {
    let good = value(&job_end(1, "n1", 1_000, 2_000, &[5]));
    let mut end_before_start = good.clone();
    end_before_start["id"]["job_id"] = json!(2);
    end_before_start["body"]["end_time"] = json!(500);
    let mut negative_energy = good.clone();
    negative_energy["id"]["job_id"] = json!(3);
    negative_energy["body"]["gpus"][0]["energy_delta_mj"] = json!(-4);
    let mut unknown = good.clone();
    unknown["id"]["job_id"] = json!(4);
    unknown["body"]["colour"] = json!("blue");
    let mut bad_id = good.clone();
    bad_id["id"]["cluster"] = json!("a/b");
    let batch = json!([good, end_before_start, negative_energy, unknown, bad_id, 17]);
    let body = serde_json::to_vec(&batch).unwrap();
    let parsed = parse_batch(&body).unwrap();
    assert_eq!(parsed.valid.len(), 1);
    assert_eq!(parsed.valid[0].0, 0);
    assert_eq!(
        Record::from_json(parsed.valid[0].2.get().as_bytes()).unwrap(),
        parsed.valid[0].1,
        "the JSON as received comes with the record"
    );
    let r = &parsed.rejected;
    assert_eq!(r.len(), 5);

    assert_eq!(r[0].index, 1);
    assert_eq!(r[0].key.as_deref(), Some("alpha,2,,n1,job_end"));
    assert_eq!(r[0].field.as_deref(), Some("body.end_time"));

    assert_eq!(r[1].key.as_deref(), Some("alpha,3,,n1,job_end"));
    assert_eq!(r[1].field.as_deref(), Some("body"));
    assert!(r[1].error.contains("-4"), "{}", r[1].error);

    assert_eq!(r[2].key.as_deref(), Some("alpha,4,,n1,job_end"));
    assert!(r[2].error.contains("colour"), "{}", r[2].error);

    assert_eq!(r[3].key, None);
    assert_eq!(r[3].field.as_deref(), Some("id"));
    assert!(r[3].error.contains("id.cluster"), "{}", r[3].error);

    assert_eq!((r[4].index, r[4].key.as_ref()), (5, None));
}

#[test]
fn a_body_that_is_not_an_array_is_refused_whole() {
    assert!(parse_batch(b"{\"version\":1}").is_err());
    assert!(parse_batch(b"[1,").is_err());
    assert!(parse_batch(b"").is_err());
    let empty = parse_batch(b"[]").unwrap();
    assert!(empty.valid.is_empty() && empty.rejected.is_empty());
}
