//! How an image becomes a network input: MMSegmentation's test pipeline (`Resize`) and
//! `SegDataPreProcessor`, parsed from config dicts; any transform or key that could change the
//! numerics and is not implemented is refused by name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tta::MsFlip;
use super::{cfg_err, EvalError};
use crate::config::{SegmentorConfig, TestMode};
use crate::data::transforms::rescale_size;

// ------------------------------------------------------------------------------ settings

/// `SegDataPreProcessor` at test time: channel flip, then `(x - mean) / std` in float32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `bgr_to_rgb` (or `rgb_to_bgr`: the same flip) on 3-channel images.
    pub flip_channels: bool,
}

impl Preprocess {
    /// The ADE20K configs' preprocessor (docs/mmseg-beit-upernet.md §5.2).
    pub fn ade20k() -> Self {
        Preprocess {
            mean: crate::data::transforms::ADE20K_MEAN.to_vec(),
            std: crate::data::transforms::ADE20K_STD.to_vec(),
            flip_channels: true,
        }
    }

    /// From a `data_preprocessor` dict (`type='SegDataPreProcessor'`). Keys that act only in
    /// training (`size`, `pad_val`, `seg_pad_val`, `batch_augments`) are accepted; a `test_cfg`
    /// (test-time padding) or `size_divisor` is refused.
    pub fn from_value(v: &Value) -> Result<Self, EvalError> {
        let obj = v
            .as_object()
            .ok_or_else(|| EvalError::Config(format!("model.data_preprocessor: expected an object, got {v}")))?;
        let mut flip = false;
        let mut mean = None;
        let mut std = None;
        for (k, x) in obj {
            match k.as_str() {
                "type" => match x.as_str() {
                    Some("SegDataPreProcessor") => {}
                    other => return cfg_err(format!("model.data_preprocessor.type: only SegDataPreProcessor is supported, got {other:?}")),
                },
                "mean" | "std" => {
                    let vals = match x {
                        Value::Null => None,
                        Value::Array(a) => Some(
                            a.iter()
                                .map(|e| e.as_f64().map(|f| f as f32))
                                .collect::<Option<Vec<f32>>>()
                                .ok_or_else(|| EvalError::Config(format!("model.data_preprocessor.{k}: expected numbers, got {x}")))?,
                        ),
                        _ => return cfg_err(format!("model.data_preprocessor.{k}: expected a list, got {x}")),
                    };
                    if k == "mean" {
                        mean = vals;
                    } else {
                        std = vals;
                    }
                }
                "bgr_to_rgb" | "rgb_to_bgr" => match x {
                    Value::Bool(b) => {
                        if *b && flip {
                            return cfg_err("model.data_preprocessor: bgr_to_rgb and rgb_to_bgr cannot both be true");
                        }
                        flip |= *b;
                    }
                    Value::Null => {}
                    _ => return cfg_err(format!("model.data_preprocessor.{k}: expected true/false, got {x}")),
                },
                "size" | "pad_val" | "seg_pad_val" | "batch_augments" => {}
                "test_cfg" | "size_divisor" if x.is_null() => {}
                other => {
                    return cfg_err(format!(
                        "model.data_preprocessor.{other}: not supported (test-time padding or an unknown key; it may change the numerics, so it is not ignored)"
                    ))
                }
            }
        }
        let (mean, std) = match (mean, std) {
            (Some(m), Some(s)) => (m, s),
            (None, None) => (vec![0.0; 3], vec![1.0; 3]), // no normalisation: (x - 0) / 1 is exact
            _ => return cfg_err("model.data_preprocessor: mean and std must be given together"),
        };
        if mean.len() != 3 || std.len() != 3 {
            return cfg_err(format!(
                "model.data_preprocessor: expected 3 means and stds, got {} and {}",
                mean.len(),
                std.len()
            ));
        }
        for (i, (&m, &sd)) in mean.iter().zip(&std).enumerate() {
            if !m.is_finite() {
                return cfg_err(format!("model.data_preprocessor.mean[{i}]: must be a finite number, got {m}"));
            }
            if !(sd.is_finite() && sd > 0.0) {
                return cfg_err(format!(
                    "model.data_preprocessor.std[{i}]: must be a finite number > 0, got {sd} (the input is divided by it)"
                ));
            }
        }
        Ok(Preprocess { mean, std, flip_channels: flip })
    }
}

