//! Arrays as they come from files: [`AnyArray`] (an n-dimensional array in its stored dtype) and
//! the `.npy` / `.npz` readers. The first step of the data flow: file → [`AnyArray`] →
//! [`crate::weights`] / fixture cases.

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

/// Refuses an archive in which two central-directory records have the same name (the zip
/// crate keeps only one of them, silently): the records are read again from the central
/// directory and compared. Returns the archive, opened again.
pub(crate) fn refuse_duplicate_entries<R: Read + io::Seek>(
    zip: zip::ZipArchive<R>,
) -> Result<zip::ZipArchive<R>, String> {
    let start = zip.central_directory_start();
    let n = zip.len();
    let mut r = zip.into_inner();
    let io_msg = |e: io::Error| format!("cannot read the zip central directory: {e}");
    r.seek(io::SeekFrom::Start(start)).map_err(io_msg)?;
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut rd = io::BufReader::new(&mut r);
    // At most one record per entry the crate kept plus one more: any extra one is a duplicate.
    for _ in 0..=n {
        let mut h = [0u8; 46];
        match rd.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_msg(e)),
        }
        if h[..4] != [0x50, 0x4b, 0x01, 0x02] {
            break;
        }
        let name_len = u16::from_le_bytes([h[28], h[29]]) as usize;
        let skip = u16::from_le_bytes([h[30], h[31]]) as i64 + u16::from_le_bytes([h[32], h[33]]) as i64;
        let mut name = vec![0u8; name_len];
        rd.read_exact(&mut name).map_err(io_msg)?;
        rd.seek_relative(skip).map_err(io_msg)?;
        if !seen.insert(name.clone()) {
            return Err(format!(
                "entry `{}` appears more than once in the archive; refusing to pick one of them",
                String::from_utf8_lossy(&name)
            ));
        }
    }
    drop(rd);
    r.seek(io::SeekFrom::Start(0)).map_err(io_msg)?;
    zip::ZipArchive::new(r).map_err(|e| describe_zip_error(&e))
}

/// Brackets a `.npy` header may nest (see [`parse_npy`]).
const MAX_NPY_HEADER_DEPTH: usize = 4;

/// Parses one `.npy` stream (C or Fortran order, either endianness).
pub fn parse_npy(bytes: &[u8], path: &Path, entry: Option<&str>) -> Result<AnyArray, ArrayError> {
    let bad = |msg: String| ArrayError::BadNpy { path: path.to_path_buf(), entry: entry.map(str::to_string), msg };
    let data_start = check_npy_header(bytes).map_err(bad)?;
    let npy = NpyFile::new(bytes).map_err(|e| bad(e.to_string()))?;
    if let Some(start) = data_start {
        check_npy_data_size(&npy, bytes.len() as u64 - start).map_err(bad)?;
    }
    let unsupported = |dtype: String| ArrayError::UnsupportedDtype {
        path: path.to_path_buf(),
        key: entry.unwrap_or("").to_string(),
        dtype,
    };
    let ts = match npy.dtype() {
        DType::Plain(ts) => ts,
        other => return Err(unsupported(other.descr())),
    };
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = matches!(npy.order(), Order::Fortran);
    match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => npy_array(npy, &shape, fortran).map(AnyArray::F32),
        (TypeChar::Float, 8) => npy_array(npy, &shape, fortran).map(AnyArray::F64),
        (TypeChar::Int, 8) => npy_array(npy, &shape, fortran).map(AnyArray::I64),
        (TypeChar::Int, 4) => npy_array(npy, &shape, fortran).map(AnyArray::I32),
        (TypeChar::Uint, 1) => npy_array(npy, &shape, fortran).map(AnyArray::U8),
        (TypeChar::Bool, 1) => npy_array(npy, &shape, fortran).map(AnyArray::Bool),
        _ => return Err(unsupported(ts.to_string())),
    }
    .map_err(bad)
}

/// Checks a `.npy` header before npyz parses it; returns where its data starts (`None` when
/// `bytes` do not start with the magic: npyz then says what is wrong).
///
/// npyz allocates the declared header length before reading it: it is checked against the bytes
/// there are first (a 4 GiB claim in a 17-byte file was an out-of-memory abort, found by fuzzing;
/// see docs/security.md). npyz's header parser (py_literal, a PEG parser) backtracks
/// exponentially in nested dicts: a 218-byte header opening 90 `{` did not return (a timeout
/// found by fuzzing; 12 took over a minute). A header is one dict holding a dtype string, a bool
/// and a shape tuple (brackets 2 deep); more than [`MAX_NPY_HEADER_DEPTH`] is refused before it
/// is parsed.
fn check_npy_header(bytes: &[u8]) -> Result<Option<u64>, String> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Ok(None);
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as u64, 10u64),
        _ if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as u64, 12),
        _ => (0, 10),
    };
    if start + hlen > bytes.len() as u64 {
        return Err(format!(
            "header length {hlen} runs past the end of the data ({} bytes): truncated or not a .npy array",
            bytes.len()
        ));
    }
    let mut depth = 0usize;
    for &b in &bytes[start as usize..(start + hlen) as usize] {
        match b {
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NPY_HEADER_DEPTH {
            return Err(format!(
                "the header nests brackets more than {MAX_NPY_HEADER_DEPTH} deep (a .npy header is one dict \
                 with a shape tuple): not a .npy array this reader parses"
            ));
        }
    }
    Ok(Some(start + hlen))
}

