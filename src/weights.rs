//! The strict, name-addressed weight store the models are built from.
//!
//! Data flows one way: state dict ([`AnyArray`]s by MMSegmentation key) → [`WeightStore`]
//! (converted to the run's dtype) → model constructors, which take each tensor by its key and
//! declared shape. All missing, wrong-shape and unexpected keys are collected and reported
//! together in one error.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, IxDyn};

use crate::array::AnyArray;
use crate::Float;

/// Weights that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights do not match the model:\n{}", .problems.join("\n"))]
    Mismatch { problems: Vec<String> },
}

/// A state dict (MMSegmentation key → tensor) converted to the run's dtype, handed out by key
/// and shape to the model constructors. Every access is recorded so that, once the model is
/// built, [`WeightStore::finish`] can report missing, wrong-shape and unused keys in one error.
pub struct WeightStore<T: Float> {
    floats: BTreeMap<String, ArrayD<T>>,
    ints: BTreeMap<String, ArrayD<i64>>,
    used: BTreeSet<String>,
    /// Every (key, shape) asked for, in construction order.
    requests: Vec<(String, Vec<usize>)>,
    problems: Vec<String>,
    /// Keys that may be present without being used (derived buffers, BN counters).
    ignorable_suffixes: Vec<&'static str>,
    /// Built from no tensor at all.
    empty: bool,
}

impl<T: Float> WeightStore<T> {
    /// Builds a store from named arrays; float arrays are converted to `T`.
    pub fn from_arrays(arrays: impl IntoIterator<Item = (String, AnyArray)>) -> Self {
        let mut floats = BTreeMap::new();
        let mut ints = BTreeMap::new();
        for (k, a) in arrays {
            if let Some(f) = a.to_float::<T>() {
                floats.insert(k, f);
            } else if let Some(i) = a.to_i64() {
                ints.insert(k, i);
            }
        }
        WeightStore {
            empty: floats.is_empty() && ints.is_empty(),
            floats,
            ints,
            used: BTreeSet::new(),
            requests: Vec::new(),
            problems: Vec::new(),
            ignorable_suffixes: vec!["num_batches_tracked"],
        }
    }

    /// [`Self::get`] of a vector `(n,)`.
    pub fn get1(&mut self, key: &str, n: usize) -> ndarray::Array1<T> {
        self.get(key, &[n]).into_shape_with_order(n).expect("shape checked by get")
    }

    /// [`Self::get`] of a matrix `(a, b)`.
    pub fn get2(&mut self, key: &str, a: usize, b: usize) -> ndarray::Array2<T> {
        self.get(key, &[a, b]).into_shape_with_order((a, b)).expect("shape checked by get")
    }

    /// [`Self::get`] of a 4-D kernel.
    pub fn get4(&mut self, key: &str, sh: [usize; 4]) -> ndarray::Array4<T> {
        self.get(key, &sh).into_shape_with_order((sh[0], sh[1], sh[2], sh[3])).expect("shape checked by get")
    }

    /// Takes the float tensor `key` with exactly `shape`. On a missing key or a wrong shape the
    /// problem is recorded and a zero tensor of `shape` is returned, so that construction goes
    /// on and every problem is reported at once by [`finish`](Self::finish). The tensor is
    /// moved out of the store (no copy: a model is built with one copy of its weights in
    /// memory, not two); asking for the same key twice is a bug of the model code, reported
    /// like a problem of the checkpoint.
    pub fn get(&mut self, key: &str, shape: &[usize]) -> ArrayD<T> {
        let again = !self.used.insert(key.to_string());
        self.requests.push((key.to_string(), shape.to_vec()));
        if again && !self.empty {
            self.problems.push(format!("  internal: `{key}` was asked for twice"));
            return ArrayD::zeros(IxDyn(shape));
        }
        match self.floats.remove(key) {
            Some(a) if a.shape() == shape => a,
            Some(a) => {
                self.problems.push(format!("  wrong shape: `{key}` is {:?}, the model expects {:?}", a.shape(), shape));
                self.floats.insert(key.to_string(), a);
                ArrayD::zeros(IxDyn(shape))
            }
            None => {
                if self.ints.contains_key(key) {
                    self.problems.push(format!(
                        "  wrong dtype: `{key}` is an integer tensor, the model expects floats of shape {shape:?}"
                    ));
                } else {
                    self.problems.push(format!("  missing: `{key}` {shape:?}"));
                }
                ArrayD::zeros(IxDyn(shape))
            }
        }
    }

