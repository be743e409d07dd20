//! PyTorch's zip checkpoint format (`torch.save` since 1.6): the archive (`<top>/data.pkl`,
//! `<top>/data/<key>` storages, `byteorder`), the storage sizes checked against the archive
//! before anything is allocated, and the unpickled node graph built into a [`Value`] tree.
//! Every entry read is checked against its zip CRC-32.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::globals::{Global, SDtype};
use super::pickle::{Id, Machine, Node};
use super::tensor_view::Storages;
use super::{CheckpointError, ReadOptions, Value};
use crate::array::{describe_zip_error, read_entry_bounded, refuse_duplicate_entries};

/// The archive: where the pickle and storages live.
pub(super) struct Archive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    prefix: String,
    /// Total length of the archive in bytes.
    len: u64,
    path: PathBuf,
}

const MAX_PICKLE_BYTES: u64 = 1 << 32;

impl<R: Read + Seek> Archive<R> {
    fn open(mut reader: R, path: &Path) -> Result<Self, CheckpointError> {
        let fmt = |msg: String| CheckpointError::Format { path: path.to_path_buf(), msg };
        let len = reader.seek(SeekFrom::End(0)).map_err(CheckpointError::io(path))?;
        reader.seek(SeekFrom::Start(0)).map_err(CheckpointError::io(path))?;
        let mut magic = [0u8; 512];
        let n = read_up_to(&mut reader, &mut magic).map_err(CheckpointError::io(path))?;
        let magic = &magic[..n];
        reader.seek(SeekFrom::Start(0)).map_err(CheckpointError::io(path))?;
        if magic.is_empty() {
            return Err(fmt("the file is empty (0 bytes): not a checkpoint".into()));
        }
        if !magic.starts_with(b"PK") {
            if magic.first() == Some(&0x80) || (magic.len() >= 262 && &magic[257..262] == b"ustar") {
                return Err(CheckpointError::LegacyFormat { path: path.to_path_buf() });
            }
            let head: Vec<String> = magic.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(fmt(format!(
                "not a checkpoint of a known type: a .pth/.pt/.bin is a zip archive (starts with `PK`), a .safetensors \
                 file starts with its header length and `{{`; this file starts with bytes {}",
                head.join(" ")
            )));
        }
        let zip = zip::ZipArchive::new(reader).map_err(|e| fmt(describe_zip_error(&e)))?;
        let zip = refuse_duplicate_entries(zip).map_err(fmt)?;
        let prefix = zip
            .file_names()
            .filter_map(|n| n.strip_suffix("/data.pkl"))
            .find(|p| !p.is_empty() && !p.contains('/'))
            .map(str::to_string)
            .ok_or_else(
                || fmt("zip archive without a `<folder>/data.pkl` entry: not a torch.save checkpoint".into()),
            )?;
        let mut ar = Archive { zip, prefix, len, path: path.to_path_buf() };
        if let Some(b) = ar.small_entry("byteorder")? {
            if b != b"little" {
                return Err(fmt(format!(
                    "byte order `{}` is not supported (only little-endian)",
                    String::from_utf8_lossy(&b)
                )));
            }
        }
        Ok(ar)
    }

    fn small_entry(&mut self, name: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let full = format!("{}/{name}", self.prefix);
        match self.zip.by_name(&full) {
            Ok(f) => {
                let mut v = Vec::new();
                f.take(64).read_to_end(&mut v).map_err(|e| CheckpointError::Format {
                    path: self.path.clone(),
                    msg: format!("entry `{full}`: {e}"),
                })?;
                Ok(Some(v))
            }
            Err(_) => Ok(None),
        }
    }

