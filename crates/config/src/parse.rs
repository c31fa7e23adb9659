//! Reading manifests: files, directories, text and bytes; YAML streams, JSON streams and
//! `kind: List`, with size and depth limits.

use std::io::Read;
use std::path::Path;

use crate::decode::Cx;
use crate::error::{Diagnostic, Errors, SourceRef};
use crate::model::{decode_object, Document};
use crate::node::{load_json, load_yaml, FieldIndex, Node, Value};

/// Largest input accepted, per file or stream.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// Parses a YAML or JSON stream of manifests. Every problem in every document is reported,
/// each with `file_label:line:column`.
pub fn parse_str(text: &str, file_label: &str) -> Result<Vec<Document>, Errors> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(Errors::one(too_large(file_label, text.len())));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let roots = load(text, file_label).map_err(|e| Errors::one(*e))?;
    let mut cx = Cx::new(file_label);
    let mut docs = Vec::new();
    for root in &roots {
        if is_list(root) {
            read_list(root, &mut cx, &mut docs);
        } else {
            read_one(root, &mut cx, &mut docs);
        }
    }
    if cx.diags.is_empty() {
        Ok(docs)
    } else {
        Err(Errors(cx.diags))
    }
}

/// Parses bytes (standard input, fuzzing): checks size and UTF-8 first.
pub fn parse_bytes(bytes: &[u8], file_label: &str) -> Result<Vec<Document>, Errors> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Errors::one(too_large(file_label, bytes.len())));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_str(text, file_label),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            Err(Errors::one(
                Diagnostic::error(
                    SourceRef::new(
                        file_label,
                        u32::try_from(line).unwrap_or(u32::MAX),
                        u32::try_from(column).unwrap_or(u32::MAX),
                    ),
                    format!("input is not valid UTF-8 (byte {})", e.valid_up_to()),
                )
                .with_fix("save the file as UTF-8"),
            ))
        }
    }
}

/// Parses everything readable from `reader` (standard input), up to the size limit.
pub fn parse_reader(reader: impl Read, file_label: &str) -> Result<Vec<Document>, Errors> {
    let bytes = read_limited(reader, file_label)?;
    parse_bytes(&bytes, file_label)
}

/// Parses a file, or every `*.yaml`, `*.yml` and `*.json` file of a directory (not
/// recursive, sorted by name, as `kubectl apply -f DIR` does). Errors of all files are
/// collected.
pub fn parse_path(path: &Path) -> Result<Vec<Document>, Errors> {
    let label = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Errors::one(io_error(&label, &e)))?;
    if !meta.is_dir() {
        return parse_file(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| Errors::one(io_error(&label, &e)))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Errors::one(io_error(&label, &e)))?;
        let p = entry.path();
        let manifest = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Errors::one(
            Diagnostic::error(
                SourceRef::file_only(label),
                "no .yaml, .yml or .json files in this directory",
            )
            .with_fix("point -f at a manifest file or a directory of manifests"),
        ));
    }
    files.sort();
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match parse_file(&file) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Errors(errors))
    }
}

fn parse_file(path: &Path) -> Result<Vec<Document>, Errors> {
    let label = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Errors::one(io_error(&label, &e)))?;
    if let Ok(meta) = file.metadata() {
        if meta.len() > MAX_INPUT_BYTES as u64 {
            let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
            return Err(Errors::one(too_large(&label, len)));
        }
    }
    let bytes = read_limited(file, &label)?;
    parse_bytes(&bytes, &label)
}

fn read_limited(reader: impl Read, label: &str) -> Result<Vec<u8>, Errors> {
    let mut bytes = Vec::new();
    // One byte over the limit is enough to know the input is too large.
    reader
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Errors::one(io_error(label, &e)))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Errors::one(too_large(label, bytes.len())));
    }
    Ok(bytes)
}

fn io_error(label: &str, e: &std::io::Error) -> Diagnostic {
    Diagnostic::error(SourceRef::file_only(label), format!("cannot read: {e}"))
        .with_fix("check that the path exists and is readable")
}

fn too_large(label: &str, len: usize) -> Diagnostic {
    let size = if len > MAX_INPUT_BYTES + 1 {
        format!("{len} bytes")
    } else {
        "more than 8 MiB".to_string()
    };
    Diagnostic::error(
        SourceRef::file_only(label),
        format!("input is too large ({size}; the limit is {MAX_INPUT_BYTES} bytes = 8 MiB)"),
    )
    .with_fix("split the manifests into several files and apply the directory")
}

fn load(text: &str, file: &str) -> Result<Vec<Node>, Box<Diagnostic>> {
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if !looks_json {
        return load_yaml(text, file);
    }
    match load_json(text, file) {
        Ok(nodes) => Ok(nodes),
        // `{a: b}` is YAML flow style, not JSON; only a .json file must be JSON.
        Err(json_error) if !file.ends_with(".json") => {
            load_yaml(text, file).map_err(|_| json_error)
        }
        Err(e) => Err(e),
    }
}

fn is_list(root: &Node) -> bool {
    let Value::Map(entries) = &root.value else {
        return false;
    };
    entries
        .iter()
        .any(|e| e.key == "kind" && e.value.value == Value::Str("List".into()))
}

fn read_one(node: &Node, cx: &mut Cx<'_>, docs: &mut Vec<Document>) {
    cx.object = None;
    if let Some(resource) = decode_object(node, cx) {
        docs.push(Document {
            resource,
            source: node.source(cx.file),
            fields: FieldIndex::build(node),
        });
    }
    cx.object = None;
}

/// `kind: List` (what `kubectl get -o yaml` prints): each item is an object. Item paths
/// are relative to the item, as if it were its own document.
fn read_list(root: &Node, cx: &mut Cx<'_>, docs: &mut Vec<Document>) {
    let f = cx.fields(root, &["apiVersion", "kind", "items", "metadata"], &[]);
    let _: String = f.req(cx, "apiVersion", "add `apiVersion: v1`");
    let Some(items) = f.node("items") else {
        return;
    };
    match &items.value {
        Value::Seq(items) => {
            for item in items {
                read_one(item, cx, docs);
            }
        }
        other => cx.at_key("items", |cx| {
            cx.error(
                items,
                format!("expected a list of objects, found {}", other.describe()),
                Some("write each object as a `- ` item under `items:`".into()),
            );
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_kind_and_json() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: b}\n";
        let docs = parse_str(yaml, "l.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[1].source.line, docs[1].source.column), (7, 3));
        let json = r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"a"}}
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"b"}}"#;
        let docs = parse_str(json, "s.json").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].resource.name(), "b");
        assert_eq!(docs[1].source.line, 2);
    }

    #[test]
    fn invalid_utf8_has_position() {
        let err = parse_bytes(b"a: 1\nb: \xff\n", "x.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml:2:4: input is not valid UTF-8 (byte 8); fix: save the file as UTF-8"
        );
    }
}
