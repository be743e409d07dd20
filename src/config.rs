//! Typed model configuration, built from MMSegmentation's own config dicts (the `model` object of
//! a fixture's `case.json`: the kwargs of `BEiT`, `Feature2Pyramid`, `UPerHead`, `FCNHead` and the
//! segmentor's `test_cfg`).
//!
//! Defaults are MMSegmentation 1.2.2's constructor defaults. Keys that only matter for training
//! (drop rates, losses, init) are accepted and ignored; any other key, or a value this reference
//! does not implement, is an error naming the key — never silently ignored.

use serde_json::{Map, Value};

/// A config problem, naming the dotted key (e.g. `model.backbone.norm_cfg.type`).
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

fn err<T>(key: impl Into<String>, msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { key: key.into(), msg: msg.into() })
}

/// A JSON object whose keys are consumed one by one; [`Dict::finish`] rejects the rest.
struct Dict<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

impl<'a> Dict<'a> {
    fn new(v: &'a Value, path: &str) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Dict { path: path.to_string(), map, seen: Vec::new() }),
            _ => err(path, format!("expected an object, got {v}")),
        }
    }
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }
    /// The raw value, `None` when absent or JSON null (Python `None`).
    fn raw(&mut self, k: &'static str) -> Option<&'a Value> {
        self.seen.push(k);
        match self.map.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn usize(&mut self, k: &'static str, default: Option<usize>) -> Result<usize, ConfigError> {
        match self.raw(k) {
            None => default.map_or_else(|| err(self.key(k), "required"), Ok),
            Some(v) => {
                as_usize(v).ok_or(()).or_else(|_| err(self.key(k), format!("expected a non-negative integer, got {v}")))
            }
        }
    }
    fn f64(&mut self, k: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.raw(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or(()).or_else(|_| err(self.key(k), format!("expected a number, got {v}"))),
        }
    }
    fn bool(&mut self, k: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(self.key(k), format!("expected true/false, got {v}")),
        }
    }
    fn str(&mut self, k: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(self.key(k), format!("expected a string, got {v}")),
        }
    }
    fn pair(&mut self, k: &'static str, default: Option<(usize, usize)>) -> Result<(usize, usize), ConfigError> {
        match self.raw(k) {
            None => default.map_or_else(|| err(self.key(k), "required"), Ok),
            Some(v) => {
                as_pair(v).ok_or(()).or_else(|_| err(self.key(k), format!("expected an int or [h, w], got {v}")))
            }
        }
    }
    fn usize_list(&mut self, k: &'static str) -> Result<Option<Vec<usize>>, ConfigError> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| as_usize(x).ok_or(()).or_else(|_| err(self.key(k), format!("expected integers, got {x}"))))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => err(self.key(k), format!("expected a list of integers, got {v}")),
        }
    }
    /// Keys that do not change inference numerics (training-only) are accepted and ignored.
    fn ignore(&mut self, keys: &[&'static str]) {
        self.seen.extend_from_slice(keys);
    }
    fn finish(self) -> Result<(), ConfigError> {
        for k in self.map.keys() {
            if !self.seen.iter().any(|s| s == k) {
                return err(
                    format!("{}.{k}", self.path),
                    "not supported by this reference (unknown key; it may change the numerics, so it is not ignored)",
                );
            }
        }
        Ok(())
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return Some(u as usize);
    }
    // Python may write 2.0 for an integer-valued float.
    v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as usize)
}

fn as_pair(v: &Value) -> Option<(usize, usize)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((as_usize(&a[0])?, as_usize(&a[1])?)),
        Value::Array(a) if a.len() == 1 => as_usize(&a[0]).map(|s| (s, s)),
        _ => as_usize(v).map(|s| (s, s)),
    }
}

/// LayerNorm config (`norm_cfg=dict(type='LN', eps=...)`); mmcv's default eps is 1e-5.
#[derive(Debug, Clone, PartialEq)]
pub struct LnConfig {
    pub eps: f64,
}

