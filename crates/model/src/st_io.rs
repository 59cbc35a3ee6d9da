//! Reading and writing `.safetensors` files as kiln tensors.
//!
//! Reading never reinterprets the file buffer in place (its alignment is not guaranteed): bytes are
//! copied into typed vectors with `bytemuck::pod_collect_to_vec`. Every failure names the file;
//! truncated files and garbage headers are errors, never panics: kiln checks the framing and the
//! header itself first (`check_layout`: which tensor's entry is wrong, duplicate names, offsets
//! that would overflow the safetensors crate's own checks), then lets the crate validate it too.
//! tests/fuzz_loaders.rs feeds it random and mutated files. Writing goes through
//! [`crate::io::atomic_write`].
use crate::io::atomic_write;
use half::{bf16, f16};
use kiln_tensor::{CpuStorage, DType, Device, Error, Result, Storage, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

#[cfg(target_endian = "big")]
compile_error!("kiln's safetensors I/O assumes a little-endian host");

/// A parsed safetensors file held in memory: raw bytes plus the parsed header.
pub struct StFile {
    path: String,
    bytes: Vec<u8>,
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl StFile {
    /// Reads and validates `path` (header, offsets, total length).
    pub fn open(path: impl AsRef<Path>) -> Result<StFile> {
        let p = path.as_ref();
        let bytes = crate::io::read_input(p)?;
        Self::from_bytes(bytes, &p.display().to_string())
    }

    /// Validates an in-memory file; `origin` is named in errors, which say what is wrong (the
    /// header length, the header's text, or which tensor's entry).
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<StFile> {
        check_layout(&bytes).map_err(|e| Error::msg(format!("{origin}: cannot read safetensors: {e}")))?;
        // the crate's own validation, which the checks above imply (kept as the last word)
        SafeTensors::deserialize(&bytes).map_err(|e| st_err(origin, e))?;
        Ok(StFile { path: origin.to_string(), bytes })
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    /// The file path (or origin label).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.st().names().into_iter().map(|s| s.to_string()).collect();
        n.sort();
        n
    }

    /// Header entry of `name`.
    pub fn info(&self, name: &str) -> Option<StInfo> {
        let t = self.st().tensor(name).ok()?;
        Some(StInfo { dtype: t.dtype(), shape: t.shape().to_vec() })
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    }

    /// Tensor `name` as a CPU tensor. F32, F64, F16, BF16 and I64 keep their dtype; I32, I16, I8, U8
    /// and BOOL become I64. Other dtypes are an error naming the tensor and the file.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let st = self.st();
        let v = st.tensor(name).map_err(|e| Error::msg(format!("{}: tensor '{name}': {e}", self.path)))?;
        view_to_tensor(&v).map_err(|e| Error::msg(format!("{}: tensor '{name}': {e}", self.path)))
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.names().into_iter().map(|n| self.tensor(&n).map(|t| (n, t))).collect()
    }
}

/// safetensors' limit on the header's length (the crate's `MAX_HEADER_SIZE`).
const MAX_HEADER: u64 = 100_000_000;

/// The header's top-level entries in file order; a name given twice is an error (serde_json would
/// keep the last one silently).
struct HeaderEntries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<HeaderEntries, A::Error> {
                let (mut out, mut seen) = (Vec::new(), std::collections::HashSet::new());
                while let Some(k) = m.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate name '{k}'")));
                    }
                    out.push((k, m.next_value()?));
                }
                Ok(HeaderEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks a safetensors file's framing and header, saying what is wrong and where: the 8-byte
/// header length against the file and safetensors' limit, the header's text, each tensor's entry
/// (dtype, shape, offsets inside the data section, byte count) and that the tensors tile the data
/// section. It also keeps out what the safetensors crate's checks would overflow on (offsets near
/// `usize::MAX`) and shapes whose strides overflow (`[0, 2^32, 2^32]`).
fn check_layout(b: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = b.get(..8) else {
        return Err(format!("not a safetensors file: {} bytes, shorter than the 8-byte header length that starts one", b.len()));
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(format!("header length {n} is over safetensors' limit of {MAX_HEADER} bytes (the file is corrupt or not a safetensors file)"));
    }
    let n = n as usize;
    let Some(data_len) = (b.len() - 8).checked_sub(n) else {
        return Err(format!("header length {n} runs past the end of the file ({} bytes): the file is truncated or not a safetensors file", b.len()));
    };
    let text = std::str::from_utf8(&b[8..8 + n]).map_err(|e| format!("the header is not UTF-8 text: {e}"))?;
    let HeaderEntries(entries) = serde_json::from_str(text).map_err(|e| format!("the header is not valid safetensors JSON: {e}"))?;
    let mut spans = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        if name == "__metadata__" {
            serde_json::from_value::<Option<HashMap<String, String>>>(v).map_err(|e| format!("__metadata__ must map names to strings: {e}"))?;
            continue;
        }
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(v).map_err(|e| format!("tensor '{name}': invalid header entry: {e}"))?;
        let (s, e) = info.data_offsets;
        let (shape, dtype) = (&info.shape, info.dtype);
        if e < s {
            return Err(format!("tensor '{name}': data_offsets [{s}, {e}] end before they start"));
        }
        if e > data_len {
            return Err(format!("tensor '{name}': data_offsets [{s}, {e}] run past the end of the data section ({data_len} bytes): the file is truncated or corrupt"));
        }
        // the product of the dimensions, and of the non-zero ones (the strides of an empty tensor)
        let too_large = || format!("tensor '{name}': shape {shape:?} is too large");
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1))).ok_or_else(too_large)?;
        let count = shape.iter().product::<usize>();
        let bits = count.checked_mul(dtype.bitsize()).ok_or_else(too_large)?;
        if bits % 8 != 0 {
            return Err(format!("tensor '{name}': shape {shape:?} of {dtype:?} is not a whole number of bytes"));
        }
        if bits / 8 != e - s {
            return Err(format!("tensor '{name}': shape {shape:?} of {dtype:?} needs {} bytes, its data_offsets [{s}, {e}] hold {}", bits / 8, e - s));
        }
        spans.push((s, e, name));
    }
    spans.sort();
    let mut pos = 0;
    let mut prev: Option<(usize, usize, String)> = None;
    for (s, e, name) in spans {
        match &prev {
            _ if s == pos => {}
            None => return Err(format!("the data section starts with {s} bytes that no tensor holds (a gap before tensor '{name}')")),
            Some((ps, pe, pn)) if s > pos => {
                return Err(format!("a gap of {} bytes between tensor '{pn}' (data_offsets [{ps}, {pe}]) and tensor '{name}' ([{s}, {e}])", s - pos))
            }
            Some((ps, pe, pn)) => return Err(format!("tensors '{pn}' (data_offsets [{ps}, {pe}]) and '{name}' ([{s}, {e}]) overlap")),
        }
        pos = e;
        prev = Some((s, e, name));
    }
    if pos < data_len {
        return Err(format!("the data section has {} bytes past the last tensor (the file is corrupt)", data_len - pos));
    }
    Ok(())
}

