//! Decode heads on tch tensors: ConvModule, UPerHead (+PPM), FCNHead; mirrors
//! [`crate::reference::heads`] (recorded names `{prefix}.lateral_convs.{i}(.conv/.bn/.activate)`,
//! `psp_modules.{k}(.0/.1...)`, `bottleneck`, `fpn_convs.{i}`, `fpn_bottleneck`, `convs.{i}`,
//! `convs`, `conv_cat`, `dropout`, `conv_seg`, `{prefix}`).

use tch::Tensor;

use super::neck::BatchNorm;
use super::params::Source;
use super::winograd::Winograd;
use super::{join, ops, Ctx, FastError, Recorder, Result};
use crate::config::{HeadConfig, HeadKind, InputTransform};

/// The kernel of a convolution, laid out for the algorithm that runs it (as in
/// [`crate::reference::heads::ConvKernel`]).
pub enum ConvKernel {
    /// (Cout, Cin, kh, kw), run by libtorch's convolution.
    Direct(Tensor),
    /// A 3x3 kernel at dilation 1, fp32/fp64 on the CPU: Winograd F(2x2, 3x3) in torch ops.
    Winograd(Winograd),
}

/// mmcv `ConvModule(in, out, k, padding, dilation)`: conv (bias only without norm) → BN → ReLU.
pub struct ConvModule {
    pub kernel: ConvKernel,
    pub bias: Option<Tensor>,
    pub bn: Option<BatchNorm>,
    pub relu: bool,
    pub padding: i64,
    pub dilation: i64,
}

impl ConvModule {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        src: &mut dyn Source,
        ctx: &Ctx,
        prefix: &str,
        cfg: &HeadConfig,
        cin: usize,
        cout: usize,
        k: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Self> {
        let bn = match &cfg.norm {
            Some(n) => Some(BatchNorm::load(src, ctx, &join(prefix, "bn"), cout, n.eps)?),
            None => None,
        };
        let weight = src.get(&join(prefix, "conv.weight"), &[cout, cin, k, k], ctx.kind())?;
        let winograd = k == 3 && dilation == 1 && ctx.device == tch::Device::Cpu && !ctx.precision.is_reduced();
        Ok(ConvModule {
            kernel: if winograd {
                ConvKernel::Winograd(Winograd::new(&weight, ctx.kind())?)
            } else {
                ConvKernel::Direct(weight)
            },
            // bias='auto': a conv bias only when there is no norm layer.
            bias: if bn.is_none() { Some(src.get(&join(prefix, "conv.bias"), &[cout], ctx.kind())?) } else { None },
            bn,
            relu: cfg.relu,
            padding: padding as i64,
            dilation: dilation as i64,
        })
    }

    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let mut y = match &self.kernel {
            ConvKernel::Direct(w) => ops::conv2d(x, w, self.bias.as_ref(), 1, self.padding, self.dilation)?,
            ConvKernel::Winograd(u) => u.conv2d(x, self.bias.as_ref(), self.padding)?,
        };
        rec.put(&join(prefix, "conv"), &y);
        if let Some(bn) = &self.bn {
            y = bn.forward(&y)?;
            rec.put(&join(prefix, "bn"), &y);
        }
        if self.relu {
            y = ops::relu(&y)?;
            rec.put(&join(prefix, "activate"), &y);
        }
        rec.put(prefix, &y);
        Ok(y)
    }
}

/// Python-style list index (negative counts from the end).
fn pick<'a>(maps: &'a [Tensor], idx: i64, prefix: &str) -> Result<&'a Tensor> {
    let n = maps.len() as i64;
    let i = if idx < 0 { idx + n } else { idx };
    if i < 0 || i >= n {
        return Err(FastError::Input(format!("{prefix}: in_index {idx} is out of range for {n} input maps")));
    }
    Ok(&maps[i as usize])
}

// One value per head: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Body {
    Uper {
        pool_scales: Vec<usize>,
        /// `psp_modules.{k}.1`: the 1x1 ConvModule after AdaptiveAvgPool2d(scale k).
        psp_modules: Vec<ConvModule>,
        bottleneck: ConvModule,
        lateral_convs: Vec<ConvModule>,
        fpn_convs: Vec<ConvModule>,
        fpn_bottleneck: ConvModule,
    },
    Fcn {
        convs: Vec<ConvModule>,
        conv_cat: Option<ConvModule>,
    },
}

