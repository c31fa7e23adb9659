//! weir's control plane: the persistent resource store ([`store`]) fed by the local HTTP/JSON
//! API ([`api`]) that `weir apply|get|delete|analyze` talk to, and the mesh's certificate
//! authority ([`ca`]): a self-signed or plug-in root kept in Istio's `cacerts` layout, and
//! SPIFFE workload certificates written in the layout the sidecars read. Sources and
//! per-proxy configuration push join it here.

pub mod api;
pub mod ca;
pub mod source;
pub mod store;
