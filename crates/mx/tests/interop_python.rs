//! Interop with a non-Rust protobuf implementation: the fixtures' `mxvec.py` (python
//! `protobuf`, pure-Python backend) encodes frames weir decodes, and decodes frames weir built.
//! Needs `python3` and `pip install protobuf`; fails (never skips) without them.

#[path = "support/json.rs"]
mod json;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mx::prost_types::value::Kind;
use mx::prost_types::{ListValue, Struct, Value};
use mx::{
    encode_frame, encode_struct_frame, exchange_struct, labels, node_id, Decoder, ExtraValue,
    PeerMetadata, PeerPayload, Step, DEFAULT_MAX_FRAME_LEN,
};
use serde_json::json;

fn mxvec() -> PathBuf {
    let script = json::fixtures_dir().join("mxvec.py");
    let probe = Command::new("python3")
        .args(["-c", "from google.protobuf import any_pb2, struct_pb2"])
        .output();
    match probe {
        Ok(out) if out.status.success() => script,
        Ok(out) => panic!(
            "python3 cannot import google.protobuf ({}); the interop test needs it: \
             pip install protobuf",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}); the interop test needs python3 and `pip install protobuf`"
        ),
    }
}

fn run(script: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start python3 {}: {e}", script.display()));
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn python_encode(script: &Path, doc: &serde_json::Value) -> Vec<u8> {
    let out = run(
        script,
        &["encode", "/dev/stdin"],
        doc.to_string().as_bytes(),
    );
    assert!(
        out.status.success(),
        "mxvec encode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn python_decode(script: &Path, frame: &[u8]) -> serde_json::Value {
    let out = run(script, &["decode", "/dev/stdin"], frame);
    assert!(
        out.status.success(),
        "mxvec decode rejected a weir frame: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn s(v: &str) -> String {
    v.to_string()
}

fn kind(k: Kind) -> ExtraValue {
    ExtraValue(Value { kind: Some(k) })
}

/// Metadata covering every field, unicode, extra keys of every Value kind, many labels.
fn cases() -> Vec<(PeerMetadata, Option<String>)> {
    let ratings = PeerMetadata::for_deployment(
        "default",
        "ratings-v2",
        "ratings-v2-5b7d9c8f6d-x2k4p",
        BTreeMap::from([
            (s(labels::APP), s("ratings")),
            (s(labels::VERSION), s("v2")),
            (s(labels::CANONICAL_NAME), s("ratings")),
            (s(labels::CANONICAL_REVISION), s("v2")),
        ]),
    );
    let full = PeerMetadata {
        identity: Some(s("spiffe://cluster.local/ns/default/sa/bookinfo-ratings")),
        region: Some(s("eu-west-1")),
        zone: Some(s("eu-west-1a")),
        service_account: Some(s("bookinfo-ratings")),
        mesh_id: Some(s("cluster.local")),
        ..ratings.clone()
    };
    let unicode = PeerMetadata {
        name: s("pod-ñ-評価"),
        namespace: s("naméspace"),
        labels: BTreeMap::from([(s("team"), s("café 🚀")), (s("ключ"), s("значение"))]),
        ..ratings.clone()
    };
    let extra = PeerMetadata {
        extra: BTreeMap::from([
            (s("ISTIO_VERSION"), kind(Kind::StringValue(s("1.22.0")))),
            (s("INTERCEPTION_MODE"), kind(Kind::NullValue(0))),
            (s("NUM"), kind(Kind::NumberValue(2.5))),
            (s("INT"), kind(Kind::NumberValue(-7.0))),
            (s("FLAG"), kind(Kind::BoolValue(false))),
            (
                s("PLATFORM_METADATA"),
                kind(Kind::StructValue(Struct {
                    fields: BTreeMap::from([
                        (s("gcp_project"), mx::prost_types::Value::from(s("p"))),
                        (
                            s("empty"),
                            Value::from(Kind::StructValue(Struct::default())),
                        ),
                    ]),
                })),
            ),
            (
                s("INSTANCE_IPS"),
                kind(Kind::ListValue(ListValue {
                    values: vec![Value::from(s("10.0.0.5")), Value::from(1.0)],
                })),
            ),
        ]),
        ..ratings.clone()
    };
    let many_labels = PeerMetadata {
        labels: (0..200)
            .map(|i| (format!("label-{i:03}"), format!("value-{i}")))
            .collect(),
        ..ratings.clone()
    };
    let id = node_id(
        "10.0.0.5".parse().unwrap(),
        "ratings-v2-5b7d9c8f6d-x2k4p",
        "default",
    );
    vec![
        (ratings, Some(id.clone())),
        (full, Some(id.clone())),
        (unicode, Some(id.clone())),
        (extra, None),
        (many_labels, Some(id)),
        (PeerMetadata::default(), None),
    ]
}

fn decode(frame: &[u8]) -> PeerPayload {
    match Decoder::new(DEFAULT_MAX_FRAME_LEN).feed(frame).unwrap() {
        Step::Frame { consumed, peer } => {
            assert_eq!(consumed, frame.len());
            peer
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn python_decodes_weir_frames() {
    let script = mxvec();
    for (md, id) in cases() {
        let frame = encode_frame(&md, id.as_deref());
        let expected = json::struct_to_json(&exchange_struct(&md, id.as_deref()));
        assert_eq!(python_decode(&script, &frame), expected, "{md:?}");
    }
}

#[test]
fn weir_decodes_python_frames_byte_for_byte() {
    let script = mxvec();
    for (md, id) in cases() {
        let doc = json::struct_to_json(&exchange_struct(&md, id.as_deref()));
        let frame = python_encode(&script, &doc);
        assert_eq!(frame, encode_frame(&md, id.as_deref()), "{md:?}");
        assert_eq!(
            decode(&frame),
            PeerPayload::Peer {
                metadata: md,
                node_id: id
            }
        );
    }
    // Documents weir never writes itself: numbers and bools as label values, unknown
    // top-level keys. Python's bytes decode; labels follow the documented rule.
    let doc = json!({
        "x-envoy-peer-metadata": {
            "NAME": "p", "LABELS": {"app": "a", "replicas": 3, "canary": true, "x": null}
        },
        "x-envoy-peer-metadata-id": "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local",
        "x-other": [1, 2]
    });
    let frame = python_encode(&script, &doc);
    assert_eq!(frame, encode_struct_frame(&json::json_to_struct(&doc)));
    let PeerPayload::Peer { metadata, node_id } = decode(&frame) else {
        panic!("not a peer");
    };
    assert_eq!(metadata.name, "p");
    assert_eq!(
        metadata.labels,
        BTreeMap::from([
            (s("app"), s("a")),
            (s("canary"), s("true")),
            (s("replicas"), s("3"))
        ])
    );
    assert_eq!(
        node_id.as_deref(),
        Some("sidecar~1.2.3.4~p.ns~ns.svc.cluster.local")
    );
}

#[test]
fn python_malformed_frames_get_weir_answers() {
    let script = mxvec();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.bin");
    std::fs::write(&good, encode_frame(&cases()[0].0, cases()[0].1.as_deref())).unwrap();
    let outdir = dir.path().join("bad");
    let out = run(
        &script,
        &[
            "malformed",
            good.to_str().unwrap(),
            outdir.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "mxvec malformed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read(outdir.join(name)).unwrap();
    let feed = |bytes: &[u8]| Decoder::new(DEFAULT_MAX_FRAME_LEN).feed(bytes).unwrap();

    assert_eq!(feed(&read("empty.bin")), Step::NeedMore);
    assert_eq!(feed(&read("truncated-header.bin")), Step::NeedMore);
    assert_eq!(feed(&read("truncated-payload.bin")), Step::NeedMore);
    for name in ["bad-magic.bin", "little-endian-magic.bin"] {
        assert_eq!(
            feed(&read(name)),
            Step::NotAFrame { buffered: vec![] },
            "{name}"
        );
    }
    for name in [
        "wrong-type-url.bin",
        "garbage-payload.bin",
        "missing-peer-metadata.bin",
    ] {
        let bytes = read(name);
        let step = feed(&bytes);
        assert!(
            matches!(step, Step::Frame { consumed, peer: PeerPayload::Invalid { .. } } if consumed == bytes.len()),
            "{name}: {step:?}"
        );
    }
    let trailing = read("trailing-bytes.bin");
    let Step::Frame {
        consumed,
        peer: PeerPayload::Peer { .. },
    } = feed(&trailing)
    else {
        panic!("trailing-bytes.bin");
    };
    assert_eq!(&trailing[consumed..], b"hello\n");
    // One byte short of the real payload: the frame ends early, the payload no longer
    // parses, and the cut-off byte is application data.
    let short = read("length-too-small.bin");
    let step = feed(&short);
    assert!(
        matches!(step, Step::Frame { consumed, peer: PeerPayload::Invalid { .. } } if consumed == short.len() - 1),
        "{step:?}"
    );
}
