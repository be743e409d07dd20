//! `nn.BatchNorm2d` / `SyncBatchNorm` in eval mode (the neck's `upsample_4x.1`, every `ConvModule`'s `bn`).

use ndarray::{Array1, Array4};

use super::ops;
use crate::model::join;
use crate::weights::WeightStore;
use crate::Float;

/// `nn.BatchNorm2d` / `SyncBatchNorm` in eval mode.
pub struct BatchNorm<T: Float> {
    pub weight: Array1<T>,
    pub bias: Array1<T>,
    pub running_mean: Array1<T>,
    pub running_var: Array1<T>,
    pub eps: f64,
}

impl<T: Float> BatchNorm<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, c: usize, eps: f64) -> Self {
        BatchNorm {
            weight: ws.get1(&join(prefix, "weight"), c),
            bias: ws.get1(&join(prefix, "bias"), c),
            running_mean: ws.get1(&join(prefix, "running_mean"), c),
            running_var: ws.get1(&join(prefix, "running_var"), c),
            eps,
        }
    }
    pub fn forward_inplace(&self, x: &mut Array4<T>) {
        ops::batch_norm_inplace(
            x,
            self.running_mean.view(),
            self.running_var.view(),
            Some(self.weight.view()),
            Some(self.bias.view()),
            self.eps,
        );
    }
}
