//! MX encode/decode cost: once per connection on the data path, so it bounds how fast a
//! sidecar can accept connections. Run with `cargo bench -p mx`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mx::{encode_frame, Decoder, PeerMetadata, Step, DEFAULT_MAX_FRAME_LEN};

fn ratings() -> (PeerMetadata, String) {
    let labels: BTreeMap<String, String> = [
        ("app", "ratings"),
        ("version", "v2"),
        ("service.istio.io/canonical-name", "ratings"),
        ("service.istio.io/canonical-revision", "v2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let md = PeerMetadata::for_deployment(
        "default",
        "ratings-v2",
        "ratings-v2-5b7d9c8f6d-x2k4p",
        labels,
    );
    let id = mx::node_id([10, 0, 0, 5].into(), &md.name, &md.namespace);
    (md, id)
}

fn bench(c: &mut Criterion) {
    let (md, id) = ratings();
    let frame = encode_frame(&md, Some(&id));
    let mut g = c.benchmark_group("mx");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_frame", |b| {
        b.iter(|| encode_frame(black_box(&md), Some(black_box(&id))))
    });
    g.bench_function("decode_whole", |b| {
        b.iter(|| Decoder::new(DEFAULT_MAX_FRAME_LEN).feed(black_box(&frame)))
    });
    g.bench_function("decode_16_byte_chunks", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(DEFAULT_MAX_FRAME_LEN);
            for chunk in black_box(&frame).chunks(16) {
                if let Ok(step @ Step::Frame { .. }) = dec.feed(chunk) {
                    return Some(step);
                }
            }
            None
        })
    });
    g.bench_function("not_a_frame", |b| {
        b.iter(|| Decoder::new(DEFAULT_MAX_FRAME_LEN).feed(black_box(b"\x4a\x00\x00\x00\x0a8.0")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
