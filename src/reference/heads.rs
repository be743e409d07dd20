//! Decode heads: mmcv `ConvModule`, `UPerHead` (+ `PPM`) and `FCNHead`
//! (`mmseg/models/decode_heads/{uper_head,psp_head,fcn_head,decode_head}.py`).
//!
//! UPerHead on inputs L0..L(n-1):
//! 1. `laterals[i] = lateral_convs[i](L_i)` (1x1 ConvModule) for i < n-1;
//! 2. PSP on L(n-1): `cat[L, up(ppm_1), up(ppm_2), ...]` → `bottleneck` (3x3) → `laterals[n-1]`;
//! 3. top-down, cascading: `laterals[i-1] += resize(laterals[i])` for i = n-1..1;
//! 4. `fpn_outs[i] = fpn_convs[i](laterals[i])` (3x3) for i < n-1, `fpn_outs[n-1] = laterals[n-1]`;
//! 5. all resized to L0's size, concatenated finest → coarsest, `fpn_bottleneck` (3x3);
//! 6. `cls_seg`: Dropout2d (identity at eval) → `conv_seg` (1x1, with bias).
//!
//! ConvModule = conv (bias only when there is no norm) → BN (eps 1e-5) → ReLU.

use ndarray::{concatenate, Array4, ArrayView4, Axis};

use super::batch_norm::BatchNorm;
use super::ops;
use super::{ModelError, Recorder};
use crate::config::{HeadConfig, InputTransform};
use crate::model::heads::{check_input_channels, select_inputs, BodyPlan, ConvSpec, HeadPlan};
use crate::model::join;
use crate::weights::WeightStore;
use crate::Float;

/// mmcv `ConvModule`: `relu(bn(conv2d(x)))`, as its [`ConvSpec`] says.
pub struct ConvModule<T: Float> {
    pub conv: ops::Conv2d<T>,
    pub bn: Option<BatchNorm<T>>,
    pub relu: bool,
}

impl<T: Float> ConvModule<T> {
    /// The module `spec.name` under `head`.
    pub fn load(ws: &mut WeightStore<T>, head: &str, spec: &ConvSpec) -> Self {
        let prefix = join(head, &spec.name);
        let (cin, cout, k) = (spec.in_channels, spec.out_channels, spec.kernel);
        let bn = spec.bn_eps.map(|eps| BatchNorm::load(ws, &join(&prefix, "bn"), cout, eps));
        let weight = ws.get4(&join(&prefix, "conv.weight"), [cout, cin, k, k]);
        let bias = spec.conv_bias().then(|| ws.get1(&join(&prefix, "conv.bias"), cout));
        ConvModule { conv: ops::Conv2d::new(weight, bias, 1, spec.padding, spec.dilation), bn, relu: spec.relu }
    }

    pub fn forward(&self, x: ArrayView4<T>, prefix: &str, rec: &mut Recorder<T>) -> Array4<T> {
        let mut y = self.conv.forward(x);
        rec.put(&join(prefix, "conv"), &y);
        if let Some(bn) = &self.bn {
            bn.forward_inplace(&mut y);
            rec.put(&join(prefix, "bn"), &y);
        }
        if self.relu {
            ops::relu_inplace(&mut y);
            rec.put(&join(prefix, "activate"), &y);
        }
        rec.put(prefix, &y);
        y
    }
}

// One value per head: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Body<T: Float> {
    Uper {
        pool_scales: Vec<usize>,
        /// `psp_modules.{k}.1`: the 1x1 ConvModule after AdaptiveAvgPool2d(scale k).
        psp_modules: Vec<ConvModule<T>>,
        bottleneck: ConvModule<T>,
        lateral_convs: Vec<ConvModule<T>>,
        fpn_convs: Vec<ConvModule<T>>,
        fpn_bottleneck: ConvModule<T>,
    },
    Fcn {
        convs: Vec<ConvModule<T>>,
        conv_cat: Option<ConvModule<T>>,
    },
}

/// A decode head (UPerHead or FCNHead) with its `conv_seg` classifier.
pub struct DecodeHead<T: Float> {
    pub cfg: HeadConfig,
    body: Body<T>,
    pub conv_seg: ops::Conv2d<T>,
}

