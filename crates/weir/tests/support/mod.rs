//! Shared harness of the end-to-end tests: network-namespace pods on a bridge, child
//! processes inside them, test apps that hash what they move, sidecars configured through
//! the proxy's own config types, and real MariaDB and Prometheus fixtures.
//!
//! Every test builds its own namespaces (`weir-t<pid>-<n>-<pod>`) and removes them when it
//! ends, even on panic; namespaces left by a crashed run are removed by the next one.

#![allow(dead_code)]

pub mod apps;
pub mod http;
pub mod mariadb;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod sidecar;
