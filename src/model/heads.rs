//! The plan of a decode head, computed once from its config for both backends: which input
//! maps it takes, and every mmcv `ConvModule` it holds (name, channels, kernel, padding,
//! dilation, BN, ReLU). Each backend only turns a [`HeadPlan`] into its tensors and runs it.

use crate::config::{HeadConfig, HeadKind, InputTransform};

/// One mmcv `ConvModule(in, out, kernel, padding, dilation)`: conv (a bias only when there is
/// no norm, `bias='auto'`) → BN (when `bn_eps`) → ReLU (when `relu`). Stride 1.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    /// The module's name under the head (`lateral_convs.0`, `psp_modules.2.1`, `conv_cat`).
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub padding: usize,
    pub dilation: usize,
    /// `norm_cfg`'s eps: a BatchNorm after the conv, and then no conv bias.
    pub bn_eps: Option<f64>,
    pub relu: bool,
}

impl ConvSpec {
    /// Whether the conv has its own bias (`bias='auto'`: only without a norm layer).
    pub fn conv_bias(&self) -> bool {
        self.bn_eps.is_none()
    }
}

/// The modules of a head family, in construction (and weight) order.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyPlan {
    /// `UPerHead`: `psp_modules.{k}.1` (after AdaptiveAvgPool2d(scale k)), `bottleneck`,
    /// `lateral_convs.{i}`, `fpn_convs.{i}`, `fpn_bottleneck`.
    Uper {
        pool_scales: Vec<usize>,
        psp_modules: Vec<ConvSpec>,
        bottleneck: ConvSpec,
        lateral_convs: Vec<ConvSpec>,
        fpn_convs: Vec<ConvSpec>,
        fpn_bottleneck: ConvSpec,
    },
    /// `FCNHead`: `convs.{i}`, then `conv_cat` on `cat[input, convs(input)]` if `concat_input`.
    Fcn { convs: Vec<ConvSpec>, conv_cat: Option<ConvSpec> },
}

/// A decode head: its body and the `conv_seg` classifier (1x1, `channels` → `out_channels`,
/// with bias).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPlan {
    pub body: BodyPlan,
    pub channels: usize,
    pub out_channels: usize,
}

impl HeadPlan {
    pub fn new(cfg: &HeadConfig) -> Self {
        let ch = cfg.channels;
        let conv = |name: String, cin: usize, k: usize, padding: usize, dilation: usize| ConvSpec {
            name,
            in_channels: cin,
            out_channels: ch,
            kernel: k,
            padding,
            dilation,
            bn_eps: cfg.norm.as_ref().map(|n| n.eps),
            relu: cfg.relu,
        };
        let body = match &cfg.kind {
            HeadKind::Uper { pool_scales } => {
                let n = cfg.in_channels.len();
                let top = cfg.in_channels[n - 1];
                BodyPlan::Uper {
                    pool_scales: pool_scales.clone(),
                    psp_modules: (0..pool_scales.len())
                        .map(|k| conv(format!("psp_modules.{k}.1"), top, 1, 0, 1))
                        .collect(),
                    bottleneck: conv("bottleneck".into(), top + pool_scales.len() * ch, 3, 1, 1),
                    lateral_convs: (0..n - 1)
                        .map(|i| conv(format!("lateral_convs.{i}"), cfg.in_channels[i], 1, 0, 1))
                        .collect(),
                    fpn_convs: (0..n - 1).map(|i| conv(format!("fpn_convs.{i}"), ch, 3, 1, 1)).collect(),
                    fpn_bottleneck: conv("fpn_bottleneck".into(), n * ch, 3, 1, 1),
                }
            }
            HeadKind::Fcn { num_convs, kernel_size: k, concat_input, dilation: d } => {
                let cin = cfg.in_channels[0];
                BodyPlan::Fcn {
                    convs: (0..*num_convs)
                        .map(|i| conv(format!("convs.{i}"), if i == 0 { cin } else { ch }, *k, (k / 2) * d, *d))
                        .collect(),
                    conv_cat: concat_input.then(|| conv("conv_cat".into(), cin + ch, *k, k / 2, 1)),
                }
            }
        };
        HeadPlan { body, channels: ch, out_channels: cfg.out_channels }
    }

    /// Every ConvModule of the body, in construction order.
    pub fn convs(&self) -> Vec<&ConvSpec> {
        match &self.body {
            BodyPlan::Uper { psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck, .. } => psp_modules
                .iter()
                .chain([bottleneck])
                .chain(lateral_convs)
                .chain(fpn_convs)
                .chain([fpn_bottleneck])
                .collect(),
            BodyPlan::Fcn { convs, conv_cat } => convs.iter().chain(conv_cat).collect(),
        }
    }
}

/// `_transform_inputs`' selection: the maps `in_index` picks (Python-style indices, negative
/// counting from the end), before any resize and concat. An index out of range is an error
/// naming the head.
pub fn select_inputs<'a, M>(cfg: &HeadConfig, maps: &'a [M], prefix: &str) -> Result<Vec<&'a M>, String> {
    let pick = |idx: i64| {
        let n = maps.len() as i64;
        let i = if idx < 0 { idx + n } else { idx };
        if i < 0 || i >= n {
            return Err(format!("{prefix}: in_index {idx} is out of range for {n} input maps"));
        }
        Ok(&maps[i as usize])
    };
    match &cfg.input_transform {
        InputTransform::Select(i) => Ok(vec![pick(*i)?]),
        InputTransform::MultipleSelect(idx) | InputTransform::ResizeConcat(idx) => {
            idx.iter().map(|&i| pick(i)).collect()
        }
    }
}

/// The transformed inputs' channel counts against `in_channels` (pairwise; one map and
/// `in_channels[0]` after `resize_concat`).
pub fn check_input_channels(
    cfg: &HeadConfig,
    got: impl IntoIterator<Item = usize>,
    prefix: &str,
) -> Result<(), String> {
    for (got, &want) in got.into_iter().zip(&cfg.in_channels) {
        if got != want {
            return Err(format!("{prefix}: input map has {got} channels, in_channels says {want}"));
        }
    }
    Ok(())
}

/// Feature2Pyramid takes exactly four backbone maps.
pub fn check_neck_inputs(out_indices: &[i64], maps: usize) -> Result<(), String> {
    if maps != 4 {
        return Err(format!("Feature2Pyramid needs 4 backbone maps, out_indices {out_indices:?} gives {maps}"));
    }
    Ok(())
}
