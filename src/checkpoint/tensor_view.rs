//! Tensors from storages: a `_rebuild_tensor_v2` view (offset, size, stride) checked to lie
//! inside its storage, then gathered (contiguously, or element by element) and decoded from
//! little-endian bytes; float16 / bfloat16 widened to float32 with the `half` crate.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::globals::SDtype;
use super::pickle::{StorageRef, TensorSpec};
use super::torch_zip::Archive;
use super::{CheckpointError, ReadOptions};
use crate::array::AnyArray;

/// Loads storages on demand, keeping a storage's bytes only while tensors still need them.
pub(super) struct Storages<'a, R: Read + Seek> {
    pub(super) archive: &'a mut Archive<R>,
    pub(super) path: &'a Path,
    pub(super) opts: ReadOptions,
    pub(super) remaining_uses: HashMap<String, usize>,
    pub(super) cache: HashMap<String, Vec<u8>>,
    /// Elements of every tensor built so far (over the whole file).
    pub(super) materialized: u64,
    /// The most elements the file's tensors may hold together: the elements of its storages
    /// plus [`MAX_EXPANSION`] (views may repeat storage elements, up to that many in all).
    pub(super) budget: u64,
}

/// Elements that views (zero strides, overlapping or repeated views of a storage) may add,
/// over the whole file, beyond what the file's storages hold: 2^28 (1 GiB of float32).
pub(super) const MAX_EXPANSION: u64 = 1 << 28;

impl<R: Read + Seek> Storages<'_, R> {
    /// Reads the tensor of view `spec` (state-dict key `key`, for errors).
    pub(super) fn tensor(&mut self, spec: &TensorSpec, key: &str) -> Result<AnyArray, CheckpointError> {
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
        let total = self.materialized.saturating_add(numel);
        if total > self.budget {
            return Err(terr(format!(
                "a view of {numel} elements over storage `{}` of {} elements would make the file's tensors hold {total} \
                 elements, more than the {} this file may hold (its storages' elements plus at most {MAX_EXPANSION} \
                 repeated by views, over the whole file); refusing to expand it",
                st.key, st.numel, self.budget
            )));
        }
        self.materialized = total;
        let shape: Vec<usize> = spec.size.iter().map(|&d| d as usize).collect();
        let bytes = self.bytes(st)?;
        let idx = element_indices(spec);
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
                    Indices::Strided => ViewIndices::new(spec, numel).map(|i| $f(at(i))).collect(),
                };
                AnyArray::$variant(ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| terr(e.to_string()))?)
            }};
        }
        let out = match st.dtype {
            SDtype::F32 => build!(F32, |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            SDtype::F64 => build!(F64, |b: &[u8]| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
            SDtype::F16 => build!(F32, |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
            SDtype::BF16 => build!(F32, |b: &[u8]| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
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
    /// Walk the view with [`ViewIndices`] (no list of indices is built).
    Strided,
}

/// Whether a view is contiguous (then its first element's index).
fn element_indices(spec: &TensorSpec) -> Indices {
    let mut expect = 1u64;
    for (&d, &s) in spec.size.iter().zip(&spec.stride).rev() {
        if d != 1 && s != expect {
            return Indices::Strided;
        }
        expect = expect.saturating_mul(d);
    }
    Indices::Contiguous(spec.offset)
}

/// Storage element indices of a view, in row-major order of the view (an odometer over its
/// size and stride; bounds were checked by the caller).
struct ViewIndices<'a> {
    spec: &'a TensorSpec,
    idx: Vec<u64>,
    cur: u64,
    left: u64,
}

impl<'a> ViewIndices<'a> {
    fn new(spec: &'a TensorSpec, numel: u64) -> Self {
        ViewIndices { spec, idx: vec![0; spec.size.len()], cur: spec.offset, left: numel }
    }
}

impl Iterator for ViewIndices<'_> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let out = self.cur;
        let mut ax = self.idx.len();
        while ax > 0 {
            ax -= 1;
            self.idx[ax] += 1;
            self.cur = self.cur.wrapping_add(self.spec.stride[ax]);
            if self.idx[ax] < self.spec.size[ax] {
                break;
            }
            self.cur = self.cur.wrapping_sub(self.spec.stride[ax].wrapping_mul(self.spec.size[ax]));
            self.idx[ax] = 0;
        }
        Some(out)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}
