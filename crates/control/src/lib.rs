//! weir's control plane: the persistent resource store ([`store`]) fed by the local HTTP/JSON
//! API ([`api`]) that `weir apply|get|delete|analyze` talk to and by [`source`]s (a watched
//! directory, Kubernetes); the per-proxy configuration computed incrementally from it
//! ([`mesh`]), which the `xds` crate pushes to the sidecars; and the mesh's certificate
//! authority ([`ca`]): a self-signed or plug-in root kept in Istio's `cacerts` layout that
//! signs SPIFFE workload certificates. [`server`] runs them all together.

pub mod api;
pub mod ca;
pub mod mesh;
pub mod server;
pub mod source;
pub mod store;
