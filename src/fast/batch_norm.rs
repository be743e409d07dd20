//! `nn.BatchNorm2d` / `SyncBatchNorm` in eval mode on tch tensors; mirrors `reference::batch_norm`.

use tch::Tensor;

use super::weight_source::Source;
use super::{join, ops, Ctx, Result};

/// `nn.BatchNorm2d` / `SyncBatchNorm` in eval mode.
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

impl BatchNorm {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        let k = ctx.kind();
        Ok(BatchNorm {
            weight: src.get(&join(prefix, "weight"), &[c], k)?,
            bias: src.get(&join(prefix, "bias"), &[c], k)?,
            running_mean: src.get(&join(prefix, "running_mean"), &[c], k)?,
            running_var: src.get(&join(prefix, "running_var"), &[c], k)?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::batch_norm(x, &self.weight, &self.bias, &self.running_mean, &self.running_var, self.eps)
    }
}
