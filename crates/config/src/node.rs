//! A positioned document tree: every value knows its line and column.
//!
//! YAML is read with serde-saphyr (with budgets against alias bombs and deep nesting); JSON
//! streams are split and syntax-checked with serde_json, then read through the same YAML
//! reader (JSON is YAML 1.2) so that JSON fields get positions too.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::options::NonFiniteFloatPolicy;
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use crate::error::{Diagnostic, SourceRef};

/// Deepest nesting of mappings and sequences accepted in one document. Kubernetes objects
/// nest about 12 levels deep; the limit keeps adversarial input from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// Most YAML nodes (scalars, mappings, sequences, alias expansions included) in one input.
pub const MAX_NODES: usize = 1_000_000;

/// Most parse events that aliases (`*name`) may replay in one input.
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// Most documents in one input.
pub const MAX_DOCUMENTS: usize = 100_000;

/// A value with the 1-based line and column where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: u32,
    pub column: u32,
    pub value: Value,
}

/// A mapping entry: the key text and position, and the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub line: u32,
    pub column: u32,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

impl Value {
    /// How the value is described in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(x) => format!("the number {x}"),
            Value::Str(s) => format!("the string {:?}", truncate(s, 40)),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a map".to_string(),
        }
    }

    /// The scalar as plain text, for "quote it" fixes.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(x) => Some(x.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

impl Node {
    pub fn source(&self, file: &str) -> SourceRef {
        SourceRef::new(file, self.line, self.column)
    }

    /// Converts to JSON for fields kept verbatim.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    v.into()
                } else if let Ok(v) = u64::try_from(*i) {
                    v.into()
                } else {
                    serde_json::Value::String(i.to_string())
                }
            }
            Value::Float(x) => serde_json::Number::from_f64(*x)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(x.to_string())),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    fn from_json(value: serde_json::Value, line: u32, column: u32) -> Node {
        let value = match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i.into())
                } else if let Some(u) = n.as_u64() {
                    Value::Int(u.into())
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|v| Node::from_json(v, line, column))
                    .collect(),
            ),
            serde_json::Value::Object(map) => Value::Map(
                map.into_iter()
                    .map(|(key, v)| Entry {
                        key,
                        line,
                        column,
                        value: Node::from_json(v, line, column),
                    })
                    .collect(),
            ),
        };
        Node {
            line,
            column,
            value,
        }
    }

    /// Moves every position of a node parsed from a slice back to where the slice starts.
    fn shift(&mut self, line0: u32, column0: u32) {
        if self.line == 1 {
            self.column += column0 - 1;
        }
        self.line += line0 - 1;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.shift(line0, column0)),
            Value::Map(entries) => {
                for e in entries {
                    if e.line == 1 {
                        e.column += column0 - 1;
                    }
                    e.line += line0 - 1;
                    e.value.shift(line0, column0);
                }
            }
            _ => {}
        }
    }
}

/// Appends a field name or map key to a path: `.name` for identifiers, `["a.b/c"]` otherwise.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let simple = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if simple {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&format!("{key:?}"));
        path.push(']');
    }
}

/// Field path → (line, column) of every value in a document, for diagnostics found later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldIndex(BTreeMap<String, (u32, u32)>);

impl FieldIndex {
    pub(crate) fn build(root: &Node) -> Self {
        let mut map = BTreeMap::new();
        let mut path = String::new();
        index_node(root, &mut path, &mut map);
        Self(map)
    }

    /// Position of the value at `path` (e.g. `spec.http[0].route[0].destination.subset`).
    pub fn get(&self, path: &str) -> Option<(u32, u32)> {
        self.0.get(path).copied()
    }

