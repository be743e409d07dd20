//! Reading checkpoints: PyTorch's zip format (a restricted unpickler), `.safetensors`, `.npz`.
//!
//! A `torch.save` file (PyTorch >= 1.6) is a zip archive with one top folder (`archive/` or the
//! file's stem): `<top>/data.pkl` is a pickle of the saved object in which every tensor is a call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and
//! every storage a persistent id `('storage', torch.FloatStorage, key, location, numel)` whose
//! raw little-endian bytes are the entry `<top>/data/<key>`.
//!
//! The unpickler here interprets the pickle opcodes that `torch.save` emits and resolves
//! `GLOBAL`s against an allow-list (tensor and parameter rebuilding, storage types,
//! `collections.OrderedDict`, `torch.serialization._get_layout`, and `_codecs.encode`, which
//! protocol 2 uses for `bytes`). Nothing is ever imported or called: an allowed global is only a
//! tag that the interpreter knows how to build a value for, and any other global (`os.system`,
//! `builtins.eval`, ...) fails with [`CheckpointError::ForbiddenGlobal`] naming it, as
//! `torch.load(weights_only=True)` refuses it. [`ReadOptions::opaque_globals`] instead turns such
//! objects into inert [`Value::Opaque`] placeholders (still never executed), for checkpoints whose
//! metadata holds e.g. numpy scalars.
//!
//! Storage sizes declared in the pickle are checked against the archive entries before anything
//! is allocated, and every tensor view (offset, size, stride) is checked to lie inside its
//! storage; non-contiguous views are gathered element by element.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use super::half::{bf16_to_f32, f16_to_f32};
use super::CheckpointError;
use crate::array::{read_npz, AnyArray};

/// How to read tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Read float16 / bfloat16 tensors widened (exactly) to float32. When false such a tensor is
    /// an error that says so.
    pub widen_half: bool,
    /// Turn objects of globals outside the allow-list into inert [`Value::Opaque`] placeholders
    /// instead of failing (nothing is executed either way). Off by default, as
    /// `torch.load(weights_only=True)`.
    pub opaque_globals: bool,
}

/// An unpickled object tree.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order (a repeated key keeps its first position and
    /// its last value, as in Python).
    Dict(Vec<(Value, Value)>),
    Tensor(AnyArray),
    /// An object of a global outside the allow-list (only with [`ReadOptions::opaque_globals`]),
    /// or a torch layout; holds the global's dotted name.
    Opaque(String),
}

