//! `weir ca`: placeholder, being written.

#[derive(clap::Args, Debug)]
pub struct CaArgs {}

pub fn run(_args: CaArgs) -> anyhow::Result<()> {
    anyhow::bail!("`weir ca` is not available in this build")
}