    /// Position of `path`, or of its nearest indexed ancestor.
    pub fn nearest(&self, path: &str) -> Option<(u32, u32)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.get(p) {
                return Some(pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn index_node(node: &Node, path: &mut String, map: &mut BTreeMap<String, (u32, u32)>) {
    map.insert(path.clone(), (node.line, node.column));
    let len = path.len();
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                index_node(item, path, map);
                path.truncate(len);
            }
        }
        Value::Map(entries) => {
            for e in entries {
                push_key(path, &e.key);
                index_node(&e.value, path, map);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The raw serde view of a YAML value, each child wrapped with its span.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        i128::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(x) = a.next_element::<Spanned<Raw>>()? {
            out.push(x);
        }
        Ok(Raw::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = a.next_key::<Spanned<Raw>>()? {
            let v = a.next_value::<Spanned<Raw>>()?;
            out.push((k, v));
        }
        Ok(Raw::Map(out))
    }
}

fn position(s: &Spanned<Raw>) -> (u32, u32) {
    let line = u32::try_from(s.referenced.line()).unwrap_or(u32::MAX);
    let column = u32::try_from(s.referenced.column()).unwrap_or(u32::MAX);
    (line, column)
}

fn convert(raw: Spanned<Raw>, file: &str) -> Result<Node, Box<Diagnostic>> {
    let (line, column) = position(&raw);
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(x) => Value::Float(x),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|i| convert(i, file))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let (kline, kcolumn) = position(&k);
                let key = match k.value {
                    Raw::Str(s) => s,
                    Raw::Int(i) => i.to_string(),
                    Raw::Bool(b) => b.to_string(),
                    Raw::Float(x) => x.to_string(),
                    Raw::Null => "null".to_string(),
                    Raw::Seq(_) | Raw::Map(_) => {
                        return Err(Box::new(
                            Diagnostic::error(
                                SourceRef::new(file, kline, kcolumn),
                                "a list or map used as a mapping key",
                            )
                            .with_fix("mapping keys must be plain strings"),
                        ));
                    }
                };
                out.push(Entry {
                    key,
                    line: kline,
                    column: kcolumn,
                    value: convert(v, file)?,
                });
            }
            Value::Map(out)
        }
    };
    Ok(Node {
        line,
        column,
        value,
    })
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.budget = serde_saphyr::budget! {
        max_depth: MAX_DEPTH,
        max_nodes: MAX_NODES,
        max_documents: MAX_DOCUMENTS,
        flow_nesting_limit: MAX_DEPTH,
        max_events: 3 * MAX_NODES,
    };
    // Manifests rarely use aliases; a small replay budget stops alias bombs long before the
    // node limit, which is sized for large legitimate inputs.
    options.alias_limits = serde_saphyr::alias_limits! {
        max_total_replayed_events: MAX_ALIAS_EVENTS,
    };
    // YAML 1.2 core schema: `yes`, `on`, `n` stay strings, as a typo-safe reader should.
    options.strict_booleans = true;
    // `0755` is ambiguous between YAML 1.1 octal and 1.2 decimal; keep the text so the typed
    // reader can say so instead of guessing.
    options.leading_zero_numbers_as_strings = true;
    options.non_finite_float_policy = NonFiniteFloatPolicy::AsString;
    options.with_snippet = false;
    options.emit_comments = false;
    options
}

/// Stack for the YAML reader. Its recursion is bounded by [`MAX_DEPTH`], but one level takes
/// tens of KiB in unoptimised builds, more than a tokio worker's 2 MiB allows at the limit;
/// the stack is reserved, not committed, so a generous size costs nothing.
const PARSER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// Runs `f` on a thread with [`PARSER_STACK_BYTES`] of stack, whatever the caller's stack.
fn on_parser_stack<T: Send>(
    file: &str,
    f: impl FnOnce() -> Result<T, Box<Diagnostic>> + Send,
) -> Result<T, Box<Diagnostic>> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("config-parse".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| {
                Diagnostic::error(
                    SourceRef::file_only(file),
                    format!("cannot start the parser: {e}"),
                )
                .with_fix("free some memory or raise the process's thread limit, then retry")
            })?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Reads every document of a YAML stream. Empty documents are skipped.
pub(crate) fn load_yaml(text: &str, file: &str) -> Result<Vec<Node>, Box<Diagnostic>> {
    on_parser_stack(file, || load_yaml_here(text, file))
}

fn load_yaml_here(text: &str, file: &str) -> Result<Vec<Node>, Box<Diagnostic>> {
    let raws: Vec<Spanned<Raw>> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| Box::new(yaml_error(&e, file)))?;
    let mut docs = Vec::with_capacity(raws.len());
    for raw in raws {
        let node = convert(raw, file)?;
        if node.value != Value::Null {
            docs.push(node);
        }
    }
    Ok(docs)
}

