//! Typed reading of a positioned tree, collecting every problem instead of stopping at the
//! first, with the field path and the fix for each.
//!
//! Every type reads itself with [`Decode`]; on a problem it records a diagnostic and yields a
//! default, so that one run reports all the errors of a document.

use std::collections::BTreeMap;

use crate::error::{closest, Diagnostic, ObjectRef, SourceRef};
use crate::node::{push_key, Entry, Node, Value};

/// The reading context: file, resource, current field path, diagnostics so far.
pub(crate) struct Cx<'f> {
    pub file: &'f str,
    pub object: Option<ObjectRef>,
    path: String,
    pub diags: Vec<Diagnostic>,
}

impl<'f> Cx<'f> {
    pub fn new(file: &'f str) -> Self {
        Self {
            file,
            object: None,
            path: String::new(),
            diags: Vec::new(),
        }
    }

    /// Records an error for the current path at the position of `node`.
    pub fn error(&mut self, node: &Node, message: impl Into<String>, fix: Option<String>) {
        self.error_at(node.line, node.column, message, fix);
    }

    pub fn error_at(
        &mut self,
        line: u32,
        column: u32,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        let mut d = Diagnostic::error(SourceRef::new(self.file, line, column), message)
            .with_object(self.object.clone())
            .with_path(self.path.clone());
        d.fix = fix;
        self.diags.push(d);
    }

    /// Runs `f` with `key` appended to the path.
    pub fn at_key<R>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        push_key(&mut self.path, key);
        let r = f(self);
        self.path.truncate(len);
        r
    }

    /// Runs `f` with `[index]` appended to the path.
    pub fn at_index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        self.path.push_str(&format!("[{index}]"));
        let r = f(self);
        self.path.truncate(len);
        r
    }

    /// Opens a map with a fixed set of field names. `known` are modelled; `accepted` are part
    /// of the Kubernetes/Istio schema and kept verbatim. Anything else is reported as an
    /// unknown field with the closest valid name.
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        known: &'static [&'static str],
        accepted: &'static [&'static str],
    ) -> Fields<'n> {
        let entries: &'n [Entry] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            other => {
                self.error(
                    node,
                    format!("expected a map, found {}", other.describe()),
                    Some(map_fix(other)),
                );
                &[]
            }
        };
        for e in entries {
            if known.contains(&e.key.as_str()) || accepted.contains(&e.key.as_str()) {
                continue;
            }
            let all = known.iter().chain(accepted.iter()).copied();
            let suggestion = closest(&e.key, all);
            self.at_key(&e.key, |cx| {
                let (message, fix) = match suggestion {
                    Some(s) => (
                        format!("unknown field `{}` (did you mean `{s}`?)", e.key),
                        format!("rename it to `{s}`"),
                    ),
                    None => (
                        format!("unknown field `{}`", e.key),
                        format!("remove it; valid fields here: {}", known.join(", ")),
                    ),
                };
                cx.error_at(e.line, e.column, message, Some(fix));
            });
        }
        Fields {
            node,
            entries,
            accepted,
        }
    }
}

fn map_fix(found: &Value) -> String {
    match found {
        Value::Seq(_) => "write `key: value` pairs instead of `- ` list items".to_string(),
        _ => "write `key: value` pairs indented under the field".to_string(),
    }
}

/// The fields of one map being read.
pub(crate) struct Fields<'n> {
    node: &'n Node,
    entries: &'n [Entry],
    accepted: &'static [&'static str],
}

impl<'n> Fields<'n> {
    /// The value of `key`, if present and not null.
    pub fn node(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
            .filter(|n| n.value != Value::Null)
    }

    /// True when `key` is written, even with a null value.
    pub fn has_key(&self, key: &str) -> bool {
        self.entries.iter().any(|e| e.key == key)
    }

    /// An optional field; absent or null is `None`.
    pub fn opt<T: Decode>(&self, cx: &mut Cx<'_>, key: &str) -> Option<T> {
        let node = self.node(key)?;
        Some(cx.at_key(key, |cx| T::decode(node, cx)))
    }

