//! Writing state dicts: `.pth` (PyTorch zip format), `.safetensors`, `.npz`.
//!
//! - `.pth`: what `torch.save({"state_dict": OrderedDict(...), "meta": {}}, f)` writes (mmengine's
//!   checkpoint layout), loadable with `torch.load(f, weights_only=True)`: a zip with
//!   `archive/data.pkl` (pickle protocol 2 using only `collections.OrderedDict`,
//!   `torch._utils._rebuild_tensor_v2` and `torch.<T>Storage`), `archive/data/<i>` (raw
//!   little-endian storage bytes, 64-byte aligned as torch aligns them), `archive/byteorder`,
//!   `archive/version`.
//! - `.safetensors`: see [`super::safetensors`] (the `safetensors` crate).
//! - `.npz`: `np.savez`-compatible: an uncompressed zip of `<key>.npy` entries written by the
//!   `npyz` crate (little-endian dtypes, C order).
//!
//! Every writer is atomic ([`crate::files::write_atomic_with`]): the file is written to a
//! temporary name in the destination directory, synced, then moved into place; an existing file
//! is never replaced unless [`WriteOptions::force`] is set.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use half::{bf16, f16};

use super::safetensors::write_safetensors;
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
pub(super) enum Disk {
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
    pub(super) fn size(self) -> usize {
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
    /// numpy / torch name of the dtype.
    pub(super) fn name(self) -> &'static str {
        match self {
            Disk::F32 => "float32",
            Disk::F64 => "float64",
            Disk::F16 => "float16",
            Disk::BF16 => "bfloat16",
            Disk::I64 => "int64",
            Disk::I32 => "int32",
            Disk::U8 => "uint8",
            Disk::Bool => "bool",
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

pub(super) fn disk_of(a: &AnyArray, store: StoreDtype) -> Disk {
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
        (AnyArray::F32(x), Disk::F16) => stream!(x, |v: f32| f16::from_f32(v).to_le_bytes()),
        (AnyArray::F32(x), Disk::BF16) => stream!(x, |v: f32| bf16::from_f32(v).to_le_bytes()),
        (AnyArray::F64(x), Disk::F64) => stream!(x, |v: f64| v.to_le_bytes()),
        (AnyArray::F64(x), Disk::F16) => stream!(x, |v: f64| f16::from_f32(v as f32).to_le_bytes()),
        (AnyArray::F64(x), Disk::BF16) => stream!(x, |v: f64| bf16::from_f32(v as f32).to_le_bytes()),
        (AnyArray::I64(x), _) => stream!(x, |v: i64| v.to_le_bytes()),
        (AnyArray::I32(x), _) => stream!(x, |v: i32| v.to_le_bytes()),
        (AnyArray::U8(x), _) => stream!(x, |v: u8| [v]),
        (AnyArray::Bool(x), _) => stream!(x, |v: bool| [v as u8]),
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "internal: dtype mismatch")),
    }
    w.write_all(&buf)
}

/// The elements of `a` as little-endian `disk` bytes, in memory.
pub(super) fn encode_elements(a: &AnyArray, disk: Disk) -> Vec<u8> {
    let mut v = Vec::with_capacity(numel(a) * disk.size());
    // Writing to a Vec cannot fail, and `disk` comes from `disk_of(a, ..)`.
    let _ = write_elements(&mut v, a, disk);
    v
}

pub(super) fn check_keys(path: &Path, tensors: &[(String, AnyArray)]) -> Result<(), CheckpointError> {
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

/// Writes `path` atomically through [`crate::files::write_atomic_with`] (no overwrite unless
/// `force`; an existing `path` is [`CheckpointError::Exists`], checked before writing and again,
/// without a race, at the rename).
fn atomic_write(
    path: &Path,
    force: bool,
    body: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    if !force && path.exists() {
        return Err(CheckpointError::Exists { path: path.to_path_buf() });
    }
    crate::files::write_atomic_with(path, force, body).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => CheckpointError::Exists { path: path.to_path_buf() },
        _ => CheckpointError::Write { path: path.to_path_buf(), msg: e.to_string() },
    })
}

