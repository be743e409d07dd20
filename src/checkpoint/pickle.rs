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
                b'(' => {
                    self.spend()?;
                    self.marks.push(self.stack.len());
                }
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
                    self.spend()?;
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
                        Node::Global(Global::Opaque(n)) => Node::Forbidden(n.clone()),
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
                        Node::Dict(_) | Node::Opaque(_) | Node::Forbidden(_) | Node::Tensor(_) => {}
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
