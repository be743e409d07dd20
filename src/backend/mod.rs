//! One abstraction over the implementations of the model: a [`Backend`] *loads* a model once
//! (config + state dict + dtype, on its device), and the loaded [`Model`] *runs* (inputs +
//! wanted names → named outputs). `verify`, `eval`, `predict` and `bench` all go through it;
//! backends are chosen by one typed [`BackendKind`], parsed in one place ([`open`]).
//!
//! * [`reference`] — the ndarray reference (`ref`), f32 and f64, always built;
//! * `tch` (feature `tch`): the libtorch path on the CPU or a CUDA device, fp32/fp64 conformant,
//!   fp16/bf16 for reports.
//!
//! A backend never sees expected values, only the names that are wanted. Adding a backend:
//! implement [`Backend`] and [`Model`] in a file here, add a [`BackendKind`] variant, and one arm
//! in [`open`] (see docs/architecture.md).

pub mod random_weights;
pub mod reference;
#[cfg(feature = "tch")]
pub mod tch;

use std::collections::BTreeMap;

use ndarray::{Array3, Array4, ArrayD};

use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::float::Dtype;
use crate::weights::StateDict;

/// An output tensor of a model, widened for comparison.
#[derive(Debug, Clone)]
pub enum OutTensor {
    Float(ArrayD<f64>),
    Label(ArrayD<i64>),
}

impl OutTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            OutTensor::Float(a) => a.shape(),
            OutTensor::Label(a) => a.shape(),
        }
    }
}

/// Named outputs of one run.
pub type Outputs = BTreeMap<String, OutTensor>;

/// Errors of loading or running a model on a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The reference refused the weights or the input.
    #[error(transparent)]
    Reference(#[from] crate::reference::ModelError),
    /// libtorch refused the weights, the input or the device.
    #[cfg(feature = "tch")]
    #[error(transparent)]
    Tch(#[from] crate::fast::ModelError),
    /// This build or machine cannot provide the backend (feature off, no such device).
    #[error("{0}")]
    Unavailable(String),
    /// An input the model cannot take (wrong rank or dtype).
    #[error("{0}")]
    Input(String),
    /// What the backend cannot do (an operation it does not implement).
    #[error("{0}")]
    Unsupported(String),
}

/// The implementations `--backend` chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// The ndarray reference (ground truth).
    #[default]
    #[value(name = "ref", alias = "reference")]
    Ref,
    /// libtorch (build with `--features tch`), CPU or CUDA.
    Tch,
}

/// Everything that selects a backend: kind, device and precision (the last two only matter to
/// `tch`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BackendSpec {
    pub kind: BackendKind,
    pub device: crate::Device,
    pub precision: crate::float::Precision,
}

/// Seconds spent per stage of one `encode_decode` (whole mode, no recording).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    pub backbone: f64,
    pub neck: f64,
    pub decode_head: f64,
    /// The final resize of the logits to the input size.
    pub resize: f64,
}

/// Times the stages of one `encode_decode_timed` run: each [`lap`](Self::lap) books the time
/// since the previous one to the stage that just ended.
pub(crate) struct StageClock {
    pub times: StageTimes,
    last: std::time::Instant,
}

impl StageClock {
    pub fn start() -> Self {
        StageClock { times: StageTimes::default(), last: std::time::Instant::now() }
    }

    pub fn lap(&mut self, stage: crate::model::Stage) {
        use crate::model::Stage;
        let now = std::time::Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        let slot = match stage {
            Stage::Backbone => &mut self.times.backbone,
            Stage::Neck => &mut self.times.neck,
            Stage::DecodeHead => &mut self.times.decode_head,
            Stage::Resize => &mut self.times.resize,
        };
        *slot += dt;
    }
}

