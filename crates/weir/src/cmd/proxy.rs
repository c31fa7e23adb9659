//! `weir proxy`: placeholder, being written.

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {}

pub fn run(_args: ProxyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`weir proxy` is not available in this build")
}
