//! Writing resources back out, for `get -o yaml|json`.

use serde::Serialize;

use crate::model::Resource;

/// Serialization failed (only for values YAML/JSON cannot represent).
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// YAML serialization failed.
    #[error("cannot write YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
    /// JSON serialization failed.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One resource as YAML.
pub fn to_yaml(resource: &Resource) -> Result<String, EmitError> {
    Ok(serde_saphyr::to_string(resource)?)
}

/// One resource as pretty JSON.
pub fn to_json(resource: &Resource) -> Result<String, EmitError> {
    Ok(serde_json::to_string_pretty(resource)?)
}

#[derive(Serialize)]
struct List<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    items: &'a [&'a Resource],
}

/// Several resources as one `kind: List` YAML document, as `kubectl get -o yaml` prints them.
pub fn list_to_yaml(resources: &[&Resource]) -> Result<String, EmitError> {
    Ok(serde_saphyr::to_string(&List {
        api_version: "v1",
        kind: "List",
        items: resources,
    })?)
}

/// Several resources as one `kind: List` JSON object.
pub fn list_to_json(resources: &[&Resource]) -> Result<String, EmitError> {
    Ok(serde_json::to_string_pretty(&List {
        api_version: "v1",
        kind: "List",
        items: resources,
    })?)
}