/// An implementation of the model that can be loaded.
pub trait Backend: Send + Sync {
    /// `ref` or `tch`.
    fn name(&self) -> &'static str;
    /// Name with device and precision, for reports.
    fn describe(&self) -> String;
    /// The precision float32 cases run in (fp32 unless the backend was opened with a half
    /// precision): a half precision is judged on the half-precision twins of that precision.
    fn precision(&self) -> crate::float::Precision {
        crate::float::Precision::Fp32
    }
    /// Builds the model from a state dict in MMSegmentation names, to run cases of `dtype`
    /// (a backend may run a float32 case in a reduced precision it was opened with; it says so
    /// in [`Model::describe`]). Every missing, wrong-shape or unexpected key is one error.
    fn load(&self, cfg: &SegmentorConfig, weights: StateDict, dtype: Dtype) -> Result<Box<dyn Model>, BackendError>;
}

/// A loaded model.
pub trait Model: Send + Sync {
    /// Backend, device and the precision it runs in.
    fn describe(&self) -> String;
    /// Runs `EncoderDecoder.inference` + argmax on a batch of normalised NCHW `inputs` (float32
    /// or float64) and returns the wanted outputs it produces (module outputs by
    /// MMSegmentation name, `seg_logits`, `pred`); names it does not know are left out.
    fn run(&self, inputs: &AnyArray, wanted: &[String]) -> Result<Outputs, BackendError>;
    /// `(1, 3, H, W)` normalised image → `(1, classes, H, W)` logits (whole or slide, as the
    /// config's `test_cfg` says), in float32.
    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        let mut out = self.run(&AnyArray::F32(input.into_dyn()), &["seg_logits".to_string()])?;
        match out.remove("seg_logits") {
            Some(OutTensor::Float(a)) => a
                .mapv(|v| v as f32)
                .into_dimensionality()
                .map_err(|_| BackendError::Input("seg_logits: expected a 4-D array".into())),
            _ => Err(BackendError::Unsupported(format!("{} did not produce seg_logits", self.describe()))),
        }
    }
    /// `(1, 3, H, W)` normalised image → `(1, H, W)` labels, `inference(...).argmax(1)`: what
    /// `predict` and `eval` keep of an image, and what `bench` times.
    fn labels(&self, input: Array4<f32>) -> Result<Array3<i64>, BackendError> {
        Ok(crate::reference::ops::argmax_channels(self.seg_logits(input)?.view()))
    }
    /// `(1, 3, H, W)` normalised image → the decode head's `(1, classes, h, w)` logits at its own
    /// resolution, `decode_head.forward(extract_feat(x))` (no final resize, no argmax), in
    /// float32: what `bench --measure head-logits` times.
    fn decode_head_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        let _ = input;
        Err(BackendError::Unsupported(format!("{}: no decode-head logits", self.describe())))
    }
    /// Times the stages of one whole-mode `encode_decode` of `inputs` (for `bench`).
    fn profile(&self, inputs: &AnyArray) -> Result<StageTimes, BackendError> {
        let _ = inputs;
        Err(BackendError::Unsupported(format!("{}: no per-stage profile", self.describe())))
    }
}

/// Opens the backend `spec` names: the one place where backends are chosen.
pub fn open(spec: &BackendSpec) -> Result<Box<dyn Backend>, BackendError> {
    match spec.kind {
        BackendKind::Ref => {
            if spec.precision.is_half() {
                return Err(BackendError::Unavailable(format!(
                    "backend `ref` computes in float32/float64 only (asked for {})",
                    spec.precision
                )));
            }
            Ok(Box::new(reference::RefBackend))
        }
        #[cfg(feature = "tch")]
        BackendKind::Tch => Ok(Box::new(tch::TchBackend::new(spec.device.into(), spec.precision)?)),
        #[cfg(not(feature = "tch"))]
        BackendKind::Tch => Err(BackendError::Unavailable(
            "backend `tch` is not available in this build (rebuild with `--features tch`; see docs/fast-path.md)"
                .into(),
        )),
    }
}

/// A state dict of random weights for `cfg` (for benchmarks): every float parameter the model
/// asks for, drawn from a seeded generator at a plausible scale (see
/// [`random_weights::random_draw`]).
pub fn random_state_dict(cfg: &SegmentorConfig, seed: u64) -> StateDict {
    random_weights::random_state_dict(cfg, seed)
}
