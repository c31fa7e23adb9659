//! Diagnostics: every problem found in a manifest, with where it is and how to fix it.

use std::fmt;
use std::sync::Arc;

use crate::kind::Kind;

/// Where a resource or a field came from: a file label and a 1-based line and column.
/// Line 0 means the position is unknown (for example a file that could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    /// The file path or label given to the parser (`-` for standard input).
    pub file: Arc<str>,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
}

impl SourceRef {
    /// A position inside `file`.
    pub fn new(file: impl Into<Arc<str>>, line: u32, column: u32) -> Self {
        Self {
            file: file.into(),
            line,
            column,
        }
    }

    /// The file as a whole, without a position.
    pub fn file_only(file: impl Into<Arc<str>>) -> Self {
        Self::new(file, 0, 0)
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// How bad a diagnostic is. Only errors make an apply fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// The configuration is accepted but probably not what was meant.
    Warning,
    /// Accepted and kept, but not acted on by weir (for example HTTP-only features at L4).
    Info,
}

/// The resource a diagnostic is about, printed as `DestinationRule "reviews"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace, when the resource is namespaced and the namespace is known.
    pub namespace: Option<String>,
    /// Its name (empty when the manifest has none).
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{} (unnamed)", self.kind)
        } else {
            write!(f, "{} {:?}", self.kind, self.name)
        }
    }
}

/// One problem: the place, the resource, the field path, what is wrong and the fix.
///
/// Displays as
/// `bookinfo.yaml:42:7: DestinationRule "reviews": spec.subsets[1].labels: expected a map of strings, found a list; fix: ...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// Error, warning or info.
    pub severity: Severity,
    /// File, line and column of the offending node.
    pub source: SourceRef,
    /// The resource, when known.
    pub object: Option<ObjectRef>,
    /// Field path inside the resource, e.g. `spec.http[0].route[1].destination.subset`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Diagnostic {
    /// An error at `source`.
    pub fn error(source: SourceRef, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            source,
            object: None,
            path: String::new(),
            message: message.into(),
            fix: None,
        }
    }

    /// Sets the severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Sets the resource.
    pub fn with_object(mut self, object: Option<ObjectRef>) -> Self {
        self.object = object;
        self
    }

    /// Sets the field path.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the fix.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        match self.severity {
            Severity::Error => {}
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Info => f.write_str("info: ")?,
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// All the problems that made a parse or an apply fail, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_lines(.0))]
pub struct Errors(pub Vec<Diagnostic>);

impl Errors {
    /// A single diagnostic.
    pub fn one(diagnostic: Diagnostic) -> Self {
        Self(vec![diagnostic])
    }

    /// The diagnostics, in input order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.0
    }

    /// Each diagnostic rendered on its own, for asserting or printing one per line.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

fn display_lines(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&lower, &candidate.to_ascii_lowercase());
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    // A third of the word's length (at least 1, at most 3) keeps suggestions to plausible typos.
    let limit = (word.chars().count() / 3).clamp(1, 3);
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c)
}

/// Levenshtein distance, with adjacent transpositions counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Long words are never typos of schema names; skip the quadratic work.
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(prev2[j - 2] + 1);
            }
            cur[j] = v;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos() {
        let fields = ["host", "subsets", "trafficPolicy", "exportTo"];
        assert_eq!(closest("subsetz", fields), Some("subsets"));
        assert_eq!(closest("hots", fields), Some("host"));
        assert_eq!(closest("trafficpolicy", fields), Some("trafficPolicy"));
        assert_eq!(closest("zzzzzz", fields), None);
    }

    #[test]
    fn display_with_and_without_position() {
        let d = Diagnostic::error(SourceRef::new("a.yaml", 3, 5), "bad")
            .with_path("spec.host")
            .with_fix("do it");
        assert_eq!(d.to_string(), "a.yaml:3:5: spec.host: bad; fix: do it");
        let d = Diagnostic::error(SourceRef::file_only("a.yaml"), "gone")
            .with_severity(Severity::Warning);
        assert_eq!(d.to_string(), "a.yaml: warning: gone");
    }
}
