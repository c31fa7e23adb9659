//! Where resources come from besides the local API: a watched directory of manifests
//! ([`dir`]) and a Kubernetes API server ([`kube`]). Each source owns the objects it applied and deletes them when they leave
//! it; objects applied through the API are never touched by a source.

pub mod dir;
pub mod kube;
