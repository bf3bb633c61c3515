//! Property tests over what clients send acctd (issue 11 §5): ingest bodies and query
//! strings. They run under `cargo test` (proptest's 256 cases each, bounded); a failing
//! case proptest finds is kept in `tests/fuzz_inputs.proptest-regressions` and replayed.

use proptest::prelude::*;
use sgpu_accounting::history::HistoryQuery;
use sgpu_accounting::ingest::parse_batch;
use sgpu_accounting::report::{MAX_INSTANT_S, ReportQuery};

const RECORD: &str = r#"{"version":1,"id":{"cluster":"alpha","job_id":7,"run":1,"step":null,"node":"n1","kind":"job_end"},"written_at":5,"body":{"user":"alice","uid":1001,"account":"physics","partition":"gpu","start_time":1000,"end_time":4000,"gpus":[{"index":0,"uuid":"GPU-a","name":"H100","energy_start_mj":1,"energy_end_mj":3,"energy_delta_mj":2}],"allocated_gpu_ms":3000,"exit":null}}"#;

fn query_part() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("start".to_string()),
        Just("end".to_string()),
        Just("group_by".to_string()),
        Just("user".to_string()),
        Just("jobs".to_string()),
        Just("limit".to_string()),
        Just("cluster".to_string()),
        Just("node".to_string()),
        "[a-z%=&+]{0,6}",
    ];
    let value = prop_oneof![
        Just("0".to_string()),
        Just("99999999999999999999".to_string()),
        Just("253402300800".to_string()),
        Just("2024-02-30".to_string()),
        Just("day,week,month,user".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9a-zA-Z%+,.=&-]{0,16}",
    ];
    (key, value).prop_map(|(k, v)| format!("{k}={v}"))
}

proptest! {
    /// Any body: a 400 (not an array) or every element accepted-or-rejected, no panic.
    #[test]
    fn ingest_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(parsed) = parse_batch(&bytes) {
            let _ = parsed.valid.len() + parsed.rejected.len();
        }
    }

    /// Batches of a valid record with bytes changed: each element is judged on its own,
    /// and the count adds up.
    #[test]
    fn mutated_batches_are_judged_record_by_record(
        n in 1usize..4,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let mut body = format!("[{}]", vec![RECORD; n].join(",")).into_bytes();
        for (at, b) in &edits {
            let i = at % body.len();
            body[i] = *b;
        }
        if let Ok(parsed) = parse_batch(&body) {
            prop_assert!(parsed.valid.len() + parsed.rejected.len() <= n.max(1) * 2);
            if edits.is_empty() {
                prop_assert_eq!(parsed.valid.len(), n);
            }
        }
    }

    /// Query strings: refused with a message or accepted with a window that is sane.
    #[test]
    fn report_queries_never_panic(parts in proptest::collection::vec(query_part(), 0..6)) {
        let q = parts.join("&");
        match ReportQuery::parse(&q) {
            Ok(r) => {
                prop_assert!(r.start_ms < r.end_ms);
                prop_assert!(r.end_ms <= MAX_INSTANT_S * 1000);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let _ = HistoryQuery::parse(&q);
    }

    /// Arbitrary text as a query string.
    #[test]
    fn arbitrary_query_text_never_panics(q in "\\PC{0,80}") {
        let _ = ReportQuery::parse(&q);
        let _ = HistoryQuery::parse(&q);
    }
}
