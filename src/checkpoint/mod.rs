//! Checkpoints: reading and writing state dicts in PyTorch's `.pth`, `.safetensors` and `.npz`
//! formats, converting the key names of the BEiT checkpoint dialects to MMSegmentation's, and
//! resizing relative-position-bias tables.
//!
//! Data flows one way: file → [`read_any`] / [`read_state_dict`] (`Vec<(key, AnyArray)>`, in
//! file order) → [`convert()`] (MMSegmentation names, tables resized, a [`ConversionReport`] of
//! every rename and drop) → [`write_any`] or [`crate::weights::WeightStore::from_arrays`].
//!
//! Reading, one job per file:
//! - [`pickle`]: the restricted pickle machine (opcodes → a graph of nodes). Nothing in a file
//!   is ever executed: [`globals`] resolves `GLOBAL`s over an allow-list (the ones
//!   `torch.load(weights_only=True)` needs for tensors and `OrderedDict`) and refuses any other
//!   by name.
//! - [`torch_zip`]: PyTorch's zip format (`torch.save` since 1.6): the archive, its storages
//!   (sizes and CRC-32 checked) and the [`Value`] tree; [`tensor_view`] reads each tensor view.
//! - [`state_dict`]: finding and flattening the state dict inside a [`Value`] tree.
//! - [`mod@safetensors`]: `.safetensors` reading and writing (the `safetensors` crate);
//!   `.npz` / `.npy` are read by [`crate::array`].
//! - [`read`]: format sniffing ([`file_kind`]) and [`read_any`].
//! - [`options`]: [`ReadOptions`], how the readers read (half floats widened or refused; in a
//!   `.pth`, objects of globals outside the allow-list refused or kept as inert placeholders).
//! - [`value`]: the unpickled object tree [`Value`] the `.pth` reader returns.
//!
//! Writing and converting:
//! - [`mod@write`]: `.pth` (accepted by `torch.load(weights_only=True)`, laid out as mmengine's
//!   `{"state_dict": OrderedDict, "meta": {}}`) and `.npz` writers, and [`write_any`]; writes are
//!   atomic (temporary file in the same directory, then a rename) and never overwrite unless
//!   asked to.
//! - [`mod@convert`]: dialect detection and renaming, following MMSegmentation 1.2.2's
//!   `tools/model_converters/beit2mmseg.py` for official BEiT checkpoints (docs/mmseg-beit-upernet.md §6.2).
//! - [`export`]: the inverse, from mmseg names to `hf` or `beit-official` names.
//! - [`relpos`]: `BEiT.resize_rel_pos_embed`'s geometric-progression + bicubic-spline resize of
//!   relative-position-bias tables (docs/mmseg-beit-upernet.md §6.3).
//!
//! # How errors name things
//!
//! One rule: **the library names the file, once; callers do not add it again.** Every
//! [`CheckpointError`] message starts with the path it was given (`<file>: ...`, also available
//! as [`CheckpointError::path`]) and then says, in plain words, what is wrong inside it: the
//! archive entry, tensor key, storage, pickle byte offset or global at fault. A caller that
//! reports the error adds only what it was doing, never the path (the CLI: `error: <file>: not a
//! zip archive ...`, not `reading <file>: <file>: ...`). An I/O error's text is part of the
//! message and is not also exposed as the error's `source()`, which `anyhow`'s `{:#}` would
//! print a second time. [`crate::array::ArrayError`] follows the same rule.

use std::io;
use std::path::{Path, PathBuf};

pub mod convert;
pub mod export;
mod globals;
mod nodes;
pub mod options;
mod pickle;
pub mod read;
pub mod relpos;
pub mod safetensors;
pub mod state_dict;
mod tensor_view;
pub mod torch_zip;
pub mod value;
pub mod write;

pub use convert::{convert, detect_dialect, ConversionReport, ConvertOptions, Dialect};
pub use export::{export, ExportOptions};
pub use options::ReadOptions;
pub use read::{file_kind, read_any, FileKind};
pub use relpos::{resize_rel_pos_any, resize_rel_pos_table};
pub use safetensors::{read_safetensors, read_safetensors_bytes, write_safetensors};
pub use state_dict::{read_state_dict, read_state_dict_with, state_dict_of};
pub use torch_zip::{load_pth, load_pth_bytes};
pub use value::Value;
pub use write::{write_any, write_npz, write_pth, StoreDtype, WriteOptions};

use crate::array::ArrayError;

/// Errors of the checkpoint layer. Each names the file once, then the entry, key or global at
/// fault (see the module doc).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: this is a legacy (pre-PyTorch-1.6, non-zip) torch.save file, which is not supported; re-save it with a current PyTorch (`torch.save(torch.load(f), g)`)")]
    LegacyFormat { path: PathBuf },
    #[error("{path}: pickle byte {pos}: {msg}")]
    Pickle { path: PathBuf, pos: usize, msg: String },
    #[error("{path}: pickle byte {pos}: global `{global}` is not allowed (only tensor rebuilding, storages and OrderedDict are; nothing was executed)")]
    ForbiddenGlobal { path: PathBuf, pos: usize, global: String },
    #[error("{path}: storage `{key}`: {msg}")]
    Storage { path: PathBuf, key: String, msg: String },
    #[error("{path}: tensor `{key}`: {msg}")]
    Tensor { path: PathBuf, key: String, msg: String },
    #[error("{path}: tensor `{key}` is {dtype}; pass `ReadOptions {{ widen_half: true, .. }}` to read it widened to float32")]
    HalfNotWidened { path: PathBuf, key: String, dtype: &'static str },
    #[error("{path}: no state dict found: {msg}")]
    NoStateDict { path: PathBuf, msg: String },
    #[error("{path}: already exists (pass `force` / `--force` to overwrite)")]
    Exists { path: PathBuf },
    #[error("{path}: {msg}")]
    Write { path: PathBuf, msg: String },
    #[error("checkpoint conversion: {msg}")]
    Convert { msg: String },
    #[error("relative position bias resize: {msg}")]
    RelPos { msg: String },
    #[error(transparent)]
    Array(#[from] ArrayError),
}

impl CheckpointError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
        move |err| CheckpointError::Io { path: path.to_path_buf(), err }
    }

    /// The file the error is about (`None` for conversion and resize errors, which are about
    /// tensors already in memory).
    pub fn path(&self) -> Option<&Path> {
        use CheckpointError as E;
        match self {
            E::Io { path, .. }
            | E::Format { path, .. }
            | E::LegacyFormat { path }
            | E::Pickle { path, .. }
            | E::ForbiddenGlobal { path, .. }
            | E::Storage { path, .. }
            | E::Tensor { path, .. }
            | E::HalfNotWidened { path, .. }
            | E::NoStateDict { path, .. }
            | E::Exists { path }
            | E::Write { path, .. } => Some(path),
            E::Array(a) => Some(a.path()),
            E::Convert { .. } | E::RelPos { .. } => None,
        }
    }
}
