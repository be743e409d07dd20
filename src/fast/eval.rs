//! The fast path as an evaluation network ([`crate::eval::SegModel`]), for
//! `beit-seg eval/predict --backend tch`: the model is built once on its device and kept there;
//! only the normalised image goes in and the `(1, classes, H, W)` logits come back.

use std::sync::Mutex;

use ndarray::{Array4, IxDyn};
use tch::{Device, Kind};

use super::{check_device, device_name, from_any_array, Ctx, FastError, FastSegmentor, Precision, Recorder, Result};
use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::eval::SegModel;

/// A [`FastSegmentor`] behind a lock (tch tensors are `Send` but not `Sync`; one device runs one
/// image at a time anyway).
pub struct TchModel {
    model: Mutex<FastSegmentor>,
    ctx: Ctx,
}

impl TchModel {
    /// Builds the model from a state dict in MMSegmentation names on `device` in `precision`.
    pub fn load(
        cfg: &SegmentorConfig,
        weights: Vec<(String, AnyArray)>,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        check_device(device)?;
        let ctx = Ctx::new(device, precision);
        Ok(TchModel { model: Mutex::new(FastSegmentor::load(cfg, weights, ctx)?), ctx })
    }

    fn run(&self, input: Array4<f32>) -> Result<Array4<f32>> {
        let model = self.model.lock().map_err(|_| FastError::Device("the model lock is poisoned".into()))?;
        let x = from_any_array(&AnyArray::F32(input.into_dyn()), self.ctx.kind(), self.ctx.device)?;
        let out = model.forward(&x, &mut Recorder::none())?;
        let t = out.seg_logits.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let n = t.numel();
        let mut v = vec![0f32; n];
        t.f_copy_data(&mut v, n)?;
        ndarray::ArrayD::from_shape_vec(IxDyn(&shape), v)
            .ok()
            .and_then(|a| a.into_dimensionality().ok())
            .ok_or_else(|| FastError::Input(format!("seg_logits: expected a 4-D tensor, got {shape:?}")))
    }
}

impl SegModel for TchModel {
    fn describe(&self) -> String {
        format!("tch (libtorch, {}, {})", device_name(self.ctx.device), self.ctx.precision.name())
    }
    fn seg_logits(&self, input: Array4<f32>) -> std::result::Result<Array4<f32>, String> {
        self.run(input).map_err(|e| e.to_string())
    }
}