fn ln_cfg(v: Option<&Value>, path: &str) -> Result<LnConfig, ConfigError> {
    let Some(v) = v else { return Ok(LnConfig { eps: 1e-5 }) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("LN") | Some("LayerNorm") => {}
        other => return err(d.key("type"), format!("only LN is supported, got {other:?}")),
    }
    let eps = d.f64("eps", 1e-5)?;
    d.ignore(&["requires_grad"]);
    if let Some(v) = d.raw("elementwise_affine") {
        if v != &Value::Bool(true) {
            return err(d.key("elementwise_affine"), "only elementwise_affine=True is supported");
        }
    }
    d.finish()?;
    Ok(LnConfig { eps })
}

/// BatchNorm config (`BN`, `SyncBN`, `BN2d`: identical at inference); eps default 1e-5.
#[derive(Debug, Clone, PartialEq)]
pub struct BnConfig {
    pub eps: f64,
}

fn bn_cfg(v: Option<&Value>, path: &str) -> Result<Option<BnConfig>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("BN") | Some("SyncBN") | Some("BN2d") | Some("BatchNorm2d") | Some("MMSyncBN") => {}
        other => return err(d.key("type"), format!("only BN/SyncBN are supported, got {other:?}")),
    }
    let eps = d.f64("eps", 1e-5)?;
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

/// `act_cfg=dict(type='GELU')`: exact erf GELU; `approximate='tanh'` is rejected.
fn gelu_cfg(v: Option<&Value>, path: &str) -> Result<(), ConfigError> {
    let Some(v) = v else { return Ok(()) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("GELU") => {}
        other => return err(d.key("type"), format!("only GELU is supported, got {other:?}")),
    }
    match d.str("approximate")? {
        None | Some("none") => {}
        Some(o) => return err(d.key("approximate"), format!("only the exact (erf) GELU is supported, got {o:?}")),
    }
    d.finish()
}

/// Whether a ConvModule has an activation (`act_cfg=dict(type='ReLU')` or `None`).
fn relu_cfg(v: Option<&Value>, path: &str) -> Result<bool, ConfigError> {
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

/// `BEiT` backbone kwargs (`mmseg/models/backbones/beit.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct BeitConfig {
    /// `img_size`: fixes the relative-position window `img_size // patch_size`.
    pub img_size: (usize, usize),
    pub patch_size: usize,
    pub in_channels: usize,
    pub embed_dims: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// `mlp_ratio * embed_dims` (mmseg does no rounding; it must be an integer).
    pub feedforward_channels: usize,
    /// Layers whose output is a feature map (mmseg tests `i in out_indices`, so duplicates and
    /// order do not matter, and negative entries other than a bare `-1` never match).
    pub out_indices: Vec<i64>,
    pub qv_bias: bool,
    pub norm: LnConfig,
    pub patch_norm: bool,
    pub final_norm: bool,
    pub num_fcs: usize,
}

