//! The `Feature2Pyramid` neck and the `UPerHead` / `FCNHead` configs, with their BN / ReLU
//! sub-configs.

use serde_json::Value;

use super::{as_usize, err, ConfigError, Dict};

/// BatchNorm config (`BN`, `SyncBN`, `BN2d`: identical at inference); eps default 1e-5.
#[derive(Debug, Clone, PartialEq)]
pub struct BnConfig {
    pub eps: f64,
}

pub(crate) fn bn_cfg(v: Option<&Value>, path: &str) -> Result<Option<BnConfig>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("BN") | Some("SyncBN") | Some("BN2d") | Some("BatchNorm2d") | Some("MMSyncBN") => {}
        other => return err(d.key("type"), format!("only BN/SyncBN are supported, got {other:?}")),
    }
    let eps = d.f64("eps", 1e-5)?;
    if !(eps.is_finite() && eps > 0.0) {
        return err(
            d.key("eps"),
            format!("must be a finite number > 0, got {eps} (BatchNorm divides by sqrt(var + eps))"),
        );
    }
    // momentum and requires_grad only matter in training.
    d.ignore(&["requires_grad", "momentum"]);
    if let Some(v) = d.raw("affine") {
        if v != &Value::Bool(true) {
            return err(d.key("affine"), "only affine=True is supported");
        }
    }
    if let Some(v) = d.raw("track_running_stats") {
        if v != &Value::Bool(true) {
            return err(d.key("track_running_stats"), "only track_running_stats=True is supported");
        }
    }
    d.finish()?;
    Ok(Some(BnConfig { eps }))
}

/// Whether a ConvModule has an activation (`act_cfg=dict(type='ReLU')` or `None`).
pub(crate) fn relu_cfg(v: Option<&Value>, path: &str) -> Result<bool, ConfigError> {
    let Some(v) = v else { return Ok(false) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("ReLU") => {}
        other => return err(d.key("type"), format!("only ReLU (or None) is supported, got {other:?}")),
    }
    d.ignore(&["inplace"]);
    d.finish()?;
    Ok(true)
}

/// `Feature2Pyramid` neck kwargs (`mmseg/models/necks/featurepyramid.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct NeckConfig {
    pub embed_dim: usize,
    /// The four ops in mmseg's fixed order: `[4, 2, 1, 0.5]` or `[2, 1, 0.5, 0.25]`.
    pub with_upsample_4x: bool,
    pub rescales: Vec<f64>,
    pub norm: BnConfig,
}

impl NeckConfig {
    pub fn from_value(v: &Value, path: &str) -> Result<Self, ConfigError> {
        let mut d = Dict::new(v, path)?;
        match d.str("type")? {
            Some("Feature2Pyramid") => {}
            o => return err(d.key("type"), format!("only Feature2Pyramid is supported, got {o:?}")),
        }
        let embed_dim = d.usize("embed_dim", None)?;
        let rescales: Vec<f64> = match d.raw("rescales") {
            None => vec![4.0, 2.0, 1.0, 0.5],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_f64()
                        .ok_or(())
                        .or_else(|_| err(format!("{path}.rescales"), format!("expected numbers, got {x}")))
                })
                .collect::<Result<_, _>>()?,
            Some(o) => return err(d.key("rescales"), format!("expected a list, got {o}")),
        };
        for r in &rescales {
            if ![4.0, 2.0, 1.0, 0.5, 0.25].contains(r) {
                return err(d.key("rescales"), format!("invalid {r} for feature2pyramid (mmseg raises KeyError)"));
            }
        }
        if rescales.len() != 4 {
            return err(
                d.key("rescales"),
                format!("Feature2Pyramid applies exactly four ops; got {} rescales", rescales.len()),
            );
        }
        let with_upsample_4x = rescales.contains(&4.0);
        let needed: &[f64] = if with_upsample_4x { &[4.0, 2.0, 1.0, 0.5] } else { &[2.0, 1.0, 0.5, 0.25] };
        for n in needed {
            if !rescales.contains(n) {
                return err(
                    d.key("rescales"),
                    format!("{rescales:?}: mmseg's forward applies the ops {needed:?} in that order, and {n} is missing (AttributeError in mmseg)"),
                );
            }
        }
        let norm = bn_cfg(d.raw("norm_cfg"), &d.key("norm_cfg"))?.unwrap_or(BnConfig { eps: 1e-5 });
        d.finish()?;
        Ok(NeckConfig { embed_dim, with_upsample_4x, rescales, norm })
    }
}

