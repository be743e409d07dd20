//! The objects the pickle machine builds: a flat arena of [`Node`]s addressed by [`Id`] (shared
//! references and memo entries are ids, so a hostile pickle cannot make copies), including the
//! not-yet-read tensor views and storage references.

use super::globals::{Global, SDtype};

/// Index of a node in `Machine::nodes`.
pub(super) type Id = usize;

/// A storage persistent id: `('storage', torch.<T>Storage, key, location, numel)`.
#[derive(Debug, Clone)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) dtype: SDtype,
    pub(super) numel: u64,
}

#[derive(Debug, Clone)]
/// A `_rebuild_tensor_v2(storage, offset, size, stride, ...)` view, not yet read.
pub(super) struct TensorSpec {
    pub(super) storage: StorageRef,
    pub(super) offset: u64,
    pub(super) size: Vec<u64>,
    pub(super) stride: Vec<u64>,
}

/// An object the pickle built.
#[derive(Debug, Clone)]
pub(super) enum Node {
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
    /// An object of a global outside the allow-list (with `opaque_globals`).
    Forbidden(String),
}

/// A short description of a node's kind (for error messages).
pub(super) fn node_kind(n: &Node) -> &'static str {
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
        Node::Forbidden(_) => "object of a global that is not allowed",
    }
}
