//! Named tensors from files: `.npy` arrays, `.npz` state dicts, and the strict, name-addressed
//! weight store the models are built from.
//!
//! Data flows one way: file → [`AnyArray`] → [`WeightStore`] (converted to the run's dtype) →
//! model constructors, which take each tensor by its MMSegmentation key and declared shape. All
//! missing, wrong-shape and unexpected keys are collected and reported together in one error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use npyz::{DType, NpyFile, Order, TypeChar};

use crate::Float;

/// Errors reading arrays or resolving weights. Every variant names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a readable .npy array{}: {msg}", entry.as_ref().map(|e| format!(" (entry `{e}`)")).unwrap_or_default())]
    BadNpy { path: PathBuf, entry: Option<String>, msg: String },
    #[error("{path}: not a readable .npz archive: {msg}")]
    BadNpz { path: PathBuf, msg: String },
    #[error("{path}: entry `{key}` has dtype {dtype}, which is not supported here")]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
    #[error("weights do not match the model:\n{}", .problems.join("\n"))]
    Mismatch { problems: Vec<String> },
    #[error("weight `{key}`: {msg}")]
    Invalid { key: String, msg: String },
}

/// An n-dimensional array as stored in a `.npy` file, in its own dtype.
#[derive(Debug, Clone)]
pub enum AnyArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

impl AnyArray {
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyArray::F32(a) => a.shape(),
            AnyArray::F64(a) => a.shape(),
            AnyArray::I64(a) => a.shape(),
            AnyArray::I32(a) => a.shape(),
            AnyArray::U8(a) => a.shape(),
            AnyArray::Bool(a) => a.shape(),
        }
    }

    /// numpy's name of the dtype (`float32`, `int64`, ...).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            AnyArray::F32(_) => "float32",
            AnyArray::F64(_) => "float64",
            AnyArray::I64(_) => "int64",
            AnyArray::I32(_) => "int32",
            AnyArray::U8(_) => "uint8",
            AnyArray::Bool(_) => "bool",
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self, AnyArray::F32(_) | AnyArray::F64(_))
    }

    /// Float data converted to `T` (f64 → f32 rounds); `None` for integer arrays.
    pub fn to_float<T: Float>(&self) -> Option<ArrayD<T>> {
        match self {
            AnyArray::F32(a) => Some(a.mapv(|v| T::from_f64_lossy(v as f64))),
            AnyArray::F64(a) => Some(a.mapv(T::from_f64_lossy)),
            _ => None,
        }
    }

    /// Values widened to f64 (exact for every supported dtype but int64 beyond 2^53).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            AnyArray::F32(a) => a.mapv(|v| v as f64),
            AnyArray::F64(a) => a.clone(),
            AnyArray::I64(a) => a.mapv(|v| v as f64),
            AnyArray::I32(a) => a.mapv(|v| v as f64),
            AnyArray::U8(a) => a.mapv(|v| v as f64),
            AnyArray::Bool(a) => a.mapv(|v| if v { 1.0 } else { 0.0 }),
        }
    }

    /// Integer data as i64; `None` for float arrays.
    pub fn to_i64(&self) -> Option<ArrayD<i64>> {
        match self {
            AnyArray::I64(a) => Some(a.clone()),
            AnyArray::I32(a) => Some(a.mapv(|v| v as i64)),
            AnyArray::U8(a) => Some(a.mapv(|v| v as i64)),
            AnyArray::Bool(a) => Some(a.mapv(|v| v as i64)),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.to_path_buf(), source }
}