impl BeitConfig {
    pub fn from_value(v: &Value, path: &str) -> Result<Self, ConfigError> {
        let mut d = Dict::new(v, path)?;
        match d.str("type")? {
            Some("BEiT") | None => {}
            Some(o) => return err(d.key("type"), format!("only BEiT is supported, got {o:?}")),
        }
        let img_size = d.pair("img_size", Some((224, 224)))?;
        let patch_size = d.usize("patch_size", Some(16))?;
        let in_channels = d.usize("in_channels", Some(3))?;
        let embed_dims = d.usize("embed_dims", Some(768))?;
        let num_layers = d.usize("num_layers", Some(12))?;
        let num_heads = d.usize("num_heads", Some(12))?;
        let mlp_ratio = d.f64("mlp_ratio", 4.0)?;
        let ff = mlp_ratio * embed_dims as f64;
        if ff.fract() != 0.0 || ff <= 0.0 {
            return err(d.key("mlp_ratio"), format!("mlp_ratio * embed_dims = {ff} is not a positive integer (MMSegmentation passes it unrounded to nn.Linear)"));
        }
        let out_indices = match d.raw("out_indices") {
            None => vec![num_layers as i64 - 1],
            Some(Value::Number(n)) => {
                let i = n.as_i64().ok_or(()).or_else(|_| err(d.key("out_indices"), "expected an integer"))?;
                vec![if i == -1 { num_layers as i64 - 1 } else { i }]
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .ok_or(())
                        .or_else(|_| err(format!("{path}.out_indices"), format!("expected integers, got {x}")))
                })
                .collect::<Result<_, _>>()?,
            Some(o) => return err(d.key("out_indices"), format!("expected an int or a list, got {o}")),
        };
        let qv_bias = d.bool("qv_bias", true)?;
        let norm = ln_cfg(d.raw("norm_cfg"), &d.key("norm_cfg"))?;
        gelu_cfg(d.raw("act_cfg"), &d.key("act_cfg"))?;
        let patch_norm = d.bool("patch_norm", false)?;
        let final_norm = d.bool("final_norm", false)?;
        let num_fcs = d.usize("num_fcs", Some(2))?;
        if num_fcs < 2 {
            return err(d.key("num_fcs"), format!("must be >= 2 (mmcv FFN), got {num_fcs}"));
        }
        // Training-only or initialisation-only: no effect on inference with loaded weights.
        d.ignore(&["attn_drop_rate", "drop_path_rate", "norm_eval", "pretrained", "init_values", "init_cfg"]);
        d.finish()?;
        if embed_dims == 0 || num_heads == 0 || embed_dims % num_heads != 0 {
            return err(
                format!("{path}.num_heads"),
                format!("embed_dims {embed_dims} is not divisible by num_heads {num_heads}"),
            );
        }
        if patch_size == 0 || img_size.0 < patch_size || img_size.1 < patch_size {
            return err(
                format!("{path}.img_size"),
                format!("img_size {img_size:?} is smaller than patch_size {patch_size}"),
            );
        }
        Ok(BeitConfig {
            img_size,
            patch_size,
            in_channels,
            embed_dims,
            num_layers,
            num_heads,
            feedforward_channels: ff as usize,
            out_indices,
            qv_bias,
            norm,
            patch_norm,
            final_norm,
            num_fcs,
        })
    }

    /// The relative-position window (patch grid of `img_size`).
    /// Checks that an input of `cin` channels and `h`×`w` pixels fits this backbone: the
    /// channel count, and a patch grid equal to the relative-position window (fixed by
    /// `img_size`; MMSegmentation fails on other grids too). The message says why.
    pub fn check_input(&self, cin: usize, h: usize, w: usize) -> Result<(), String> {
        if cin != self.in_channels {
            return Err(format!("input has {cin} channels, the backbone expects {}", self.in_channels));
        }
        let p = self.patch_size;
        let grid = (h / p, w / p);
        let win = self.window();
        if grid != win {
            return Err(format!(
                "input {h}x{w} gives a {}x{} patch grid, but BEiT's relative-position window is fixed by img_size {:?} to {}x{} \
                 (MMSegmentation fails on this input too: use slide inference with crop_size = img_size)",
                grid.0, grid.1, self.img_size, win.0, win.1
            ));
        }
        Ok(())
    }

    pub fn window(&self) -> (usize, usize) {
        (self.img_size.0 / self.patch_size, self.img_size.1 / self.patch_size)
    }

    /// Number of feature maps the backbone returns.
    pub fn num_outputs(&self) -> usize {
        (0..self.num_layers).filter(|i| self.out_indices.contains(&(*i as i64))).count()
    }
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
        let ty = d.str("type")?;
        let kind = match ty {
            Some("UPerHead") => {
                let pool_scales = d.usize_list("pool_scales")?.unwrap_or(vec![1, 2, 3, 6]);
                HeadKind::Uper { pool_scales }
            }
            Some("FCNHead") => {
                let num_convs = d.usize("num_convs", Some(2))?;
                let kernel_size = d.usize("kernel_size", Some(3))?;
                let concat_input = d.bool("concat_input", true)?;
                let dilation = d.usize("dilation", Some(1))?;
                if dilation == 0 {
                    return err(d.key("dilation"), "must be > 0");
                }
                HeadKind::Fcn { num_convs, kernel_size, concat_input, dilation }
            }
            o => return err(d.key("type"), format!("only UPerHead and FCNHead are supported, got {o:?}")),
        };
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
        let idx_list = |v: Option<&Value>| -> Result<Vec<i64>, ConfigError> {
            match v {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or(())
                            .or_else(|_| err(format!("{path}.in_index"), format!("expected integers, got {x}")))
                    })
                    .collect(),
                other => err(
                    format!("{path}.in_index"),
                    format!("expected a list for a multi-input transform, got {other:?}"),
                ),
            }
        };
        let ch_list = |v: &Value| -> Result<Vec<usize>, ConfigError> {
            match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        as_usize(x)
                            .ok_or(())
                            .or_else(|_| err(format!("{path}.in_channels"), format!("expected integers, got {x}")))
                    })
                    .collect(),
                _ => {
                    err(format!("{path}.in_channels"), format!("expected a list for a multi-input transform, got {v}"))
                }
            }
        };
        let (input_transform, in_channels) = match transform_name {
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
                (InputTransform::Select(idx), vec![ch])
            }
            Some("multiple_select") => {
                let idx = idx_list(in_index_raw)?;
                let ch = ch_list(in_ch_raw)?;
                if idx.len() != ch.len() {
                    return err(format!("{path}.in_index"), "in_index and in_channels must have the same length");
                }
                (InputTransform::MultipleSelect(idx), ch)
            }
            Some("resize_concat") => {
                let idx = idx_list(in_index_raw)?;
                let ch = ch_list(in_ch_raw)?;
                if idx.len() != ch.len() {
                    return err(format!("{path}.in_index"), "in_index and in_channels must have the same length");
                }
                (InputTransform::ResizeConcat(idx), vec![ch.iter().sum()])
            }
            Some(o) => return err(format!("{path}.input_transform"), format!("unknown input_transform {o:?}")),
        };
        let channels = d.usize("channels", None)?;
        let num_classes = d.usize("num_classes", None)?;
        let out_channels = d.usize("out_channels", Some(num_classes))?;
        if out_channels != num_classes {
            return err(
                d.key("out_channels"),
                format!("out_channels {out_channels} != num_classes {num_classes}: binary (sigmoid + threshold) heads are not supported"),
            );
        }
        if let Some(c) = d.raw("conv_cfg") {
            let mut cd = Dict::new(c, &d.key("conv_cfg"))?;
            match cd.str("type")? {
                Some("Conv2d") | Some("Conv") => {}
                o => return err(cd.key("type"), format!("only plain Conv2d is supported, got {o:?}")),
            }
            cd.finish()?;
        }
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

