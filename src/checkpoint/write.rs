//! Writing state dicts: `.pth` (PyTorch zip format), `.safetensors`, `.npz`.
//!
//! - `.pth`: what `torch.save({"state_dict": OrderedDict(...), "meta": {}}, f)` writes (mmengine's
//!   checkpoint layout), loadable with `torch.load(f, weights_only=True)`: a zip with
//!   `archive/data.pkl` (pickle protocol 2 using only `collections.OrderedDict`,
//!   `torch._utils._rebuild_tensor_v2` and `torch.<T>Storage`), `archive/data/<i>` (raw
//!   little-endian storage bytes, 64-byte aligned as torch aligns them), `archive/byteorder`,
//!   `archive/version`.
//! - `.safetensors`: 8-byte header length, JSON header (tensors in the given order, contiguous
//!   offsets, `__metadata__ = {"format": "pt"}`), padded with spaces to a multiple of 8, data.
//! - `.npz`: `np.savez`-compatible: an uncompressed zip of `<key>.npy` (format 1.0, header
//!   padded to 64 bytes as numpy writes it).
//!
//! Every writer is atomic: the file is written to a temporary name in the destination directory,
//! synced, then moved into place; an existing file is never replaced unless
//! [`WriteOptions::force`] is set.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::half::{f32_to_bf16, f32_to_f16};
use super::CheckpointError;
use crate::array::AnyArray;

/// The dtype float tensors are stored in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreDtype {
    /// As they are (float32 or float64).
    #[default]
    Native,
    /// IEEE float16 (round to nearest even from float32; float64 goes through float32, as
    /// PyTorch's `.half()`). Not for `.npz`.
    F16,
    /// bfloat16 (round to nearest even from float32). Not for `.npz`.
    BF16,
}

/// How to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Replace an existing file.
    pub force: bool,
    /// The dtype float tensors are stored in; integer tensors are always stored as they are.
    pub float_dtype: StoreDtype,
}

/// Element type on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    U8,
    Bool,
}

impl Disk {
    fn size(self) -> usize {
        match self {
            Disk::F64 | Disk::I64 => 8,
            Disk::F32 | Disk::I32 => 4,
            Disk::F16 | Disk::BF16 => 2,
            Disk::U8 | Disk::Bool => 1,
        }
    }
    fn torch_storage(self) -> &'static str {
        match self {
            Disk::F32 => "FloatStorage",
            Disk::F64 => "DoubleStorage",
            Disk::F16 => "HalfStorage",
            Disk::BF16 => "BFloat16Storage",
            Disk::I64 => "LongStorage",
            Disk::I32 => "IntStorage",
            Disk::U8 => "ByteStorage",
            Disk::Bool => "BoolStorage",
        }
    }
    fn safetensors(self) -> &'static str {
        match self {
            Disk::F32 => "F32",
            Disk::F64 => "F64",
            Disk::F16 => "F16",
            Disk::BF16 => "BF16",
            Disk::I64 => "I64",
            Disk::I32 => "I32",
            Disk::U8 => "U8",
            Disk::Bool => "BOOL",
        }
    }
    fn numpy(self) -> Option<&'static str> {
        Some(match self {
            Disk::F32 => "<f4",
            Disk::F64 => "<f8",
            Disk::I64 => "<i8",
            Disk::I32 => "<i4",
            Disk::U8 => "|u1",
            Disk::Bool => "|b1",
            Disk::F16 | Disk::BF16 => return None,
        })
    }
}

fn disk_of(a: &AnyArray, store: StoreDtype) -> Disk {
    match (a, store) {
        (AnyArray::F32(_) | AnyArray::F64(_), StoreDtype::F16) => Disk::F16,
        (AnyArray::F32(_) | AnyArray::F64(_), StoreDtype::BF16) => Disk::BF16,
        (AnyArray::F32(_), StoreDtype::Native) => Disk::F32,
        (AnyArray::F64(_), StoreDtype::Native) => Disk::F64,
        (AnyArray::I64(_), _) => Disk::I64,
        (AnyArray::I32(_), _) => Disk::I32,
        (AnyArray::U8(_), _) => Disk::U8,
        (AnyArray::Bool(_), _) => Disk::Bool,
    }
}

