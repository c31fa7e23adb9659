//! JSON <-> `google.protobuf.Struct`, with the same mapping as the fixtures' mxvec.py:
//! numbers are doubles, integral ones below 2^53 compare as integers.

use std::path::PathBuf;

use mx::prost_types::value::Kind;
use mx::prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

pub fn struct_to_json(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

pub fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn number_to_json(n: f64) -> Json {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

pub fn json_to_struct(j: &Json) -> Struct {
    let Json::Object(map) = j else {
        panic!("expected a JSON object, got {j}");
    };
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

pub fn json_to_value(j: &Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Object(_) => Kind::StructValue(json_to_struct(j)),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// `shared/fixtures/mx`, beside the repository. Fails (never skips) when it is missing.
pub fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/mx");
    assert!(
        dir.join("vectors").is_dir(),
        "MX fixtures not found at {}: the shared/ directory (with fixtures/mx/vectors) must sit \
         beside the repository checkout",
        dir.display()
    );
    dir
}