fn st_err(origin: &str, e: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    let hint = match e {
        E::HeaderTooSmall | E::InvalidHeaderLength | E::MetadataIncompleteBuffer | E::HeaderTooLarge => {
            " (the file is truncated, corrupt or not a safetensors file)"
        }
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => " (the header is not valid safetensors JSON)",
        E::InvalidOffset(_) | E::TensorInvalidInfo | E::ValidationOverflow => " (the header's offsets do not match the data)",
        _ => "",
    };
    Error::msg(format!("{origin}: cannot read safetensors: {e}{hint}"))
}

fn view_to_tensor(v: &TensorView<'_>) -> Result<Tensor> {
    let d = v.data();
    let shape = v.shape();
    let storage = match v.dtype() {
        Dtype::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec::<u8, f32>(d)),
        Dtype::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec::<u8, f64>(d)),
        Dtype::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec::<u8, u16>(d).into_iter().map(f16::from_bits).collect()),
        Dtype::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec::<u8, u16>(d).into_iter().map(bf16::from_bits).collect()),
        Dtype::I64 => CpuStorage::I64(bytemuck::pod_collect_to_vec::<u8, i64>(d)),
        Dtype::I32 => CpuStorage::I64(bytemuck::pod_collect_to_vec::<u8, i32>(d).into_iter().map(i64::from).collect()),
        Dtype::I16 => CpuStorage::I64(bytemuck::pod_collect_to_vec::<u8, i16>(d).into_iter().map(i64::from).collect()),
        Dtype::I8 => CpuStorage::I64(d.iter().map(|&b| b as i8 as i64).collect()),
        Dtype::U8 | Dtype::BOOL => CpuStorage::I64(d.iter().map(|&b| b as i64).collect()),
        other => return Err(Error::msg(format!("unsupported safetensors dtype {other:?}"))),
    };
    Tensor::from_storage(Storage::Cpu(storage), shape)
}