fn numel(a: &AnyArray) -> usize {
    a.shape().iter().product()
}

/// Streams the elements of `a` (logical row-major order) as little-endian `disk` values.
fn write_elements(w: &mut impl Write, a: &AnyArray, disk: Disk) -> io::Result<()> {
    const CHUNK: usize = 1 << 16;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 8);
    macro_rules! stream {
        ($arr:expr, $conv:expr) => {{
            for v in $arr.iter() {
                let bytes = $conv(*v);
                buf.extend_from_slice(&bytes);
                if buf.len() >= CHUNK * 8 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
        }};
    }
    match (a, disk) {
        (AnyArray::F32(x), Disk::F32) => stream!(x, |v: f32| v.to_le_bytes()),
        (AnyArray::F32(x), Disk::F16) => stream!(x, |v: f32| f32_to_f16(v).to_le_bytes()),
        (AnyArray::F32(x), Disk::BF16) => stream!(x, |v: f32| f32_to_bf16(v).to_le_bytes()),
        (AnyArray::F64(x), Disk::F64) => stream!(x, |v: f64| v.to_le_bytes()),
        (AnyArray::F64(x), Disk::F16) => stream!(x, |v: f64| f32_to_f16(v as f32).to_le_bytes()),
        (AnyArray::F64(x), Disk::BF16) => stream!(x, |v: f64| f32_to_bf16(v as f32).to_le_bytes()),
        (AnyArray::I64(x), _) => stream!(x, |v: i64| v.to_le_bytes()),
        (AnyArray::I32(x), _) => stream!(x, |v: i32| v.to_le_bytes()),
        (AnyArray::U8(x), _) => stream!(x, |v: u8| [v]),
        (AnyArray::Bool(x), _) => stream!(x, |v: bool| [v as u8]),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "internal: dtype mismatch")),
    }
    w.write_all(&buf)
}

fn check_keys(path: &Path, tensors: &[(String, AnyArray)]) -> Result<(), CheckpointError> {
    let mut seen = std::collections::HashSet::new();
    for (k, _) in tensors {
        if !seen.insert(k.as_str()) {
            return Err(CheckpointError::Write { path: path.to_path_buf(), msg: format!("key `{k}` appears twice") });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

/// Writes `path` through a temporary file in the same directory, then moves it into place.
/// Without `force`, an existing `path` is an error (checked before writing and again, without a
/// race, when moving into place).
fn atomic_write(
    path: &Path,
    force: bool,
    body: impl FnOnce(File) -> Result<File, CheckpointError>,
) -> Result<(), CheckpointError> {
    if !force && path.exists() {
        return Err(CheckpointError::Exists { path: path.to_path_buf() });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp, file) = crate::fsutil::create_staging(path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => {
            CheckpointError::Write { path: path.to_path_buf(), msg: "not a file path".into() }
        }
        _ => CheckpointError::Io { path: path.to_path_buf(), source: e },
    })?;
    let result = (|| {
        let file = body(file)?;
        file.sync_all().map_err(CheckpointError::io(&tmp))?;
        drop(file);
        if force {
            fs::rename(&tmp, path).map_err(CheckpointError::io(path))?;
        } else {
            // hard_link fails if `path` exists: a no-clobber move.
            match fs::hard_link(&tmp, path) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CheckpointError::Exists { path: path.to_path_buf() })
                }
                Err(_) => {
                    // File systems without hard links: check, then rename.
                    if path.exists() {
                        return Err(CheckpointError::Exists { path: path.to_path_buf() });
                    }
                    fs::rename(&tmp, path).map_err(CheckpointError::io(path))?;
                }
            }
        }
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn zip_err(path: &Path) -> impl Fn(zip::result::ZipError) -> CheckpointError + '_ {
    move |e| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() }
}

