//! `weir proxy init`: placeholder, being written.

#[derive(clap::Args, Debug)]
pub struct InitArgs {}

pub fn run(_args: InitArgs) -> anyhow::Result<()> {
    anyhow::bail!("`weir proxy init` is not available in this build")
}