/// The data the header declares, checked against the `have` bytes there are before npyz reads
/// (and allocates) them: a truncated file is named with both sizes, not "failed to fill whole
/// buffer". Only plain dtypes are checked (the others are refused afterwards).
fn check_npy_data_size(npy: &NpyFile<&[u8]>, have: u64) -> Result<(), String> {
    let DType::Plain(ts) = npy.dtype() else { return Ok(()) };
    let numel = npy.shape().iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    match numel.and_then(|n| n.checked_mul(ts.size_field())) {
        None => Err(format!("shape {:?} overflows", npy.shape())),
        Some(need) if need > have => Err(format!(
            "truncated: the header declares shape {:?} of {} ({need} bytes of data), but only {have} bytes follow it",
            npy.shape(),
            ts
        )),
        Some(_) => Ok(()),
    }
}

/// The elements of `npy` as an array of `shape` in standard (C) layout.
fn npy_array<T: npyz::Deserialize + Clone>(
    npy: NpyFile<&[u8]>,
    shape: &[usize],
    fortran: bool,
) -> Result<ArrayD<T>, String> {
    let v = npy.into_vec::<T>().map_err(|e| e.to_string())?;
    let arr = if fortran {
        use ndarray::ShapeBuilder;
        ArrayD::from_shape_vec(IxDyn(shape).f(), v)
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), v)
    };
    let arr = arr.map_err(|e| e.to_string())?;
    Ok(if fortran { arr.as_standard_layout().into_owned() } else { arr })
}

/// Reads a `.npy` file: a regular file only (a FIFO or device is refused by name before it is
/// opened, see [`crate::files::read_regular`]), of at most the memory limit.
pub fn read_npy(path: &Path) -> Result<AnyArray, ArrayError> {
    let bytes = crate::files::read_regular(path, crate::limits::memory_limit()).map_err(io_err(path))?;
    parse_npy(&bytes, path, None)
}

/// Reads every array of a `.npz` archive (`np.savez` or `np.savez_compressed`), keyed by the
/// entry name without its `.npy` suffix, in archive order. A regular file only.
pub fn read_npz(path: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    let file = crate::files::open_regular(path).map_err(io_err(path))?;
    read_npz_from(io::BufReader::new(file), path)
}

/// Deflate's largest expansion (about 1032:1) with a little slack: a compressed entry claiming
/// more is refused before anything is allocated.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads one zip entry completely, bounded: its declared size must be one the archive can hold
/// (stored: exactly its compressed size inside the archive; deflated: at most
/// [`MAX_DEFLATE_RATIO`] times its compressed size) and must fit the memory limit; exactly that
/// many bytes are allocated, once, and the entry must hold exactly that many (the CRC-32 is
/// checked by the zip reader at the entry's end). `archive_len` is the archive's length.
pub(crate) fn read_entry_bounded<R: Read>(
    mut f: zip::read::ZipFile<'_, R>,
    archive_len: u64,
) -> Result<Vec<u8>, String> {
    let size = f.size();
    let plausible = match f.compression() {
        zip::CompressionMethod::Stored => {
            f.compressed_size() == size && f.data_start().saturating_add(size) <= archive_len
        }
        _ => {
            f.compressed_size() <= archive_len
                && size <= f.compressed_size().saturating_mul(MAX_DEFLATE_RATIO).saturating_add(4096)
        }
    };
    if !plausible {
        return Err(format!("claims {size} bytes, more than the archive can hold"));
    }
    // The bytes, and the tensors decoded from them: twice the entry.
    crate::limits::check_memory(&format!("an archive entry of {size} bytes"), 2.0 * size as f64)?;
    let cap = usize::try_from(size).map_err(|_| "too large for this machine".to_string())?;
    let mut v = Vec::new();
    v.try_reserve_exact(cap).map_err(|_| format!("cannot allocate {size} bytes"))?;
    // Reading one byte past the declared size lets the zip reader reach the entry's end, where
    // it checks the CRC-32 (a `take(size)` would stop just short of the check); a byte more
    // than declared is refused below.
    let mut buf = [0u8; 1 << 16];
    let mut limited = (&mut f).take(size.saturating_add(1));
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(describe_entry_read_error(&e)),
        };
        if v.len() + n > cap {
            return Err(format!("holds more than the {size} bytes its zip header declares"));
        }
        v.extend_from_slice(&buf[..n]);
    }
    if v.len() as u64 != size {
        return Err(format!("holds {} bytes, its zip header declares {size}", v.len()));
    }
    Ok(v)
}

/// [`read_npz`] of bytes held in memory; `name` is used in error messages.
pub fn parse_npz(bytes: &[u8], name: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    read_npz_from(io::Cursor::new(bytes), name)
}

/// [`read_npz`] from any seekable reader; `path` is used in error messages. Every entry's CRC-32
/// is checked (the zip crate verifies it when an entry is read to its end).
pub fn read_npz_from<R: Read + io::Seek>(mut reader: R, path: &Path) -> Result<Vec<(String, AnyArray)>, ArrayError> {
    let bad = |msg: String| ArrayError::BadNpz { path: path.to_path_buf(), msg };
    let archive_len = reader.seek(io::SeekFrom::End(0)).map_err(io_err(path))?;
    reader.seek(io::SeekFrom::Start(0)).map_err(io_err(path))?;
    let zip = zip::ZipArchive::new(reader).map_err(|e| bad(format!(".npz: {}", describe_zip_error(&e))))?;
    let mut zip = refuse_duplicate_entries(zip).map_err(|m| bad(format!(".npz: {m}")))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let f = zip.by_index(i).map_err(|e| bad(format!(".npz entry {i}: {}", describe_zip_error(&e))))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let bytes = read_entry_bounded(f, archive_len).map_err(|m| bad(format!(".npz entry `{name}`: {m}")))?;
        out.push((key.clone(), parse_npy(&bytes, path, Some(&key))?));
    }
    Ok(out)
}