impl Value {
    /// The value stored under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&AnyArray> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short description of the kind of value (for error messages).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Opaque(_) => "object",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Storage dtypes

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    U8,
    Bool,
    /// A torch storage type this reader does not convert (int16, int8, complex, ...): its
    /// dtype name and element size.
    Unsupported(&'static str, usize),
}

impl SDtype {
    fn size(self) -> usize {
        match self {
            SDtype::F64 | SDtype::I64 => 8,
            SDtype::F32 | SDtype::I32 => 4,
            SDtype::F16 | SDtype::BF16 => 2,
            SDtype::U8 | SDtype::Bool => 1,
            SDtype::Unsupported(_, size) => size,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SDtype::F32 => "float32",
            SDtype::F64 => "float64",
            SDtype::F16 => "float16",
            SDtype::BF16 => "bfloat16",
            SDtype::I64 => "int64",
            SDtype::I32 => "int32",
            SDtype::U8 => "uint8",
            SDtype::Bool => "bool",
            SDtype::Unsupported(n, _) => n,
        }
    }
}

/// `torch.<Name>Storage` → element type; `None` when `name` is not a storage class.
fn storage_dtype(name: &str) -> Option<SDtype> {
    Some(match name {
        "FloatStorage" => SDtype::F32,
        "DoubleStorage" => SDtype::F64,
        "HalfStorage" => SDtype::F16,
        "BFloat16Storage" => SDtype::BF16,
        "LongStorage" => SDtype::I64,
        "IntStorage" => SDtype::I32,
        "ByteStorage" | "UntypedStorage" => SDtype::U8,
        "BoolStorage" => SDtype::Bool,
        "ShortStorage" => SDtype::Unsupported("int16", 2),
        "CharStorage" => SDtype::Unsupported("int8", 1),
        "ComplexFloatStorage" => SDtype::Unsupported("complex64", 8),
        "ComplexDoubleStorage" => SDtype::Unsupported("complex128", 16),
        "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => SDtype::Unsupported("quantized", 1),
        "QInt32Storage" => SDtype::Unsupported("quantized", 4),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

type Id = usize;

/// Allow-listed globals, as tags.
#[derive(Debug, Clone)]
enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(SDtype, String),
    GetLayout,
    CodecsEncode,
    /// Not allow-listed; only created with `opaque_globals`.
    Opaque(String),
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: SDtype,
    numel: u64,
}

#[derive(Debug, Clone)]
struct TensorSpec {
    storage: StorageRef,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorSpec),
    Opaque(String),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Position of the opcode being executed (for errors).
    op_pos: usize,
    path: &'a Path,
    opts: ReadOptions,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

/// Most nodes one pickle may create (a bound on memory for hostile input).
const MAX_NODES: usize = 50_000_000;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], path: &'a Path, opts: ReadOptions) -> Self {
        Machine {
            data,
            pos: 0,
            op_pos: 0,
            path,
            opts,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> CheckpointError {
        CheckpointError::Pickle { path: self.path.to_path_buf(), pos: self.op_pos, msg: msg.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!("truncated: needs {n} more bytes, {} left", self.data.len() - self.pos))),
        }
    }

    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CheckpointError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self) -> Result<&'a str, CheckpointError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("truncated: unterminated line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn alloc(&mut self, n: Node) -> Result<Id, CheckpointError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(self.err("too many objects"));
        }
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
    }

    fn push(&mut self, n: Node) -> Result<(), CheckpointError> {
        let id = self.alloc(n)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().copied().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, CheckpointError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.err("corrupt MARK"));
        }
        Ok(self.stack.split_off(m))
    }

    fn str_node(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let s = std::str::from_utf8(bytes).map_err(|_| self.err("string is not valid UTF-8"))?.to_string();
        self.push(Node::Str(s))
    }

    fn len_from(&self, n: u64) -> Result<usize, CheckpointError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| self.err(format!("length {n} runs past the end of the pickle")))
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), CheckpointError> {
        let top = self.top()?;
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), CheckpointError> {
        let id = *self.memo.get(&idx).ok_or_else(|| self.err(format!("memo key {idx} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn resolve_global(&mut self, module: &str, name: &str) -> Result<Node, CheckpointError> {
        let allowed = match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameter)
            }
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch.serialization", "_get_layout") => Some(Global::GetLayout),
            ("_codecs", "encode") => Some(Global::CodecsEncode),
            ("torch", n) => storage_dtype(n).map(|d| Global::Storage(d, n.to_string())),
            _ => None,
        };
        let g = match allowed {
            Some(g) => g,
            None => {
                let full = format!("{module}.{name}");
                if self.opts.opaque_globals {
                    Global::Opaque(full)
                } else {
                    return Err(CheckpointError::ForbiddenGlobal {
                        path: self.path.to_path_buf(),
                        pos: self.op_pos,
                        global: full,
                    });
                }
            }
        };
        Ok(Node::Global(g))
    }

    fn int_of(&self, id: Id, what: &str) -> Result<i64, CheckpointError> {
        match &self.nodes[id] {
            Node::Int(v) => Ok(*v),
            Node::Bool(b) => Ok(*b as i64),
            other => Err(self.err(format!("{what}: expected an int, found {}", node_kind(other)))),
        }
    }

    fn uint_tuple(&self, id: Id, what: &str) -> Result<Vec<u64>, CheckpointError> {
        let items = match &self.nodes[id] {
            Node::Tuple(v) | Node::List(v) => v.clone(),
            other => return Err(self.err(format!("{what}: expected a tuple, found {}", node_kind(other)))),
        };
        items
            .iter()
            .map(|&i| {
                let v = self.int_of(i, what)?;
                u64::try_from(v).map_err(|_| self.err(format!("{what}: negative value {v}")))
            })
            .collect()
    }

    fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, CheckpointError> {
        match &self.nodes[id] {
            Node::Tuple(v) => Ok(v.clone()),
            other => Err(self.err(format!("{what}: expected a tuple, found {}", node_kind(other)))),
        }
    }

    fn persistent_load(&mut self, pid: Id) -> Result<Node, CheckpointError> {
        let items = self.tuple_items(pid, "persistent id")?;
        if items.len() != 5 {
            return Err(self.err(format!(
                "persistent id: expected ('storage', type, key, location, numel), found a {}-tuple",
                items.len()
            )));
        }
        match &self.nodes[items[0]] {
            Node::Str(s) if s == "storage" => {}
            _ => return Err(self.err("persistent id: only 'storage' ids are supported")),
        }
        let dtype = match &self.nodes[items[1]] {
            Node::Global(Global::Storage(d, _)) => *d,
            other => {
                return Err(self.err(format!(
                    "persistent id: storage type must be a torch storage class, found {}",
                    node_kind(other)
                )))
            }
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            other => {
                return Err(self.err(format!("persistent id: storage key must be a str, found {}", node_kind(other))))
            }
        };
        let numel = self.int_of(items[4], "storage numel")?;
        let numel = u64::try_from(numel).map_err(|_| self.err(format!("storage `{key}`: negative size {numel}")))?;
        Ok(Node::Storage(StorageRef { key, dtype, numel }))
    }

    fn reduce(&mut self, callable: Id, args: Id) -> Result<Node, CheckpointError> {
        let g = match &self.nodes[callable] {
            Node::Global(g) => g.clone(),
            other => return Err(self.err(format!("REDUCE: cannot call a {}", node_kind(other)))),
        };
        let argv = self.tuple_items(args, "REDUCE arguments")?;
        match g {
            Global::RebuildTensorV2 => {
                if argv.len() < 4 {
                    return Err(
                        self.err(format!("_rebuild_tensor_v2: expected at least 4 arguments, found {}", argv.len()))
                    );
                }
                let storage = match &self.nodes[argv[0]] {
                    Node::Storage(s) => s.clone(),
                    other => {
                        return Err(self.err(format!(
                            "_rebuild_tensor_v2: first argument must be a storage, found {}",
                            node_kind(other)
                        )))
                    }
                };
                let offset = self.int_of(argv[1], "tensor storage offset")?;
                let offset =
                    u64::try_from(offset).map_err(|_| self.err(format!("negative storage offset {offset}")))?;
                let size = self.uint_tuple(argv[2], "tensor size")?;
                let stride = self.uint_tuple(argv[3], "tensor stride")?;
                if size.len() != stride.len() {
                    return Err(self.err(format!("tensor size {size:?} and stride {stride:?} differ in length")));
                }
                Ok(Node::Tensor(TensorSpec { storage, offset, size, stride }))
            }
            Global::RebuildParameter => {
                let first = argv.first().ok_or_else(|| self.err("_rebuild_parameter: no arguments"))?;
                match &self.nodes[*first] {
                    Node::Tensor(t) => Ok(Node::Tensor(t.clone())),
                    other => Err(self.err(format!(
                        "_rebuild_parameter: first argument must be a tensor, found {}",
                        node_kind(other)
                    ))),
                }
            }
            Global::OrderedDict => {
                if argv.is_empty() {
                    return Ok(Node::Dict(Vec::new()));
                }
                // OrderedDict(iterable of pairs)
                let items = match &self.nodes[argv[0]] {
                    Node::List(v) | Node::Tuple(v) => v.clone(),
                    other => {
                        return Err(self
                            .err(format!("OrderedDict: argument must be a list of pairs, found {}", node_kind(other))))
                    }
                };
                let mut pairs = Vec::with_capacity(items.len());
                for it in items {
                    let kv = self.tuple_items(it, "OrderedDict item")?;
                    if kv.len() != 2 {
                        return Err(self.err("OrderedDict: items must be (key, value) pairs"));
                    }
                    pairs.push((kv[0], kv[1]));
                }
                Ok(Node::Dict(pairs))
            }
            Global::GetLayout => {
                let name = argv.first().and_then(|&a| match &self.nodes[a] {
                    Node::Str(s) => Some(s.clone()),
                    _ => None,
                });
                Ok(Node::Opaque(name.unwrap_or_else(|| "torch.layout".to_string())))
            }
            Global::CodecsEncode => {
                // Protocol 2 pickles `bytes` as _codecs.encode(str, 'latin1').
                let (s, enc) = match argv.as_slice() {
                    [s, e] => (s, e),
                    _ => return Err(self.err("_codecs.encode: expected (str, encoding)")),
                };
                let s = match &self.nodes[*s] {
                    Node::Str(s) => s.clone(),
                    _ => return Err(self.err("_codecs.encode: first argument must be a str")),
                };
                match &self.nodes[*enc] {
                    Node::Str(e) if e == "latin1" || e == "latin-1" => {}
                    _ => return Err(self.err("_codecs.encode: only the latin1 encoding is supported")),
                }
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    let c = c as u32;
                    if c > 0xff {
                        return Err(self.err("_codecs.encode: character outside latin1"));
                    }
                    out.push(c as u8);
                }
                Ok(Node::Bytes(out))
            }
            Global::Storage(_, name) => Err(self.err(format!("calling torch.{name} is not supported"))),
            Global::Opaque(name) => Ok(Node::Opaque(name)),
        }
    }

    fn run(&mut self) -> Result<Id, CheckpointError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                0x95 => {
                    // FRAME: advisory length of the next frame
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b']' => self.push(Node::List(Vec::new()))?,
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    // POP
                    self.pop()?;
                }
                b'1' => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len_from(n)?;
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_from(n)?;
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                b'U' => {
                    // SHORT_BINSTRING (Python 2 str; read as text, as torch.load's default encoding)
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                b'T' => {
                    // BINSTRING
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("negative BINSTRING length"));
                    }
                    let n = self.len_from(n as u64)?;
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let n = self.len_from(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b))?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b))?;
                }
                0x8e => {
                    let n = self.u64()?;
                    let n = self.len_from(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b))?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            return Err(self.err("negative LONG4 length"));
                        }
                        n as u64
                    };
                    let n = self.len_from(n)?;
                    let b = self.take(n)?;
                    let node = if b.is_empty() {
                        Node::Int(0)
                    } else if b.len() <= 8 {
                        let neg = b[b.len() - 1] & 0x80 != 0;
                        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
                        a[..b.len()].copy_from_slice(b);
                        Node::Int(i64::from_le_bytes(a))
                    } else {
                        Node::BigInt(b.to_vec())
                    };
                    self.push(node)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Node::Float(f64::from_be_bytes(a)))?;
                }
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'N' => self.push(Node::None)?,
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.resolve_global(module, name)?;
                    self.push(g)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (m, n) = match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Str(m), Node::Str(n)) => (m.clone(), n.clone()),
                        _ => return Err(self.err("STACK_GLOBAL: module and name must be strings")),
                    };
                    let g = self.resolve_global(&m, &n)?;
                    self.push(g)?;
                }
                b'Q' => {
                    // BINPERSID
                    let pid = self.pop()?;
                    let s = self.persistent_load(pid)?;
                    self.push(s)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match &self.nodes[cls] {
                        Node::Global(Global::OrderedDict) => Node::Dict(Vec::new()),
                        Node::Global(Global::Opaque(n)) => Node::Opaque(n.clone()),
                        other => return Err(self.err(format!("NEWOBJ: cannot instantiate a {}", node_kind(other)))),
                    };
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: obj.__setstate__(state). Attributes of an OrderedDict (a state
                    // dict's `_metadata`) and of opaque objects are ignored.
                    let _state = self.pop()?;
                    let obj = self.top()?;
                    match &self.nodes[obj] {
                        Node::Dict(_) | Node::Opaque(_) | Node::Tensor(_) => {}
                        other => return Err(self.err(format!("BUILD: cannot set the state of a {}", node_kind(other)))),
                    }
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?;
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a]))?;
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a, b]))?;
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Node::Tuple(vec![a, b, c]))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.dict_set(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS: odd number of items"));
                    }
                    let d = self.top()?;
                    let pairs = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                    self.dict_set(d, pairs)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.list_extend(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.list_extend(l, items)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    // MEMOIZE
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    fn dict_set(&mut self, d: Id, pairs: Vec<(Id, Id)>) -> Result<(), CheckpointError> {
        // Python semantics: a repeated key keeps its position and takes the new value.
        let keys: Vec<Option<KeyRepr>> = pairs.iter().map(|&(k, _)| self.key_repr(k)).collect();
        let existing: Vec<Option<KeyRepr>> = match &self.nodes[d] {
            Node::Dict(items) => items.iter().map(|&(k, _)| self.key_repr(k)).collect(),
            Node::Opaque(_) => return Ok(()),
            other => return Err(self.err(format!("SETITEM(S) on a {}", node_kind(other)))),
        };
        let mut index: HashMap<KeyRepr, usize> = HashMap::new();
        for (i, k) in existing.into_iter().enumerate() {
            if let Some(k) = k {
                index.insert(k, i);
            }
        }
        let Node::Dict(items) = &mut self.nodes[d] else { return Ok(()) };
        for ((k, v), repr) in pairs.into_iter().zip(keys) {
            match repr.as_ref().and_then(|r| index.get(r)) {
                Some(&i) => items[i].1 = v,
                None => {
                    if let Some(r) = repr {
                        index.insert(r, items.len());
                    }
                    items.push((k, v));
                }
            }
        }
        Ok(())
    }

    fn list_extend(&mut self, l: Id, items: Vec<Id>) -> Result<(), CheckpointError> {
        match &mut self.nodes[l] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            Node::Opaque(_) => Ok(()),
            other => {
                let k = node_kind(other);
                Err(self.err(format!("APPEND(S) on a {k}")))
            }
        }
    }

    /// A hashable form of simple keys (str, int, bool, None) for duplicate detection.
    fn key_repr(&self, id: Id) -> Option<KeyRepr> {
        match &self.nodes[id] {
            Node::Str(s) => Some(KeyRepr::Str(s.clone())),
            Node::Int(i) => Some(KeyRepr::Int(*i)),
            Node::Bool(b) => Some(KeyRepr::Int(*b as i64)),
            Node::None => Some(KeyRepr::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyRepr {
    Str(String),
    Int(i64),
    None,
}

fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) | Node::BigInt(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::Bytes(_) => "bytes",
        Node::List(_) => "list",
        Node::Tuple(_) => "tuple",
        Node::Dict(_) => "dict",
        Node::Global(_) => "global",
        Node::Storage(_) => "storage",
        Node::Tensor(_) => "tensor",
        Node::Opaque(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------------
// Zip archive and storages

/// The archive: where the pickle and storages live.
struct Archive<R: Read + Seek> {
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
        if !magic.starts_with(b"PK") {
            if magic.first() == Some(&0x80) || (magic.len() >= 262 && &magic[257..262] == b"ustar") {
                return Err(CheckpointError::LegacyFormat { path: path.to_path_buf() });
            }
            return Err(fmt("not a PyTorch checkpoint (not a zip archive)".into()));
        }
        let zip = zip::ZipArchive::new(reader).map_err(|e| fmt(format!("not a readable zip archive: {e}")))?;
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
    fn entry(&mut self, name: &str, expect: Option<u64>, path: &Path) -> Result<Vec<u8>, CheckpointError> {
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
        let plausible = match f.compression() {
            zip::CompressionMethod::Stored => f.compressed_size() == size && f.data_start().saturating_add(size) <= len,
            // Deflate expands at most ~1032:1.
            _ => f.compressed_size() <= len && size <= f.compressed_size().saturating_mul(1100).saturating_add(4096),
        };
        if !plausible {
            return Err(bad(format!("claims {size} bytes, more than the archive can hold")));
        }
        let cap = usize::try_from(size).map_err(|_| bad("too large for this machine".into()))?;
        let mut v = Vec::new();
        v.try_reserve_exact(cap).map_err(|_| bad(format!("cannot allocate {size} bytes")))?;
        f.take(size).read_to_end(&mut v).map_err(|e| bad(e.to_string()))?;
        if v.len() as u64 != size {
            return Err(bad(format!("truncated: {} of {size} bytes", v.len())));
        }
        Ok(v)
    }

    fn entry_size(&mut self, name: &str) -> Option<u64> {
        let full = format!("{}/{name}", self.prefix);
        self.zip.by_name(&full).ok().map(|f| f.size())
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
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

/// Loads storages on demand, keeping a storage's bytes only while tensors still need them.
struct Storages<'a, R: Read + Seek> {
    archive: &'a mut Archive<R>,
    path: &'a Path,
    opts: ReadOptions,
    remaining_uses: HashMap<String, usize>,
    cache: HashMap<String, Vec<u8>>,
}

impl<R: Read + Seek> Storages<'_, R> {
    fn tensor(&mut self, spec: &TensorSpec, key: &str) -> Result<AnyArray, CheckpointError> {
        let path = self.path;
        let terr = |msg: String| CheckpointError::Tensor { path: path.to_path_buf(), key: key.to_string(), msg };
        let st = &spec.storage;
        let numel: u64 = spec
            .size
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("size {:?} overflows", spec.size)))?;
        if numel > 0 {
            let mut last = spec.offset;
            for (&d, &s) in spec.size.iter().zip(&spec.stride) {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| terr("view extent overflows".into()))?;
            }
            if last >= st.numel {
                return Err(terr(format!(
                    "view (offset {}, size {:?}, stride {:?}) reaches element {last}, past the end of storage `{}` ({} elements)",
                    spec.offset, spec.size, spec.stride, st.key, st.numel
                )));
            }
        } else if spec.offset > st.numel {
            return Err(terr(format!("offset {} past the end of storage `{}`", spec.offset, st.key)));
        }
        match st.dtype {
            SDtype::F16 | SDtype::BF16 if !self.opts.widen_half => {
                return Err(CheckpointError::HalfNotWidened {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    dtype: st.dtype.name(),
                })
            }
            SDtype::Unsupported(n, _) => return Err(terr(format!("dtype {n} is not supported"))),
            _ => {}
        }
        if numel > st.numel && numel > (1 << 28) {
            return Err(terr(format!(
                "a view of {numel} elements over storage `{}` of {} elements is too large to expand",
                st.key, st.numel
            )));
        }
        let shape: Vec<usize> = spec.size.iter().map(|&d| d as usize).collect();
        let bytes = self.bytes(st)?;
        let idx = element_indices(spec, numel);
        let es = st.dtype.size();
        let at = |i: u64| {
            let o = i as usize * es;
            &bytes[o..o + es]
        };
        macro_rules! build {
            ($variant:ident, $f:expr) => {{
                let v: Vec<_> = match &idx {
                    Indices::Contiguous(start) => {
                        bytes[*start as usize * es..(*start + numel) as usize * es].chunks_exact(es).map($f).collect()
                    }
                    Indices::List(l) => l.iter().map(|&i| $f(at(i))).collect(),
                };
                AnyArray::$variant(ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| terr(e.to_string()))?)
            }};
        }
        let out = match st.dtype {
            SDtype::F32 => build!(F32, |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            SDtype::F64 => build!(F64, |b: &[u8]| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
            SDtype::F16 => build!(F32, |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            SDtype::BF16 => build!(F32, |b: &[u8]| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
            SDtype::I64 => build!(I64, |b: &[u8]| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
            SDtype::I32 => build!(I32, |b: &[u8]| i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            SDtype::U8 => build!(U8, |b: &[u8]| b[0]),
            SDtype::Bool => build!(Bool, |b: &[u8]| b[0] != 0),
            SDtype::Unsupported(n, _) => return Err(terr(format!("dtype {n} is not supported"))),
        };
        self.release(&st.key);
        Ok(out)
    }

    fn bytes(&mut self, st: &StorageRef) -> Result<&[u8], CheckpointError> {
        if !self.cache.contains_key(&st.key) {
            let expect = st.numel.checked_mul(st.dtype.size() as u64).ok_or_else(|| CheckpointError::Storage {
                path: self.path.to_path_buf(),
                key: st.key.clone(),
                msg: "size overflows".into(),
            })?;
            let v = self.archive.entry(&format!("data/{}", st.key), Some(expect), self.path)?;
            self.cache.insert(st.key.clone(), v);
        }
        Ok(self.cache.get(&st.key).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn release(&mut self, key: &str) {
        if let Some(n) = self.remaining_uses.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.cache.remove(key);
            }
        }
    }
}

enum Indices {
    Contiguous(u64),
    List(Vec<u64>),
}

/// Storage element indices of a view, in row-major order of the view.
fn element_indices(spec: &TensorSpec, numel: u64) -> Indices {
    let mut expect = 1u64;
    let mut contiguous = true;
    for (&d, &s) in spec.size.iter().zip(&spec.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d);
    }
    if contiguous || numel == 0 {
        return Indices::Contiguous(spec.offset);
    }
    let nd = spec.size.len();
    let mut out = Vec::with_capacity(numel as usize);
    let mut idx = vec![0u64; nd];
    let mut cur = spec.offset;
    for _ in 0..numel {
        out.push(cur);
        // odometer increment
        let mut ax = nd;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            cur = cur.wrapping_add(spec.stride[ax]);
            if idx[ax] < spec.size[ax] {
                break;
            }
            cur = cur.wrapping_sub(spec.stride[ax].wrapping_mul(spec.size[ax]));
            idx[ax] = 0;
        }
    }
    Indices::List(out)
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
            Node::Global(g) => Value::Opaque(match g {
                Global::Opaque(n) => n.clone(),
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
    let storages = Storages { archive: &mut archive, path, opts, remaining_uses: uses, cache: HashMap::new() };
    let mut b = Builder { nodes: &nodes, storages, path };
    b.build(root, "", 0)
}

/// Reads a `torch.save` (zip) file into a [`Value`] tree.
pub fn load_pth(path: &Path, opts: ReadOptions) -> Result<Value, CheckpointError> {
    let f = File::open(path).map_err(CheckpointError::io(path))?;
    load_archive(BufReader::new(f), path, opts)
}

/// Reads `torch.save` bytes held in memory; `name` is used in error messages.
pub fn load_pth_bytes(bytes: &[u8], name: &Path, opts: ReadOptions) -> Result<Value, CheckpointError> {
    load_archive(Cursor::new(bytes), name, opts)
}

// ---------------------------------------------------------------------------------------------
// Finding the state dict

/// Extracts the state dict from an unpickled checkpoint: the dict under `state_dict`, `model` or
/// `module` (the first present, in that order, as MMSegmentation's converters look), else the
/// top-level dict itself when all its values are tensors (or dicts of tensors). Dict-valued entries inside the
/// state dict are flattened with dots (`{"a": {"b": t}}` → `a.b`); everything next to the state
/// dict (`meta`, `optimizer`, ...) is left out.
pub fn state_dict_of(root: Value, path: &Path) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let nosd = |msg: String| CheckpointError::NoStateDict { path: path.to_path_buf(), msg };
    let Value::Dict(top) = root else {
        return Err(nosd(format!("the checkpoint holds a {}, not a dict", root.kind())));
    };
    let top_keys: Vec<String> = top
        .iter()
        .map(|(k, _)| match k {
            Value::Str(s) => s.clone(),
            other => format!("<{}>", other.kind()),
        })
        .collect();
    for wrapper in ["state_dict", "model", "module"] {
        let pos =
            top.iter().position(|(k, v)| matches!(k, Value::Str(s) if s == wrapper) && matches!(v, Value::Dict(_)));
        if let Some(pos) = pos {
            let Some((_, Value::Dict(inner))) = top.into_iter().nth(pos) else {
                return Err(nosd(format!("`{wrapper}` is not a dict")));
            };
            let mut out = Vec::new();
            flatten(inner, "", &mut out, path).map_err(|e| match e {
                CheckpointError::NoStateDict { msg, .. } => nosd(format!("under `{wrapper}`: {msg}")),
                other => other,
            })?;
            return Ok(out);
        }
    }
    if is_tensor_dict(&top) {
        let mut out = Vec::new();
        flatten(top, "", &mut out, path)?;
        return Ok(out);
    }
    let shown: Vec<&str> = top_keys.iter().take(12).map(String::as_str).collect();
    Err(nosd(format!(
        "the top-level dict is not a flat dict of tensors and has no `state_dict`, `model` or `module` dict (keys: {}{})",
        shown.join(", "),
        if top_keys.len() > 12 { ", ..." } else { "" }
    )))
}

fn is_tensor_dict(items: &[(Value, Value)]) -> bool {
    !items.is_empty()
        && items.iter().all(|(k, v)| {
            matches!(k, Value::Str(_))
                && match v {
                    Value::Tensor(_) => true,
                    Value::Dict(d) => is_tensor_dict(d),
                    _ => false,
                }
        })
}

fn flatten(
    items: Vec<(Value, Value)>,
    prefix: &str,
    out: &mut Vec<(String, AnyArray)>,
    path: &Path,
) -> Result<(), CheckpointError> {
    for (k, v) in items {
        let k = match k {
            Value::Str(s) => s,
            other => {
                return Err(CheckpointError::NoStateDict {
                    path: path.to_path_buf(),
                    msg: format!("a key is a {}, not a str", other.kind()),
                })
            }
        };
        let full = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        match v {
            Value::Tensor(t) => out.push((full, t)),
            Value::Dict(d) => flatten(d, &full, out, path)?,
            other => {
                return Err(CheckpointError::NoStateDict {
                    path: path.to_path_buf(),
                    msg: format!("entry `{full}` is a {}, not a tensor", other.kind()),
                })
            }
        }
    }
    Ok(())
}

/// Reads the state dict of a `torch.save` file (see [`state_dict_of`]) with default options
/// (float16/bfloat16 tensors are an error).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    read_state_dict_with(path, ReadOptions::default())
}

/// [`read_state_dict`] with options.
pub fn read_state_dict_with(path: &Path, opts: ReadOptions) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let root = load_pth(path, opts)?;
    state_dict_of(root, path)
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// Largest safetensors header accepted (the reference implementation's limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Reads a `.safetensors` file: an 8-byte little-endian header length, a JSON header
/// `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`, then raw little-endian data.
/// Tensors are returned in data order. Dtypes F32, F64, F16/BF16 (widened when asked), I64, I32,
/// U8, BOOL.
pub fn read_safetensors(path: &Path, opts: ReadOptions) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let f = File::open(path).map_err(CheckpointError::io(path))?;
    let file_len = f.metadata().map_err(CheckpointError::io(path))?.len();
    safetensors_from(BufReader::new(f), file_len, path, opts)
}

/// [`read_safetensors`] of bytes held in memory; `name` is used in error messages.
pub fn read_safetensors_bytes(
    bytes: &[u8],
    name: &Path,
    opts: ReadOptions,
) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    safetensors_from(Cursor::new(bytes), bytes.len() as u64, name, opts)
}

fn safetensors_from<R: Read + Seek>(
    mut f: R,
    file_len: u64,
    path: &Path,
    opts: ReadOptions,
) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let fmt = |msg: String| CheckpointError::Format {
        path: path.to_path_buf(),
        msg: format!("not a readable .safetensors file: {msg}"),
    };
    let mut nb = [0u8; 8];
    f.read_exact(&mut nb).map_err(|_| fmt("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(nb);
    if n > MAX_SAFETENSORS_HEADER || n.saturating_add(8) > file_len {
        return Err(fmt(format!("header length {n} is larger than the file ({file_len} bytes) or the 100 MB limit")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| fmt(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| fmt(format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| fmt("header is not a JSON object".into()))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    struct Entry {
        name: String,
        dtype: SDtype,
        shape: Vec<usize>,
        begin: u64,
        end: u64,
    }
    let mut entries = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let terr = |msg: String| CheckpointError::Tensor { path: path.to_path_buf(), key: name.clone(), msg };
        let dtype_s =
            info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| terr("header entry has no `dtype`".into()))?;
        let dtype = match dtype_s {
            "F32" => SDtype::F32,
            "F64" => SDtype::F64,
            "F16" => SDtype::F16,
            "BF16" => SDtype::BF16,
            "I64" => SDtype::I64,
            "I32" => SDtype::I32,
            "U8" => SDtype::U8,
            "BOOL" => SDtype::Bool,
            other => return Err(terr(format!("dtype {other} is not supported"))),
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| terr("header entry has no `shape`".into()))?
            .iter()
            .map(|d| {
                d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or_else(|| terr(format!("bad shape entry {d}")))
            })
            .collect::<Result<_, _>>()?;
        let offs = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(|| terr("header entry has no `data_offsets`".into()))?;
        let (begin, end) = match offs.as_slice() {
            [b, e] => (
                b.as_u64().ok_or_else(|| terr("bad data_offsets".into()))?,
                e.as_u64().ok_or_else(|| terr("bad data_offsets".into()))?,
            ),
            _ => return Err(terr("data_offsets must be [begin, end]".into())),
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| terr("shape overflows".into()))?;
        let nbytes = numel.checked_mul(dtype.size() as u64).ok_or_else(|| terr("shape overflows".into()))?;
        if begin > end || end > data_len {
            return Err(terr(format!("data_offsets [{begin}, {end}] outside the {data_len}-byte data section")));
        }
        if end - begin != nbytes {
            return Err(terr(format!(
                "data_offsets [{begin}, {end}] hold {} bytes, shape {shape:?} of {dtype_s} needs {nbytes}",
                end - begin
            )));
        }
        if matches!(dtype, SDtype::F16 | SDtype::BF16) && !opts.widen_half {
            return Err(CheckpointError::HalfNotWidened {
                path: path.to_path_buf(),
                key: name.clone(),
                dtype: dtype.name(),
            });
        }
        entries.push(Entry { name: name.clone(), dtype, shape, begin, end });
    }
    entries.sort_by_key(|e| e.begin);
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let terr = |msg: String| CheckpointError::Tensor { path: path.to_path_buf(), key: e.name.clone(), msg };
        f.seek(SeekFrom::Start(data_start + e.begin)).map_err(CheckpointError::io(path))?;
        let mut buf = vec![0u8; (e.end - e.begin) as usize];
        f.read_exact(&mut buf).map_err(|err| terr(err.to_string()))?;
        let arr = decode_le(&buf, e.dtype, &e.shape).map_err(terr)?;
        out.push((e.name, arr));
    }
    Ok(out)
}

/// Decodes contiguous little-endian bytes (length already checked).
fn decode_le(b: &[u8], dtype: SDtype, shape: &[usize]) -> Result<AnyArray, String> {
    let sh = IxDyn(shape);
    macro_rules! mk {
        ($variant:ident, $n:expr, $f:expr) => {
            AnyArray::$variant(
                ArrayD::from_shape_vec(sh, b.chunks_exact($n).map($f).collect()).map_err(|e| e.to_string())?,
            )
        };
    }
    Ok(match dtype {
        SDtype::F32 => mk!(F32, 4, |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        SDtype::F64 => mk!(F64, 8, |c: &[u8]| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        SDtype::F16 => mk!(F32, 2, |c: &[u8]| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        SDtype::BF16 => mk!(F32, 2, |c: &[u8]| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        SDtype::I64 => mk!(I64, 8, |c: &[u8]| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        SDtype::I32 => mk!(I32, 4, |c: &[u8]| i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        SDtype::U8 => mk!(U8, 1, |c: &[u8]| c[0]),
        SDtype::Bool => mk!(Bool, 1, |c: &[u8]| c[0] != 0),
        SDtype::Unsupported(n, _) => return Err(format!("dtype {n} is not supported")),
    })
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/// The formats [`read_any`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Pth,
    Safetensors,
    Npz,
}

/// Tells the format from the file's first bytes, falling back on the extension.
pub fn file_kind(path: &Path) -> Result<FileKind, CheckpointError> {
    let mut f = File::open(path).map_err(CheckpointError::io(path))?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut f, &mut head).map_err(CheckpointError::io(path))?;
    let head = &head[..n];
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if head.starts_with(b"PK") {
        if ext == "npz" {
            return Ok(FileKind::Npz);
        }
        // A zip: a torch archive has `<top>/data.pkl`; otherwise take it as an npz.
        let f = File::open(path).map_err(CheckpointError::io(path))?;
        if let Ok(z) = zip::ZipArchive::new(BufReader::new(f)) {
            if z.file_names().any(|n| n.ends_with("/data.pkl")) {
                return Ok(FileKind::Pth);
            }
            if z.file_names().any(|n| n.ends_with(".npy")) {
                return Ok(FileKind::Npz);
            }
        }
        return Ok(FileKind::Pth);
    }
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(FileKind::Safetensors);
    }
    match ext.as_str() {
        "safetensors" => Ok(FileKind::Safetensors),
        "npz" => Ok(FileKind::Npz),
        // .pth/.pt/.bin/.ckpt and unknown: the torch reader gives the precise error (legacy
        // format, not a zip, ...).
        _ => Ok(FileKind::Pth),
    }
}

/// Reads the state dict of a `.pth`/`.pt`/`.bin` (torch zip), `.safetensors` or `.npz` file,
/// told apart by content (then extension).
pub fn read_any(path: &Path, opts: ReadOptions) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    match file_kind(path)? {
        FileKind::Pth => read_state_dict_with(path, opts),
        FileKind::Safetensors => read_safetensors(path, opts),
        FileKind::Npz => Ok(read_npz(path)?),
    }
}
