//! Finding the state dict inside an unpickled checkpoint and flattening it to
//! `Vec<(key, AnyArray)>`.

use std::path::Path;

use super::torch_zip::load_pth;
use super::{CheckpointError, ReadOptions, Value};
use crate::array::AnyArray;

/// Extracts the state dict from an unpickled checkpoint: the dict under `state_dict`, `model` or
/// `module` (the first present, in that order, as MMSegmentation's converters look), else the
/// top-level dict itself when all its values are tensors (or dicts of tensors). Dict-valued entries inside the
/// state dict are flattened with dots (`{"a": {"b": t}}` → `a.b`); everything next to the state
/// dict (`meta`, `optimizer`, ...) is left out.
pub fn state_dict_of(root: Value, path: &Path) -> Result<Vec<(String, AnyArray)>, CheckpointError> {
    let nosd = |msg: String| CheckpointError::NoStateDict { path: path.to_path_buf(), msg };
    // An object of a global outside the allow-list anywhere in the file (under `meta` too) is
    // refused by name: such a file is not a plain checkpoint (nothing was executed).
    if let Some((at, global)) = find_forbidden(&root, "") {
        let at = if at.is_empty() { "at the top level".to_string() } else { format!("under `{at}`") };
        return Err(CheckpointError::Format {
            path: path.to_path_buf(),
            msg: format!(
                "the checkpoint holds an object of global `{global}` {at}, which is not allowed (only tensor \
                 rebuilding, storages and OrderedDict are; nothing was executed)"
            ),
        });
    }
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

/// The first object of a forbidden global in `v`: (its dotted key, the global's name).
fn find_forbidden(v: &Value, key: &str) -> Option<(String, String)> {
    let sub = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
    match v {
        Value::Forbidden(g) => Some((key.to_string(), g.clone())),
        Value::List(items) | Value::Tuple(items) => {
            items.iter().enumerate().find_map(|(i, x)| find_forbidden(x, &sub(&i.to_string())))
        }
        Value::Dict(items) => items.iter().find_map(|(k, x)| {
            let name = match k {
                Value::Str(s) => s.clone(),
                other => format!("<{}>", other.kind()),
            };
            find_forbidden(k, key).or_else(|| find_forbidden(x, &sub(&name)))
        }),
        _ => None,
    }
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