/// A decode head (UPerHead or FCNHead) with its `conv_seg` classifier.
pub struct DecodeHead {
    pub cfg: HeadConfig,
    body: Body,
    pub conv_seg_weight: Tensor,
    pub conv_seg_bias: Tensor,
}

impl DecodeHead {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &HeadConfig) -> Result<Self> {
        let ch = cfg.channels;
        let body = match &cfg.kind {
            HeadKind::Uper { pool_scales } => {
                let n = cfg.in_channels.len();
                let top = cfg.in_channels[n - 1];
                Body::Uper {
                    pool_scales: pool_scales.clone(),
                    psp_modules: (0..pool_scales.len())
                        .map(|k| {
                            ConvModule::load(
                                src,
                                ctx,
                                &join(prefix, &format!("psp_modules.{k}.1")),
                                cfg,
                                top,
                                ch,
                                1,
                                0,
                                1,
                            )
                        })
                        .collect::<Result<_>>()?,
                    bottleneck: ConvModule::load(
                        src,
                        ctx,
                        &join(prefix, "bottleneck"),
                        cfg,
                        top + pool_scales.len() * ch,
                        ch,
                        3,
                        1,
                        1,
                    )?,
                    lateral_convs: (0..n - 1)
                        .map(|i| {
                            ConvModule::load(
                                src,
                                ctx,
                                &join(prefix, &format!("lateral_convs.{i}")),
                                cfg,
                                cfg.in_channels[i],
                                ch,
                                1,
                                0,
                                1,
                            )
                        })
                        .collect::<Result<_>>()?,
                    fpn_convs: (0..n - 1)
                        .map(|i| {
                            ConvModule::load(src, ctx, &join(prefix, &format!("fpn_convs.{i}")), cfg, ch, ch, 3, 1, 1)
                        })
                        .collect::<Result<_>>()?,
                    fpn_bottleneck: ConvModule::load(
                        src,
                        ctx,
                        &join(prefix, "fpn_bottleneck"),
                        cfg,
                        n * ch,
                        ch,
                        3,
                        1,
                        1,
                    )?,
                }
            }
            HeadKind::Fcn { num_convs, kernel_size, concat_input, dilation } => {
                let k = *kernel_size;
                let pad = (k / 2) * dilation;
                let cin = cfg.in_channels[0];
                let convs = (0..*num_convs)
                    .map(|i| {
                        let inp = if i == 0 { cin } else { ch };
                        ConvModule::load(
                            src,
                            ctx,
                            &join(prefix, &format!("convs.{i}")),
                            cfg,
                            inp,
                            ch,
                            k,
                            pad,
                            *dilation,
                        )
                    })
                    .collect::<Result<_>>()?;
                let conv_cat = if *concat_input {
                    Some(ConvModule::load(src, ctx, &join(prefix, "conv_cat"), cfg, cin + ch, ch, k, k / 2, 1)?)
                } else {
                    None
                };
                Body::Fcn { convs, conv_cat }
            }
        };
        Ok(DecodeHead {
            body,
            conv_seg_weight: src.get(&join(prefix, "conv_seg.weight"), &[cfg.out_channels, ch, 1, 1], ctx.kind())?,
            conv_seg_bias: src.get(&join(prefix, "conv_seg.bias"), &[cfg.out_channels], ctx.kind())?,
            cfg: cfg.clone(),
        })
    }

    fn resize(&self, x: &Tensor, size: (i64, i64)) -> Result<Tensor> {
        ops::resize_bilinear(x, size, self.cfg.align_corners)
    }

    /// `_transform_inputs`: the selected input maps.
    fn transform_inputs(&self, maps: &[Tensor], prefix: &str) -> Result<Vec<Tensor>> {
        let check = |x: &Tensor, want: usize| -> Result<()> {
            let got = x.size()[1] as usize;
            if got != want {
                return Err(FastError::Input(format!(
                    "{prefix}: input map has {got} channels, in_channels says {want}"
                )));
            }
            Ok(())
        };
        match &self.cfg.input_transform {
            InputTransform::Select(i) => {
                let x = pick(maps, *i, prefix)?;
                check(x, self.cfg.in_channels[0])?;
                Ok(vec![x.shallow_clone()])
            }
            InputTransform::MultipleSelect(idx) => {
                let xs = idx
                    .iter()
                    .map(|&i| pick(maps, i, prefix).map(Tensor::shallow_clone))
                    .collect::<Result<Vec<_>>>()?;
                for (x, &c) in xs.iter().zip(&self.cfg.in_channels) {
                    check(x, c)?;
                }
                Ok(xs)
            }
            InputTransform::ResizeConcat(idx) => {
                let xs = idx.iter().map(|&i| pick(maps, i, prefix)).collect::<Result<Vec<_>>>()?;
                let size = ops::hw(xs[0]);
                let ups = xs.iter().map(|x| self.resize(x, size)).collect::<Result<Vec<_>>>()?;
                let cat = Tensor::f_cat(&ups, 1)?;
                check(&cat, self.cfg.in_channels[0])?;
                Ok(vec![cat])
            }
        }
    }

    /// Logits at the resolution of the first selected map, (B, out_channels, h, w).
    pub fn forward(&self, maps: &[Tensor], prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let inputs = self.transform_inputs(maps, prefix)?;
        let feat = match &self.body {
            Body::Uper { pool_scales, psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck } => {
                let n = inputs.len();
                let mut laterals = lateral_convs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.forward(&inputs[i], &join(prefix, &format!("lateral_convs.{i}")), rec))
                    .collect::<Result<Vec<_>>>()?;
                // psp_forward: cat[x, up(ppm_1(x)), up(ppm_2(x)), ...] -> bottleneck
                let x = &inputs[n - 1];
                let size = ops::hw(x);
                let mut psp_outs = vec![x.shallow_clone()];
                for (k, (&s, m)) in pool_scales.iter().zip(psp_modules).enumerate() {
                    let p = join(prefix, &format!("psp_modules.{k}"));
                    let pooled = ops::adaptive_avg_pool2d(x, s as i64)?;
                    rec.put(&join(&p, "0"), &pooled);
                    let y = m.forward(&pooled, &join(&p, "1"), rec)?;
                    let up = self.resize(&y, size)?;
                    rec.put(&p, &up);
                    psp_outs.push(up);
                }
                let cat = Tensor::f_cat(&psp_outs, 1)?;
                laterals.push(bottleneck.forward(&cat, &join(prefix, "bottleneck"), rec)?);
                // top-down path (cascading); new tensors, so recorded laterals are untouched
                for i in (1..n).rev() {
                    let up = self.resize(&laterals[i], ops::hw(&laterals[i - 1]))?;
                    laterals[i - 1] = laterals[i - 1].f_add(&up)?;
                }
                let mut fpn_outs = fpn_convs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.forward(&laterals[i], &join(prefix, &format!("fpn_convs.{i}")), rec))
                    .collect::<Result<Vec<_>>>()?;
                fpn_outs.push(laterals[n - 1].shallow_clone());
                let size0 = ops::hw(&fpn_outs[0]);
                for o in fpn_outs.iter_mut().skip(1) {
                    *o = self.resize(o, size0)?;
                }
                let cat = Tensor::f_cat(&fpn_outs, 1)?;
                fpn_bottleneck.forward(&cat, &join(prefix, "fpn_bottleneck"), rec)?
            }
            Body::Fcn { convs, conv_cat } => {
                let x = &inputs[0];
                let mut feats = x.shallow_clone();
                for (i, m) in convs.iter().enumerate() {
                    feats = m.forward(&feats, &join(prefix, &format!("convs.{i}")), rec)?;
                }
                if !convs.is_empty() {
                    rec.put(&join(prefix, "convs"), &feats);
                }
                match conv_cat {
                    Some(m) => m.forward(&Tensor::f_cat(&[x, &feats], 1)?, &join(prefix, "conv_cat"), rec)?,
                    None => feats,
                }
            }
        };
        rec.put(&join(prefix, "dropout"), &feat);
        let out = ops::conv2d(&feat, &self.conv_seg_weight, Some(&self.conv_seg_bias), 1, 0, 1)?;
        rec.put(&join(prefix, "conv_seg"), &out);
        rec.put(prefix, &out);
        Ok(out)
    }
}