/// How a decode head picks its inputs (`BaseDecodeHead._transform_inputs`).
#[derive(Debug, Clone, PartialEq)]
pub enum InputTransform {
    /// `input_transform=None`: one map, `inputs[in_index]`.
    Select(i64),
    /// `'multiple_select'`: the maps `in_index`.
    MultipleSelect(Vec<i64>),
    /// `'resize_concat'`: the maps `in_index` resized to the first one's size and concatenated.
    ResizeConcat(Vec<i64>),
}

/// The head families implemented.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadKind {
    /// `UPerHead(pool_scales)`.
    Uper { pool_scales: Vec<usize> },
    /// `FCNHead(num_convs, kernel_size, concat_input, dilation)`.
    Fcn { num_convs: usize, kernel_size: usize, concat_input: bool, dilation: usize },
}

/// A decode or auxiliary head (`BaseDecodeHead` kwargs plus the family's own).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub kind: HeadKind,
    /// Channels of each selected input (after the transform's concat for `resize_concat`).
    pub in_channels: Vec<usize>,
    pub channels: usize,
    pub num_classes: usize,
    pub out_channels: usize,
    pub input_transform: InputTransform,
    pub norm: Option<BnConfig>,
    pub relu: bool,
    pub align_corners: bool,
}

impl HeadConfig {
    pub fn from_value(v: &Value, path: &str) -> Result<Self, ConfigError> {
        let mut d = Dict::new(v, path)?;
        let kind = head_kind(&mut d)?;
        let (input_transform, in_channels) = head_inputs(&mut d, path, &kind)?;
        let (channels, num_classes, out_channels) = head_channels(&mut d)?;
        check_conv_cfg(&mut d)?;
        let norm = bn_cfg(d.raw("norm_cfg"), &d.key("norm_cfg"))?;
        let relu = match d.raw("act_cfg") {
            // BaseDecodeHead default act_cfg=dict(type='ReLU'); an explicit null means None.
            None if d.map.contains_key("act_cfg") => false,
            None => true,
            Some(v) => relu_cfg(Some(v), &d.key("act_cfg"))?,
        };
        let align_corners = d.bool("align_corners", false)?;
        d.ignore(&["dropout_ratio", "loss_decode", "ignore_index", "sampler", "init_cfg", "threshold"]);
        d.finish()?;
        if let HeadKind::Uper { .. } = kind {
            if in_channels.is_empty() {
                return err(format!("{path}.in_channels"), "UPerHead needs at least one input");
            }
        }
        if let HeadKind::Fcn { num_convs: 0, .. } = kind {
            if in_channels[0] != channels {
                return err(format!("{path}.channels"), "FCNHead with num_convs=0 needs in_channels == channels");
            }
        }
        Ok(HeadConfig {
            kind,
            in_channels,
            channels,
            num_classes,
            out_channels,
            input_transform,
            norm,
            relu,
            align_corners,
        })
    }
}

/// The head family (`type`) with its own kwargs: `UPerHead(pool_scales)` or `FCNHead(...)`.
fn head_kind(d: &mut Dict<'_>) -> Result<HeadKind, ConfigError> {
    match d.str("type")? {
        Some("UPerHead") => {
            let pool_scales = d.usize_list("pool_scales")?.unwrap_or(vec![1, 2, 3, 6]);
            if let Some(bad) = pool_scales.iter().find(|&&s| s == 0) {
                return err(
                    d.key("pool_scales"),
                    format!(
                        "{pool_scales:?}: every scale must be at least 1 (adaptive pooling to {bad}x{bad} is empty)"
                    ),
                );
            }
            Ok(HeadKind::Uper { pool_scales })
        }
        Some("FCNHead") => {
            let num_convs = d.usize("num_convs", Some(2))?;
            let kernel_size = d.usize("kernel_size", Some(3))?;
            let concat_input = d.bool("concat_input", true)?;
            let dilation = d.usize("dilation", Some(1))?;
            if dilation == 0 {
                return err(d.key("dilation"), "must be > 0");
            }
            if kernel_size == 0 {
                return err(d.key("kernel_size"), "must be > 0");
            }
            Ok(HeadKind::Fcn { num_convs, kernel_size, concat_input, dilation })
        }
        o => err(d.key("type"), format!("only UPerHead and FCNHead are supported, got {o:?}")),
    }
}

