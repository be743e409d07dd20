//! `.safetensors` reading and writing through the `safetensors` crate (0.8): an 8-byte
//! little-endian header length, a JSON header `{name: {dtype, shape, data_offsets},
//! "__metadata__": {...}}`, then the raw little-endian data, which the tensors' byte ranges must
//! cover exactly (the crate checks lengths, offsets and overflow before any tensor is touched).
//!
//! Reading returns tensors in data order; dtypes F32, F64, F16/BF16 (widened exactly to float32
//! when asked), I64, I32, U8, BOOL. Writing stores tensors in the crate's order (descending dtype
//! alignment, then name) with `__metadata__ = {"format": "pt"}`, as `safetensors.torch.save_file`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

use super::write::{atomic_write_bytes, check_keys, disk_of, encode_elements, Disk, WriteOptions};
use super::{CheckpointError, ReadOptions};
use crate::array::AnyArray;

/// Reads a `.safetensors` file (see the module doc).
pub fn read_safetensors(path: &Path, opts: ReadOptions) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let bytes = crate::files::read_regular(path, crate::limits::memory_limit()).map_err(CheckpointError::io(path))?;
    read_safetensors_bytes(&bytes, path, opts)
}

/// The crate's error in plain words (the header length `n` and file length for context).
fn describe(e: SafeTensorError, n: Option<u64>, len: usize) -> String {
    let n = n.map(|n| n.to_string()).unwrap_or_default();
    match e {
        SafeTensorError::HeaderTooSmall => {
            "shorter than its 8-byte header length: the file is truncated or not a .safetensors file".into()
        }
        SafeTensorError::HeaderTooLarge => format!("header length {n} is over the 100 MB limit"),
        SafeTensorError::InvalidHeaderLength => format!(
            "header length {n} runs past the end of the file ({len} bytes): the file is truncated or not a .safetensors file"
        ),
        SafeTensorError::InvalidHeader(_) => "the header is not UTF-8 text".into(),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            format!("the header is not a valid safetensors JSON header: {e}")
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: its data_offsets do not start where the previous tensor ends, or end before they begin"
        ),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data_offsets hold a different number of bytes than its shape and dtype need".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows".into(),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensors' data_offsets do not cover the {}-byte data section exactly: the file is truncated or has trailing bytes",
            len.saturating_sub(8).saturating_sub(n.parse::<usize>().unwrap_or(0))
        ),
        other => other.to_string(),
    }
}

/// [`read_safetensors`] of bytes held in memory; `name` is kept in the error (see
/// [`super`] for how errors name files).
pub fn read_safetensors_bytes(
    bytes: &[u8],
    name: &Path,
    opts: ReadOptions,
) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let fmt = |msg: String| CheckpointError::Format {
        path: name.to_path_buf(),
        msg: format!("not a readable .safetensors file: {msg}"),
    };
    let (hlen, meta) = SafeTensors::read_metadata(bytes).map_err(|e| fmt(describe(e, n, bytes.len())))?;
    let data = &bytes[8 + hlen..];
    let mut out = Vec::with_capacity(meta.tensors().len());
    for key in meta.offset_keys() {
        let terr = |msg: String| CheckpointError::Tensor { path: name.to_path_buf(), key: key.clone(), msg };
        let Some(TensorInfo { dtype, shape, data_offsets: (begin, end) }) = meta.info(&key) else { continue };
        let raw = data.get(*begin..*end).ok_or_else(|| terr("data_offsets outside the data section".into()))?;
        let disk = match dtype {
            Dtype::F32 => Disk::F32,
            Dtype::F64 => Disk::F64,
            Dtype::F16 => Disk::F16,
            Dtype::BF16 => Disk::BF16,
            Dtype::I64 => Disk::I64,
            Dtype::I32 => Disk::I32,
            Dtype::U8 => Disk::U8,
            Dtype::BOOL => Disk::Bool,
            other => return Err(terr(format!("dtype {other:?} is not supported"))),
        };
        if matches!(disk, Disk::F16 | Disk::BF16) && !opts.widen_half {
            return Err(CheckpointError::HalfNotWidened {
                path: name.to_path_buf(),
                key: key.clone(),
                dtype: disk.name(),
            });
        }
        let arr = decode_le(raw, disk, shape).map_err(terr)?;
        out.push((key, arr));
    }
    Ok(out)
}

/// Decodes contiguous little-endian bytes of `disk` values (length already checked by the
/// crate); float16 / bfloat16 are widened exactly to float32.
pub(super) fn decode_le(b: &[u8], disk: Disk, shape: &[usize]) -> Result<AnyArray, String> {
    let sh = IxDyn(shape);
    macro_rules! mk {
        ($variant:ident, $n:expr, $f:expr) => {
            AnyArray::$variant(
                ArrayD::from_shape_vec(sh, b.chunks_exact($n).map($f).collect()).map_err(|e| e.to_string())?,
            )
        };
    }
    let u16le = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    Ok(match disk {
        Disk::F32 => mk!(F32, 4, |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        Disk::F64 => mk!(F64, 8, |c: &[u8]| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        Disk::F16 => mk!(F32, 2, |c: &[u8]| half::f16::from_bits(u16le(c)).to_f32()),
        Disk::BF16 => mk!(F32, 2, |c: &[u8]| half::bf16::from_bits(u16le(c)).to_f32()),
        Disk::I64 => mk!(I64, 8, |c: &[u8]| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        Disk::I32 => mk!(I32, 4, |c: &[u8]| i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        Disk::U8 => mk!(U8, 1, |c: &[u8]| c[0]),
        Disk::Bool => mk!(Bool, 1, |c: &[u8]| c[0] != 0),
    })
}

/// One tensor's bytes as the crate's [`View`].
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn st_dtype(d: Disk) -> Dtype {
    match d {
        Disk::F32 => Dtype::F32,
        Disk::F64 => Dtype::F64,
        Disk::F16 => Dtype::F16,
        Disk::BF16 => Dtype::BF16,
        Disk::I64 => Dtype::I64,
        Disk::I32 => Dtype::I32,
        Disk::U8 => Dtype::U8,
        Disk::Bool => Dtype::BOOL,
    }
}

/// Writes a `.safetensors` file with `safetensors::serialize` (see the module doc for the
/// order), atomically and without overwriting unless [`WriteOptions::force`].
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, AnyArray)],
    opts: WriteOptions,
) -> Result<(), CheckpointError> {
    check_keys(path, tensors)?;
    let werr = |msg: String| CheckpointError::Write { path: path.to_path_buf(), msg };
    let mut encoded = Vec::with_capacity(tensors.len());
    for (k, a) in tensors {
        if k == "__metadata__" {
            return Err(werr("a tensor cannot be named `__metadata__` in .safetensors".into()));
        }
        let disk = disk_of(a, opts.float_dtype);
        encoded.push((
            k.as_str(),
            Encoded { dtype: st_dtype(disk), shape: a.shape().to_vec(), bytes: encode_elements(a, disk) },
        ));
    }
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(encoded.iter().map(|(k, e)| (*k, e)), Some(info)).map_err(|e| werr(e.to_string()))?;
    atomic_write_bytes(path, opts.force, &bytes)
}
