//! The snapshot loader never panics: random bytes, and real snapshots mutated at random
//! (bytes flipped, cut, spliced; JSON values replaced), give a value or an error naming the
//! file.

use netray_snapshot::{LoadError, NodeSnapshot};
use proptest::prelude::*;
use serde_json::Value;

const REAL: &str = include_str!("../../../examples/healthy/nodes/node0.json");

fn check(text: &str) {
    match NodeSnapshot::from_json("nodes/x.json", text) {
        Ok(s) => {
            // Whatever loads validates and round-trips.
            let again = NodeSnapshot::from_json("again.json", &s.to_json()).expect("round trip");
            assert_eq!(again, s);
        }
        Err(e) => {
            let msg = e.to_string();
            let named = match &e {
                LoadError::Io { file, .. }
                | LoadError::Json { file, .. }
                | LoadError::Version { file, .. }
                | LoadError::Invalid { file, .. }
                | LoadError::Bundle { file, .. } => file.clone(),
            };
            assert!(
                msg.contains("nodes/x.json") && named == "nodes/x.json",
                "{msg}"
            );
        }
    }
}

/// Every JSON value in `v`, by pre-order index, replaced by `with`.
fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *v = with.clone();
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_nth(x, n, with)),
        Value::Object(o) => o.values_mut().any(|x| replace_nth(x, n, with)),
        _ => false,
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::Array(vec![])),
        Just(Value::Object(Default::default())),
        Just(Value::from(u64::MAX)),
        Just(Value::from("10.0.0.1/33")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn cut_and_flipped(cut in 0usize..REAL.len(), flip in 0usize..REAL.len(), byte in any::<u8>()) {
        let mut b = REAL.as_bytes().to_vec();
        b[flip] = byte;
        b.truncate(cut.max(1));
        check(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn value_replaced(n in 0usize..4000, with in any_json()) {
        let mut v: Value = serde_json::from_str(REAL).unwrap();
        let mut k = n;
        replace_nth(&mut v, &mut k, &with);
        check(&v.to_string());
    }
}
