//! Scalar types with their own syntax: ports, int-or-string, durations, quantities, base64.

use std::fmt;
use std::time::Duration as StdDuration;

use base64::Engine as _;
use serde::{Serialize, Serializer};

use crate::decode::{integer, Cx, Decode};
use crate::node::{Node, Value};

/// A TCP/UDP port number, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl Decode for Port {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Int(i) if !(1..=65535).contains(i) => {
                cx.error(
                    node,
                    format!("port {i} is out of range"),
                    Some("use a port number from 1 to 65535".to_string()),
                );
                Port(0)
            }
            _ => integer(node, cx, 1, 65535)
                .and_then(|i| u16::try_from(i).ok())
                .map_or(Port(0), Port),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Kubernetes `IntOrString`, used by `targetPort`: a number or a named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A port number.
    Int(u16),
    /// A port name.
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl Decode for IntOrString {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        match &node.value {
            Value::Str(s) if s.is_empty() => {
                cx.error(
                    node,
                    "port name must not be empty",
                    Some("write a port number or the name of a container port".into()),
                );
                IntOrString::String(String::new())
            }
            Value::Str(s) => IntOrString::String(s.clone()),
            _ => IntOrString::Int(Port::decode(node, cx).0),
        }
    }
}

/// A duration written as Go and Istio write them: `15s`, `1m`, `500ms`, `1h30m`, `0.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(pub StdDuration);

/// Why a duration or quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `<number><unit>`.
    #[error("`{0}` is not a duration")]
    Duration(String),
    /// Unknown unit in a duration.
    #[error("`{text}` has an unknown unit `{unit}`")]
    DurationUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Not a Kubernetes quantity.
    #[error("`{0}` is not a quantity")]
    Quantity(String),
}

impl Duration {
    /// Parses `15s`, `1m`, `500ms`, `1h30m`, `1.5s`, `250us`, `10ns`, exactly (no floating
    /// point), up to about a century.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        const MAX_NANOS: u128 = 100 * 365 * 24 * 3600 * 1_000_000_000;
        let bad = || ValueError::Duration(text.to_string());
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let number = &rest[..num_len];
            rest = &rest[num_len..];
            let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
            if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
                return Err(bad());
            }
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => {
                    return Err(ValueError::DurationUnit {
                        text: text.to_string(),
                        unit: unit.to_string(),
                    })
                }
            };
            // Digits beyond nanosecond precision cannot change the result; cap the work.
            let whole: u128 = if whole.is_empty() {
                0
            } else if whole.len() > 30 {
                return Err(bad());
            } else {
                whole.parse().map_err(|_| bad())?
            };
            let mut frac_nanos: u128 = 0;
            let mut divisor: u128 = 1;
            for d in frac.chars().take(18) {
                frac_nanos = frac_nanos * 10 + u128::from(d.to_digit(10).ok_or_else(bad)?);
                divisor *= 10;
            }
            total = whole
                .checked_mul(scale)
                .and_then(|w| w.checked_add(frac_nanos * scale / divisor))
                .and_then(|v| total.checked_add(v))
                .filter(|t| *t <= MAX_NANOS)
                .ok_or_else(bad)?;
        }
        let nanos = u64::try_from(total).map_err(|_| bad())?;
        Ok(Duration(StdDuration::from_nanos(nanos)))
    }
}

impl fmt::Display for Duration {
    /// Protobuf's JSON form: seconds with a fractional part only when needed (`5s`, `0.5s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Decode for Duration {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let fix = "write a number with a unit (ns, us, ms, s, m, h), e.g. `15s`, `500ms` or `1m`";
        match &node.value {
            Value::Str(s) => match Duration::parse(s) {
                Ok(d) => d,
                Err(e) => {
                    cx.error(node, e.to_string(), Some(fix.to_string()));
                    Duration::default()
                }
            },
            other => {
                let fix = match other {
                    Value::Int(i) => format!("add a unit: `{i}s`"),
                    _ => fix.to_string(),
                };
                cx.error(
                    node,
                    format!("expected a duration, found {}", other.describe()),
                    Some(fix),
                );
                Duration::default()
            }
        }
    }
}

