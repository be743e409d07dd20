//! Arrays as they come from files: [`AnyArray`] (an n-dimensional array in its stored dtype) and
//! the `.npy` / `.npz` readers. The first step of the data flow: file → [`AnyArray`] →
//! [`crate::weights`] / fixture cases.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use npyz::{DType, NpyFile, Order, TypeChar};

use crate::Float;

/// Errors reading arrays. As [`crate::checkpoint::CheckpointError`]: every message names the
/// file once (callers do not add it again), then the entry at fault; an I/O error is shown once.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{path}: not a readable .npy array{}: {msg}", entry.as_ref().map(|e| format!(" (entry `{e}`)")).unwrap_or_default())]
    BadNpy { path: PathBuf, entry: Option<String>, msg: String },
    #[error("{path}: {msg}")]
    BadNpz { path: PathBuf, msg: String },
    #[error("{path}: {} has dtype {dtype}, which is not supported (float32/64, int32/64, uint8, bool are)", if key.is_empty() { "the array".to_string() } else { format!("entry `{key}`") })]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
}

impl ArrayError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ArrayError::Io { path, .. }
            | ArrayError::BadNpy { path, .. }
            | ArrayError::BadNpz { path, .. }
            | ArrayError::UnsupportedDtype { path, .. } => path,
        }
    }
}

/// An n-dimensional array as stored in a `.npy` file, in its own dtype.
#[derive(Debug, Clone)]
pub enum AnyArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

impl AnyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyArray::F32(a) => a.shape(),
            AnyArray::F64(a) => a.shape(),
            AnyArray::I64(a) => a.shape(),
            AnyArray::I32(a) => a.shape(),
            AnyArray::U8(a) => a.shape(),
            AnyArray::Bool(a) => a.shape(),
        }
    }

    /// numpy's name of the dtype (`float32`, `int64`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            AnyArray::F32(_) => "float32",
            AnyArray::F64(_) => "float64",
            AnyArray::I64(_) => "int64",
            AnyArray::I32(_) => "int32",
            AnyArray::U8(_) => "uint8",
            AnyArray::Bool(_) => "bool",
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self, AnyArray::F32(_) | AnyArray::F64(_))
    }

    /// Float data converted to `T` (f64 → f32 rounds); `None` for integer arrays.
    pub fn to_float<T: Float>(&self) -> Option<ArrayD<T>> {
        match self {
            AnyArray::F32(a) => Some(a.mapv(|v| T::from_f64_lossy(v as f64))),
            AnyArray::F64(a) => Some(a.mapv(T::from_f64_lossy)),
            _ => None,
        }
    }

    /// Values widened to f64 (exact for every supported dtype but int64 beyond 2^53).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            AnyArray::F32(a) => a.mapv(|v| v as f64),
            AnyArray::F64(a) => a.clone(),
            AnyArray::I64(a) => a.mapv(|v| v as f64),
            AnyArray::I32(a) => a.mapv(|v| v as f64),
            AnyArray::U8(a) => a.mapv(|v| v as f64),
            AnyArray::Bool(a) => a.mapv(|v| if v { 1.0 } else { 0.0 }),
        }
    }

    /// Integer data as i64; `None` for float arrays.
    pub fn to_i64(&self) -> Option<ArrayD<i64>> {
        match self {
            AnyArray::I64(a) => Some(a.clone()),
            AnyArray::I32(a) => Some(a.mapv(|v| v as i64)),
            AnyArray::U8(a) => Some(a.mapv(|v| v as i64)),
            AnyArray::Bool(a) => Some(a.mapv(|v| v as i64)),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArrayError + '_ {
    move |err| ArrayError::Io { path: path.to_path_buf(), err }
}

/// A zip crate error opening an archive, in plain words (shared by the `.npz` and `.pth`
/// readers; the crate's own text is e.g. "invalid Zip archive: Could not find EOCD").
pub(crate) fn describe_zip_error(e: &zip::result::ZipError) -> String {
    use zip::result::ZipError as Z;
    match e {
        Z::InvalidArchive(m) if m.contains("EOCD") || m.to_ascii_lowercase().contains("end of central directory") => {
            "not a zip archive (no end-of-central-directory record): the file may be truncated or not a checkpoint"
                .into()
        }
        Z::InvalidArchive(m) => format!("a damaged zip archive ({m}): the file may be truncated or corrupted"),
        Z::Io(io) => format!("a damaged zip archive ({io}): the file may be truncated"),
        other => format!("an unreadable zip archive: {other}"),
    }
}

/// An error reading a zip entry's data, in plain words (the crate says only "Invalid checksum"
/// when the CRC-32 check at the entry's end fails).
pub(crate) fn describe_entry_read_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData && e.to_string().contains("checksum") {
        "the data is corrupted: its CRC-32 does not match the checksum stored in the archive".into()
    } else {
        format!("cannot be read: {e}")
    }
}