impl<T: Float> DecodeHead<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &HeadConfig) -> Self {
        let plan = HeadPlan::new(cfg);
        let mut conv = |spec: &ConvSpec| ConvModule::load(ws, prefix, spec);
        let body = match &plan.body {
            BodyPlan::Uper { pool_scales, psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck } => {
                Body::Uper {
                    pool_scales: pool_scales.clone(),
                    psp_modules: psp_modules.iter().map(&mut conv).collect(),
                    bottleneck: conv(bottleneck),
                    lateral_convs: lateral_convs.iter().map(&mut conv).collect(),
                    fpn_convs: fpn_convs.iter().map(&mut conv).collect(),
                    fpn_bottleneck: conv(fpn_bottleneck),
                }
            }
            BodyPlan::Fcn { convs, conv_cat } => {
                Body::Fcn { convs: convs.iter().map(&mut conv).collect(), conv_cat: conv_cat.as_ref().map(conv) }
            }
        };
        let (ch, out) = (plan.channels, plan.out_channels);
        let weight = ws.get4(&join(prefix, "conv_seg.weight"), [out, ch, 1, 1]);
        let bias = ws.get1(&join(prefix, "conv_seg.bias"), out);
        DecodeHead { body, conv_seg: ops::Conv2d::new(weight, Some(bias), 1, 0, 1), cfg: cfg.clone() }
    }

    fn resize(&self, x: ArrayView4<T>, size: (usize, usize)) -> Array4<T> {
        ops::resize(x, size, self.cfg.align_corners)
    }

    /// `_transform_inputs`: the selected input maps (resized to the first one's size and
    /// concatenated for `resize_concat`).
    fn transform_inputs(&self, maps: &[Array4<T>], prefix: &str) -> Result<Vec<Array4<T>>, ModelError> {
        let xs = select_inputs(&self.cfg, maps, prefix).map_err(ModelError::Input)?;
        let xs = match &self.cfg.input_transform {
            InputTransform::ResizeConcat(_) => {
                let (_, _, h, w) = xs[0].dim();
                let ups: Vec<Array4<T>> = xs.iter().map(|x| self.resize(x.view(), (h, w))).collect();
                let views: Vec<_> = ups.iter().map(|u| u.view()).collect();
                vec![concatenate(Axis(1), &views).expect("same batch and size")]
            }
            _ => xs.into_iter().cloned().collect(),
        };
        check_input_channels(&self.cfg, xs.iter().map(|x| x.dim().1), prefix).map_err(ModelError::Input)?;
        Ok(xs)
    }

    /// Runs the head on the neck (or backbone) maps: logits at the resolution of the first
    /// selected map, (B, out_channels, h, w).
    pub fn forward(&self, maps: &[Array4<T>], prefix: &str, rec: &mut Recorder<T>) -> Result<Array4<T>, ModelError> {
        let inputs = self.transform_inputs(maps, prefix)?;
        let feat = match &self.body {
            Body::Uper { pool_scales, psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck } => {
                let n = inputs.len();
                let mut laterals: Vec<Array4<T>> = lateral_convs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.forward(inputs[i].view(), &join(prefix, &format!("lateral_convs.{i}")), rec))
                    .collect();
                // psp_forward
                let x = &inputs[n - 1];
                let (_, _, h, w) = x.dim();
                let mut psp_outs = vec![x.clone()];
                for (k, (&s, m)) in pool_scales.iter().zip(psp_modules).enumerate() {
                    let p = join(prefix, &format!("psp_modules.{k}"));
                    let pooled = ops::adaptive_avg_pool2d(x.view(), (s, s));
                    rec.put(&join(&p, "0"), &pooled);
                    let y = m.forward(pooled.view(), &join(&p, "1"), rec);
                    let up = self.resize(y.view(), (h, w));
                    // PPM returns a list: its element k is recorded as `psp_modules.{k}` (it
                    // shadows the Sequential child of the same name, as the generator's hooks do).
                    rec.put(&p, &up);
                    psp_outs.push(up);
                }
                let views: Vec<_> = psp_outs.iter().map(|u| u.view()).collect();
                let cat = concatenate(Axis(1), &views).expect("same batch and size");
                laterals.push(bottleneck.forward(cat.view(), &join(prefix, "bottleneck"), rec));
                // top-down path (cascading)
                for i in (1..n).rev() {
                    let (_, _, hh, ww) = laterals[i - 1].dim();
                    let up = self.resize(laterals[i].view(), (hh, ww));
                    laterals[i - 1] += &up;
                }
                let mut fpn_outs: Vec<Array4<T>> = fpn_convs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.forward(laterals[i].view(), &join(prefix, &format!("fpn_convs.{i}")), rec))
                    .collect();
                fpn_outs.push(laterals[n - 1].clone());
                let (_, _, h0, w0) = fpn_outs[0].dim();
                for o in fpn_outs.iter_mut().skip(1) {
                    *o = self.resize(o.view(), (h0, w0));
                }
                let views: Vec<_> = fpn_outs.iter().map(|u| u.view()).collect();
                let cat = concatenate(Axis(1), &views).expect("same batch and size");
                fpn_bottleneck.forward(cat.view(), &join(prefix, "fpn_bottleneck"), rec)
            }
            Body::Fcn { convs, conv_cat } => {
                let x = &inputs[0];
                let mut feats = x.clone();
                for (i, m) in convs.iter().enumerate() {
                    feats = m.forward(feats.view(), &join(prefix, &format!("convs.{i}")), rec);
                }
                if !convs.is_empty() {
                    rec.put(&join(prefix, "convs"), &feats);
                }
                match conv_cat {
                    Some(m) => {
                        let cat = concatenate(Axis(1), &[x.view(), feats.view()]).expect("same batch and size");
                        m.forward(cat.view(), &join(prefix, "conv_cat"), rec)
                    }
                    None => feats,
                }
            }
        };
        rec.put(&join(prefix, "dropout"), &feat);
        let out = self.conv_seg.forward(feat.view());
        rec.put(&join(prefix, "conv_seg"), &out);
        rec.put(prefix, &out);
        Ok(out)
    }
}
