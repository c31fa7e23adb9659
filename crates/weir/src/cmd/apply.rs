//! `weir apply -f` and `weir delete -f`: send manifests to the control plane, printing
//! kubectl's outcome lines.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use control::api::Manifests;

use super::control::{print, ControlAddr};

/// Arguments of `weir apply` and `weir delete`.
#[derive(clap::Args, Debug)]
pub struct FileArgs {
    /// A manifest file, a directory of `*.yaml|*.yml|*.json` files, or `-` for standard
    /// input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    #[command(flatten)]
    control: ControlAddr,
}

/// Runs `weir apply`.
pub fn apply(args: FileArgs) -> anyhow::Result<()> {
    each(&args, "apply", |client, m| client.apply(m))
}

/// Runs `weir delete`.
pub fn delete(args: FileArgs) -> anyhow::Result<()> {
    each(&args, "delete", |client, m| client.delete(m))
}

/// Sends each file on its own, as kubectl does; carries on after a rejected file.
fn each(
    args: &FileArgs,
    verb: &str,
    send: impl Fn(
        &control::api::client::Client,
        &Manifests,
    ) -> Result<control::api::client::Response, control::api::client::ClientError>,
) -> anyhow::Result<()> {
    let client = args.control.client();
    let mut manifests = Vec::new();
    for f in &args.files {
        manifests.extend(read(f)?);
    }
    let mut rejected = Vec::new();
    for m in &manifests {
        let response = send(&client, m)?;
        if print(response, "").is_err() {
            rejected.push(m.file.clone());
        }
    }
    if rejected.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{verb} of {} rejected; nothing in {} was changed",
            rejected.join(", "),
            if rejected.len() == 1 { "it" } else { "them" }
        )
    }
}

/// Reads `-`, a file, or a directory's manifest files (sorted, not recursive).
fn read(arg: &str) -> anyhow::Result<Vec<Manifests>> {
    if arg == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(config::MAX_INPUT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        return Ok(vec![text(bytes, "-")?]);
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {arg}; check the path given to -f"))?;
    if !meta.is_dir() {
        return Ok(vec![file(path)?]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {arg}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("{arg}: no *.yaml, *.yml or *.json files in this directory; pass a manifest file or a directory holding some");
    }
    files.iter().map(|p| file(p)).collect()
}

fn file(path: &Path) -> anyhow::Result<Manifests> {
    let label = path.display().to_string();
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {label}"))?;
    let mut bytes = Vec::new();
    f.take(config::MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {label}"))?;
    text(bytes, &label)
}

/// The manifests as text; size and encoding problems are reported here in the parser's words.
fn text(bytes: Vec<u8>, label: &str) -> anyhow::Result<Manifests> {
    if bytes.len() > config::MAX_INPUT_BYTES {
        if let Err(e) = config::parse_bytes(&bytes, label) {
            anyhow::bail!("{e}");
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Manifests {
            text,
            file: label.to_string(),
        }),
        Err(e) => match config::parse_bytes(e.as_bytes(), label) {
            Err(errors) => anyhow::bail!("{errors}"),
            Ok(_) => anyhow::bail!("{label}: input is not valid UTF-8; save the file as UTF-8"),
        },
    }
}
