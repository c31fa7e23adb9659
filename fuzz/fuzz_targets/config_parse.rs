//! Feeds arbitrary bytes to the manifest parser as a YAML/JSON stream.
//!
//! Invariants: no panic, no hang, bounded memory (the parser's size, depth and node limits);
//! whatever parses also applies or is rejected cleanly, analyses, and writes back to YAML and
//! JSON that parse again to the same resources.
//! Seed corpus: the Istio fixtures (see fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(docs) = config::parse_bytes(data, "fuzz.yaml") else {
        return;
    };
    for doc in &docs {
        let yaml = config::to_yaml(&doc.resource).expect("a parsed resource writes as YAML");
        let again = config::parse_str(&yaml, "again.yaml").expect("written YAML parses");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].resource, doc.resource, "YAML round trip:\n{yaml}");
        let json = config::to_json(&doc.resource).expect("a parsed resource writes as JSON");
        let again = config::parse_str(&json, "again.json").expect("written JSON parses");
        assert_eq!(again[0].resource, doc.resource, "JSON round trip:\n{json}");
    }
    let mut set = config::ResourceSet::new();
    let before = set.clone();
    if set.apply(docs).is_err() {
        assert_eq!(set, before, "a rejected apply changed the set");
    }
    let _ = set.analyze();
});
