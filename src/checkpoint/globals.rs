//! The allow-list of the restricted unpickler: which `GLOBAL`s a checkpoint may name, and what
//! "calling" one (`REDUCE`, `BINPERSID`) builds. An allowed global is only a tag the interpreter
//! knows how to build a value for (a tensor view, an `OrderedDict`, a storage reference, bytes);
//! nothing is imported or called, and any other global is refused by name
//! ([`CheckpointError::ForbiddenGlobal`]) unless [`super::ReadOptions::opaque_globals`] turns it into an
//! inert placeholder.

use super::pickle::{node_kind, Id, Machine, Node, StorageRef, TensorSpec};
use super::CheckpointError;

// ---------------------------------------------------------------------------------------------
// Storage dtypes

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SDtype {
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
    pub(super) fn size(self) -> usize {
        match self {
            SDtype::F64 | SDtype::I64 => 8,
            SDtype::F32 | SDtype::I32 => 4,
            SDtype::F16 | SDtype::BF16 => 2,
            SDtype::U8 | SDtype::Bool => 1,
            SDtype::Unsupported(_, size) => size,
        }
    }

    pub(super) fn name(self) -> &'static str {
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
pub(super) fn storage_dtype(name: &str) -> Option<SDtype> {
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

/// Allow-listed globals, as tags.
#[derive(Debug, Clone)]
pub(super) enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(SDtype, String),
    GetLayout,
    CodecsEncode,
    /// Not allow-listed; only created with `opaque_globals`.
    Opaque(String),
}

impl Machine<'_> {
    pub(super) fn resolve_global(&mut self, module: &str, name: &str) -> Result<Node, CheckpointError> {
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

    pub(super) fn int_of(&self, id: Id, what: &str) -> Result<i64, CheckpointError> {
        match &self.nodes[id] {
            Node::Int(v) => Ok(*v),
            Node::Bool(b) => Ok(*b as i64),
            other => Err(self.err(format!("{what}: expected an int, found {}", node_kind(other)))),
        }
    }

    pub(super) fn uint_tuple(&self, id: Id, what: &str) -> Result<Vec<u64>, CheckpointError> {
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

    pub(super) fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, CheckpointError> {
        match &self.nodes[id] {
            Node::Tuple(v) => Ok(v.clone()),
            other => Err(self.err(format!("{what}: expected a tuple, found {}", node_kind(other)))),
        }
    }

    pub(super) fn persistent_load(&mut self, pid: Id) -> Result<Node, CheckpointError> {
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

    pub(super) fn reduce(&mut self, callable: Id, args: Id) -> Result<Node, CheckpointError> {
        let g = match &self.nodes[callable] {
            Node::Global(g) => g.clone(),
            other => return Err(self.err(format!("REDUCE: cannot call a {}", node_kind(other)))),
        };
        let argv = self.tuple_items(args, "REDUCE arguments")?;
        match g {
            Global::RebuildTensorV2 => self.rebuild_tensor(&argv),
            Global::RebuildParameter => self.rebuild_parameter(&argv),
            Global::OrderedDict => self.ordered_dict(&argv),
            Global::GetLayout => {
                let name = argv.first().and_then(|&a| match &self.nodes[a] {
                    Node::Str(s) => Some(s.clone()),
                    _ => None,
                });
                Ok(Node::Opaque(name.unwrap_or_else(|| "torch.layout".to_string())))
            }
            Global::CodecsEncode => self.codecs_encode(&argv),
            Global::Storage(_, name) => Err(self.err(format!("calling torch.{name} is not supported"))),
            Global::Opaque(name) => Ok(Node::Forbidden(name)),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a view of a storage.
    fn rebuild_tensor(&self, argv: &[Id]) -> Result<Node, CheckpointError> {
        if argv.len() < 4 {
            return Err(self.err(format!("_rebuild_tensor_v2: expected at least 4 arguments, found {}", argv.len())));
        }
        let storage = match &self.nodes[argv[0]] {
            Node::Storage(s) => s.clone(),
            other => {
                return Err(self
                    .err(format!("_rebuild_tensor_v2: first argument must be a storage, found {}", node_kind(other))))
            }
        };
        let offset = self.int_of(argv[1], "tensor storage offset")?;
        let offset = u64::try_from(offset).map_err(|_| self.err(format!("negative storage offset {offset}")))?;
        let size = self.uint_tuple(argv[2], "tensor size")?;
        let stride = self.uint_tuple(argv[3], "tensor stride")?;
        if size.len() != stride.len() {
            return Err(self.err(format!("tensor size {size:?} and stride {stride:?} differ in length")));
        }
        Ok(Node::Tensor(TensorSpec { storage, offset, size, stride }))
    }

    /// `_rebuild_parameter(tensor, ...)`: the tensor itself.
    fn rebuild_parameter(&self, argv: &[Id]) -> Result<Node, CheckpointError> {
        let first = argv.first().ok_or_else(|| self.err("_rebuild_parameter: no arguments"))?;
        match &self.nodes[*first] {
            Node::Tensor(t) => Ok(Node::Tensor(t.clone())),
            other => {
                Err(self
                    .err(format!("_rebuild_parameter: first argument must be a tensor, found {}", node_kind(other))))
            }
        }
    }

    /// `OrderedDict()` or `OrderedDict(iterable of (key, value) pairs)`.
    fn ordered_dict(&self, argv: &[Id]) -> Result<Node, CheckpointError> {
        if argv.is_empty() {
            return Ok(Node::Dict(Vec::new()));
        }
        let items = match &self.nodes[argv[0]] {
            Node::List(v) | Node::Tuple(v) => v.clone(),
            other => {
                return Err(
                    self.err(format!("OrderedDict: argument must be a list of pairs, found {}", node_kind(other)))
                )
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

    /// `_codecs.encode(str, 'latin1')`: how protocol 2 pickles `bytes`.
    fn codecs_encode(&self, argv: &[Id]) -> Result<Node, CheckpointError> {
        let (s, enc) = match argv {
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
}