/// The `Resize` step of the test pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ResizeSpec {
    /// `Resize(scale, keep_ratio=True)`: [`rescale_size`] (only max and min of the scale matter).
    KeepRatio { scale: (usize, usize) },
    /// `Resize(scale=(w, h), keep_ratio=False)`: exactly `h`×`w`.
    Exact { w: usize, h: usize },
}

impl ResizeSpec {
    pub fn out_size(&self, hw: (usize, usize)) -> (usize, usize) {
        match *self {
            ResizeSpec::KeepRatio { scale } => rescale_size(hw, scale),
            ResizeSpec::Exact { w, h } => (h, w),
        }
    }
}

/// The test pipeline `[LoadImageFromFile, Resize, LoadAnnotations, PackSegInputs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestPipeline {
    pub resize: ResizeSpec,
    pub reduce_zero_label: bool,
}

impl TestPipeline {
    /// ADE20K's: `Resize(scale=(2560, 640), keep_ratio=True)`, `reduce_zero_label=True`.
    pub fn ade20k() -> Self {
        TestPipeline {
            resize: ResizeSpec::KeepRatio { scale: crate::data::transforms::ADE20K_SCALE },
            reduce_zero_label: true,
        }
    }

    /// From MMSegmentation transform configs. Only `LoadImageFromFile`, one `Resize`,
    /// `LoadAnnotations` (after `Resize`: the ground truth stays at the original size) and
    /// `PackSegInputs` are accepted; any other transform is refused by name.
    /// `dataset_reduce_zero_label` applies when `LoadAnnotations` does not set it.
    pub fn from_value(v: &Value, dataset_reduce_zero_label: bool) -> Result<Self, EvalError> {
        let list = v
            .as_array()
            .ok_or_else(|| EvalError::Config(format!("test_pipeline: expected a list of transforms, got {v}")))?;
        let mut resize = None;
        let mut reduce = None;
        let mut loaded_image = false;
        for (i, t) in list.iter().enumerate() {
            let t = Transform::new(i, t)?;
            match t.ty {
                "LoadImageFromFile" => {
                    t.check_load_image()?;
                    loaded_image = true;
                }
                "Resize" => {
                    t.check_keys(&["scale", "keep_ratio", "interpolation", "backend", "clip_object_border"])?;
                    if resize.is_some() {
                        return cfg_err(format!("test_pipeline[{i}]: a second Resize is not supported"));
                    }
                    if !loaded_image {
                        return cfg_err(format!("test_pipeline[{i}]: Resize before LoadImageFromFile"));
                    }
                    resize = Some(t.resize()?);
                }
                "LoadAnnotations" => {
                    t.check_keys(&["reduce_zero_label", "imdecode_backend", "backend_args"])?;
                    if resize.is_none() {
                        return cfg_err(format!(
                            "test_pipeline[{i}]: LoadAnnotations before Resize would resize the ground truth, which MMSegmentation's metric cannot use"
                        ));
                    }
                    reduce = t.load_annotations()?;
                }
                "PackSegInputs" => t.check_keys(&["meta_keys"])?,
                other => {
                    return cfg_err(format!(
                        "test_pipeline[{i}]: transform `{other}` is not supported (only LoadImageFromFile, Resize, LoadAnnotations, PackSegInputs)"
                    ))
                }
            }
        }
        if !loaded_image {
            return cfg_err("test_pipeline: LoadImageFromFile is missing");
        }
        let resize = resize.ok_or_else(|| EvalError::Config("test_pipeline: Resize is missing".into()))?;
        Ok(TestPipeline { resize, reduce_zero_label: reduce.unwrap_or(dataset_reduce_zero_label) })
    }
}

/// One transform dict of a test pipeline: its index, keys and `type`.
struct Transform<'a> {
    i: usize,
    obj: &'a serde_json::Map<String, Value>,
    ty: &'a str,
}

