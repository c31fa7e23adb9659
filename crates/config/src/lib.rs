//! The resource model of weir: Kubernetes and Istio manifests (Service, ServiceAccount,
//! Deployment, Namespace, Secret, DestinationRule, VirtualService, Gateway,
//! PeerAuthentication, Telemetry, and the Gateway API's Gateway and TCPRoute) parsed from
//! multi-document YAML or JSON into typed resources, validated per resource and across
//! resources, and kept in an in-memory [`ResourceSet`] whose `apply` is atomic. Every problem
//! is reported with its file, line and column, the field path, and the fix; fields outside
//! the schema are errors that name the closest valid field. No networking here.

pub mod analyze;
mod decode;
mod emit;
mod error;
mod kind;
pub mod model;
mod node;
mod parse;
mod store;
mod values;

pub use analyze::{analyze, resolve_host};
pub use decode::StringMap;
pub use emit::{list_to_json, list_to_yaml, to_json, to_yaml, EmitError};
pub use error::{Diagnostic, Errors, ObjectRef, Severity, SourceRef};
pub use kind::{Kind, KindError};
pub use model::{Document, Resource, Spec};
pub use node::{FieldIndex, MAX_ALIAS_EVENTS, MAX_DEPTH, MAX_DOCUMENTS, MAX_NODES};
pub use parse::{parse_bytes, parse_path, parse_reader, parse_str, MAX_INPUT_BYTES};
pub use store::{Action, ApplyOutcome, DeleteOutcome, ObjectKey, ResourceSet};
pub use values::{Base64Bytes, Duration, IntOrString, Port, Quantity, ValueError};
