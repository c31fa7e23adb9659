//! A small parser for the Prometheus text exposition (0.0.4), so tests assert on
//! series and exact values rather than on substrings.

#![allow(dead_code)]

use telemetry::{encode, Format, Registry};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn label_names(&self) -> Vec<&str> {
        self.labels.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The parsed exposition.
#[derive(Debug)]
pub struct Parsed {
    pub text: String,
    pub samples: Vec<Sample>,
    /// `# TYPE` lines as (name, type).
    pub types: Vec<(String, String)>,
}

impl Parsed {
    pub fn scrape(registry: &Registry) -> Self {
        Self::parse(&encode(registry, Format::PrometheusText).expect("encode"))
    }

    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE line");
                types.push((name.to_owned(), ty.to_owned()));
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Self {
            text: text.to_owned(),
            samples,
            types,
        }
    }

    /// Samples of a series name whose labels include all of `want`.
    pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| want.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// The value of the only sample matching, 0 if none; panics if several match.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found = self.find(name, want);
        assert!(
            found.len() <= 1,
            "{name} {want:?} matches {} series:\n{}",
            found.len(),
            self.text
        );
        found.first().map(|s| s.value).unwrap_or(0.0)
    }

    /// Sum over all series of a name.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let (n, v) = line.split_once(' ').expect("sample line");
            return Sample {
                name: n.to_owned(),
                labels: Vec::new(),
                value: v.trim().parse().expect("sample value"),
            };
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest[1..].chars().peekable();
    loop {
        match chars.peek() {
            Some('}') => {
                chars.next();
                break;
            }
            Some(',') => {
                chars.next();
                continue;
            }
            _ => {}
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} value must be quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '"' => break,
                '\\' => match chars.next().expect("dangling escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key, value));
    }
    let value: String = chars.collect();
    Sample {
        name: name.to_owned(),
        labels,
        value: value.trim().parse().expect("sample value"),
    }
}