/// `test_cfg`: whole-image or sliding-window inference.
#[derive(Debug, Clone, PartialEq)]
pub enum TestMode {
    Whole,
    Slide { crop: (usize, usize), stride: (usize, usize) },
}

impl TestMode {
    pub fn from_value(v: Option<&Value>, path: &str) -> Result<Self, ConfigError> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(TestMode::Whole) };
        let mut d = Dict::new(v, path)?;
        let mode = match d.str("mode")?.unwrap_or("whole") {
            "whole" => TestMode::Whole,
            "slide" => {
                let crop = d.pair("crop_size", None)?;
                let stride = d.pair("stride", None)?;
                if crop.0 == 0 || crop.1 == 0 || stride.0 == 0 || stride.1 == 0 {
                    return err(format!("{path}.stride"), "crop_size and stride must be positive");
                }
                TestMode::Slide { crop, stride }
            }
            o => return err(d.key("mode"), format!("mode must be 'whole' or 'slide', got {o:?}")),
        };
        d.finish()?;
        Ok(mode)
    }
}

/// The whole `EncoderDecoder`: BEiT → Feature2Pyramid → decode head (+ auxiliary heads).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentorConfig {
    pub backbone: BeitConfig,
    pub neck: Option<NeckConfig>,
    pub decode_head: HeadConfig,
    /// mmseg accepts one auxiliary head (`auxiliary_head`) or a list (`auxiliary_head.{k}`).
    pub auxiliary_heads: Vec<HeadConfig>,
    pub auxiliary_is_list: bool,
    pub test: TestMode,
}