/// Parses one `.npy` stream (C or Fortran order, either endianness).
pub fn parse_npy(bytes: &[u8], path: &Path, entry: Option<&str>) -> Result<AnyArray, WeightsError> {
    let bad = |msg: String| WeightsError::BadNpy { path: path.to_path_buf(), entry: entry.map(str::to_string), msg };
    let npy = NpyFile::new(bytes).map_err(|e| bad(e.to_string()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = matches!(npy.order(), Order::Fortran);
    let dtype = npy.dtype();
    let ts = match &dtype {
        DType::Plain(ts) => ts.clone(),
        other => {
            return Err(WeightsError::UnsupportedDtype {
                path: path.to_path_buf(),
                key: entry.unwrap_or("").to_string(),
                dtype: other.descr(),
            })
        }
    };
    fn build<T: Clone>(shape: &[usize], fortran: bool, v: Vec<T>) -> Result<ArrayD<T>, String> {
        let arr = if fortran {
            use ndarray::ShapeBuilder;
            ArrayD::from_shape_vec(IxDyn(shape).f(), v)
        } else {
            ArrayD::from_shape_vec(IxDyn(shape), v)
        };
        let arr = arr.map_err(|e| e.to_string())?;
        Ok(if fortran { arr.as_standard_layout().into_owned() } else { arr })
    }
    let unsupported = || WeightsError::UnsupportedDtype {
        path: path.to_path_buf(),
        key: entry.unwrap_or("").to_string(),
        dtype: ts.to_string(),
    };
    let out = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => AnyArray::F32(build(&shape, fortran, npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        (TypeChar::Float, 8) => AnyArray::F64(build(&shape, fortran, npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        (TypeChar::Int, 8) => AnyArray::I64(build(&shape, fortran, npy.into_vec::<i64>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        (TypeChar::Int, 4) => AnyArray::I32(build(&shape, fortran, npy.into_vec::<i32>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        (TypeChar::Uint, 1) => AnyArray::U8(build(&shape, fortran, npy.into_vec::<u8>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        (TypeChar::Bool, 1) => AnyArray::Bool(build(&shape, fortran, npy.into_vec::<bool>().map_err(|e| bad(e.to_string()))?).map_err(bad)?),
        _ => return Err(unsupported()),
    };
    Ok(out)
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<AnyArray, WeightsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_npy(&bytes, path, None)
}

/// Reads every array of a `.npz` archive (`np.savez` or `np.savez_compressed`), keyed by the
/// entry name without its `.npy` suffix, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, AnyArray)>, WeightsError> {
    let file = File::open(path).map_err(io_err(path))?;
    let bad = |msg: String| WeightsError::BadNpz { path: path.to_path_buf(), msg };
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::with_capacity(f.size().min(1 << 32) as usize);
        f.read_to_end(&mut bytes).map_err(|e| bad(format!("entry `{name}`: {e}")))?;
        out.push((key.clone(), parse_npy(&bytes, path, Some(&key))?));
    }
    Ok(out)
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
            floats,
            ints,
            used: BTreeSet::new(),
            requests: Vec::new(),
            problems: Vec::new(),
            ignorable_suffixes: vec!["num_batches_tracked"],
        }
    }

    /// Reads a `.npz` state dict.
    pub fn from_npz(path: &Path) -> Result<Self, WeightsError> {
        Ok(Self::from_arrays(read_npz(path)?))
    }

    /// Names of all float tensors (for tools and tests).
    pub fn float_keys(&self) -> impl Iterator<Item = &String> {
        self.floats.keys()
    }

    /// Mutable access to a float tensor (used by tests that corrupt one element).
    pub fn float_mut(&mut self, key: &str) -> Option<&mut ArrayD<T>> {
        self.floats.get_mut(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.floats.contains_key(key) || self.ints.contains_key(key)
    }

    /// Takes the float tensor `key` with exactly `shape`. On a missing key or a wrong shape the
    /// problem is recorded and a zero tensor of `shape` is returned, so that construction goes
    /// on and every problem is reported at once by [`finish`](Self::finish).
    pub fn get(&mut self, key: &str, shape: &[usize]) -> ArrayD<T> {
        self.used.insert(key.to_string());
        self.requests.push((key.to_string(), shape.to_vec()));
        match self.floats.get(key) {
            Some(a) if a.shape() == shape => a.clone(),
            Some(a) => {
                self.problems.push(format!("  wrong shape: `{key}` is {:?}, the model expects {:?}", a.shape(), shape));
                ArrayD::zeros(IxDyn(shape))
            }
            None => {
                if self.ints.contains_key(key) {
                    self.problems.push(format!("  wrong dtype: `{key}` is an integer tensor, the model expects floats of shape {shape:?}"));
                } else {
                    self.problems.push(format!("  missing: `{key}` {shape:?}"));
                }
                ArrayD::zeros(IxDyn(shape))
            }
        }
    }

    /// Like [`get`](Self::get) but `None` (and nothing recorded) when the key is absent.
    pub fn get_opt(&mut self, key: &str, shape: &[usize]) -> Option<ArrayD<T>> {
        if self.floats.contains_key(key) || self.ints.contains_key(key) {
            Some(self.get(key, shape))
        } else {
            None
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
