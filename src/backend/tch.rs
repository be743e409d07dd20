//! The libtorch path as a [`Backend`] (feature `tch`): `--backend tch --device cpu|cuda[:N]
//! --precision fp32|fp16|bf16`. float32 cases run in the chosen precision (fp32: conformant;
//! fp16/bf16: for reports only), float64 cases in float64 when the precision is fp32. The model
//! is built once on its device and kept there; inputs go in and named outputs come back.

use std::sync::Mutex;

use ndarray::{Array3, Array4};
use tch::{Device, Kind};

use super::{Backend, BackendError, Model, OutTensor, Outputs, StageClock, StageTimes};
use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::fast::{
    self, check_device, device_name, from_any_array, to_f64_array, to_i64_array, Ctx, Precision, Recorder,
};
use crate::float::Dtype;
use crate::weights::StateDict;

/// The libtorch backend.
pub struct TchBackend {
    pub device: Device,
    pub precision: Precision,
}

impl TchBackend {
    /// Checks the device (see [`check_device`]); fp64 is only chosen per case.
    pub fn new(device: Device, precision: Precision) -> Result<Self, fast::ModelError> {
        check_device(device)?;
        Ok(TchBackend { device, precision })
    }

    /// The precision a case of `dtype` runs in.
    pub fn precision_for(&self, dtype: Dtype) -> Precision {
        match (dtype, self.precision) {
            (Dtype::F64, Precision::Fp32 | Precision::Fp64) => Precision::Fp64,
            (Dtype::F32, Precision::Fp64) => Precision::Fp32,
            (_, p) => p,
        }
    }
}

impl Backend for TchBackend {
    fn name(&self) -> &'static str {
        "tch"
    }
    fn describe(&self) -> String {
        format!("tch (libtorch, {}, {})", device_name(self.device), self.precision.name())
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn load(&self, cfg: &SegmentorConfig, weights: StateDict, dtype: Dtype) -> Result<Box<dyn Model>, BackendError> {
        let ctx = Ctx::new(self.device, self.precision_for(dtype));
        Ok(Box::new(TchModel::new(fast::EncoderDecoder::load(cfg, weights, ctx)?)))
    }
}

/// A [`fast::EncoderDecoder`] behind a lock (tch tensors are `Send` but not `Sync`; one device runs one
/// batch at a time anyway).
pub struct TchModel {
    model: Mutex<fast::EncoderDecoder>,
    ctx: Ctx,
}

impl TchModel {
    pub fn new(model: fast::EncoderDecoder) -> Self {
        let ctx = model.ctx;
        TchModel { model: Mutex::new(model), ctx }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, fast::EncoderDecoder>, BackendError> {
        self.model.lock().map_err(|_| BackendError::Unavailable("the model lock is poisoned".into()))
    }
}

impl TchModel {
    /// `forward` of one float32 image batch, nothing recorded: what `labels` and `seg_logits`
    /// share (the outputs stay on the device).
    fn forward_one(&self, input: Array4<f32>) -> Result<crate::fast::SegOutput, BackendError> {
        let _no_grad = tch::no_grad_guard();
        let model = self.lock()?;
        let x = from_any_array(&AnyArray::F32(input.into_dyn()), self.ctx.kind(), self.ctx.device)?;
        Ok(model.forward(&x, &mut Recorder::none())?)
    }
}

impl Model for TchModel {
    fn describe(&self) -> String {
        format!("tch (libtorch, {}, {})", device_name(self.ctx.device), self.ctx.precision.name())
    }

    fn run(&self, inputs: &AnyArray, wanted: &[String]) -> Result<Outputs, BackendError> {
        let _no_grad = tch::no_grad_guard();
        let model = self.lock()?;
        let x = from_any_array(inputs, self.ctx.kind(), self.ctx.device)
            .map_err(|e| BackendError::Input(format!("inputs: {e}")))?;
        if x.dim() != 4 {
            return Err(BackendError::Input(format!(
                "inputs: expected an NCHW array (4 dimensions), got shape {:?}",
                inputs.shape()
            )));
        }
        let mut rec = Recorder::only(wanted.iter().cloned());
        model.forward(&x, &mut rec)?;
        let mut out = Outputs::new();
        for (k, t) in rec.into_values() {
            let v = if t.kind() == Kind::Int64 {
                OutTensor::Label(to_i64_array(&t)?)
            } else {
                OutTensor::Float(to_f64_array(&t)?)
            };
            out.insert(k, v);
        }
        Ok(out)
    }

    fn labels(&self, input: Array4<f32>) -> Result<Array3<i64>, BackendError> {
        let out = self.forward_one(input)?;
        // Only the labels leave the device (the logits are 150 x H x W floats).
        to_i64_array(&out.pred)?
            .into_dimensionality()
            .map_err(|_| BackendError::Input(format!("pred: expected a 3-D tensor, got {:?}", out.pred.size())))
    }

    fn decode_head_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        let model = self.lock()?;
        let x = from_any_array(&AnyArray::F32(input.into_dyn()), self.ctx.kind(), self.ctx.device)?;
        let y = model.decode_head_forward(&x, &mut Recorder::none())?;
        crate::fast::to_f32_array(&y)?
            .into_dimensionality()
            .map_err(|_| BackendError::Input(format!("decode head logits: expected a 4-D tensor, got {:?}", y.size())))
    }

    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        let out = self.forward_one(input)?;
        // One host copy in f32 (what this method returns; PyTorch's own logits stay a tensor).
        let a = crate::fast::to_f32_array(&out.seg_logits)?;
        a.into_dimensionality().map_err(|_| {
            BackendError::Input(format!("seg_logits: expected a 4-D tensor, got {:?}", out.seg_logits.size()))
        })
    }

    fn profile(&self, inputs: &AnyArray) -> Result<StageTimes, BackendError> {
        let _no_grad = tch::no_grad_guard();
        let model = self.lock()?;
        let x = from_any_array(inputs, self.ctx.kind(), self.ctx.device)?;
        let device = self.ctx.device;
        let sync = || {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        sync();
        let mut clock = StageClock::start();
        let _logits = model.encode_decode_timed(&x, &mut Recorder::none(), &mut |stage| {
            sync();
            clock.lap(stage)
        })?;
        Ok(clock.times)
    }
}
