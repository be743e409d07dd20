//! Decode heads on tch tensors: ConvModule, UPerHead (+PPM), FCNHead; mirrors
//! [`crate::reference::heads`] (recorded names `{prefix}.lateral_convs.{i}(.conv/.bn/.activate)`,
//! `psp_modules.{k}(.0/.1...)`, `bottleneck`, `fpn_convs.{i}`, `fpn_bottleneck`, `convs.{i}`,
//! `convs`, `conv_cat`, `dropout`, `conv_seg`, `{prefix}`).

use tch::Tensor;

use super::batch_norm::BatchNorm;
use super::weight_source::Source;
use super::winograd::Winograd;
use super::{join, ops, Ctx, ModelError, Recorder, Result};
use crate::config::{HeadConfig, InputTransform};
use crate::model::heads::{check_input_channels, select_inputs, BodyPlan, ConvSpec, HeadPlan};

/// The kernel of a convolution, laid out for the algorithm that runs it.
pub enum ConvKernel {
    /// (Cout, Cin, kh, kw), run by libtorch's convolution.
    Direct(Tensor),
    /// A 3x3 kernel at dilation 1, fp32/fp64 on the CPU: Winograd F(2x2, 3x3) in torch ops.
    Winograd(Winograd),
}

/// mmcv `ConvModule`: `relu(bn(conv2d(x)))`, as its [`ConvSpec`] says.
pub struct ConvModule {
    pub kernel: ConvKernel,
    pub bias: Option<Tensor>,
    pub bn: Option<BatchNorm>,
    pub relu: bool,
    pub padding: i64,
    pub dilation: i64,
    /// `(compute, model)` kinds when the convolution computes in another kind than the model's
    /// ([`Ctx::conv_kind`]): the input is widened, the output rounded back.
    compute: Option<(tch::Kind, tch::Kind)>,
}

impl ConvModule {
    /// The module `spec.name` under `head`.
    pub fn load(src: &mut dyn Source, ctx: &Ctx, head: &str, spec: &ConvSpec) -> Result<Self> {
        let prefix = join(head, &spec.name);
        let (cin, cout, k) = (spec.in_channels, spec.out_channels, spec.kernel);
        let bn = match spec.bn_eps {
            Some(eps) => Some(BatchNorm::load(src, ctx, &join(&prefix, "bn"), cout, eps)?),
            None => None,
        };
        // Rounded to the model's kind first, then held in the kind the convolution computes in.
        let ck = ctx.conv_kind();
        let weight = src.get(&join(&prefix, "conv.weight"), &[cout, cin, k, k], ctx.kind())?.f_to_kind(ck)?;
        let weight = ctx.conv_weight(weight)?;
        let winograd = k == 3
            && spec.dilation == 1
            && ctx.device == tch::Device::Cpu
            && matches!(ck, tch::Kind::Float | tch::Kind::Double);
        let bias = if spec.conv_bias() {
            Some(src.get(&join(&prefix, "conv.bias"), &[cout], ctx.kind())?.f_to_kind(ck)?)
        } else {
            None
        };
        Ok(ConvModule {
            kernel: if winograd {
                ConvKernel::Winograd(Winograd::new(&weight, ck)?)
            } else {
                ConvKernel::Direct(weight)
            },
            bias,
            compute: (ck != ctx.kind()).then_some((ck, ctx.kind())),
            bn,
            relu: spec.relu,
            padding: spec.padding as i64,
            dilation: spec.dilation as i64,
        })
    }

    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let xw = match self.compute {
            Some((wide, _)) => x.f_to_kind(wide)?,
            None => x.shallow_clone(),
        };
        let mut y = match &self.kernel {
            ConvKernel::Direct(w) => ops::conv2d(&xw, w, self.bias.as_ref(), 1, self.padding, self.dilation)?,
            ConvKernel::Winograd(u) => u.conv2d(&xw, self.bias.as_ref(), self.padding)?,
        };
        if let Some((_, model)) = self.compute {
            y = y.f_to_kind(model)?;
        }
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
        let plan = HeadPlan::new(cfg);
        let mut conv = |spec: &ConvSpec| ConvModule::load(src, ctx, prefix, spec);
        let body = match &plan.body {
            BodyPlan::Uper { pool_scales, psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck } => {
                Body::Uper {
                    pool_scales: pool_scales.clone(),
                    psp_modules: psp_modules.iter().map(&mut conv).collect::<Result<_>>()?,
                    bottleneck: conv(bottleneck)?,
                    lateral_convs: lateral_convs.iter().map(&mut conv).collect::<Result<_>>()?,
                    fpn_convs: fpn_convs.iter().map(&mut conv).collect::<Result<_>>()?,
                    fpn_bottleneck: conv(fpn_bottleneck)?,
                }
            }
            BodyPlan::Fcn { convs, conv_cat } => Body::Fcn {
                convs: convs.iter().map(&mut conv).collect::<Result<_>>()?,
                conv_cat: conv_cat.as_ref().map(conv).transpose()?,
            },
        };
        let (ch, out) = (plan.channels, plan.out_channels);
        Ok(DecodeHead {
            body,
            conv_seg_weight: ctx.conv_weight(src.get(
                &join(prefix, "conv_seg.weight"),
                &[out, ch, 1, 1],
                ctx.kind(),
            )?)?,
            conv_seg_bias: src.get(&join(prefix, "conv_seg.bias"), &[out], ctx.kind())?,
            cfg: cfg.clone(),
        })
    }

    fn resize(&self, x: &Tensor, size: (i64, i64)) -> Result<Tensor> {
        ops::resize(x, size, self.cfg.align_corners)
    }

    /// `_transform_inputs`: the selected input maps (resized to the first one's size and
    /// concatenated for `resize_concat`).
    fn transform_inputs(&self, maps: &[Tensor], prefix: &str) -> Result<Vec<Tensor>> {
        let xs = select_inputs(&self.cfg, maps, prefix).map_err(ModelError::Input)?;
        let xs = match &self.cfg.input_transform {
            InputTransform::ResizeConcat(_) => {
                let size = ops::hw(xs[0]);
                let ups = xs.iter().map(|x| self.resize(x, size)).collect::<Result<Vec<_>>>()?;
                vec![Tensor::f_cat(&ups, 1)?]
            }
            _ => xs.into_iter().map(Tensor::shallow_clone).collect(),
        };
        check_input_channels(&self.cfg, xs.iter().map(|x| x.size()[1] as usize), prefix).map_err(ModelError::Input)?;
        Ok(xs)
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
        // NCHW again (a no-op unless channels-last): the logits are resized and copied out next.
        let out = ops::conv2d(&feat, &self.conv_seg_weight, Some(&self.conv_seg_bias), 1, 0, 1)?.f_contiguous()?;
        rec.put(&join(prefix, "conv_seg"), &out);
        rec.put(prefix, &out);
        Ok(out)
    }
}
