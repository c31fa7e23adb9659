//! weir's control plane. Today it holds the mesh's certificate authority ([`ca`]): a
//! self-signed or plug-in root kept in Istio's `cacerts` layout, and SPIFFE workload
//! certificates written in the layout the sidecars read. The resource store, sources
//! and per-proxy configuration push join it here.

pub mod ca;