impl SegmentorConfig {
    /// From the `model` object of a fixture (`{"backbone":..., "neck":..., "decode_head":...}`).
    pub fn from_value(v: &Value) -> Result<Self, ConfigError> {
        let path = "model";
        let mut d = Dict::new(v, path)?;
        match d.str("type")? {
            None | Some("EncoderDecoder") => {}
            Some(o) => return err(d.key("type"), format!("only EncoderDecoder is supported, got {o:?}")),
        }
        let backbone = BeitConfig::from_value(
            d.raw("backbone").ok_or(()).or_else(|_| err("model.backbone", "required"))?,
            "model.backbone",
        )?;
        let neck = match d.raw("neck") {
            None => None,
            Some(n) => Some(NeckConfig::from_value(n, "model.neck")?),
        };
        let decode_head = HeadConfig::from_value(
            d.raw("decode_head").ok_or(()).or_else(|_| err("model.decode_head", "required"))?,
            "model.decode_head",
        )?;
        let (auxiliary_heads, auxiliary_is_list) = match d.raw("auxiliary_head") {
            None => (vec![], false),
            Some(Value::Array(a)) => (
                a.iter()
                    .enumerate()
                    .map(|(i, h)| HeadConfig::from_value(h, &format!("model.auxiliary_head.{i}")))
                    .collect::<Result<_, _>>()?,
                true,
            ),
            Some(h) => (vec![HeadConfig::from_value(h, "model.auxiliary_head")?], false),
        };
        let test = TestMode::from_value(d.raw("test_cfg"), "model.test_cfg")?;
        // The data preprocessor and training settings do not enter a segmentor case (its inputs
        // are already normalised); pretrained/init only matter before weights are loaded.
        d.ignore(&["data_preprocessor", "train_cfg", "pretrained", "init_cfg"]);
        d.finish()?;
        if let Some(n) = &neck {
            if n.embed_dim != backbone.embed_dims {
                return err(
                    "model.neck.embed_dim",
                    format!("{} != backbone embed_dims {}", n.embed_dim, backbone.embed_dims),
                );
            }
        }
        Ok(SegmentorConfig { backbone, neck, decode_head, auxiliary_heads, auxiliary_is_list, test })
    }

    /// The name prefix of auxiliary head `k` (`auxiliary_head` or `auxiliary_head.{k}`).
    pub fn aux_prefix(&self, k: usize) -> String {
        if self.auxiliary_is_list {
            format!("auxiliary_head.{k}")
        } else {
            "auxiliary_head".to_string()
        }
    }

    /// `EncoderDecoder.align_corners` (taken from the decode head).
    pub fn align_corners(&self) -> bool {
        self.decode_head.align_corners
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "backbone": {"type": "BEiT", "img_size": [64, 64], "embed_dims": 32, "num_layers": 2, "num_heads": 2,
                          "out_indices": [0, 1], "norm_cfg": {"type": "LN", "eps": 1e-6}},
            "decode_head": {"type": "FCNHead", "in_channels": 32, "in_index": 1, "channels": 8, "num_classes": 3,
                             "norm_cfg": {"type": "SyncBN", "requires_grad": true}},
            "test_cfg": {"mode": "whole"}
        })
    }

    #[test]
    fn parses_defaults_and_eps() {
        let c = SegmentorConfig::from_value(&base()).unwrap();
        assert_eq!(c.backbone.norm.eps, 1e-6);
        assert_eq!(c.backbone.window(), (4, 4));
        assert_eq!(c.backbone.feedforward_channels, 128);
        assert_eq!(c.decode_head.norm.as_ref().unwrap().eps, 1e-5);
        assert!(c.decode_head.relu);
    }

    #[test]
    fn unknown_numeric_key_is_named() {
        let mut v = base();
        v["backbone"]["layer_scale"] = json!(true);
        let e = SegmentorConfig::from_value(&v).unwrap_err();
        assert_eq!(e.key, "model.backbone.layer_scale");
        let mut v = base();
        v["backbone"]["norm_cfg"]["type"] = json!("GN");
        assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.norm_cfg.type");
        let mut v = base();
        v["backbone"]["act_cfg"] = json!({"type": "GELU", "approximate": "tanh"});
        assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.act_cfg.approximate");
    }

    #[test]
    fn mmseg_default_ln_eps_is_1e_5() {
        let mut v = base();
        v["backbone"]["norm_cfg"] = json!({"type": "LN"});
        assert_eq!(SegmentorConfig::from_value(&v).unwrap().backbone.norm.eps, 1e-5);
    }

    #[test]
    fn non_integer_ffn_width_is_rejected() {
        let mut v = base();
        v["backbone"]["mlp_ratio"] = json!(2.7);
        assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.mlp_ratio");
    }
}
