//! Istio's Bookinfo sample applications (productpage, details, reviews v1/v2/v3,
//! ratings v1/v2) and the `tcp-echo` sample server, with the same ports, environment
//! variables, JSON shapes and failure texts as Istio's images, plus a helper that
//! bootstraps MariaDB the way the `examples-bookinfo-mysqldb` image does. weir's local
//! cluster maps those images to these programs, and tests use them as real workloads.
//!
//! Each app is a module with a `*Config::from_env` (fed by any variable lookup, so tests
//! need no process environment) and an async `serve(listener, config)`; the `bookinfo`
//! binary runs one of them (`bookinfo productpage|details|reviews|ratings|tcp-echo|mysqldb`),
//! and [`images::local_command`] says which for each of Istio's sample images.

pub mod cli;
pub mod details;
pub mod env;
pub mod images;
pub mod mysqldb;
pub mod productpage;
pub mod ratings;
pub mod reviews;
pub mod tcp_echo;
mod web;

pub use web::{Upstream, PROPAGATED_HEADERS};
