//! Candidates in memory: the tensors a port computed in the same process (a Rust port's own
//! `cargo test`), given as a list or produced per case by a closure. They go through exactly
//! the path of a candidate directory: the optional [`NameMap`], then the comparison and the
//! verdict of [`super::run_case`] (coverage, scope, NO EVIDENCE, half-precision budgets).
//!
//! ```
//! use beit_seg::conformance::{verify_case, Candidate, Case, VerifyOptions};
//!
//! let dir = beit_seg::conformance::case_dir("tiny-whole").unwrap();
//! // A "port" that returns MMSegmentation's own tensors passes.
//! let port = Candidate::from_fn(|case: &Case| case.expected());
//! verify_case(&dir, &port, &VerifyOptions::default()).assert_pass();
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::{Array, Dimension};
use serde_json::Value;

use super::candidate::{to_fixture_names, CandidateError, CandidateOutputs, CandidateSource};
use super::case::Case;
use super::names::NameMap;
use crate::array::AnyArray;

/// A produced tensor list: (name, array) pairs.
type Tensors = Vec<(String, AnyArray)>;

/// The closure of [`Candidate::from_fn`], type-erased.
type Produce<'a> = Box<dyn Fn(&Case) -> Result<Tensors, String> + 'a>;

enum Source<'a> {
    Tensors(Tensors),
    Fn(Produce<'a>),
}

/// An implementation's outputs held in memory: a fixed list of named tensors
/// ([`Candidate::from_tensors`]) or a closure run on each case ([`Candidate::from_fn`]).
///
/// Names are the fixture's output names (`backbone.layers.0`, `backbone.3`, `seg_logits`,
/// docs/fixture-format.md), or the port's own names plus a [`NameMap`]
/// ([`Candidate::with_names`]). [`super::verify_case`] takes `&candidate`; for
/// [`super::run_case`], `Target::InMemory(&candidate)`.
pub struct Candidate<'a> {
    source: Source<'a>,
    names: Option<NameMap>,
    metrics: Option<Value>,
}

impl std::fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Tensors(t) => format!("{} tensors", t.len()),
            Source::Fn(_) => "a closure".to_string(),
        };
        f.debug_struct("Candidate")
            .field("source", &source)
            .field("names", &self.names.as_ref().map(|m| m.source.clone()))
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Candidate<'static> {
    /// A fixed list of tensors, the same for every case it is run on: `(name, array)` pairs
    /// where the array is an [`AnyArray`] or any owned `ndarray` array (`Array4<f32>`,
    /// `ArrayD<f64>`, ...) of `f32`, `f64`, `i64`, `i32`, `u8` or `bool`.
    ///
    /// ```
    /// use beit_seg::conformance::{verify_case, case_dir, Candidate, VerifyOptions};
    /// use ndarray::{Array4, ArrayD};
    ///
    /// let c = Candidate::from_tensors([
    ///     ("backbone.0", ArrayD::<f32>::zeros(vec![2, 32, 6, 8])),
    ///     ("backbone.1", Array4::<f32>::zeros((2, 32, 6, 8)).into_dyn()),
    /// ]);
    /// let report = verify_case(case_dir("tiny-whole").unwrap(), &c, &VerifyOptions::default());
    /// assert!(!report.passed()); // zeros are not MMSegmentation's feature maps
    /// assert_eq!(report.first_failure().unwrap().name, "backbone.0");
    /// ```
    pub fn from_tensors<I, N, A>(tensors: I) -> Self
    where
        I: IntoIterator<Item = (N, A)>,
        N: Into<String>,
        A: Into<AnyArray>,
    {
        let tensors = tensors.into_iter().map(|(n, a)| (n.into(), a.into())).collect();
        Candidate { source: Source::Tensors(tensors), names: None, metrics: None }
    }
}

impl<'a> Candidate<'a> {
    /// A closure run once per case: it receives the [`Case`] (its config with
    /// [`Case::model_config`] / [`Case::model_json`], weights with [`Case::weights`], input with
    /// [`Case::input`]) and returns `(name, array)` pairs (any `IntoIterator`: a `Vec`, a
    /// `BTreeMap`, a `HashMap`), or an error, which makes the case an ERROR naming it.
    pub fn from_fn<F, R, N, A, E>(produce: F) -> Self
    where
        F: Fn(&Case) -> Result<R, E> + 'a,
        R: IntoIterator<Item = (N, A)>,
        N: Into<String>,
        A: Into<AnyArray>,
        E: std::fmt::Display,
    {
        let f = move |case: &Case| -> Result<Tensors, String> {
            match produce(case) {
                Ok(r) => Ok(r.into_iter().map(|(n, a)| (n.into(), a.into())).collect()),
                Err(e) => Err(e.to_string()),
            }
        };
        Candidate { source: Source::Fn(Box::new(f)), names: None, metrics: None }
    }

