//! One module per subcommand.

pub mod apply;
pub mod ca;
pub mod control;
pub mod get;
pub mod init;
pub mod proxy;