    /// A field whose absence means its default (empty list, empty map, false, 0).
    pub fn get<T: Decode>(&self, cx: &mut Cx<'_>, key: &str) -> T {
        self.opt(cx, key).unwrap_or_default()
    }

    /// A required field: absent or null is an error, with `fix` as the advice.
    pub fn req<T: Decode>(&self, cx: &mut Cx<'_>, key: &str, fix: &str) -> T {
        match self.node(key) {
            Some(node) => cx.at_key(key, |cx| T::decode(node, cx)),
            None => {
                let (line, column) = self.key_position(key);
                cx.at_key(key, |cx| {
                    cx.error_at(
                        line,
                        column,
                        "required field is missing",
                        Some(fix.to_string()),
                    );
                });
                T::default()
            }
        }
    }

    /// Position of `key` if written (even as null), else of the map.
    pub fn key_position(&self, key: &str) -> (u32, u32) {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map_or((self.node.line, self.node.column), |e| (e.line, e.column))
    }

    /// The schema fields present that weir keeps verbatim without acting on them.
    pub fn rest(&self) -> BTreeMap<String, serde_json::Value> {
        self.entries
            .iter()
            .filter(|e| self.accepted.contains(&e.key.as_str()))
            .map(|e| (e.key.clone(), e.value.to_json()))
            .collect()
    }
}

/// Reads a value of this type from a node, recording problems in the context.
pub(crate) trait Decode: Default {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self;
}

impl Decode for String {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Str(s) => s.clone(),
            other => {
                let fix = match other.scalar_text() {
                    Some(text) => format!("quote the value: \"{text}\""),
                    None => "write a single text value".to_string(),
                };
                cx.error(
                    node,
                    format!("expected a string, found {}", other.describe()),
                    Some(fix),
                );
                String::new()
            }
        }
    }
}

impl Decode for bool {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Bool(b) => *b,
            other => {
                cx.error(
                    node,
                    format!("expected a boolean, found {}", other.describe()),
                    Some("write `true` or `false`, without quotes".to_string()),
                );
                false
            }
        }
    }
}

impl Decode for f64 {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => *i as f64,
            Value::Float(x) => *x,
            other => {
                cx.error(
                    node,
                    format!("expected a number, found {}", other.describe()),
                    Some("write a number without quotes, e.g. `50.5`".to_string()),
                );
                0.0
            }
        }
    }
}

/// Reads an integer in `min..=max`; `None` (after recording an error) otherwise.
pub(crate) fn integer(node: &Node, cx: &mut Cx<'_>, min: i128, max: i128) -> Option<i128> {
    match &node.value {
        Value::Int(i) if (min..=max).contains(i) => Some(*i),
        Value::Int(i) => {
            cx.error(
                node,
                format!("{i} is out of range"),
                Some(format!("use a whole number from {min} to {max}")),
            );
            None
        }
        Value::Str(s) if s.trim().parse::<i128>().is_ok() => {
            cx.error(
                node,
                format!("expected an integer, found the string {s:?}"),
                Some(format!("remove the quotes: {}", s.trim())),
            );
            None
        }
        other => {
            cx.error(
                node,
                format!("expected an integer, found {}", other.describe()),
                Some(format!("write a whole number from {min} to {max}")),
            );
            None
        }
    }
}

macro_rules! decode_int {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
                integer(node, cx, <$t>::MIN.into(), <$t>::MAX.into())
                    .and_then(|i| <$t>::try_from(i).ok())
                    .unwrap_or_default()
            }
        }
    )*};
}
decode_int!(i32, u32, i64, u64);

impl<T: Decode> Decode for Option<T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match node.value {
            Value::Null => None,
            _ => Some(T::decode(node, cx)),
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| cx.at_index(i, |cx| T::decode(item, cx)))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                let fix = match other {
                    Value::Map(_) => "write each item on its own line starting with `- `",
                    _ => "write a list: `[a, b]` or one `- item` per line",
                };
                cx.error(
                    node,
                    format!("expected a list, found {}", other.describe()),
                    Some(fix.to_string()),
                );
                Vec::new()
            }
        }
    }
}

