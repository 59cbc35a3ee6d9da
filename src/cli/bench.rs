//! `kiln bench`: times the CPU ops against this machine's measured ceilings (see issue: kernel lab).
use clap::Args;
use kiln::{Error, Result};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only ops whose name contains this.
    #[arg(long)]
    pub op: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device: kiln::Device = a.device.parse()?;
    kiln::tensor::cuda::check_device(device)?;
    Err(Error::msg("bench: not implemented yet; use `cargo bench --bench ops` (criterion) meanwhile"))
}
