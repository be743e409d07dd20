//! Feature2Pyramid on tch tensors; mirrors [`crate::reference::neck`] (recorded names
//! `neck.upsample_4x.{0,1,2,3}`, `neck.upsample_2x(.0)`, `neck.identity`, `neck.downsample_2x`,
//! `neck.downsample_4x`, `neck.{k}`).

use tch::Tensor;

use super::batch_norm::BatchNorm;
use super::weight_source::Source;
use super::{join, ops, Ctx, Recorder, Result};
use crate::config::NeckConfig;

/// `nn.ConvTranspose2d(C, C, kernel_size=2, stride=2)`; weight layout (Cin, Cout, kh, kw).
pub struct ConvTranspose {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ConvTranspose {
    fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, c: usize) -> Result<Self> {
        Ok(ConvTranspose {
            weight: ctx.conv_weight(src.get(&join(prefix, "weight"), &[c, c, 2, 2], ctx.kind())?)?,
            bias: src.get(&join(prefix, "bias"), &[c], ctx.kind())?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv_transpose2d(x, &self.weight, Some(&self.bias), 2)
    }
}

/// The Feature2Pyramid neck.
pub struct Feature2Pyramid {
    pub cfg: NeckConfig,
    /// `upsample_4x.{0,1,3}` (ConvT, BN, ConvT), when 4 is a rescale.
    pub upsample_4x: Option<(ConvTranspose, BatchNorm, ConvTranspose)>,
    pub upsample_2x: ConvTranspose,
}

impl Feature2Pyramid {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &NeckConfig) -> Result<Self> {
        let c = cfg.embed_dim;
        let upsample_4x = if cfg.with_upsample_4x {
            let p = join(prefix, "upsample_4x");
            Some((
                ConvTranspose::load(src, ctx, &join(&p, "0"), c)?,
                BatchNorm::load(src, ctx, &join(&p, "1"), c, cfg.norm.eps)?,
                ConvTranspose::load(src, ctx, &join(&p, "3"), c)?,
            ))
        } else {
            None
        };
        Ok(Feature2Pyramid {
            upsample_4x,
            upsample_2x: ConvTranspose::load(src, ctx, &join(prefix, "upsample_2x.0"), c)?,
            cfg: cfg.clone(),
        })
    }

    /// Four backbone maps → four pyramid levels.
    pub fn forward(&self, inputs: &[Tensor], prefix: &str, rec: &mut Recorder) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(4);
        let mut i = 0;
        if let Some((c0, bn, c3)) = &self.upsample_4x {
            let p = join(prefix, "upsample_4x");
            let y = c0.forward(&inputs[0])?;
            rec.put(&join(&p, "0"), &y);
            let y = bn.forward(&y)?;
            rec.put(&join(&p, "1"), &y);
            let y = ops::gelu(&y)?;
            rec.put(&join(&p, "2"), &y);
            let y = c3.forward(&y)?;
            rec.put(&join(&p, "3"), &y);
            rec.put(&p, &y);
            outs.push(y);
            i = 1;
        }
        let y = self.upsample_2x.forward(&inputs[i])?;
        rec.put(&join(prefix, "upsample_2x.0"), &y);
        rec.put(&join(prefix, "upsample_2x"), &y);
        outs.push(y);
        let y = inputs[i + 1].shallow_clone();
        rec.put(&join(prefix, "identity"), &y);
        outs.push(y);
        let y = ops::max_pool2d(&inputs[i + 2], 2)?;
        rec.put(&join(prefix, "downsample_2x"), &y);
        outs.push(y);
        if self.upsample_4x.is_none() {
            let y = ops::max_pool2d(&inputs[i + 3], 4)?;
            rec.put(&join(prefix, "downsample_4x"), &y);
            outs.push(y);
        }
        for (k, o) in outs.iter().enumerate() {
            rec.put(&join(prefix, &k.to_string()), o);
        }
        Ok(outs)
    }
}