    /// Renames the tensors through a name map (`NameMap::parse(json, "my map")`, or
    /// `NameMap::load("hf" | "timm" | path)`), as `verify --names` does.
    ///
    /// ```
    /// use beit_seg::conformance::{verify_case, Candidate, Case, NameMap, Scope, VerifyOptions};
    ///
    /// // A port that names its backbone `vit` and returns NHWC feature maps.
    /// let map = NameMap::parse(
    ///     r#"{"format": "beit-seg-names/1", "description": "my port", "rules": [
    ///         {"candidate": "vit.feat{k}", "fixture": "backbone.{k}", "transform": [{"op": "nhwc_to_nchw"}]}]}"#,
    ///     "my map",
    /// )
    /// .unwrap();
    /// let port = |case: &Case| -> Result<Vec<(String, ndarray::ArrayD<f32>)>, String> {
    ///     // Stand-in: MMSegmentation's own maps, laid out NHWC as the port would return them.
    ///     let expected = case.expected().map_err(|e| e.to_string())?;
    ///     Ok(expected
    ///         .into_iter()
    ///         .filter_map(|(n, a)| Some((n.strip_prefix("backbone.")?.parse::<usize>().ok()?, a)))
    ///         .map(|(k, a)| (format!("vit.feat{k}"), a.to_float::<f32>().unwrap().permuted_axes(vec![0, 2, 3, 1])))
    ///         .collect())
    /// };
    /// let scope = Scope::new(&["backbone".into()], &["backbone.layers.*".into(), "backbone.patch_embed.*".into()]);
    /// let opts = VerifyOptions { scope: scope.unwrap(), ..Default::default() };
    /// let port = Candidate::from_fn(port).with_names(map);
    /// let dir = beit_seg::conformance::case_dir("tiny-whole").unwrap();
    /// verify_case(&dir, &port, &opts).assert_pass();
    /// ```
    pub fn with_names(mut self, names: NameMap) -> Self {
        self.names = Some(names);
        self
    }

    /// The metrics of `pipeline` and `metric` cases (MMSegmentation's keys: `aAcc`, `mIoU`,
    /// `mAcc`, optionally `per_class` and `total_area_*`), as `metrics.json` would hold them.
    pub fn with_metrics(mut self, metrics: Value) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Produces the tensors of `case` and maps them to fixture names.
    pub(crate) fn read(
        &self,
        case: &Case,
        expected: &BTreeMap<String, Vec<usize>>,
    ) -> Result<CandidateOutputs, CandidateError> {
        let raw = match &self.source {
            Source::Tensors(t) => t.clone(),
            Source::Fn(f) => f(case).map_err(|msg| CandidateError::Produce { case: case.name.clone(), msg })?,
        };
        to_fixture_names(raw, self.names.as_ref(), expected, PathBuf::from("(in memory)"), self.metrics.clone())
    }
}

/// A candidate as the fixture kinds read it: a directory (`verify --candidate DIR`) or in
/// memory. Both end in [`CandidateOutputs`] under fixture names.
#[derive(Clone, Copy)]
pub(crate) enum CandidateRef<'t> {
    Dir { source: &'t CandidateSource, single: bool },
    Memory(&'t Candidate<'t>),
}

impl CandidateRef<'_> {
    /// The candidate's tensors for `case`, under fixture names.
    pub(crate) fn read(
        &self,
        case: &Case,
        expected: &BTreeMap<String, Vec<usize>>,
    ) -> Result<CandidateOutputs, CandidateError> {
        match self {
            CandidateRef::Dir { source, single } => source.read(&case.name, *single, expected),
            CandidateRef::Memory(c) => c.read(case, expected),
        }
    }
}

macro_rules! any_array_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<D: Dimension> From<Array<$t, D>> for AnyArray {
            /// Any owned array of this element type (`Array4<f32>`, `ArrayD<f32>`, ...).
            fn from(a: Array<$t, D>) -> Self {
                AnyArray::$v(a.into_dyn())
            }
        }
    )*};
}

// Here rather than in `array.rs`: what a port hands to a [`Candidate`].
any_array_from!(f32 => F32, f64 => F64, i64 => I64, i32 => I32, u8 => U8, bool => Bool);