/// `in_channels`, `in_index` and `input_transform`: how the head selects its inputs, and the
/// channels of each selected input (one sum for `resize_concat`).
fn head_inputs(d: &mut Dict<'_>, path: &str, kind: &HeadKind) -> Result<(InputTransform, Vec<usize>), ConfigError> {
    let in_ch_raw = d.raw("in_channels").ok_or(()).or_else(|_| err(format!("{path}.in_channels"), "required"))?;
    let in_index_raw = d.raw("in_index");
    let transform_raw = d.str("input_transform")?;
    let transform_name = if matches!(kind, HeadKind::Uper { .. }) {
        // UPerHead forces input_transform='multiple_select'.
        if transform_raw.is_some() && transform_raw != Some("multiple_select") {
            return err(d.key("input_transform"), "UPerHead always uses 'multiple_select'");
        }
        Some("multiple_select")
    } else {
        transform_raw
    };
    match transform_name {
        None => {
            let idx = match in_index_raw {
                None => -1,
                Some(v) => v
                    .as_i64()
                    .ok_or(())
                    .or_else(|_| err(format!("{path}.in_index"), format!("expected an integer, got {v}")))?,
            };
            let ch = as_usize(in_ch_raw)
                .ok_or(())
                .or_else(|_| err(format!("{path}.in_channels"), format!("expected an integer, got {in_ch_raw}")))?;
            Ok((InputTransform::Select(idx), vec![ch]))
        }
        Some("multiple_select") => {
            let (idx, ch) = multi_inputs(in_index_raw, in_ch_raw, path)?;
            Ok((InputTransform::MultipleSelect(idx), ch))
        }
        Some("resize_concat") => {
            let (idx, ch) = multi_inputs(in_index_raw, in_ch_raw, path)?;
            Ok((InputTransform::ResizeConcat(idx), vec![ch.iter().sum()]))
        }
        Some(o) => err(format!("{path}.input_transform"), format!("unknown input_transform {o:?}")),
    }
}

/// The `in_index` and `in_channels` lists of a multi-input transform, of the same length.
fn multi_inputs(
    in_index: Option<&Value>,
    in_channels: &Value,
    path: &str,
) -> Result<(Vec<i64>, Vec<usize>), ConfigError> {
    let idx: Vec<i64> = match in_index {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_i64().ok_or(()).or_else(|_| err(format!("{path}.in_index"), format!("expected integers, got {x}")))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return err(
                format!("{path}.in_index"),
                format!("expected a list for a multi-input transform, got {other:?}"),
            )
        }
    };
    let ch: Vec<usize> = match in_channels {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                as_usize(x)
                    .ok_or(())
                    .or_else(|_| err(format!("{path}.in_channels"), format!("expected integers, got {x}")))
            })
            .collect::<Result<_, _>>()?,
        v => {
            return err(format!("{path}.in_channels"), format!("expected a list for a multi-input transform, got {v}"))
        }
    };
    if idx.len() != ch.len() {
        return err(format!("{path}.in_index"), "in_index and in_channels must have the same length");
    }
    Ok((idx, ch))
}

/// `channels`, `num_classes` and `out_channels` (which must equal `num_classes`: no binary heads).
fn head_channels(d: &mut Dict<'_>) -> Result<(usize, usize, usize), ConfigError> {
    let channels = d.usize("channels", None)?;
    if channels == 0 {
        return err(d.key("channels"), "must be at least 1");
    }
    let num_classes = d.usize("num_classes", None)?;
    if num_classes == 0 {
        return err(d.key("num_classes"), "must be at least 1");
    }
    let out_channels = d.usize("out_channels", Some(num_classes))?;
    if out_channels != num_classes {
        return err(
            d.key("out_channels"),
            format!("out_channels {out_channels} != num_classes {num_classes}: binary (sigmoid + threshold) heads are not supported"),
        );
    }
    Ok((channels, num_classes, out_channels))
}

/// `conv_cfg`: absent, or a plain `Conv2d`.
fn check_conv_cfg(d: &mut Dict<'_>) -> Result<(), ConfigError> {
    if let Some(c) = d.raw("conv_cfg") {
        let mut cd = Dict::new(c, &d.key("conv_cfg"))?;
        match cd.str("type")? {
            Some("Conv2d") | Some("Conv") => {}
            o => return err(cd.key("type"), format!("only plain Conv2d is supported, got {o:?}")),
        }
        cd.finish()?;
    }
    Ok(())
}