/// [`atomic_write`] of bytes held in memory.
pub(super) fn atomic_write_bytes(path: &Path, force: bool, bytes: &[u8]) -> Result<(), CheckpointError> {
    atomic_write(path, force, |f| f.write_all(bytes))
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
        let small = |name: &str, z: &mut ZipWriter<BufWriter<&mut File>>, data: &[u8]| -> io::Result<()> {
            z.start_file(format!("archive/{name}"), stored(data.len() as u64))?;
            z.write_all(data)
        };
        small("data.pkl", &mut z, &p.buf)?;
        small(".format_version", &mut z, b"1")?;
        small(".storage_alignment", &mut z, b"64")?;
        small("byteorder", &mut z, b"little")?;
        for (i, (_, a)) in tensors.iter().enumerate() {
            let disk = disk_of(a, opts.float_dtype);
            let len = (numel(a) * disk.size()) as u64;
            z.start_file(format!("archive/data/{i}"), stored(len).with_alignment(64))?;
            write_elements(&mut z, a, disk)?;
        }
        small("version", &mut z, b"3\n")?;
        z.finish()?.flush()
    })
}

// ---------------------------------------------------------------------------------------------
// .npz

/// Writes one `.npy` entry (`descr`, C order, `a.shape()`) with `npyz`.
fn write_npy_entry(w: &mut impl Write, a: &AnyArray, descr: &str) -> io::Result<()> {
    use npyz::WriterBuilder;
    let ts: npyz::TypeStr = descr.parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($t:ty, $x:expr) => {{
            let mut npy =
                npyz::WriteOptions::<$t>::new().dtype(npyz::DType::Plain(ts)).shape(&shape).writer(w).begin_nd()?;
            npy.extend($x.iter().copied())?;
            npy.finish()
        }};
    }
    match a {
        AnyArray::F32(x) => put!(f32, x),
        AnyArray::F64(x) => put!(f64, x),
        AnyArray::I64(x) => put!(i64, x),
        AnyArray::I32(x) => put!(i32, x),
        AnyArray::U8(x) => put!(u8, x),
        AnyArray::Bool(x) => put!(bool, x),
    }
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
    let mut entries = Vec::with_capacity(tensors.len());
    for (k, a) in tensors {
        if k.is_empty() || k.contains(['/', '\\', '\0']) || k == ".." || k == "." {
            return Err(CheckpointError::Write {
                path: path.to_path_buf(),
                msg: format!(
                    "key `{k}` cannot be an .npz entry name (empty, `.`/`..`, or a path separator or NUL, which would name a path outside the archive when extracted)"
                ),
            });
        }
        if k.len() + 4 > u16::MAX as usize {
            return Err(CheckpointError::Write {
                path: path.to_path_buf(),
                msg: format!(
                    "a key of {} bytes is too long for an .npz entry name (zip allows {} bytes); use .safetensors",
                    k.len(),
                    u16::MAX as usize - 4
                ),
            });
        }
        let descr = disk_of(a, StoreDtype::Native).numpy().ok_or_else(|| CheckpointError::Write {
            path: path.to_path_buf(),
            msg: format!("`{k}`: no numpy dtype"),
        })?;
        entries.push((k, a, descr));
    }
    atomic_write(path, opts.force, |file| {
        let mut z = ZipWriter::new(BufWriter::new(file));
        for (k, a, descr) in entries {
            let len = (1 << 16) + (numel(a) * disk_of(a, StoreDtype::Native).size()) as u64;
            z.start_file(format!("{k}.npy"), stored(len))?;
            write_npy_entry(&mut z, a, descr)?;
        }
        z.finish()?.flush()
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
