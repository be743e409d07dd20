//! The restricted pickle machine: interprets the opcodes `torch.save` emits (protocols 2-5)
//! into a graph of [`Node`]s, with bounds on every length, the object count and the memo.
//! Nothing in a pickle is ever executed: `GLOBAL`s are resolved against the allow-list in
//! [`super::globals`] and become inert tags; `REDUCE` / `NEWOBJ` / `BUILD` only build the few
//! values those tags stand for (tensor views, `OrderedDict`, bytes). The graph is turned into a
//! [`super::Value`] tree, reading tensor data, by [`super::torch_zip`].

use std::collections::HashMap;
use std::path::Path;

use super::globals::Global;
pub(super) use super::nodes::{node_kind, Id, Node, StorageRef, TensorSpec};
use super::{CheckpointError, ReadOptions};

/// The pickle opcodes the machine runs (`pickletools`' names), protocols 0-5 as `torch.save`
/// writes them.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES8: u8 = 0x8e;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const NONE: u8 = b'N';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
}

/// The pickle virtual machine: stack, marks, memo and the nodes created so far.
pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Position of the opcode being executed (for errors).
    pub(super) op_pos: usize,
    pub(super) path: &'a Path,
    pub(super) opts: ReadOptions,
    pub(super) nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Operations that grow the machine's memory so far (see [`MAX_OPS`]).
    ops: usize,
}

/// The one per-file budget of the machine (a bound on memory for hostile input): every
/// operation that grows its memory counts one, whether it creates an object, pushes a MARK,
/// pushes a memo entry (`BINGET`, `DUP`) or stores one (`BINPUT`, `MEMOIZE`). 50 M operations
/// of at most ~64 bytes each bound the machine to a few GB whatever the opcodes.
const MAX_OPS: usize = 50_000_000;

