//! One module per subcommand.

pub mod apply;
pub mod ca;
pub mod cluster;
pub mod control;
pub mod demo;
pub mod get;
pub mod init;
pub mod proxy;
pub mod sidecar;
