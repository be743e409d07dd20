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

use ndarray::{concatenate, Array1, Array4, ArrayView4, Axis};

use super::beit::{take1, take4};
use super::neck::BatchNorm;
use super::ops;
use super::{ModelError, Recorder};
use crate::config::{HeadConfig, HeadKind, InputTransform};
use crate::model::join;
use crate::weights::WeightStore;
use crate::Float;

/// mmcv `ConvModule(in, out, k, padding, dilation)` with optional BN and ReLU.
/// The kernel of a convolution, laid out for the algorithm that runs it.
pub enum ConvKernel<T: Float> {
    /// (Cout, Cin, kh, kw), run by im2col + GEMM ([`ops::conv2d`]).
    Direct(Array4<T>),
    /// A 3x3 kernel at dilation 1, transformed at load time for Winograd's F(2x2, 3x3)
    /// ([`ops::conv2d_winograd`]).
    Winograd(ops::Winograd3x3<T>),
}

pub struct ConvModule<T: Float> {
    pub kernel: ConvKernel<T>,
    pub bias: Option<Array1<T>>,
    pub bn: Option<BatchNorm<T>>,
    pub relu: bool,
    pub padding: usize,
    pub dilation: usize,
}

impl<T: Float> ConvModule<T> {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ws: &mut WeightStore<T>,
        prefix: &str,
        cfg: &HeadConfig,
        cin: usize,
        cout: usize,
        k: usize,
        padding: usize,
        dilation: usize,
    ) -> Self {
        let bn = cfg.norm.as_ref().map(|n| BatchNorm::load(ws, &join(prefix, "bn"), cout, n.eps));
        let weight = take4(ws, &join(prefix, "conv.weight"), [cout, cin, k, k]);
        // A store without tensors only collects the requests (`parameter_shapes`) or fails in
        // `finish`: no transform for its zeros.
        let kernel = if k == 3 && dilation == 1 && !ws.is_empty() {
            ConvKernel::Winograd(ops::Winograd3x3::new(weight.view()))
        } else {
            ConvKernel::Direct(weight)
        };
        ConvModule {
            kernel,
            // bias='auto': a conv bias only when there is no norm layer.
            bias: bn.is_none().then(|| take1(ws, &join(prefix, "conv.bias"), cout)),
            bn,
            relu: cfg.relu,
            padding,
            dilation,
        }
    }

    pub fn forward(&self, x: ArrayView4<T>, prefix: &str, rec: &mut Recorder<T>) -> Array4<T> {
        let p = self.padding;
        let d = self.dilation;
        let bias = self.bias.as_ref().map(|b| b.view());
        let mut y = match &self.kernel {
            ConvKernel::Direct(w) => ops::conv2d(x, w.view(), bias, (1, 1), (p, p), (d, d)),
            ConvKernel::Winograd(u) => ops::conv2d_winograd(x, u, bias, (p, p)),
        };
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

/// Python-style list index (negative counts from the end).
fn pick<'a, T: Float>(maps: &'a [Array4<T>], idx: i64, prefix: &str) -> Result<&'a Array4<T>, ModelError> {
    let n = maps.len() as i64;
    let i = if idx < 0 { idx + n } else { idx };
    if i < 0 || i >= n {
        return Err(ModelError::Input(format!("{prefix}: in_index {idx} is out of range for {n} input maps")));
    }
    Ok(&maps[i as usize])
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
    pub conv_seg_weight: Array4<T>,
    pub conv_seg_bias: Array1<T>,
}

