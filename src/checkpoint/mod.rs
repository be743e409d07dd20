//! Checkpoints: reading and writing state dicts in PyTorch's `.pth`, `.safetensors` and `.npz`
//! formats, converting the key names of the BEiT checkpoint dialects to MMSegmentation's, and
//! resizing relative-position-bias tables.
//!
//! Data flows one way: file → [`read_any`] / [`read_state_dict`] (`Vec<(key, AnyArray)>`, in
//! file order) → [`convert()`] (MMSegmentation names, tables resized, a [`ConversionReport`] of
//! every rename and drop) → [`write_any`] or [`crate::weights::WeightStore::from_arrays`].
//!
//! - [`pickle`]: a restricted unpickler for PyTorch's zip checkpoint format (`torch.save` since
//!   1.6). Nothing in a file is ever executed: the pickle is interpreted over an allow-list of
//!   globals (the ones `torch.load(weights_only=True)` needs for tensors and `OrderedDict`), and
//!   any other global is refused by name. Also `.safetensors` and `.npz` readers.
//! - [`mod@write`]: `.pth` (accepted by `torch.load(weights_only=True)`, laid out as mmengine's
//!   `{"state_dict": OrderedDict, "meta": {}}`), `.safetensors` and `.npz` writers; writes are
//!   atomic (temporary file in the same directory, then a rename) and never overwrite unless
//!   asked to.
//! - [`mod@convert`]: dialect detection and renaming, following MMSegmentation 1.2.2's
//!   `tools/model_converters/beit2mmseg.py` for official BEiT checkpoints (spec §6.2).
//! - [`relpos`]: `BEiT.resize_rel_pos_embed`'s geometric-progression + bicubic-spline resize of
//!   relative-position-bias tables (spec §6.3).
//!
//! Every error names the file, key or global at fault ([`CheckpointError`]).

use std::io;
use std::path::PathBuf;

pub mod convert;
pub mod pickle;
pub mod relpos;
pub mod write;

pub use convert::{convert, detect_dialect, ConversionReport, ConvertOptions, Dialect};
pub use pickle::{
    file_kind, load_pth, load_pth_bytes, read_any, read_safetensors, read_safetensors_bytes, read_state_dict,
    read_state_dict_with, state_dict_of, FileKind, ReadOptions, Value,
};
pub use relpos::{resize_rel_pos_any, resize_rel_pos_table};
pub use write::{write_any, write_npz, write_pth, write_safetensors, StoreDtype, WriteOptions};

use crate::array::ArrayError;

/// Errors of the checkpoint layer. Each variant names the file, key or global at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    #[error("{path}: already exists (pass `force` to overwrite)")]
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
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Io { path: path.to_path_buf(), source }
    }
}

/// IEEE half / bfloat16 conversions (round to nearest even, as PyTorch's `.half()` /
/// `.bfloat16()` from float32).
pub mod half {
    /// float16 bits → f32 (exact).
    pub fn f16_to_f32(h: u16) -> f32 {
        let sign = ((h as u32) & 0x8000) << 16;
        let exp = ((h >> 10) & 0x1f) as u32;
        let man = (h & 0x3ff) as u32;
        let bits = if exp == 0 {
            if man == 0 {
                sign
            } else {
                // Subnormal: man * 2^-24, exact in f32.
                let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
                return if sign != 0 { -v } else { v };
            }
        } else if exp == 0x1f {
            // inf, or NaN with its payload, quieted (as the x86 F16C conversion torch uses)
            sign | 0x7f80_0000 | (man << 13) | if man != 0 { 0x0040_0000 } else { 0 }
        } else {
            sign | ((exp + 127 - 15) << 23) | (man << 13)
        };
        f32::from_bits(bits)
    }

    /// f32 → float16 bits, round to nearest even; overflow gives ±inf, NaN stays NaN.
    pub fn f32_to_f16(x: f32) -> u16 {
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32;
        let man = bits & 0x7f_ffff;
        if exp == 0xff {
            return if man == 0 { sign | 0x7c00 } else { sign | 0x7e00 | ((man >> 13) as u16) };
        }
        let e = exp - 127 + 15;
        if e >= 0x1f {
            return sign | 0x7c00;
        }
        if e <= 0 {
            // Result is subnormal (or zero): value = m * 2^(exp-150) with m = man | 2^23.
            if e < -10 {
                return sign; // below half of the smallest subnormal: rounds to zero
            }
            let m = man | 0x80_0000;
            let shift = (14 - e) as u32; // bits to drop so that the unit is 2^-24
            let half_bit = 1u32 << (shift - 1);
            let rest = m & ((1u32 << shift) - 1);
            let mut r = m >> shift;
            if rest > half_bit || (rest == half_bit && (r & 1) == 1) {
                r += 1;
            }
            return sign | r as u16;
        }
        let mut r = ((e as u32) << 10) | (man >> 13);
        let rest = man & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && (r & 1) == 1) {
            r += 1; // may carry into the exponent, up to inf: correct
        }
        sign | r as u16
    }

    /// bfloat16 bits → f32 (exact).
    pub fn bf16_to_f32(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    /// f32 → bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
    pub fn f32_to_bf16(x: f32) -> u16 {
        let bits = x.to_bits();
        if x.is_nan() {
            return ((bits >> 16) | 0x40) as u16;
        }
        let rounding = 0x7fff + ((bits >> 16) & 1);
        (bits.wrapping_add(rounding) >> 16) as u16
    }
}