    /// Takes an optional integer buffer (e.g. `relative_position_index`).
    pub fn get_int_opt(&mut self, key: &str) -> Option<ArrayD<i64>> {
        let v = self.ints.get(key).cloned();
        if v.is_some() {
            self.used.insert(key.to_string());
        }
        v
    }

    /// Whether the store was built without any tensor (it can only collect requests, as
    /// `parameter_shapes` does, or fail in `finish`).
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Every float tensor the model asked for, `(key, shape)` in construction order: the
    /// parameter list of a model (see `EncoderDecoder::parameter_shapes`).
    pub fn requests(&self) -> &[(String, Vec<usize>)] {
        &self.requests
    }

    /// Records a problem found while building (e.g. a buffer that disagrees with the config).
    pub fn problem(&mut self, msg: String) {
        self.problems.push(format!("  {msg}"));
    }

    /// Ends construction: one error listing every missing, wrong-shape and unexpected key.
    pub fn finish(self) -> Result<(), WeightsError> {
        let mut problems = self.problems;
        for k in self.floats.keys().chain(self.ints.keys()) {
            if !self.used.contains(k) && !self.ignorable_suffixes.iter().any(|s| k.ends_with(s)) {
                problems.push(format!("  unexpected: `{k}` is not a parameter of this model"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch { problems })
        }
    }
}

/// A state dict: tensors by key, in file order.
pub type StateDict = Vec<(String, AnyArray)>;

/// Why a checkpoint could not become a model's state dict.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] crate::checkpoint::CheckpointError),
    #[error("{path}: a backbone-only checkpoint ({dialect}) cannot build a whole segmentor")]
    BackboneOnly { path: std::path::PathBuf, dialect: crate::checkpoint::Dialect },
    #[error("{path}: {msg}")]
    NotFinite { path: std::path::PathBuf, msg: String },
}

/// Reads a checkpoint in any supported format (`.pth`, `.safetensors`, `.npz`) and dialect
/// (MMSegmentation, official BEiT, UNILM ADE20K, HF; `dialect` forces one, otherwise it is
/// detected) as an MMSegmentation state dict for `model`: converted, with relative-position
/// tables resized to the configured window. Non-allow-listed pickle globals in metadata become
/// inert placeholders (`opaque_globals`; nothing is executed either way). Weights holding NaN
/// or infinity are refused by key and count.
pub fn load_state_dict(
    path: &std::path::Path,
    model: &crate::config::SegmentorConfig,
    dialect: Option<crate::checkpoint::Dialect>,
) -> Result<StateDict, LoadError> {
    use crate::checkpoint::{convert, detect_dialect, read_any, ConvertOptions, Dialect, ReadOptions};
    let state = read_any(path, ReadOptions { widen_half: true, opaque_globals: true })?;
    let bad = non_finite(&state);
    if !bad.is_empty() {
        return Err(LoadError::NotFinite {
            path: path.to_path_buf(),
            msg: format!("weights are not finite: {}", bad.join(", ")),
        });
    }
    let dialect = match dialect {
        Some(d) => d,
        None => detect_dialect(state.iter().map(|(k, _)| k.as_str()))
            .map_err(|e| crate::checkpoint::CheckpointError::Format { path: path.to_path_buf(), msg: e.to_string() })?,
    };
    if dialect == Dialect::Mmseg {
        return Ok(state);
    }
    let (wh, ww) = model.backbone.window();
    let opts = ConvertOptions {
        dialect: Some(dialect),
        dst_window: (wh == ww).then_some((wh, ww)),
        final_norm: model.backbone.final_norm,
    };
    let (out, _report) = convert(state, &opts)
        .map_err(|e| crate::checkpoint::CheckpointError::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    if !out.iter().any(|(k, _)| k.starts_with("backbone.")) {
        return Err(LoadError::BackboneOnly { path: path.to_path_buf(), dialect });
    }
    Ok(out)
}

/// `key: N NaN, M inf` for every float tensor of `arrays` that holds non-finite values.
pub fn non_finite(arrays: &[(String, AnyArray)]) -> Vec<String> {
    arrays.iter().filter_map(|(k, a)| non_finite_summary(a).map(|s| format!("`{k}`: {s}"))).collect()
}

/// `N NaN, M inf` when `a` is a float array holding non-finite values.
pub fn non_finite_summary(a: &AnyArray) -> Option<String> {
    let (nan, inf) = match a {
        AnyArray::F32(x) => x.iter().fold((0, 0), |(n, i), v| (n + v.is_nan() as usize, i + v.is_infinite() as usize)),
        AnyArray::F64(x) => x.iter().fold((0, 0), |(n, i), v| (n + v.is_nan() as usize, i + v.is_infinite() as usize)),
        _ => (0, 0),
    };
    (nan + inf > 0).then(|| format!("{nan} NaN, {inf} inf of {} values", a.shape().iter().product::<usize>()))
}

/// The content identity of a state dict: SHA-256 over its tensors in key order, each as its key,
/// dtype, shape and little-endian element bytes (streamed; nothing is copied), in hex. Two
/// checkpoints with the same tensors have the same identity whatever their file format or name;
/// one differing bias changes it. Used to identify an evaluation run (`results.jsonl`).
pub fn content_sha256(state: &[(String, AnyArray)]) -> String {
    use sha2::{Digest, Sha256};
    let mut order: Vec<&(String, AnyArray)> = state.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for (k, a) in order {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(a.dtype_name().as_bytes());
        h.update((a.shape().len() as u64).to_le_bytes());
        for &d in a.shape() {
            h.update((d as u64).to_le_bytes());
        }
        macro_rules! stream {
            ($x:expr, $f:expr) => {{
                for v in $x.iter() {
                    buf.extend_from_slice(&$f(*v));
                    if buf.len() >= 1 << 16 {
                        h.update(&buf);
                        buf.clear();
                    }
                }
            }};
        }
        match a {
            AnyArray::F32(x) => stream!(x, |v: f32| v.to_le_bytes()),
            AnyArray::F64(x) => stream!(x, |v: f64| v.to_le_bytes()),
            AnyArray::I64(x) => stream!(x, |v: i64| v.to_le_bytes()),
            AnyArray::I32(x) => stream!(x, |v: i32| v.to_le_bytes()),
            AnyArray::U8(x) => stream!(x, |v: u8| [v]),
            AnyArray::Bool(x) => stream!(x, |v: bool| [v as u8]),
        }
        h.update(&buf);
        buf.clear();
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes` in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> WeightStore<f32> {
        WeightStore::from_arrays(vec![
            ("a.weight".to_string(), AnyArray::F32(ArrayD::from_elem(IxDyn(&[2, 3]), 1.5))),
            ("b.bias".to_string(), AnyArray::F32(ArrayD::from_elem(IxDyn(&[4]), 2.0))),
        ])
    }

    #[test]
    fn get_hands_out_the_tensor_and_finish_accepts_a_complete_model() {
        let mut ws = store();
        assert!(!ws.is_empty());
        assert_eq!(ws.get("a.weight", &[2, 3]), ArrayD::from_elem(IxDyn(&[2, 3]), 1.5));
        assert_eq!(ws.get("b.bias", &[4]).sum(), 8.0);
        // Every tensor handed out: the store still knows it was built from tensors.
        assert!(!ws.is_empty());
        assert!(ws.finish().is_ok());
    }

    #[test]
    fn asking_twice_wrong_shapes_and_leftovers_are_reported_once_each() {
        let mut ws = store();
        let _ = ws.get("a.weight", &[2, 3]);
        let again = ws.get("a.weight", &[2, 3]);
        assert_eq!(again.sum(), 0.0);
        let wrong = ws.get("b.bias", &[5]);
        assert_eq!(wrong.shape(), &[5]);
        let _ = ws.get("c.weight", &[1]);
        let problems = match ws.finish() {
            Err(WeightsError::Mismatch { problems }) => problems.join("\n"),
            other => panic!("expected a mismatch, got {other:?}"),
        };
        assert!(problems.contains("`a.weight` was asked for twice"), "{problems}");
        assert!(problems.contains("wrong shape: `b.bias` is [4]"), "{problems}");
        assert!(problems.contains("missing: `c.weight`"), "{problems}");
        // A wrong-shape key is not also "unexpected".
        assert!(!problems.contains("unexpected: `b.bias`"), "{problems}");
    }

    #[test]
    fn an_empty_store_only_collects_requests() {
        let mut ws = WeightStore::<f32>::from_arrays(Vec::new());
        assert!(ws.is_empty());
        let _ = ws.get("x", &[2]);
        let _ = ws.get("x", &[2]);
        assert_eq!(ws.requests().len(), 2);
    }
}