impl<T: Float> DecodeHead<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &HeadConfig) -> Self {
        let ch = cfg.channels;
        let body = match &cfg.kind {
            HeadKind::Uper { pool_scales } => {
                let n = cfg.in_channels.len();
                let top = cfg.in_channels[n - 1];
                Body::Uper {
                    pool_scales: pool_scales.clone(),
                    psp_modules: (0..pool_scales.len())
                        .map(|k| {
                            ConvModule::load(ws, &join(prefix, &format!("psp_modules.{k}.1")), cfg, top, ch, 1, 0, 1)
                        })
                        .collect(),
                    bottleneck: ConvModule::load(
                        ws,
                        &join(prefix, "bottleneck"),
                        cfg,
                        top + pool_scales.len() * ch,
                        ch,
                        3,
                        1,
                        1,
                    ),
                    lateral_convs: (0..n - 1)
                        .map(|i| {
                            ConvModule::load(
                                ws,
                                &join(prefix, &format!("lateral_convs.{i}")),
                                cfg,
                                cfg.in_channels[i],
                                ch,
                                1,
                                0,
                                1,
                            )
                        })
                        .collect(),
                    fpn_convs: (0..n - 1)
                        .map(|i| ConvModule::load(ws, &join(prefix, &format!("fpn_convs.{i}")), cfg, ch, ch, 3, 1, 1))
                        .collect(),
                    fpn_bottleneck: ConvModule::load(ws, &join(prefix, "fpn_bottleneck"), cfg, n * ch, ch, 3, 1, 1),
                }
            }
            HeadKind::Fcn { num_convs, kernel_size, concat_input, dilation } => {
                let k = *kernel_size;
                let pad = (k / 2) * dilation;
                let cin = cfg.in_channels[0];
                let convs = (0..*num_convs)
                    .map(|i| {
                        let inp = if i == 0 { cin } else { ch };
                        ConvModule::load(ws, &join(prefix, &format!("convs.{i}")), cfg, inp, ch, k, pad, *dilation)
                    })
                    .collect();
                let conv_cat = concat_input
                    .then(|| ConvModule::load(ws, &join(prefix, "conv_cat"), cfg, cin + ch, ch, k, k / 2, 1));
                Body::Fcn { convs, conv_cat }
            }
        };
        DecodeHead {
            body,
            conv_seg_weight: take4(ws, &join(prefix, "conv_seg.weight"), [cfg.out_channels, ch, 1, 1]),
            conv_seg_bias: take1(ws, &join(prefix, "conv_seg.bias"), cfg.out_channels),
            cfg: cfg.clone(),
        }
    }

    fn resize(&self, x: ArrayView4<T>, size: (usize, usize)) -> Array4<T> {
        ops::interpolate_bilinear(x, size, self.cfg.align_corners)
    }

    /// `_transform_inputs`: the selected input maps.
    fn transform_inputs(&self, maps: &[Array4<T>], prefix: &str) -> Result<Vec<Array4<T>>, ModelError> {
        let check = |x: &Array4<T>, want: usize| -> Result<(), ModelError> {
            if x.dim().1 != want {
                return Err(ModelError::Input(format!(
                    "{prefix}: input map has {} channels, in_channels says {want}",
                    x.dim().1
                )));
            }
            Ok(())
        };
        match &self.cfg.input_transform {
            InputTransform::Select(i) => {
                let x = pick(maps, *i, prefix)?;
                check(x, self.cfg.in_channels[0])?;
                Ok(vec![x.clone()])
            }
            InputTransform::MultipleSelect(idx) => {
                let xs = idx.iter().map(|&i| pick(maps, i, prefix).cloned()).collect::<Result<Vec<_>, _>>()?;
                for (x, &c) in xs.iter().zip(&self.cfg.in_channels) {
                    check(x, c)?;
                }
                Ok(xs)
            }
            InputTransform::ResizeConcat(idx) => {
                let xs = idx.iter().map(|&i| pick(maps, i, prefix)).collect::<Result<Vec<_>, _>>()?;
                let (_, _, h, w) = xs[0].dim();
                let ups: Vec<Array4<T>> = xs.iter().map(|x| self.resize(x.view(), (h, w))).collect();
                let views: Vec<_> = ups.iter().map(|u| u.view()).collect();
                let cat = concatenate(Axis(1), &views).expect("same batch and size");
                check(&cat, self.cfg.in_channels[0])?;
                Ok(vec![cat])
            }
        }
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
        let out = ops::conv2d(
            feat.view(),
            self.conv_seg_weight.view(),
            Some(self.conv_seg_bias.view()),
            (1, 1),
            (0, 0),
            (1, 1),
        );
        rec.put(&join(prefix, "conv_seg"), &out);
        rec.put(prefix, &out);
        Ok(out)
    }
}
