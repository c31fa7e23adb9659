//! One module per subcommand.

pub mod ca;
pub mod init;
pub mod proxy;