impl<T: Decode> Decode for BTreeMap<String, T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        cx.at_key(&e.key, |cx| T::decode(&e.value, cx)),
                    )
                })
                .collect(),
            Value::Null => BTreeMap::new(),
            other => {
                cx.error(
                    node,
                    format!("expected a map, found {}", other.describe()),
                    Some(map_fix(other)),
                );
                BTreeMap::new()
            }
        }
    }
}

/// A map of strings (labels, annotations, selectors): the common error names the type.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct StringMap(pub BTreeMap<String, String>);

impl Decode for StringMap {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Map(_) | Value::Null => StringMap(BTreeMap::decode(node, cx)),
            other => {
                cx.error(
                    node,
                    format!("expected a map of strings, found {}", other.describe()),
                    Some(format!("{}, e.g. `version: v1`", map_fix(other))),
                );
                StringMap::default()
            }
        }
    }
}

impl Decode for serde_json::Value {
    fn decode(node: &Node, _cx: &mut Cx<'_>) -> Self {
        node.to_json()
    }
}

/// Defines a string enum with the exact spellings of the schema, its reading (with the valid
/// values and a suggestion on error), `Display` and serialization.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The spelling used in manifests.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }

            /// Parses the exact spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$var),)+ _ => None }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::ALL[0]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl $crate::decode::Decode for $name {
            fn decode(node: &$crate::node::Node, cx: &mut $crate::decode::Cx<'_>) -> Self {
                let text = <String as $crate::decode::Decode>::decode(node, cx);
                if let Some(v) = Self::parse(&text) {
                    return v;
                }
                if matches!(node.value, $crate::node::Value::Str(_)) {
                    let names: Vec<&'static str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    let message = match $crate::error::closest(&text, names.iter().copied()) {
                        Some(s) => format!("`{text}` is not a valid {} (did you mean `{s}`?)", $what),
                        None => format!("`{text}` is not a valid {}", $what),
                    };
                    cx.error(node, message, Some(format!("use one of: {}", names.join(", "))));
                }
                Self::default()
            }
        }
    };
}
pub(crate) use string_enum;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load_yaml;

    #[derive(Default, Debug)]
    struct Sample {
        host: String,
        port: u32,
        labels: StringMap,
        extra: BTreeMap<String, serde_json::Value>,
    }

    impl Decode for Sample {
        fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
            let f = cx.fields(node, &["host", "port", "labels"], &["note"]);
            Sample {
                host: f.req(cx, "host", "set it"),
                port: f.get(cx, "port"),
                labels: f.get(cx, "labels"),
                extra: f.rest(),
            }
        }
    }

    fn run(text: &str) -> (Sample, Vec<String>) {
        let docs = load_yaml(text, "s.yaml").unwrap();
        let mut cx = Cx::new("s.yaml");
        let s = Sample::decode(&docs[0], &mut cx);
        (s, cx.diags.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn collects_all_errors() {
        let (_, errs) = run("hots: a\nport: \"80\"\nlabels: [a]\n");
        assert_eq!(
            errs,
            vec![
                "s.yaml:1:1: hots: unknown field `hots` (did you mean `host`?); fix: rename it to `host`",
                "s.yaml:1:1: host: required field is missing; fix: set it",
                "s.yaml:2:7: port: expected an integer, found the string \"80\"; fix: remove the quotes: 80",
                "s.yaml:3:9: labels: expected a map of strings, found a list; fix: write `key: value` pairs instead of `- ` list items, e.g. `version: v1`",
            ]
        );
    }

    #[test]
    fn keeps_accepted_fields() {
        let (s, errs) = run("host: a\nport: 8\nnote: {x: 1}\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert!(s.labels.0.is_empty());
        assert_eq!(s.host, "a");
        assert_eq!(s.port, 8);
        assert_eq!(s.extra["note"], serde_json::json!({"x": 1}));
    }
}