/// A Kubernetes resource quantity (`100m`, `128Mi`, `1.5`, `2G`, `1e3`), kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl Quantity {
    /// Checks the syntax: a signed decimal number, then an optional binary suffix (Ki..Ei),
    /// decimal suffix (n, u, m, k, M, G, T, P, E) or exponent (`e3`).
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Quantity(text.to_string());
        let t = text.trim();
        let body = t.strip_prefix(['+', '-']).unwrap_or(t);
        let num_len = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let number = &body[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let suffix = &body[num_len..];
        let ok = matches!(
            suffix,
            "" | "Ki"
                | "Mi"
                | "Gi"
                | "Ti"
                | "Pi"
                | "Ei"
                | "n"
                | "u"
                | "m"
                | "k"
                | "M"
                | "G"
                | "T"
                | "P"
                | "E"
        ) || suffix
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
        if ok {
            Ok(Quantity(t.to_string()))
        } else {
            Err(bad())
        }
    }
}

impl Decode for Quantity {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(x) => x.to_string(),
            other => {
                cx.error(
                    node,
                    format!("expected a quantity, found {}", other.describe()),
                    Some("write a quantity such as `100m`, `0.5` or `128Mi`".into()),
                );
                return Quantity::default();
            }
        };
        match Quantity::parse(&text) {
            Ok(q) => q,
            Err(e) => {
                cx.error(
                    node,
                    e.to_string(),
                    Some("write a number with an optional suffix: m (milli), k, M, G, Ki, Mi, Gi, e.g. `100m` or `128Mi`".into()),
                );
                Quantity::default()
            }
        }
    }
}

/// Bytes written as base64 in a Secret's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Base64Bytes(pub Vec<u8>);

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl Decode for Base64Bytes {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let text = String::decode(node, cx);
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
            Ok(bytes) => Base64Bytes(bytes),
            Err(e) => {
                if matches!(node.value, Value::Str(_)) {
                    cx.error(
                        node,
                        format!("not valid base64: {e}"),
                        Some("encode the value with `base64 -w0`, or put the plain text under `stringData`".into()),
                    );
                }
                Base64Bytes::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("15s", 15_000),
            ("1m", 60_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
            ("0.001s", 1),
        ];
        for (text, ms) in ok {
            assert_eq!(Duration::parse(text).unwrap().0.as_millis(), ms, "{text}");
        }
        assert_eq!(
            Duration::parse("15").unwrap_err().to_string(),
            "`15` is not a duration"
        );
        assert_eq!(
            Duration::parse("15sec").unwrap_err().to_string(),
            "`15sec` has an unknown unit `sec`"
        );
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("s").is_err());
        assert!(Duration::parse("1e400s").is_err());
        assert!(Duration::parse("1.2.3s").is_err());
        assert!(Duration::parse("99999999999999999999999999999999h").is_err());
        assert_eq!(
            Duration::parse("0.333333333s").unwrap().0.as_nanos(),
            333_333_333
        );
        assert_eq!(Duration::parse("1.5h").unwrap().0.as_secs(), 5400);
        assert_eq!(Duration::parse(".5s").unwrap().0.as_millis(), 500);
        assert_eq!(Duration::parse("1m").unwrap().to_string(), "60s");
        assert_eq!(Duration::parse("500ms").unwrap().to_string(), "0.5s");
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "128Mi", "1.5", "2G", "1e3", "-1", "0.5Gi"] {
            assert!(Quantity::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Mi", "1.2.3", "12MB", "1e", "abc"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Quantity::parse("12MB").unwrap_err().to_string(),
            "`12MB` is not a quantity"
        );
    }
}