    /// Reads entry `name` (relative to the top folder) of exactly `expect` bytes (if given),
    /// refusing sizes the archive cannot hold before allocating.
    pub(super) fn entry(&mut self, name: &str, expect: Option<u64>, path: &Path) -> Result<Vec<u8>, CheckpointError> {
        let full = format!("{}/{name}", self.prefix);
        let len = self.len;
        let f = self
            .zip
            .by_name(&full)
            .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), msg: format!("entry `{full}`: {e}") })?;
        let size = f.size();
        let bad =
            |msg: String| CheckpointError::Format { path: path.to_path_buf(), msg: format!("entry `{full}`: {msg}") };
        if let Some(e) = expect {
            if size != e {
                return Err(bad(format!("holds {size} bytes, the pickle declares {e}")));
            }
        }
        read_entry_bounded(f, len).map_err(bad)
    }

    fn entry_size(&mut self, name: &str) -> Option<u64> {
        let full = format!("{}/{name}", self.prefix);
        self.zip.by_name(&full).ok().map(|f| f.size())
    }
}

pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Converts the node tree to [`Value`]s, reading tensors.
struct Builder<'a, 'b, R: Read + Seek> {
    nodes: &'a [Node],
    storages: Storages<'b, R>,
    path: &'a Path,
}

const MAX_DEPTH: usize = 200;

impl<R: Read + Seek> Builder<'_, '_, R> {
    fn build(&mut self, id: Id, key: &str, depth: usize) -> Result<Value, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(CheckpointError::Format {
                path: self.path.to_path_buf(),
                msg: format!("`{key}`: objects nested deeper than {MAX_DEPTH} levels (or a cycle)"),
            });
        }
        let sub = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
        Ok(match &self.nodes[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Float(f) => Value::Float(*f),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::List(items) | Node::Tuple(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, &it) in items.iter().enumerate() {
                    out.push(self.build(it, &sub(&i.to_string()), depth + 1)?);
                }
                if matches!(self.nodes[id], Node::List(_)) {
                    Value::List(out)
                } else {
                    Value::Tuple(out)
                }
            }
            Node::Dict(items) => {
                let mut out = Vec::with_capacity(items.len());
                for &(k, v) in items {
                    let kv = self.build(k, key, depth + 1)?;
                    let name = match &kv {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        other => format!("<{}>", other.kind()),
                    };
                    let vv = self.build(v, &sub(&name), depth + 1)?;
                    out.push((kv, vv));
                }
                Value::Dict(out)
            }
            Node::Tensor(spec) => Value::Tensor(self.storages.tensor(spec, key)?),
            Node::Opaque(n) => Value::Opaque(n.clone()),
            Node::Forbidden(n) | Node::Global(Global::Opaque(n)) => Value::Forbidden(n.clone()),
            Node::Global(g) => Value::Opaque(match g {
                Global::Storage(_, n) => format!("torch.{n}"),
                other => format!("{other:?}"),
            }),
            Node::Storage(s) => {
                return Err(CheckpointError::Storage {
                    path: self.path.to_path_buf(),
                    key: s.key.clone(),
                    msg: format!("`{key}` is a bare storage, not a tensor; not supported"),
                })
            }
        })
    }
}

/// How many times building the tree from `root` will read each storage (a storage's bytes are
/// kept only until its last use). Also bounds the work of building: shared references (memo
/// `BINGET`s) make the tree larger than the pickle, exponentially so for a hostile file, and
/// cycles make it infinite; both are refused here.
fn count_uses(nodes: &[Node], root: Id, path: &Path) -> Result<HashMap<String, usize>, CheckpointError> {
    let budget = nodes.len().saturating_mul(4).saturating_add(1_000_000);
    let mut visits = 0usize;
    let mut uses: HashMap<String, usize> = HashMap::new();
    let mut stack = vec![(root, 0usize)];
    let fmt = |msg: String| CheckpointError::Format { path: path.to_path_buf(), msg };
    while let Some((id, depth)) = stack.pop() {
        visits += 1;
        if visits > budget {
            return Err(fmt(format!(
                "the object tree has more than {budget} nodes through shared references; refusing to expand it"
            )));
        }
        if depth > MAX_DEPTH {
            return Err(fmt(format!("objects nested deeper than {MAX_DEPTH} levels (or a cycle)")));
        }
        match &nodes[id] {
            Node::List(items) | Node::Tuple(items) => stack.extend(items.iter().map(|&c| (c, depth + 1))),
            Node::Dict(items) => {
                for &(k, v) in items {
                    stack.push((k, depth + 1));
                    stack.push((v, depth + 1));
                }
            }
            Node::Tensor(t) => *uses.entry(t.storage.key.clone()).or_default() += 1,
            _ => {}
        }
    }
    Ok(uses)
}

