//! What the readers return besides flat state dicts: the unpickled object tree [`Value`].

use crate::array::AnyArray;

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
    /// A torch layout (or another inert tag of an allowed global); holds its name.
    Opaque(String),
    /// An object of a global outside the allow-list (only with
    /// [`super::ReadOptions::opaque_globals`]): holds the global's dotted name (`os.system`).
    /// Never executed; a state dict read from a checkpoint holding one anywhere is refused,
    /// naming it.
    Forbidden(String),
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
            Value::Forbidden(_) => "object of a global that is not allowed",
        }
    }
}
