//! Reading configuration from environment-style variables through a lookup function,
//! so the apps read the process environment in production and a map in tests.

use std::str::FromStr;

/// A variable whose value cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// The value does not parse as the expected kind.
    #[error("environment variable {var}={value:?} is not {expected}; fix: {fix}")]
    Invalid {
        /// Variable name.
        var: String,
        /// The value as given.
        value: String,
        /// What was expected, e.g. "a TCP port (1-65535)".
        expected: &'static str,
        /// How to correct it.
        fix: String,
    },
}

/// The trimmed value of `var`, or `None` when unset or empty (Kubernetes sets empty
/// strings for `value: ""`, which Istio's apps treat as unset).
pub fn var(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A TCP port from `name`, `default` when unset.
pub fn port(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u16,
) -> Result<u16, EnvError> {
    match var(env, name) {
        None => Ok(default),
        Some(value) => match u16::from_str(&value) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(EnvError::Invalid {
                var: name.to_string(),
                expected: "a TCP port (1-65535)",
                fix: format!("set {name} to a port number such as {default}, or unset it"),
                value,
            }),
        },
    }
}

/// A non-negative integer from `name`, `default` when unset, at most `max`.
pub fn count(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, EnvError> {
    match var(env, name) {
        None => Ok(default),
        Some(value) => match u32::from_str(&value) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(EnvError::Invalid {
                var: name.to_string(),
                expected: "a whole number within range",
                fix: format!("set {name} to a number from 0 to {max}, or unset it"),
                value,
            }),
        },
    }
}

/// A boolean the way Java's `Boolean.valueOf` reads it: `true` in any case is true,
/// anything else is false.
pub fn java_bool(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<bool> {
    var(env, name).map(|v| v.eq_ignore_ascii_case("true"))
}

/// A lookup over a fixed list of pairs, for tests and for layering CLI flags over the
/// process environment.
pub fn from_pairs<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_and_reject() {
        let env = from_pairs(&[("A", "9080"), ("B", "0"), ("C", "x"), ("D", " ")]);
        assert_eq!(port(&env, "A", 1), Ok(9080));
        assert_eq!(port(&env, "D", 7), Ok(7));
        assert_eq!(port(&env, "missing", 7), Ok(7));
        let err = port(&env, "B", 9080).unwrap_err().to_string();
        assert_eq!(
            err,
            "environment variable B=\"0\" is not a TCP port (1-65535); fix: set B to a port number such as 9080, or unset it"
        );
        assert!(port(&env, "C", 9080).is_err());
    }

    #[test]
    fn java_booleans() {
        let env = from_pairs(&[("A", "TRUE"), ("B", "yes")]);
        assert_eq!(java_bool(&env, "A"), Some(true));
        assert_eq!(java_bool(&env, "B"), Some(false));
        assert_eq!(java_bool(&env, "C"), None);
    }

    #[test]
    fn later_pairs_win() {
        let env = from_pairs(&[("A", "1"), ("A", "2")]);
        assert_eq!(var(&env, "A").as_deref(), Some("2"));
    }
}
