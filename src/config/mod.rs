//! Typed model configuration, built from MMSegmentation's own config dicts (the `model` object of
//! a fixture's `case.json`: the kwargs of `BEiT`, `Feature2Pyramid`, `UPerHead`, `FCNHead` and the
//! segmentor's `test_cfg`).
//!
//! Defaults are MMSegmentation 1.2.2's constructor defaults. Keys that only matter for training
//! (drop rates, losses, init) are accepted and ignored; any other key, or a value this reference
//! does not implement, is an error naming the key — never silently ignored.
//!
//! Files: [`backbone`] (`BEiT`, LayerNorm/GELU configs), [`heads`] (`Feature2Pyramid`, `UPerHead`,
//! `FCNHead`, BN/ReLU configs), and here the segmentor (`test_cfg`) and the key-checking `Dict`.

pub mod backbone;
pub mod heads;
pub mod presets;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use backbone::{BeitConfig, LnConfig};
pub use heads::{BnConfig, HeadConfig, HeadKind, InputTransform, NeckConfig};

/// A config problem, naming the dotted key (e.g. `model.backbone.norm_cfg.type`).
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

pub(crate) fn err<T>(key: impl Into<String>, msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { key: key.into(), msg: msg.into() })
}

/// A JSON object whose keys are consumed one by one; [`Dict::finish`] rejects the rest.
pub(crate) struct Dict<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

impl<'a> Dict<'a> {
    pub(crate) fn new(v: &'a Value, path: &str) -> Result<Self, ConfigError> {
        match v {
            Value::Object(map) => Ok(Dict { path: path.to_string(), map, seen: Vec::new() }),
            _ => err(path, format!("expected an object, got {v}")),
        }
    }
    pub(crate) fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }
    /// The raw value, `None` when absent or JSON null (Python `None`).
    pub(crate) fn raw(&mut self, k: &'static str) -> Option<&'a Value> {
        self.seen.push(k);
        match self.map.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    pub(crate) fn usize(&mut self, k: &'static str, default: Option<usize>) -> Result<usize, ConfigError> {
        match self.raw(k) {
            None => default.map_or_else(|| err(self.key(k), "required"), Ok),
            Some(v) => {
                as_usize(v).ok_or(()).or_else(|_| err(self.key(k), format!("expected a non-negative integer, got {v}")))
            }
        }
    }
    pub(crate) fn f64(&mut self, k: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.raw(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or(()).or_else(|_| err(self.key(k), format!("expected a number, got {v}"))),
        }
    }
    pub(crate) fn bool(&mut self, k: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(self.key(k), format!("expected true/false, got {v}")),
        }
    }
    pub(crate) fn str(&mut self, k: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(self.key(k), format!("expected a string, got {v}")),
        }
    }
    pub(crate) fn pair(
        &mut self,
        k: &'static str,
        default: Option<(usize, usize)>,
    ) -> Result<(usize, usize), ConfigError> {
        match self.raw(k) {
            None => default.map_or_else(|| err(self.key(k), "required"), Ok),
            Some(v) => {
                as_pair(v).ok_or(()).or_else(|_| err(self.key(k), format!("expected an int or [h, w], got {v}")))
            }
        }
    }
    pub(crate) fn usize_list(&mut self, k: &'static str) -> Result<Option<Vec<usize>>, ConfigError> {
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
    pub(crate) fn ignore(&mut self, keys: &[&'static str]) {
        self.seen.extend_from_slice(keys);
    }
    pub(crate) fn finish(self) -> Result<(), ConfigError> {
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

pub(crate) fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return Some(u as usize);
    }
    // Python may write 2.0 for an integer-valued float.
    v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as usize)
}

