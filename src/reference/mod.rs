//! The ndarray reference implementation: the ground truth of this project.
//!
//! One file per MMSegmentation module family, with the same names as `EncoderDecoder.named_modules()`
//! (`backbone.layers.3.attn`, `neck.upsample_4x.1`, `decode_head.fpn_convs.0.bn`), so a fixture
//! output name, a weight key and a Rust field line up:
//!
//! * [`ops`] — pure operators (linear, LayerNorm, GELU, conv, BN, pools, bilinear resize, argmax);
//! * [`beit`] — the BEiT backbone (patch embed, relative-position attention, layer scale);
//! * [`neck`] — Feature2Pyramid;
//! * [`heads`] — ConvModule, UPerHead (+PPM) and FCNHead;
//! * [`segmentor`] — EncoderDecoder with whole and slide inference.
//!
//! Everything is generic over [`Float`](crate::Float) (f32 and f64), so the float64 twin fixtures
//! run through exactly the same code.

pub mod batch_norm;
pub mod beit;
pub mod heads;
pub mod neck;
pub mod ops;
pub mod segmentor;

use std::collections::BTreeMap;

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

/// A module output as the reference records it.
#[derive(Debug, Clone)]
pub enum Recorded<T: Float> {
    Float(ArrayD<T>),
    Int(ArrayD<i64>),
}

/// The reference's recorder of named module outputs (see [`crate::model::Recorder`]).
pub type Recorder<T> = crate::model::Recorder<Recorded<T>>;

impl<T: Float> crate::model::Recorder<Recorded<T>> {
    /// Records a float tensor under `name` (cloned only when wanted).
    pub fn put<D: Dimension>(&mut self, name: &str, a: &Array<T, D>) {
        self.record(name, || Recorded::Float(a.to_owned().into_dyn()));
    }

    /// Records an integer tensor (labels) under `name`.
    pub fn put_int<D: Dimension>(&mut self, name: &str, a: &Array<i64, D>) {
        self.record(name, || Recorded::Int(a.to_owned().into_dyn()));
    }

    /// The float tensor recorded under `name`.
    pub fn float(&self, name: &str) -> Option<&ArrayD<T>> {
        match self.get(name) {
            Some(Recorded::Float(a)) => Some(a),
            _ => None,
        }
    }

    /// The recorded float and integer tensors, by name.
    pub fn into_parts(self) -> (BTreeMap<String, ArrayD<T>>, BTreeMap<String, ArrayD<i64>>) {
        let (mut floats, mut ints) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in self.into_values() {
            match v {
                Recorded::Float(a) => {
                    floats.insert(k, a);
                }
                Recorded::Int(a) => {
                    ints.insert(k, a);
                }
            }
        }
        (floats, ints)
    }
}