impl<'a> Transform<'a> {
    /// `test_pipeline[i]`, which must be a dict with a string `type`.
    fn new(i: usize, t: &'a Value) -> Result<Self, EvalError> {
        let obj = t
            .as_object()
            .ok_or_else(|| EvalError::Config(format!("test_pipeline[{i}]: expected a transform dict, got {t}")))?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| EvalError::Config(format!("test_pipeline[{i}].type: missing")))?;
        Ok(Transform { i, obj, ty })
    }

    /// The dotted name of key `k` (`test_pipeline[i].k`).
    fn key(&self, k: &str) -> String {
        format!("test_pipeline[{}].{k}", self.i)
    }

    /// Refuses any key but `type` and `allowed`.
    fn check_keys(&self, allowed: &[&str]) -> Result<(), EvalError> {
        for k in self.obj.keys() {
            if k != "type" && !allowed.contains(&k.as_str()) {
                return cfg_err(format!("{}: not supported for {}", self.key(k), self.ty));
            }
        }
        Ok(())
    }

    /// Whether key `k` is present with a value other than `v`.
    fn differs(&self, k: &str, v: &str) -> bool {
        self.obj.get(k).is_some_and(|x| x != v)
    }

    /// `LoadImageFromFile`: uint8 colour images decoded by cv2 only.
    fn check_load_image(&self) -> Result<(), EvalError> {
        self.check_keys(&["to_float32", "color_type", "imdecode_backend", "backend_args", "ignore_empty"])?;
        if self.obj.get("to_float32").is_some_and(|x| x != &Value::Bool(false)) {
            return cfg_err(format!("{}: only false is supported", self.key("to_float32")));
        }
        if self.differs("color_type", "color") {
            return cfg_err(format!("{}: only 'color' is supported", self.key("color_type")));
        }
        if self.differs("imdecode_backend", "cv2") {
            return cfg_err(format!("{}: only 'cv2' is supported", self.key("imdecode_backend")));
        }
        Ok(())
    }

    /// `Resize(scale=[w, h], keep_ratio)`, bilinear with cv2 (its keys already checked).
    fn resize(&self) -> Result<ResizeSpec, EvalError> {
        if self.differs("interpolation", "bilinear") {
            return cfg_err(format!("{}: only 'bilinear' is supported", self.key("interpolation")));
        }
        if self.differs("backend", "cv2") {
            return cfg_err(format!("{}: only 'cv2' is supported", self.key("backend")));
        }
        let scale = self.obj.get("scale").ok_or_else(|| {
            EvalError::Config(format!("{}: required (scale_factor is not supported)", self.key("scale")))
        })?;
        let pair = match scale {
            Value::Array(a) if a.len() == 2 => {
                a.iter().map(|x| x.as_u64().map(|u| u as usize)).collect::<Option<Vec<_>>>()
            }
            Value::Number(n) => n.as_u64().map(|u| vec![u as usize, u as usize]),
            _ => None,
        }
        .filter(|p| p.iter().all(|&x| x > 0))
        .ok_or_else(|| {
            EvalError::Config(format!("{}: expected [w, h] (positive integers), got {scale}", self.key("scale")))
        })?;
        let keep = match self.obj.get("keep_ratio") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(x) => return cfg_err(format!("{}: expected true/false, got {x}", self.key("keep_ratio"))),
        };
        Ok(if keep {
            ResizeSpec::KeepRatio { scale: (pair[0], pair[1]) }
        } else {
            ResizeSpec::Exact { w: pair[0], h: pair[1] }
        })
    }

    /// `LoadAnnotations` (its keys already checked): the `reduce_zero_label` it sets, if any.
    fn load_annotations(&self) -> Result<Option<bool>, EvalError> {
        if self.differs("imdecode_backend", "pillow") {
            return cfg_err(format!("{}: only 'pillow' is supported", self.key("imdecode_backend")));
        }
        match self.obj.get("reduce_zero_label") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(x) => cfg_err(format!("{}: expected true/false, got {x}", self.key("reduce_zero_label"))),
        }
    }
}