fn yaml_error(err: &serde_saphyr::Error, file: &str) -> Diagnostic {
    let (line, column) = err
        .location()
        .map(|l| {
            (
                u32::try_from(l.line()).unwrap_or(0),
                u32::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let raw = UserMessageFormatter.format_message(err);
    let message: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let (message, fix) = explain_yaml_error(&message);
    let mut d = Diagnostic::error(SourceRef::new(file, line, column), message);
    if let Some(fix) = fix {
        d = d.with_fix(fix);
    }
    d
}

/// Rewrites the parser's wording for the errors people actually hit, and adds the fix.
fn explain_yaml_error(message: &str) -> (String, Option<String>) {
    let m = message.to_ascii_lowercase();
    // The parser says only "reference to unknown value"; name the YAML feature and the fix.
    if m.contains("reference to unknown value") || m.contains("unknown anchor") {
        return (
            "invalid YAML: an alias (`*name`) refers to an anchor (`&name`) that is not defined before it".into(),
            Some("define the anchor before the alias that uses it, or write the value out".into()),
        );
    }
    if m.contains("depth") || m.contains("recursion limit") || m.contains("nesting") {
        (
            format!("YAML nesting is deeper than {MAX_DEPTH} levels"),
            Some(
                "Kubernetes manifests nest far less; check the input is the file you meant".into(),
            ),
        )
    } else if m.contains("documents {") {
        (
            format!("more than {MAX_DOCUMENTS} documents in one input"),
            Some("split the input into several files".into()),
        )
    } else if m.contains("alias") || m.contains("replayed") {
        (
            format!("aliases (`*name`) expand to more than {MAX_ALIAS_EVENTS} values"),
            Some(
                "write the repeated parts out, or remove the aliases; manifests rarely need them"
                    .into(),
            ),
        )
    } else if m.contains("breached") || m.contains("too complex") {
        (
            format!("YAML has more than {MAX_NODES} values"),
            Some("split the input into smaller files".into()),
        )
    } else if m.contains("did not find expected key")
        || m.contains("mapping values are not allowed")
        || m.contains("did not find expected '-'")
        || m.contains("indent")
    {
        (
            format!("invalid YAML: {message}"),
            Some("check the indentation: keys of one mapping must start in the same column, and nested values must be indented further than their key".into()),
        )
    } else if m.contains("duplicate") {
        (
            format!("invalid YAML: {message}"),
            Some("remove one of the duplicate keys".into()),
        )
    } else if m.contains("tab") {
        (
            format!("invalid YAML: {message}"),
            Some("indent with spaces, not tabs".into()),
        )
    } else {
        (format!("invalid YAML: {message}"), None)
    }
}

/// Reads a JSON stream (one or more concatenated values). Each value keeps positions.
pub(crate) fn load_json(text: &str, file: &str) -> Result<Vec<Node>, Box<Diagnostic>> {
    on_parser_stack(file, || load_json_here(text, file))
}

fn load_json_here(text: &str, file: &str) -> Result<Vec<Node>, Box<Diagnostic>> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let mut docs = Vec::new();
    let mut start = 0usize;
    while let Some(next) = stream.next() {
        let value = next.map_err(|e| {
            Box::new(
                Diagnostic::error(
                    SourceRef::new(
                        file,
                        u32::try_from(e.line()).unwrap_or(0),
                        u32::try_from(e.column()).unwrap_or(0),
                    ),
                    format!("invalid JSON: {}", strip_json_position(&e.to_string())),
                )
                .with_fix("check the JSON syntax here: quotes, commas, brackets"),
            )
        })?;
        if docs.len() >= MAX_DOCUMENTS {
            return Err(Box::new(
                Diagnostic::error(
                    SourceRef::file_only(file),
                    format!("more than {MAX_DOCUMENTS} documents in one input"),
                )
                .with_fix("split the input into several files"),
            ));
        }
        let end = stream.byte_offset();
        let slice = &text[start..end];
        let skipped = slice.len() - slice.trim_start().len();
        let begin = start + skipped;
        let (line0, column0) = line_column(text, begin);
        let node = match load_yaml_here(&text[begin..end], file) {
            Ok(mut nodes) if nodes.len() == 1 => {
                let mut node = nodes.remove(0);
                node.shift(line0, column0);
                node
            }
            // Valid JSON the YAML reader does not take (rare escapes): keep the document
            // position for every field rather than failing.
            _ => Node::from_json(value, line0, column0),
        };
        if node.value != Value::Null {
            docs.push(node);
        }
        start = end;
    }
    Ok(docs)
}

fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_scalars() {
        let docs = load_yaml(
            "a: \"true\"\nb: 9080\nc: yes\nd: 0755\n---\n---\ne: [1]\n",
            "t",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        let Value::Map(entries) = &docs[0].value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].value.value, Value::Str("true".into()));
        assert_eq!(entries[1].value.value, Value::Int(9080));
        assert_eq!((entries[1].value.line, entries[1].value.column), (2, 4));
        assert_eq!(entries[2].value.value, Value::Str("yes".into()));
        assert_eq!(entries[3].value.value, Value::Str("0755".into()));
    }

    #[test]
    fn json_stream_positions() {
        let docs = load_json("{\"a\": 1}\n  {\"b\":\n   {\"c\": \"x\"}}", "t.json").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[1].line, docs[1].column), (2, 3));
        let index = FieldIndex::build(&docs[1]);
        assert_eq!(index.get("b.c"), Some((3, 10)));
    }

    #[test]
    fn unknown_anchor_names_the_fix() {
        let err = load_yaml("a: 1\nb: *nope\n", "t.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml:2:4: invalid YAML: an alias (`*name`) refers to an anchor (`&name`) that is \
             not defined before it; fix: define the anchor before the alias that uses it, or \
             write the value out"
        );
    }

    #[test]
    fn paths_quote_non_identifiers() {
        let mut p = String::from("metadata.labels");
        push_key(&mut p, "app.kubernetes.io/name");
        assert_eq!(p, "metadata.labels[\"app.kubernetes.io/name\"]");
    }
}