/// The safetensors dtype of a kiln dtype.
pub fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
    }
}

/// A tensor's bytes ready for serialisation.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn tensor_bytes(t: &Tensor) -> Result<Raw> {
    let t = t.to_device(Device::Cpu)?;
    let w = t.storage_window()?;
    let data = match &w {
        CpuStorage::F32(v) => bytemuck::cast_slice::<f32, u8>(v).to_vec(),
        CpuStorage::F64(v) => bytemuck::cast_slice::<f64, u8>(v).to_vec(),
        CpuStorage::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        CpuStorage::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        CpuStorage::I64(v) => bytemuck::cast_slice::<i64, u8>(v).to_vec(),
    };
    Ok(Raw { dtype: st_dtype(t.dtype()), shape: t.shape().to_vec(), data })
}

/// Serialises `tensors` (any device/layout; converted to `dtype` when given and the tensor is a
/// float) with `metadata` (HF loaders want `{"format": "pt"}`, which is added when absent).
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], dtype: Option<DType>, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut raws = Vec::with_capacity(tensors.len());
    let mut seen = std::collections::HashSet::new();
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::msg(format!("safetensors: duplicate tensor name '{name}'")));
        }
        let t = match dtype {
            Some(d) if t.dtype().is_float() && d.is_float() => t.to_dtype(d)?,
            _ => t.clone(),
        };
        raws.push((name.clone(), tensor_bytes(&t)?));
    }
    let mut meta = metadata.unwrap_or_default();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), Some(meta))
        .map_err(|e| Error::msg(format!("safetensors: cannot serialize: {e}")))
}

/// Writes `tensors` to `path` atomically (see [`to_safetensors_bytes`]).
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)], dtype: Option<DType>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let p = path.as_ref();
    let bytes = to_safetensors_bytes(tensors, dtype, metadata).map_err(|e| Error::msg(format!("{}: {e}", p.display())))?;
    atomic_write(p, &bytes)
}

/// Reads every tensor of `path` (sorted by name) as CPU tensors.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    StFile::open(path)?.tensors()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with `header` (JSON) and `data` bytes after it.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend(header.as_bytes());
        v.extend(data);
        v
    }

    #[test]
    fn a_header_that_claims_more_than_the_file_holds_is_an_error_before_any_allocation() {
        let cases = [
            // 4.5 PB of f32 claimed, 16 bytes there
            r#"{"w": {"dtype": "F32", "shape": [1099511627776, 1024], "data_offsets": [0, 4503599627370496]}}"#,
            // the offsets say 16 bytes, the shape 4.5 PB
            r#"{"w": {"dtype": "F32", "shape": [1099511627776, 1024], "data_offsets": [0, 16]}}"#,
            // a shape whose element count overflows
            r#"{"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776, 1099511627776], "data_offsets": [0, 16]}}"#,
            // an end offset past the data
            r#"{"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}"#,
        ];
        for h in cases {
            let e = StFile::from_bytes(file(h, &[0; 16]), "w.safetensors").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("w.safetensors: cannot read safetensors"), "{h}: {e}");
        }
        // and the honest file reads
        let ok = StFile::from_bytes(file(r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, &[0; 16]), "ok").unwrap();
        assert_eq!(ok.tensor("w").unwrap().shape(), &[4]);
    }
}