pub(crate) fn as_pair(v: &Value) -> Option<(usize, usize)> {
    match v {
        Value::Array(a) if a.len() == 2 => Some((as_usize(&a[0])?, as_usize(&a[1])?)),
        Value::Array(a) if a.len() == 1 => as_usize(&a[0]).map(|s| (s, s)),
        _ => as_usize(v).map(|s| (s, s)),
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
        let win = backbone.window();
        if let Some(n) = &neck {
            // The smallest pyramid level: max pooling by 2 (0.5) or by 4 (0.25) of the patch grid.
            let f = if n.with_upsample_4x { 2 } else { 4 };
            if win.0 < f || win.1 < f {
                return err(
                    "model.backbone.img_size",
                    format!(
                        "img_size {:?} with patch_size {} gives a {}x{} patch grid; Feature2Pyramid's {} rescale \
                         (max pooling by {f}) needs at least {f}x{f}, or its feature map is empty",
                        backbone.img_size,
                        backbone.patch_size,
                        win.0,
                        win.1,
                        if f == 2 { "0.5" } else { "0.25" }
                    ),
                );
            }
        }
        if let TestMode::Slide { crop, .. } = test {
            if crop.0 < backbone.patch_size || crop.1 < backbone.patch_size {
                return err(
                    "model.test_cfg.crop_size",
                    format!("{crop:?} is smaller than patch_size {}", backbone.patch_size),
                );
            }
        }
        let cfg = SegmentorConfig { backbone, neck, decode_head, auxiliary_heads, auxiliary_is_list, test };
        cfg.check_memory()?;
        Ok(cfg)
    }

    /// A generous estimate of the memory needed to build this model (float32 parameters) and to
    /// run it on one `img_size` input (the largest activations: attention maps, token and
    /// pyramid features, logits), in bytes, with the part that dominates it named. Sizes are
    /// multiplied in `f64`, so an absurd config cannot overflow the estimate.
    pub fn estimated_memory(&self) -> (f64, String) {
        let b = &self.backbone;
        let (c, f, l, h) =
            (b.embed_dims as f64, b.feedforward_channels as f64, b.num_layers as f64, b.num_heads as f64);
        let (wh, ww) = (b.window().0 as f64, b.window().1 as f64);
        let n = wh * ww + 1.0;
        let table = ((2.0 * wh - 1.0) * (2.0 * ww - 1.0) + 3.0) * h;
        let per_layer = 4.0 * c * c + 2.0 * c * f + 12.0 * c + f + table;
        let patch = c * b.in_channels as f64 * (b.patch_size as f64).powi(2);
        let backbone_params = l * per_layer + patch;
        // Attention scores and bias (heads x N x N, twice), the position index (N x N int64),
        // token features (N x max(C, F), a few copies).
        let attn = 2.0 * h * n * n + 2.0 * n * n + 4.0 * n * c.max(f);
        let pyramid = 16.0 * wh * ww * c * 2.0;
        let head = |hc: &HeadConfig| -> (f64, f64) {
            let ch = hc.channels as f64;
            let ins: f64 = hc.in_channels.iter().map(|&x| x as f64).sum();
            let last = hc.in_channels.last().copied().unwrap_or(0) as f64;
            let params = match &hc.kind {
                HeadKind::Uper { pool_scales } => {
                    let k = hc.in_channels.len() as f64;
                    let ps = pool_scales.len() as f64;
                    ins * ch + k * ch * ch * 9.0 + ps * last * ch + (last + ps * ch) * ch * 9.0 + k * ch * ch * 9.0
                }
                HeadKind::Fcn { num_convs, kernel_size, .. } => {
                    let k2 = (*kernel_size as f64).powi(2);
                    (ins + *num_convs as f64 * ch) * ch * k2 + ins * ch * k2
                }
            } + ch * hc.num_classes as f64;
            // Feature maps at 1/4 resolution: every input plus the fused ones.
            let maps = 16.0 * wh * ww * (ins + 4.0 * ch + hc.num_classes as f64);
            (params, maps)
        };
        let (dh_params, dh_maps) = head(&self.decode_head);
        let aux: (f64, f64) = self.auxiliary_heads.iter().map(head).fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        let logits = self.decode_head.num_classes as f64 * (b.img_size.0 as f64) * (b.img_size.1 as f64) * 2.0;
        let parts = [
            (
                4.0 * backbone_params,
                format!(
                    "the backbone's parameters (num_layers {}, embed_dims {}, mlp_ratio, window {:?})",
                    b.num_layers,
                    b.embed_dims,
                    b.window()
                ),
            ),
            (
                4.0 * attn,
                format!(
                    "the attention maps ({} heads over {} tokens: img_size {:?} / patch_size {})",
                    b.num_heads, n, b.img_size, b.patch_size
                ),
            ),
            (
                4.0 * pyramid,
                format!("the feature pyramid (embed_dims {} at 4x the {}x{} patch grid)", b.embed_dims, wh, ww),
            ),
            (
                4.0 * (dh_params + aux.0),
                format!("the heads' parameters (decode_head.channels {})", self.decode_head.channels),
            ),
            (
                4.0 * (dh_maps + aux.1),
                format!(
                    "the heads' feature maps (channels {}, num_classes {})",
                    self.decode_head.channels, self.decode_head.num_classes
                ),
            ),
            (
                4.0 * logits,
                format!("the logits ({} classes at img_size {:?})", self.decode_head.num_classes, b.img_size),
            ),
        ];
        let total: f64 = parts.iter().map(|p| p.0).sum();
        let biggest = parts.iter().max_by(|a, b| a.0.total_cmp(&b.0)).map(|p| p.1.clone()).unwrap_or_default();
        (total, biggest)
    }

    /// Refuses a config whose model could not be built or run within the memory limit
    /// ([`crate::limits`]), naming the values that make it that large.
    pub fn check_memory(&self) -> Result<(), ConfigError> {
        let (bytes, what) = self.estimated_memory();
        crate::limits::check_memory(&format!("this model config (mostly {what})"), bytes)
            .or_else(|msg| err("model", msg))
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
