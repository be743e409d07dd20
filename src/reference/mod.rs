//! The ndarray reference implementation: the ground truth of this project.
//!
//! One file per MMSegmentation module family, with the same names as `EncoderDecoder.named_modules()`
//! (`backbone.layers.3.attn`, `neck.upsample_4x.1`, `decode_head.fpn_convs.0.bn`), so a fixture
//! output name, a weight key and a Rust field line up:
//!
//! * [`ops`]: pure operators (linear, LayerNorm, GELU, conv, BN, pools, bilinear resize, argmax);
//! * [`beit`]: the BEiT backbone (patch embed, relative-position attention, layer scale);
//! * [`neck`]: Feature2Pyramid;
//! * [`heads`]: ConvModule, UPerHead (+PPM) and FCNHead;
//! * [`segmentor`]: EncoderDecoder with whole and slide inference.
//!
//! Everything is generic over [`Float`](crate::Float) (f32 and f64), so the float64 twin fixtures
//! run through exactly the same code.

pub mod beit;
pub mod heads;
pub mod neck;
pub mod ops;
pub mod segmentor;

use std::collections::{BTreeMap, HashSet};

use ndarray::{Array, ArrayD, Dimension};

use crate::config::ConfigError;
use crate::weights::WeightsError;
use crate::Float;

/// Errors of building or running the reference model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// An input that the configured model cannot run (MMSegmentation would fail too).
    #[error("{0}")]
    Input(String),
}

/// Collects module outputs by name during a forward pass, like the forward hooks of the fixture
/// generator. Only the names that are wanted are cloned, so a full-size run records nothing it
/// does not need.
pub struct Recorder<T: Float> {
    wanted: Option<HashSet<String>>,
    pub floats: BTreeMap<String, ArrayD<T>>,
    pub ints: BTreeMap<String, ArrayD<i64>>,
}

impl<T: Float> Recorder<T> {
    /// Records every module output.
    pub fn all() -> Self {
        Recorder { wanted: None, floats: BTreeMap::new(), ints: BTreeMap::new() }
    }

    /// Records only the given names.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Recorder {
            wanted: Some(names.into_iter().map(Into::into).collect()),
            floats: BTreeMap::new(),
            ints: BTreeMap::new(),
        }
    }

    /// Records nothing.
    pub fn none() -> Self {
        Self::only(Vec::<String>::new())
    }

    pub fn wants(&self, name: &str) -> bool {
        self.wanted.as_ref().map_or(true, |w| w.contains(name))
    }

    /// Whether any wanted name is `prefix` or starts with `prefix.`.
    pub fn wants_prefix(&self, prefix: &str) -> bool {
        match &self.wanted {
            None => true,
            Some(w) => w.iter().any(|n| n == prefix || (n.starts_with(prefix) && n[prefix.len()..].starts_with('.'))),
        }
    }

    /// Records a float tensor under `name` (cloned only when wanted).
    pub fn put<D: Dimension>(&mut self, name: &str, a: &Array<T, D>) {
        if self.wants(name) {
            self.floats.insert(name.to_string(), a.to_owned().into_dyn());
        }
    }

    /// Records a float tensor computed on demand (for views that need a reshape).
    pub fn put_with<D: Dimension>(&mut self, name: &str, f: impl FnOnce() -> Array<T, D>) {
        if self.wants(name) {
            self.floats.insert(name.to_string(), f().into_dyn());
        }
    }

    pub fn put_int<D: Dimension>(&mut self, name: &str, a: &Array<i64, D>) {
        if self.wants(name) {
            self.ints.insert(name.to_string(), a.to_owned().into_dyn());
        }
    }
}

/// `prefix.name`, or `name` for an empty prefix.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
