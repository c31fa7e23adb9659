//! Just enough of Go's text/template for the fixtures: `if`/`else`/`end` on
//! `.Vars.X` (truthy), `eq .Vars.X "v"` and `ne .Vars.X "v"`, `{{-` trimming, and
//! `{{ .Vars.X }}` substitution.

#![allow(dead_code)]

use std::collections::BTreeMap;

pub fn render(src: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    // Each frame: (this branch taken, some branch of the `if` already taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        let (text, tail) = rest.split_at(start);
        let end = tail
            .find("}}")
            .unwrap_or_else(|| panic!("unterminated action: {tail}"));
        let action = &tail[2..end];
        let trim_left = action.starts_with('-');
        let action = action.trim_start_matches('-').trim_end_matches('-').trim();
        let active = stack.iter().all(|(taken, _)| *taken);
        if active {
            out.push_str(if trim_left { text.trim_end() } else { text });
        }
        rest = &tail[end + 2..];
        let words: Vec<&str> = action.split_whitespace().collect();
        match words.as_slice() {
            ["if", cond @ ..] => {
                let v = eval(cond, vars);
                stack.push((v, v));
            }
            ["else"] => {
                let (_, done) = stack.pop().expect("else without if");
                stack.push((!done, true));
            }
            ["end"] => {
                stack.pop().expect("end without if");
            }
            [var] if var.starts_with(".Vars.") => {
                if active {
                    out.push_str(lookup(var, vars));
                }
            }
            other => panic!("unsupported template action {other:?}"),
        }
    }
    assert!(stack.is_empty(), "unterminated if");
    out.push_str(rest);
    out
}

fn lookup<'a>(var: &str, vars: &BTreeMap<&str, &'a str>) -> &'a str {
    vars.get(var.trim_start_matches(".Vars."))
        .copied()
        .unwrap_or("")
}

fn eval(cond: &[&str], vars: &BTreeMap<&str, &str>) -> bool {
    match cond {
        [var] => !lookup(var, vars).is_empty(),
        [op @ ("eq" | "ne"), var, lit] => {
            let equal = lookup(var, vars) == lit.trim_matches('"');
            (*op == "eq") == equal
        }
        other => panic!("unsupported condition {other:?}"),
    }
}
