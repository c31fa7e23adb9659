//! `weir get` and `weir analyze`: read resources and cross-resource problems from the
//! control plane.

use control::api::GetQuery;

use super::control::{print, ControlAddr};

/// Arguments of `weir get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Resource type: kind, plural or short name (`dr`, `vs`, `destinationrules`, `svc`...).
    kind: String,
    /// One object's name; all of the kind when omitted.
    name: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Output format: yaml, json or wide (a table when omitted).
    #[arg(short = 'o', long, value_parser = ["yaml", "json", "wide"])]
    output: Option<String>,
    #[command(flatten)]
    control: ControlAddr,
    #[command(flatten)]
    cluster: super::cluster::ClusterSel,
}

/// Runs `weir get`.
pub fn get(args: GetArgs) -> anyhow::Result<()> {
    if matches!(args.kind.as_str(), "pods" | "pod" | "po") {
        // Pods are the local cluster's, not stored resources.
        let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
        return super::cluster::get_pods(
            &args.cluster,
            namespace,
            args.output.as_deref() == Some("wide"),
        );
    }
    let query = GetQuery {
        name: args.name,
        namespace: (!args.all_namespaces).then_some(args.namespace),
        output: args.output,
    };
    let response = args.control.client().get(&args.kind, &query)?;
    print(response, "get failed")
}

/// Arguments of `weir analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    control: ControlAddr,
}

/// Runs `weir analyze`: prints every cross-resource problem; fails when one is an error.
pub fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let response = args.control.client().analyze()?;
    print(response, "analysis found errors; fix them and apply again")
}