/// Everything about how an image becomes a prediction (besides the network itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub pipeline: TestPipeline,
    pub preprocess: Preprocess,
    /// `None`: single scale.
    pub aug: Option<MsFlip>,
    /// The slide crop (`None` in whole mode).
    pub crop: Option<(usize, usize)>,
    pub align_corners: bool,
    pub num_classes: usize,
}

impl EvalSettings {
    /// From a model config (and its JSON, for the `data_preprocessor`) with a test pipeline.
    pub fn new(
        model: &SegmentorConfig,
        model_json: &Value,
        pipeline: TestPipeline,
        aug: Option<MsFlip>,
    ) -> Result<Self, EvalError> {
        let preprocess = match model_json.get("data_preprocessor") {
            None | Some(Value::Null) => Preprocess::ade20k(),
            Some(v) => Preprocess::from_value(v)?,
        };
        let crop = match model.test {
            TestMode::Slide { crop, .. } => Some(crop),
            TestMode::Whole => None,
        };
        Ok(EvalSettings {
            pipeline,
            preprocess,
            aug,
            crop,
            align_corners: model.align_corners(),
            num_classes: model.decode_head.num_classes,
        })
    }

    /// The network input sizes of an `h0`×`w0` image: (size, flipped) per augmentation.
    pub fn plan(&self, hw: (usize, usize)) -> Vec<((usize, usize), bool)> {
        match &self.aug {
            None => vec![(self.pipeline.resize.out_size(hw), false)],
            Some(a) => a.augs(hw),
        }
    }

    /// Refuses an image some of whose network inputs are smaller than the slide crop.
    pub fn check_size(&self, name: &str, hw: (usize, usize)) -> Result<(), EvalError> {
        let Some((ch, cw)) = self.crop else { return Ok(()) };
        for ((h, w), _) in self.plan(hw) {
            if h < ch || w < cw {
                return Err(EvalError::TooSmall { path: name.to_string(), h0: hw.0, w0: hw.1, h, w, ch, cw });
            }
        }
        Ok(())
    }
}

/// The `dataset` section of a config (`eval --config`) or of a `pipeline` fixture case, parsed
/// once: the layout strings (absent: the caller's default), `reduce_zero_label` (default
/// false), the `test_pipeline` (parsed with that `reduce_zero_label`) and the `aug` recipe.
#[derive(Debug, Clone, Default)]
pub struct DatasetSection {
    pub data_root: Option<String>,
    pub img_dir: Option<String>,
    pub ann_dir: Option<String>,
    pub img_suffix: Option<String>,
    pub seg_map_suffix: Option<String>,
    pub reduce_zero_label: bool,
    pub test_pipeline: Option<TestPipeline>,
    pub aug: Option<MsFlip>,
}

impl DatasetSection {
    /// Errors name the key (`dataset.img_dir: expected a string, got 3`).
    pub fn from_value(ds: &Value) -> Result<Self, String> {
        let s = |k: &str| -> Result<Option<String>, String> {
            match ds.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(v) => Err(format!("dataset.{k}: expected a string, got {v}")),
            }
        };
        let reduce_zero_label = match ds.get("reduce_zero_label") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(format!("dataset.reduce_zero_label: expected true/false, got {v}")),
        };
        let test_pipeline = match ds.get("test_pipeline") {
            None | Some(Value::Null) => None,
            Some(tp) => Some(TestPipeline::from_value(tp, reduce_zero_label).map_err(|e| format!("dataset.{e}"))?),
        };
        let aug = match ds.get("aug") {
            None | Some(Value::Null) => None,
            Some(v) => Some(MsFlip::from_value(v).map_err(|e| e.to_string())?),
        };
        Ok(DatasetSection {
            data_root: s("data_root")?,
            img_dir: s("img_dir")?,
            ann_dir: s("ann_dir")?,
            img_suffix: s("img_suffix")?,
            seg_map_suffix: s("seg_map_suffix")?,
            reduce_zero_label,
            test_pipeline,
            aug,
        })
    }
}