/// Parses one `.npy` stream (C or Fortran order, either endianness).
pub fn parse_npy(bytes: &[u8], path: &Path, entry: Option<&str>) -> Result<AnyArray, ArrayError> {
    let bad = |msg: String| ArrayError::BadNpy { path: path.to_path_buf(), entry: entry.map(str::to_string), msg };
    // npyz allocates the declared header length before reading it: check it against the bytes
    // there are first (a 4 GiB claim in a 17-byte file was an out-of-memory abort, found by
    // fuzzing; see docs/security.md).
    if bytes.len() >= 10 && bytes.starts_with(b"\x93NUMPY") {
        let (hlen, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as u64, 10u64),
            _ if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as u64, 12),
            _ => (0, 10),
        };
        if start + hlen > bytes.len() as u64 {
            return Err(bad(format!(
                "header length {hlen} runs past the end of the data ({} bytes): truncated or not a .npy array",
                bytes.len()
            )));
        }
    }
    let npy = NpyFile::new(bytes).map_err(|e| bad(e.to_string()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = matches!(npy.order(), Order::Fortran);
    let dtype = npy.dtype();
    let ts = match &dtype {
        DType::Plain(ts) => ts.clone(),
        other => {
            return Err(ArrayError::UnsupportedDtype {
                path: path.to_path_buf(),
                key: entry.unwrap_or("").to_string(),
                dtype: other.descr(),
            })
        }
    };
    fn build<T: Clone>(shape: &[usize], fortran: bool, v: Vec<T>) -> Result<ArrayD<T>, String> {
        let arr = if fortran {
            use ndarray::ShapeBuilder;
            ArrayD::from_shape_vec(IxDyn(shape).f(), v)
        } else {
            ArrayD::from_shape_vec(IxDyn(shape), v)
        };
        let arr = arr.map_err(|e| e.to_string())?;
        Ok(if fortran { arr.as_standard_layout().into_owned() } else { arr })
    }
    let unsupported = || ArrayError::UnsupportedDtype {
        path: path.to_path_buf(),
        key: entry.unwrap_or("").to_string(),
        dtype: ts.to_string(),
    };
    let out = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => {
            AnyArray::F32(build(&shape, fortran, npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?).map_err(bad)?)
        }
        (TypeChar::Float, 8) => {
            AnyArray::F64(build(&shape, fortran, npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?).map_err(bad)?)
        }
        (TypeChar::Int, 8) => {
            AnyArray::I64(build(&shape, fortran, npy.into_vec::<i64>().map_err(|e| bad(e.to_string()))?).map_err(bad)?)
        }
        (TypeChar::Int, 4) => {
            AnyArray::I32(build(&shape, fortran, npy.into_vec::<i32>().map_err(|e| bad(e.to_string()))?).map_err(bad)?)
        }
        (TypeChar::Uint, 1) => {
            AnyArray::U8(build(&shape, fortran, npy.into_vec::<u8>().map_err(|e| bad(e.to_string()))?).map_err(bad)?)
        }
        (TypeChar::Bool, 1) => AnyArray::Bool(
            build(&shape, fortran, npy.into_vec::<bool>().map_err(|e| bad(e.to_string()))?).map_err(bad)?,
        ),
        _ => return Err(unsupported()),
    };
    Ok(out)
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<AnyArray, ArrayError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_npy(&bytes, path, None)
}

/// Reads every array of a `.npz` archive (`np.savez` or `np.savez_compressed`), keyed by the
/// entry name without its `.npy` suffix, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    let file = File::open(path).map_err(io_err(path))?;
    read_npz_from(io::BufReader::new(file), path)
}

/// [`read_npz`] of bytes held in memory; `name` is used in error messages.
pub fn parse_npz(bytes: &[u8], name: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    read_npz_from(io::Cursor::new(bytes), name)
}

/// [`read_npz`] from any seekable reader; `path` is used in error messages. Every entry's CRC-32
/// is checked (the zip crate verifies it when an entry is read to its end).
pub fn read_npz_from<R: Read + io::Seek>(reader: R, path: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    let bad = |msg: String| ArrayError::BadNpz { path: path.to_path_buf(), msg };
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| bad(format!(".npz: {}", describe_zip_error(&e))))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(format!(".npz entry {i}: {}", describe_zip_error(&e))))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::with_capacity(f.size().min(1 << 24) as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| bad(format!(".npz entry `{name}`: {}", describe_entry_read_error(&e))))?;
        out.push((key.clone(), parse_npy(&bytes, path, Some(&key))?));
    }
    Ok(out)
}
