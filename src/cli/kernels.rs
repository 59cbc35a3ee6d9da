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

#[cfg(feature = "cuda")]
pub fn run(a: KernelsArgs) -> Result<()> {
    use kiln::tensor::cuda::report;
    let reports = match &a.out {
        Some(d) => report::compile_all_into(kiln::tensor::ops::KERNEL_FILES, &a.arch, d)?,
        None => report::compile_all(kiln::tensor::ops::KERNEL_FILES, &a.arch)?,
    };
    println!("{}", report::format_report(&reports));
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn run(_a: KernelsArgs) -> Result<()> {
    Err(kiln::Error::CudaUnavailable("this build has no CUDA support (build with the default `cuda` feature)".into()))
}
