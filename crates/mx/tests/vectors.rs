//! Every fixture vector decodes to its JSON and re-encodes byte for byte.

#[path = "support/json.rs"]
mod json;

use std::fs;
use std::path::{Path, PathBuf};

use mx::{
    decode_payload_struct, encode_frame, encode_struct_frame, Decoder, PeerMetadata, PeerPayload,
    Step, DEFAULT_MAX_FRAME_LEN, HEADER_LEN,
};

const EXPECTED_VECTORS: [&str; 5] = [
    "empty-labels",
    "mongodb-v1",
    "ratings-v2",
    "ratings-v2-istio-canonical",
    "unicode-labels",
];

struct Vector {
    name: String,
    json: serde_json::Value,
    bin: Vec<u8>,
    hex: String,
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn vectors() -> Vec<Vector> {
    let dir = json::fixtures_dir().join("vectors");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| {
            let p: PathBuf = e.ok()?.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    for expected in EXPECTED_VECTORS {
        assert!(
            names.iter().any(|n| n == expected),
            "vector {expected} missing from {}",
            dir.display()
        );
    }
    names
        .into_iter()
        .map(|name| {
            let json = serde_json::from_slice(&read(&dir.join(format!("{name}.json"))))
                .unwrap_or_else(|e| panic!("{name}.json: {e}"));
            let bin = read(&dir.join(format!("{name}.bin")));
            let hex = String::from_utf8(read(&dir.join(format!("{name}.hex"))))
                .unwrap_or_else(|e| panic!("{name}.hex: {e}"));
            Vector {
                name,
                json,
                bin,
                hex,
            }
        })
        .collect()
}

/// Bytes of an `hexdump -C`-style dump (offset, 16 hex bytes, ascii).
fn parse_hex(dump: &str) -> Vec<u8> {
    dump.lines()
        .flat_map(|line| {
            let hex = line.get(10..).unwrap_or("");
            let hex = hex.split('|').next().unwrap_or("");
            hex.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{line}: {e}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn decode_all(bytes: &[u8]) -> (PeerMetadata, Option<String>) {
    let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
    match dec.feed(bytes).unwrap() {
        Step::Frame {
            consumed,
            peer: PeerPayload::Peer { metadata, node_id },
        } => {
            assert_eq!(consumed, bytes.len());
            (metadata, node_id)
        }
        other => panic!("expected a peer frame, got {other:?}"),
    }
}

#[test]
fn hex_dumps_match_binaries() {
    for v in vectors() {
        assert_eq!(parse_hex(&v.hex), v.bin, "{}.hex vs {}.bin", v.name, v.name);
    }
}

#[test]
fn vectors_decode_to_their_json() {
    for v in vectors() {
        let s = decode_payload_struct(&v.bin[HEADER_LEN..])
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(json::struct_to_json(&s), v.json, "{}", v.name);

        let (md, id) = decode_all(&v.bin);
        let jmd = &v.json["x-envoy-peer-metadata"];
        assert_eq!(md.name, jmd["NAME"].as_str().unwrap(), "{}", v.name);
        assert_eq!(md.namespace, jmd["NAMESPACE"].as_str().unwrap());
        assert_eq!(md.workload_name, jmd["WORKLOAD_NAME"].as_str().unwrap());
        assert_eq!(md.cluster_id, jmd["CLUSTER_ID"].as_str().unwrap());
        assert_eq!(md.owner, jmd["OWNER"].as_str().unwrap());
        assert_eq!(md.mesh_id.as_deref(), jmd["MESH_ID"].as_str());
        assert_eq!(
            md.service_account.as_deref(),
            jmd["SERVICE_ACCOUNT"].as_str()
        );
        let labels: serde_json::Map<_, _> = md
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        assert_eq!(
            serde_json::Value::Object(labels),
            jmd["LABELS"],
            "{}",
            v.name
        );
        assert!(md.extra.is_empty(), "{}: {:?}", v.name, md.extra);
        assert_eq!(
            id.as_deref(),
            v.json["x-envoy-peer-metadata-id"].as_str(),
            "{}",
            v.name
        );
    }
}

#[test]
fn vectors_reencode_byte_for_byte() {
    for v in vectors() {
        let from_json = encode_struct_frame(&json::json_to_struct(&v.json));
        assert_eq!(from_json, v.bin, "{}: JSON -> frame", v.name);
        let (md, id) = decode_all(&v.bin);
        assert_eq!(encode_frame(&md, id.as_deref()), v.bin, "{}: typed", v.name);
    }
}

#[test]
fn vectors_decode_at_every_split_and_byte_at_a_time() {
    for v in vectors() {
        let expected = decode_all(&v.bin);
        for split in 0..=v.bin.len() {
            let (a, b) = v.bin.split_at(split);
            let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
            let step = match dec.feed(a).unwrap() {
                Step::NeedMore => dec.feed(b).unwrap(),
                step => step,
            };
            let Step::Frame {
                peer: PeerPayload::Peer { metadata, node_id },
                ..
            } = step
            else {
                panic!("{} split {split}: {step:?}", v.name);
            };
            assert_eq!((metadata, node_id), expected, "{} split {split}", v.name);
        }
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut last = Step::NeedMore;
        for byte in &v.bin {
            assert_eq!(last, Step::NeedMore, "{}", v.name);
            last = dec.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert!(
            matches!(last, Step::Frame { consumed: 1, .. }),
            "{}: {last:?}",
            v.name
        );
    }
}

#[test]
fn istio_canonical_vector_has_istio_telemetry_values() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "ratings-v2-istio-canonical")
        .unwrap();
    let (md, id) = decode_all(&v.bin);
    assert_eq!(md.canonical_service(), "ratings");
    assert_eq!(md.canonical_revision(), "v2");
    assert_eq!(md.label("app"), Some("ratings"));
    assert_eq!(md.label("version"), Some("v2"));
    assert_eq!(md.mesh_id, None);
    assert_eq!(md.service_account, None);
    assert_eq!(
        md,
        PeerMetadata::for_deployment(
            "default",
            "ratings-v2",
            "ratings-v2-5b7d9c8f6d-x2k4p",
            md.labels.clone()
        )
    );
    assert_eq!(
        id.as_deref(),
        Some(
            mx::node_id(
                "10.0.0.5".parse().unwrap(),
                "ratings-v2-5b7d9c8f6d-x2k4p",
                "default"
            )
            .as_str()
        )
    );
}

#[test]
fn empty_labels_vector_falls_back_to_workload_and_latest() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "empty-labels")
        .unwrap();
    let (md, _) = decode_all(&v.bin);
    assert!(md.labels.is_empty());
    assert_eq!(md.canonical_service(), "tcp-echo");
    assert_eq!(md.canonical_revision(), "latest");
}

#[test]
fn unicode_vector_keeps_utf8() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "unicode-labels")
        .unwrap();
    let (md, _) = decode_all(&v.bin);
    assert_eq!(md.canonical_service(), "評価");
    assert_eq!(md.canonical_revision(), "v2-β");
    assert_eq!(md.label("team"), Some("café 🚀"));
}
