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
