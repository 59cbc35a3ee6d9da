//! `kiln kernels`: compile every CUDA kernel with NVRTC for an architecture and report resources.
use clap::Args;
use kiln::Result;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Target architecture, e.g. sm_80, sm_90.
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Also write each compiled CUBIN and the ptxas log here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: KernelsArgs) -> Result<()> {
    let reports = kiln::tensor::cuda::nvrtc::compile_all(&a.arch, a.out.as_deref())?;
    println!("{}", kiln::tensor::cuda::nvrtc::format_report(&reports));
    Ok(())
}