fn stored(len: u64) -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Stored).large_file(len >= u32::MAX as u64)
}

// ---------------------------------------------------------------------------------------------
// .pth

/// Pickle protocol-2 writer (the subset `torch.save` uses).
struct Pickler {
    buf: Vec<u8>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.buf.push(b'c');
        self.buf.extend_from_slice(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'\n');
    }
    fn str(&mut self, s: &str) {
        self.buf.push(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.buf.push(b'J');
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.buf.extend_from_slice(&[0x8a, 8]);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn op(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn int_tuple(&mut self, v: &[i64]) {
        match v.len() {
            0 => self.op(b')'),
            1..=3 => {
                for &x in v {
                    self.int(x);
                }
                self.op([0x85, 0x86, 0x87][v.len() - 1]);
            }
            _ => {
                self.op(b'(');
                for &x in v {
                    self.int(x);
                }
                self.op(b't');
            }
        }
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` for a
    /// contiguous tensor over storage `key`.
    fn tensor(&mut self, key: &str, disk: Disk, shape: &[usize]) {
        let size: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut stride = vec![0i64; size.len()];
        let mut acc = 1i64;
        for i in (0..size.len()).rev() {
            stride[i] = acc;
            acc = acc.saturating_mul(size[i].max(1));
        }
        let numel: i64 = size.iter().product();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.str("storage");
        self.global("torch", disk.torch_storage());
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.op(b't');
        self.op(b'Q'); // BINPERSID
        self.int(0);
        self.int_tuple(&size);
        self.int_tuple(&stride);
        self.op(0x89); // NEWFALSE: requires_grad
        self.empty_ordered_dict(); // backward hooks
        self.op(b't');
        self.op(b'R');
    }
}

/// Writes `{"state_dict": OrderedDict(tensors), "meta": {}}` in PyTorch's zip format.
pub fn write_pth(path: &Path, tensors: &[(String, AnyArray)], opts: WriteOptions) -> Result<(), CheckpointError> {
    check_keys(path, tensors)?;
    let mut p = Pickler { buf: vec![0x80, 2] };
    p.op(b'}');
    p.op(b'(');
    p.str("state_dict");
    p.empty_ordered_dict();
    p.op(b'(');
    for (i, (k, a)) in tensors.iter().enumerate() {
        p.str(k);
        p.tensor(&i.to_string(), disk_of(a, opts.float_dtype), a.shape());
    }
    p.op(b'u');
    p.str("meta");
    p.op(b'}');
    p.op(b'u');
    p.op(b'.');
    atomic_write(path, opts.force, |file| {
        let mut z = ZipWriter::new(BufWriter::new(file));
        let zerr = zip_err(path);
        let ioerr = |e: io::Error| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() };
        let small = |name: &str, z: &mut ZipWriter<BufWriter<File>>, data: &[u8]| -> Result<(), CheckpointError> {
            z.start_file(format!("archive/{name}"), stored(data.len() as u64)).map_err(zip_err(path))?;
            z.write_all(data).map_err(ioerr)
        };
        small("data.pkl", &mut z, &p.buf)?;
        small(".format_version", &mut z, b"1")?;
        small(".storage_alignment", &mut z, b"64")?;
        small("byteorder", &mut z, b"little")?;
        for (i, (_, a)) in tensors.iter().enumerate() {
            let disk = disk_of(a, opts.float_dtype);
            let len = (numel(a) * disk.size()) as u64;
            z.start_file(format!("archive/data/{i}"), stored(len).with_alignment(64)).map_err(&zerr)?;
            write_elements(&mut z, a, disk).map_err(ioerr)?;
        }
        small("version", &mut z, b"3\n")?;
        let w = z.finish().map_err(&zerr)?;
        w.into_inner().map_err(|e| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() })
    })
}

// ---------------------------------------------------------------------------------------------
// .safetensors

/// Writes a `.safetensors` file (tensors in the given order).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, AnyArray)],
    opts: WriteOptions,
) -> Result<(), CheckpointError> {
    check_keys(path, tensors)?;
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0u64;
    for (k, a) in tensors {
        if k == "__metadata__" {
            return Err(CheckpointError::Write {
                path: path.to_path_buf(),
                msg: "a tensor cannot be named `__metadata__` in .safetensors".into(),
            });
        }
        let disk = disk_of(a, opts.float_dtype);
        let len = (numel(a) * disk.size()) as u64;
        header.insert(
            k.clone(),
            serde_json::json!({ "dtype": disk.safetensors(), "shape": a.shape(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() })?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    atomic_write(path, opts.force, |file| {
        let ioerr = |e: io::Error| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() };
        let mut w = BufWriter::new(file);
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(ioerr)?;
        w.write_all(&h).map_err(ioerr)?;
        for (_, a) in tensors {
            write_elements(&mut w, a, disk_of(a, opts.float_dtype)).map_err(ioerr)?;
        }
        w.into_inner().map_err(|e| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() })
    })
}

// ---------------------------------------------------------------------------------------------
// .npz

/// The `.npy` (format 1.0, or 2.0 for headers over 64 KiB) header of an array, as numpy writes
/// it: the dict literal padded with spaces and a newline to a multiple of 64 bytes.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    for (major, len_bytes) in [(1u8, 2usize), (2u8, 4usize)] {
        let pre = 6 + 2 + len_bytes;
        let total = (pre + dict.len() + 1).div_ceil(64) * 64;
        let hlen = total - pre;
        if major == 1 && hlen > u16::MAX as usize {
            continue;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(b"\x93NUMPY");
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(hlen as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(hlen as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    Vec::new()
}

/// Writes an `np.savez`-compatible `.npz` (uncompressed). Half-precision storage is refused:
/// numpy has no bfloat16, and [`crate::array::read_npz`] reads no float16.
pub fn write_npz(path: &Path, tensors: &[(String, AnyArray)], opts: WriteOptions) -> Result<(), CheckpointError> {
    check_keys(path, tensors)?;
    if opts.float_dtype != StoreDtype::Native && tensors.iter().any(|(_, a)| a.is_float()) {
        return Err(CheckpointError::Write {
            path: path.to_path_buf(),
            msg: format!("{:?} storage is not supported for .npz (use .safetensors or .pth)", opts.float_dtype),
        });
    }
    atomic_write(path, opts.force, |file| {
        let mut z = ZipWriter::new(BufWriter::new(file));
        let ioerr = |e: io::Error| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() };
        for (k, a) in tensors {
            let disk = disk_of(a, StoreDtype::Native);
            let descr = disk.numpy().ok_or_else(|| CheckpointError::Write {
                path: path.to_path_buf(),
                msg: format!("`{k}`: no numpy dtype"),
            })?;
            let header = npy_header(descr, a.shape());
            let len = header.len() as u64 + (numel(a) * disk.size()) as u64;
            z.start_file(format!("{k}.npy"), stored(len)).map_err(zip_err(path))?;
            z.write_all(&header).map_err(ioerr)?;
            write_elements(&mut z, a, disk).map_err(ioerr)?;
        }
        let w = z.finish().map_err(zip_err(path))?;
        w.into_inner().map_err(|e| CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() })
    })
}

/// Writes by extension: `.safetensors`, `.npz`, else (`.pth`, `.pt`, ...) PyTorch's format.
pub fn write_any(path: &Path, tensors: &[(String, AnyArray)], opts: WriteOptions) -> Result<(), CheckpointError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("safetensors") => write_safetensors(path, tensors, opts),
        Some("npz") => write_npz(path, tensors, opts),
        _ => write_pth(path, tensors, opts),
    }
}