impl<'a> Machine<'a> {
    pub(super) fn new(data: &'a [u8], path: &'a Path, opts: ReadOptions) -> Self {
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
            ops: 0,
        }
    }

    /// Counts one memory-growing operation against [`MAX_OPS`].
    fn spend(&mut self) -> Result<(), CheckpointError> {
        self.ops += 1;
        if self.ops > MAX_OPS {
            return Err(self.err(format!(
                "more than {MAX_OPS} objects, marks and memo operations: refusing to go on (a real checkpoint needs far fewer)"
            )));
        }
        Ok(())
    }

    pub(super) fn err(&self, msg: impl Into<String>) -> CheckpointError {
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
        self.spend()?;
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
        self.spend()?;
        let top = self.top()?;
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), CheckpointError> {
        self.spend()?;
        let id = *self.memo.get(&idx).ok_or_else(|| self.err(format!("memo key {idx} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    /// Runs to `STOP`; returns the id of the unpickled object.
    pub(super) fn run(&mut self) -> Result<Id, CheckpointError> {
        loop {
            self.op_pos = self.pos;
            let code = self.u8()?;
            match code {
                op::STOP => return self.pop(),
                op::PROTO | op::FRAME => self.protocol(code)?,
                op::BINUNICODE | op::SHORT_BINUNICODE | op::BINUNICODE8 | op::SHORT_BINSTRING | op::BINSTRING => {
                    self.string(code)?
                }
                op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 => self.bytes(code)?,
                op::BININT
                | op::BININT1
                | op::BININT2
                | op::LONG1
                | op::LONG4
                | op::BINFLOAT
                | op::NEWTRUE
                | op::NEWFALSE
                | op::NONE => self.scalar(code)?,
                op::MARK | op::POP | op::POP_MARK | op::DUP => self.stack_op(code)?,
                op::EMPTY_DICT
                | op::EMPTY_LIST
                | op::EMPTY_TUPLE
                | op::TUPLE
                | op::TUPLE1
                | op::TUPLE2
                | op::TUPLE3
                | op::SETITEM
                | op::SETITEMS
                | op::APPEND
                | op::APPENDS => self.container(code)?,
                op::GLOBAL | op::STACK_GLOBAL | op::BINPERSID | op::REDUCE | op::NEWOBJ | op::BUILD => {
                    self.object(code)?
                }
                op::BINPUT | op::LONG_BINPUT | op::MEMOIZE | op::BINGET | op::LONG_BINGET => self.memo_op(code)?,
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    /// `PROTO` (protocols up to 5) and `FRAME` (an advisory length, skipped).
    fn protocol(&mut self, code: u8) -> Result<(), CheckpointError> {
        if code == op::FRAME {
            self.u64()?;
            return Ok(());
        }
        let v = self.u8()?;
        if v > 5 {
            return Err(self.err(format!("unsupported pickle protocol {v}")));
        }
        Ok(())
    }

    /// A length-prefixed string (Python 2 `str` read as text, as torch.load's default encoding).
    fn string(&mut self, code: u8) -> Result<(), CheckpointError> {
        let n = match code {
            op::SHORT_BINUNICODE | op::SHORT_BINSTRING => self.u8()? as u64,
            op::BINUNICODE => self.u32()? as u64,
            op::BINUNICODE8 => self.u64()?,
            _ => {
                let n = self.u32()? as i32; // BINSTRING
                u64::try_from(n).map_err(|_| self.err("negative BINSTRING length"))?
            }
        };
        let n = self.len_from(n)?;
        let b = self.take(n)?;
        self.str_node(b)
    }

    /// A length-prefixed `bytes`.
    fn bytes(&mut self, code: u8) -> Result<(), CheckpointError> {
        let n = match code {
            op::SHORT_BINBYTES => self.u8()? as u64,
            op::BINBYTES => self.u32()? as u64,
            _ => self.u64()?, // BINBYTES8
        };
        let n = self.len_from(n)?;
        let b = self.take(n)?.to_vec();
        self.push(Node::Bytes(b))
    }

    /// Integers, floats, booleans and `None`.
    fn scalar(&mut self, code: u8) -> Result<(), CheckpointError> {
        let node = match code {
            op::BININT => Node::Int(self.u32()? as i32 as i64),
            op::BININT1 => Node::Int(self.u8()? as i64),
            op::BININT2 => Node::Int(self.u16()? as i64),
            op::LONG1 | op::LONG4 => self.long(code)?,
            op::BINFLOAT => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                Node::Float(f64::from_be_bytes(a))
            }
            op::NEWTRUE => Node::Bool(true),
            op::NEWFALSE => Node::Bool(false),
            _ => Node::None,
        };
        self.push(node)
    }

    /// `LONG1` / `LONG4`: a little-endian two's complement integer of a given byte length.
    fn long(&mut self, code: u8) -> Result<Node, CheckpointError> {
        let n = if code == op::LONG1 {
            self.u8()? as u64
        } else {
            let n = self.u32()? as i32;
            u64::try_from(n).map_err(|_| self.err("negative LONG4 length"))?
        };
        let n = self.len_from(n)?;
        let b = self.take(n)?;
        Ok(if b.is_empty() {
            Node::Int(0)
        } else if b.len() <= 8 {
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
            a[..b.len()].copy_from_slice(b);
            Node::Int(i64::from_le_bytes(a))
        } else {
            Node::BigInt(b.to_vec())
        })
    }

    /// `MARK`, `POP`, `POP_MARK`, `DUP`.
    fn stack_op(&mut self, code: u8) -> Result<(), CheckpointError> {
        match code {
            op::MARK => {
                self.spend()?;
                self.marks.push(self.stack.len());
            }
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            _ => {
                self.spend()?; // DUP
                let t = self.top()?;
                self.stack.push(t);
            }
        }
        Ok(())
    }

    /// Empty containers, tuples from the stack, dict items and list appends.
    fn container(&mut self, code: u8) -> Result<(), CheckpointError> {
        match code {
            op::EMPTY_DICT => self.push(Node::Dict(Vec::new())),
            op::EMPTY_LIST => self.push(Node::List(Vec::new())),
            op::EMPTY_TUPLE => self.push(Node::Tuple(Vec::new())),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                items.reverse();
                self.push(Node::Tuple(items))
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?;
                self.dict_set(d, vec![(k, v)])
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err(self.err("SETITEMS: odd number of items"));
                }
                let d = self.top()?;
                self.dict_set(d, items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
            }
            op::APPEND => {
                let v = self.pop()?;
                let l = self.top()?;
                self.list_extend(l, vec![v])
            }
            _ => {
                let items = self.pop_mark()?; // APPENDS
                let l = self.top()?;
                self.list_extend(l, items)
            }
        }
    }

    /// Globals (checked against the allow-list), persistent ids (tensor storages), `REDUCE`,
    /// `NEWOBJ` and `BUILD`.
    fn object(&mut self, code: u8) -> Result<(), CheckpointError> {
        let node = match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.resolve_global(module, name)?
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (m, n) = match (&self.nodes[module], &self.nodes[name]) {
                    (Node::Str(m), Node::Str(n)) => (m.clone(), n.clone()),
                    _ => return Err(self.err("STACK_GLOBAL: module and name must be strings")),
                };
                self.resolve_global(&m, &n)?
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.persistent_load(pid)?
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(callable, args)?
            }
            op::NEWOBJ => {
                // cls.__new__(cls, *args)
                let _args = self.pop()?;
                let cls = self.pop()?;
                match &self.nodes[cls] {
                    Node::Global(Global::OrderedDict) => Node::Dict(Vec::new()),
                    Node::Global(Global::Opaque(n)) => Node::Forbidden(n.clone()),
                    other => return Err(self.err(format!("NEWOBJ: cannot instantiate a {}", node_kind(other)))),
                }
            }
            _ => return self.build(),
        };
        self.push(node)
    }

    /// `BUILD`: obj.__setstate__(state). Attributes of an OrderedDict (a state dict's
    /// `_metadata`) and of opaque objects are ignored.
    fn build(&mut self) -> Result<(), CheckpointError> {
        let _state = self.pop()?;
        let obj = self.top()?;
        match &self.nodes[obj] {
            Node::Dict(_) | Node::Opaque(_) | Node::Forbidden(_) | Node::Tensor(_) => Ok(()),
            other => Err(self.err(format!("BUILD: cannot set the state of a {}", node_kind(other)))),
        }
    }

    /// The memo: `BINPUT`, `LONG_BINPUT`, `MEMOIZE` store the top; `BINGET`, `LONG_BINGET` push.
    fn memo_op(&mut self, code: u8) -> Result<(), CheckpointError> {
        match code {
            op::BINPUT => {
                let i = self.u8()? as u32;
                self.memo_put(i)
            }
            op::LONG_BINPUT => {
                let i = self.u32()?;
                self.memo_put(i)
            }
            op::MEMOIZE => {
                let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                self.memo_put(i)
            }
            op::BINGET => {
                let i = self.u8()? as u32;
                self.memo_get(i)
            }
            _ => {
                let i = self.u32()?; // LONG_BINGET
                self.memo_get(i)
            }
        }
    }

    fn dict_set(&mut self, d: Id, pairs: Vec<(Id, Id)>) -> Result<(), CheckpointError> {
        // Python semantics: a repeated key keeps its position and takes the new value.
        let keys: Vec<Option<KeyRepr>> = pairs.iter().map(|&(k, _)| self.key_repr(k)).collect();
        let existing: Vec<Option<KeyRepr>> = match &self.nodes[d] {
            Node::Dict(items) => items.iter().map(|&(k, _)| self.key_repr(k)).collect(),
            Node::Opaque(_) | Node::Forbidden(_) => return Ok(()),
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
            Node::Opaque(_) | Node::Forbidden(_) => Ok(()),
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
