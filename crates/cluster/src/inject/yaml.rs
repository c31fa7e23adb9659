//! An order-preserving YAML tree and the stream splitting `inject` needs.
//!
//! Mappings keep their keys in document order (a `Vec` of pairs, not a sorted map), so an
//! injected manifest reads like the one that went in. Documents are split on their
//! `---` / `...` marker lines so that documents `inject` leaves alone are written back
//! byte for byte, comments included.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_saphyr::MessageFormatter as _;

/// Deepest nesting accepted in one document; Kubernetes objects nest about 12 levels.
pub const MAX_DEPTH: usize = 64;
/// Most YAML nodes in one document (aliases expanded).
pub const MAX_NODES: usize = 1_000_000;
/// Most parse events aliases (`*name`) may replay in one document.
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// One YAML value. Mappings keep document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    /// A mapping with string keys, in the given order.
    pub fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Node::str(k), v))
                .collect(),
        )
    }

    pub fn seq_of_str(items: &[&str]) -> Node {
        Node::Seq(items.iter().map(|s| Node::str(*s)).collect())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&Vec<Node>> {
        match self {
            Node::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map(_))
    }

    /// The value under string key `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string under `key`, if the value is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// The value under `key`, created as an empty mapping when missing or null. `None` when
    /// `self` is not a mapping or the value is something other than a mapping.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Node> {
        let Node::Map(entries) = self else {
            return None;
        };
        let index = match entries.iter().position(|(k, _)| k.as_str() == Some(key)) {
            Some(i) => {
                if entries[i].1 == Node::Null {
                    entries[i].1 = Node::Map(Vec::new());
                }
                i
            }
            None => {
                entries.push((Node::str(key), Node::Map(Vec::new())));
                entries.len() - 1
            }
        };
        let value = &mut entries[index].1;
        value.is_map().then_some(value)
    }

    /// Like [`Node::map_entry`] for a sequence.
    pub fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        let Node::Map(entries) = self else {
            return None;
        };
        let index = match entries.iter().position(|(k, _)| k.as_str() == Some(key)) {
            Some(i) => {
                if entries[i].1 == Node::Null {
                    entries[i].1 = Node::Seq(Vec::new());
                }
                i
            }
            None => {
                entries.push((Node::str(key), Node::Seq(Vec::new())));
                entries.len() - 1
            }
        };
        match &mut entries[index].1 {
            Node::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Sets `key` to `value` in a mapping: replaced in place when present, appended when not.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Node::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
                Some((_, v)) => *v = value,
                None => entries.push((Node::str(key), value)),
            }
        }
    }

    /// What the value is, for error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .or_else(|_| u64::try_from(v).map(Node::UInt))
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(|v| i64::try_from(v).map_or(Node::UInt(v), Node::Int))
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 bits")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        // `!!binary` is not used in manifests; keep the bytes as text when they are text.
        String::from_utf8(v.to_vec())
            .map(Node::Str)
            .map_err(|_| E::custom("binary (!!binary) values are not supported"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            // JSON in a value (Istio's status annotation) reads better in single quotes,
            // as Istio writes it, than with every `"` escaped.
            Node::Str(v)
                if v.contains('"') && !v.contains('\'') && !v.contains(char::is_control) =>
            {
                serde_saphyr::SingleQuoted(v.as_str()).serialize(s)
            }
            Node::Str(v) => s.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Reader options: Kubernetes reads manifests as YAML 1.1 (`0644` is octal, `yes` is a
/// boolean), so the tree must too, or a re-written file would mean something else.
fn read_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.budget = serde_saphyr::budget! {
        max_depth: MAX_DEPTH,
        max_nodes: MAX_NODES,
        max_documents: 1,
        flow_nesting_limit: MAX_DEPTH,
        max_events: 3 * MAX_NODES,
    };
    options.alias_limits = serde_saphyr::alias_limits! {
        max_total_replayed_events: MAX_ALIAS_EVENTS,
    };
    options.legacy_octal_numbers = true;
    options.with_snippet = false;
    options.emit_comments = false;
    options
}

/// Stack for the reader: its recursion is bounded by [`MAX_DEPTH`], but a level takes tens
/// of KiB in unoptimised builds; the stack is reserved, not committed.
const PARSER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// Parses one document. `Err` carries the reader's message and its 1-based line in `text`.
pub fn parse_document(text: &str) -> Result<Node, (String, Option<usize>)> {
    let parse = || {
        serde_saphyr::from_str_with_options::<Node>(text, read_options()).map_err(|e| {
            let line = e.location().map(|l| l.line() as usize);
            let mut message: String = serde_saphyr::UserMessageFormatter
                .format_message(&e)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            // The reader's words for an undefined alias do not name the YAML feature.
            if message.contains("reference to unknown value") {
                message =
                    "an alias (`*name`) refers to an anchor (`&name`) not defined before it".into();
            }
            (message, line)
        })
    };
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("inject-parse".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, parse)
            .map_err(|e| (format!("cannot start the YAML reader: {e}"), None))?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes one document (no `---`), ending in a newline.
pub fn write_document(node: &Node) -> Result<String, String> {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Long one-line values (the status annotation's JSON) stay on one line instead of
    // becoming folded `>` blocks; multi-line values still become `|` blocks.
    options.folded_wrap_chars = usize::MAX / 2;
    serde_saphyr::to_string_with_options(node, options).map_err(|e| e.to_string())
}

/// One document of a stream, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument {
    /// The `---` line that opened it (with its newline), if any.
    pub marker: Option<String>,
    /// The text after the marker's `---` (the rest of the marker line, then the following
    /// lines), what the document's content is parsed from.
    pub content: String,
    /// Everything written after the marker line, up to the next marker (includes a closing
    /// `...` line).
    pub body: String,
    /// 1-based line of the first line of `content` in the stream.
    pub first_line: usize,
}

impl RawDocument {
    /// The document's text exactly as it was in the stream.
    pub fn verbatim(&self) -> String {
        let mut out = self.marker.clone().unwrap_or_default();
        out.push_str(&self.body);
        out
    }

    /// True when the document holds nothing but blank lines, comments and directives.
    pub fn is_empty(&self) -> bool {
        self.content.lines().all(|line| {
            let t = line.trim();
            t.is_empty() || t.starts_with('#') || line.starts_with('%') || is_end_marker(line)
        })
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

fn is_end_marker(line: &str) -> bool {
    is_marker(line, "...")
}

/// Splits a YAML stream into documents at `---` lines; a `...` line ends a document.
///
/// YAML forbids a line starting with `---` or `...` (then a space or the end of the
/// line) inside any scalar, so splitting on such lines is exact, not a heuristic.
pub fn split_documents(text: &str) -> Vec<RawDocument> {
    let mut docs = Vec::new();
    let mut current = RawDocument {
        marker: None,
        content: String::new(),
        body: String::new(),
        first_line: 1,
    };
    let mut ended = false;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches('\n');
        let is_start = is_marker(bare, "---");
        // After `...`, the next line with content starts a document without a marker.
        let is_bare_start = ended && !is_start && {
            let t = bare.trim();
            !t.is_empty() && !t.starts_with('#') && !is_end_marker(bare)
        };
        if is_start || is_bare_start {
            let next = if is_start {
                RawDocument {
                    marker: Some(line.to_owned()),
                    // Spaces keep the columns the reader reports.
                    content: format!("   {}", &line[3..]),
                    body: String::new(),
                    first_line: index + 1,
                }
            } else {
                RawDocument {
                    marker: None,
                    content: line.to_owned(),
                    body: line.to_owned(),
                    first_line: index + 1,
                }
            };
            docs.push(std::mem::replace(&mut current, next));
            ended = false;
            continue;
        }
        if is_end_marker(bare) {
            ended = true;
        }
        current.content.push_str(line);
        current.body.push_str(line);
    }
    docs.push(current);
    // The text before a first `---` is a document only if it holds something.
    if docs.len() > 1 && docs[0].marker.is_none() && docs[0].body.is_empty() {
        docs.remove(0);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_kubernetes_scalars() {
        let text = "j: '{\"a\":[\"b\"]}'\nb: 1\na: '15020'\nmode: 0644\non: yes\nnothing:\nf: 1.5\nlist: []\nm: {}\n";
        let node = parse_document(text).unwrap();
        let keys: Vec<_> = match &node {
            Node::Map(e) => e.iter().filter_map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not a map"),
        };
        // `on` is a boolean key under YAML 1.1, as Kubernetes reads it.
        assert_eq!(keys, ["j", "b", "a", "mode", "nothing", "f", "list", "m"]);
        assert_eq!(node.get("a"), Some(&Node::str("15020")));
        assert_eq!(node.get("mode"), Some(&Node::Int(420)));
        assert_eq!(node.get("nothing"), Some(&Node::Null));
        let out = write_document(&node).unwrap();
        assert!(
            out.starts_with("j: '{\"a\":[\"b\"]}'\nb: 1\na: \"15020\"\nmode: 420\n"),
            "{out}"
        );
        assert_eq!(parse_document(&out).unwrap(), node, "{out}");
    }

    #[test]
    fn splits_on_marker_lines_only() {
        let text = "# header\n---\na: 1\n--- # second\nb: |\n  x\n  ---not a marker\n...\n---\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 4);
        assert!(docs[0].is_empty());
        assert_eq!(docs[1].content, "   \na: 1\n");
        assert_eq!(docs[2].first_line, 4);
        assert_eq!(docs[2].body, "b: |\n  x\n  ---not a marker\n...\n");
        assert!(docs[3].is_empty());
        let joined: String = docs.iter().map(RawDocument::verbatim).collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn bare_document_after_end_marker() {
        let docs = split_documents("a: 1\n...\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].content, "b: 2\n");
        assert_eq!(docs[1].marker, None);
    }

    #[test]
    fn no_marker_single_document() {
        let docs = split_documents("a: 1\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].verbatim(), "a: 1\n");
    }
}
