//! Feature2Pyramid neck (`mmseg/models/necks/featurepyramid.py`).
//!
//! Four ops in a fixed order, chosen by whether `4` is among the rescales:
//! `[upsample_4x, upsample_2x, identity, downsample_2x]` for `[4, 2, 1, 0.5]`, else
//! `[upsample_2x, identity, downsample_2x, downsample_4x]` for `[2, 1, 0.5, 0.25]`:
//!
//! * `upsample_4x` = ConvTranspose2d(C, C, 2, 2) → BN (eps 1e-5) → GELU (exact) → ConvTranspose2d(C, C, 2, 2)
//! * `upsample_2x` = ConvTranspose2d(C, C, 2, 2)
//! * `downsample_2x` / `downsample_4x` = MaxPool2d(2, 2) / MaxPool2d(4, 4)

use ndarray::{Array1, Array4};

use super::batch_norm::BatchNorm;
use super::ops;
use super::Recorder;
use crate::config::NeckConfig;
use crate::model::join;
use crate::weights::WeightStore;
use crate::Float;

/// `nn.ConvTranspose2d(C, C, kernel_size=2, stride=2)`; weight layout (Cin, Cout, kh, kw).
pub struct ConvTranspose<T: Float> {
    pub weight: Array4<T>,
    pub bias: Array1<T>,
}

impl<T: Float> ConvTranspose<T> {
    fn load(ws: &mut WeightStore<T>, prefix: &str, c: usize) -> Self {
        ConvTranspose {
            weight: ws.get4(&join(prefix, "weight"), [c, c, 2, 2]),
            bias: ws.get1(&join(prefix, "bias"), c),
        }
    }
    fn forward(&self, x: &Array4<T>) -> Array4<T> {
        ops::conv_transpose2d(x.view(), self.weight.view(), Some(self.bias.view()), (2, 2), (0, 0))
    }
}

/// The Feature2Pyramid neck.
pub struct Feature2Pyramid<T: Float> {
    pub cfg: NeckConfig,
    /// `upsample_4x.{0,1,3}` (ConvT, BN, ConvT), when 4 is a rescale.
    pub upsample_4x: Option<(ConvTranspose<T>, BatchNorm<T>, ConvTranspose<T>)>,
    pub upsample_2x: ConvTranspose<T>,
}

impl<T: Float> Feature2Pyramid<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &NeckConfig) -> Self {
        let c = cfg.embed_dim;
        let upsample_4x = cfg.with_upsample_4x.then(|| {
            let p = join(prefix, "upsample_4x");
            (
                ConvTranspose::load(ws, &join(&p, "0"), c),
                BatchNorm::load(ws, &join(&p, "1"), c, cfg.norm.eps),
                ConvTranspose::load(ws, &join(&p, "3"), c),
            )
        });
        Feature2Pyramid {
            upsample_4x,
            upsample_2x: ConvTranspose::load(ws, &join(prefix, "upsample_2x.0"), c),
            cfg: cfg.clone(),
        }
    }

    /// Four backbone maps → four pyramid levels.
    pub fn forward(&self, inputs: &[Array4<T>], prefix: &str, rec: &mut Recorder<T>) -> Vec<Array4<T>> {
        let mut outs = Vec::with_capacity(4);
        let mut i = 0;
        if let Some((c0, bn, c3)) = &self.upsample_4x {
            let p = join(prefix, "upsample_4x");
            let mut y = c0.forward(&inputs[0]);
            rec.put(&join(&p, "0"), &y);
            bn.forward_inplace(&mut y);
            rec.put(&join(&p, "1"), &y);
            ops::gelu_inplace(&mut y);
            rec.put(&join(&p, "2"), &y);
            let y = c3.forward(&y);
            rec.put(&join(&p, "3"), &y);
            rec.put(&p, &y);
            outs.push(y);
            i = 1;
        }
        let y = self.upsample_2x.forward(&inputs[i]);
        rec.put(&join(prefix, "upsample_2x.0"), &y);
        rec.put(&join(prefix, "upsample_2x"), &y);
        outs.push(y);
        let y = inputs[i + 1].clone();
        rec.put(&join(prefix, "identity"), &y);
        outs.push(y);
        let y = ops::max_pool2d(inputs[i + 2].view(), (2, 2), (2, 2), (0, 0));
        rec.put(&join(prefix, "downsample_2x"), &y);
        outs.push(y);
        if self.upsample_4x.is_none() {
            let y = ops::max_pool2d(inputs[i + 3].view(), (4, 4), (4, 4), (0, 0));
            rec.put(&join(prefix, "downsample_4x"), &y);
            outs.push(y);
        }
        for (k, o) in outs.iter().enumerate() {
            rec.put(&join(prefix, &k.to_string()), o);
        }
        outs
    }
}
