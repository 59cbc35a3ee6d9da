//! Runtime element types. Floats: f32 (default), f64 (gradchecks), bf16 and f16 (storage; the CPU
//! computes them in f32). Integers: i64 (token ids, labels, masks).
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    I64,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }
    /// The dtype the CPU computes this dtype in (half types upcast to f32).
    pub fn cpu_compute(self) -> DType {
        match self {
            DType::BF16 | DType::F16 => DType::F32,
            d => d,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "f32" | "float32" => DType::F32,
            "f64" | "float64" => DType::F64,
            "bf16" | "bfloat16" => DType::BF16,
            "f16" | "float16" => DType::F16,
            "i64" | "int64" => DType::I64,
            _ => return Err(crate::Error::msg(format!("unknown dtype '{s}' (expected f32, f64, bf16, f16, i64)"))),
        })
    }
}

/// A host element type with a [`DType`]; used to move data in and out of tensors.
pub trait WithDType: Copy + Send + Sync + 'static + std::fmt::Debug + Default {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! with_dtype {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
with_dtype!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |x: f64| x, |v: f64| v);
with_dtype!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
with_dtype!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
with_dtype!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);

/// The float types CPU kernels are written for (generic over f32 / f64).
pub trait CpuFloat:
    WithDType + num_traits::Float + std::iter::Sum + std::ops::AddAssign + std::ops::MulAssign + std::ops::SubAssign
{
}
impl CpuFloat for f32 {}
impl CpuFloat for f64 {}