fn load_archive<R: Read + Seek>(reader: R, path: &Path, opts: ReadOptions) -> Result<Value, CheckpointError> {
    let mut archive = Archive::open(reader, path)?;
    let pkl = {
        let size = archive.entry_size("data.pkl").unwrap_or(0);
        if size > MAX_PICKLE_BYTES {
            return Err(CheckpointError::Format {
                path: path.to_path_buf(),
                msg: format!("data.pkl is {size} bytes, too large"),
            });
        }
        archive.entry("data.pkl", None, path)?
    };
    let mut m = Machine::new(&pkl, path, opts);
    let root = m.run()?;
    let nodes = std::mem::take(&mut m.nodes);

    // Check every storage against the archive before reading any tensor data.
    let uses = count_uses(&nodes, root, path)?;
    let mut declared: HashMap<String, (SDtype, u64)> = HashMap::new();
    for n in &nodes {
        let Node::Storage(st) = n else { continue };
        let serr = |msg: String| CheckpointError::Storage { path: path.to_path_buf(), key: st.key.clone(), msg };
        if let Some(&(d, n)) = declared.get(&st.key) {
            if d != st.dtype || n != st.numel {
                return Err(serr(format!(
                    "declared twice with different types/sizes ({} x {n} and {} x {})",
                    d.name(),
                    st.dtype.name(),
                    st.numel
                )));
            }
            continue;
        }
        let expect = st.numel.checked_mul(st.dtype.size() as u64).ok_or_else(|| serr("size overflows".into()))?;
        match archive.entry_size(&format!("data/{}", st.key)) {
            None => return Err(serr(format!("missing archive entry `{}/data/{}`", archive.prefix, st.key))),
            Some(sz) if sz != expect => {
                return Err(serr(format!(
                    "declared as {} {} elements ({expect} bytes) but the archive entry holds {sz} bytes",
                    st.numel,
                    st.dtype.name()
                )))
            }
            Some(_) => {}
        }
        declared.insert(st.key.clone(), (st.dtype, st.numel));
    }
    let held: u64 = declared.values().map(|&(_, n)| n).fold(0u64, u64::saturating_add);
    let storages = Storages {
        archive: &mut archive,
        path,
        opts,
        remaining_uses: uses,
        cache: HashMap::new(),
        materialized: 0,
        // Views may add at most MAX_EXPANSION elements (and at most an eighth of the memory
        // limit's bytes) beyond what the storages hold, over the whole file.
        budget: held.saturating_add(super::tensor_view::MAX_EXPANSION.min(crate::limits::memory_limit() / 8)),
    };
    let mut b = Builder { nodes: &nodes, storages, path };
    b.build(root, "", 0)
}

/// Reads a `torch.save` (zip) file into a [`Value`] tree.
pub fn load_pth(path: &Path, opts: ReadOptions) -> Result<Value, CheckpointError> {
    let f = crate::files::open_regular(path).map_err(CheckpointError::io(path))?;
    load_archive(BufReader::new(f), path, opts)
}

/// Reads `torch.save` bytes held in memory; `name` is used in error messages.
pub fn load_pth_bytes(bytes: &[u8], name: &Path, opts: ReadOptions) -> Result<Value, CheckpointError> {
    load_archive(Cursor::new(bytes), name, opts)
}
