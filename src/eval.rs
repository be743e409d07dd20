//! Semantic-segmentation evaluation on an ADE20K-layout dataset, as MMSegmentation's
//! `tools/test.py` runs it for the BEiT + UPerNet configs (spec §5, §7), plus the multi-scale +
//! flip test-time augmentation of MMSegmentation 0.x (spec §5.5).
//!
//! Per image (single scale):
//! 1. decode as `cv2.imdecode(IMREAD_COLOR)` → BGR uint8 (`crate::data::image`);
//! 2. `Resize(scale=(2560, 640), keep_ratio=True)`: [`rescale_size`] + OpenCV's fixed-point
//!    bilinear resize ([`resize_bilinear_u8`]);
//! 3. `SegDataPreProcessor`: BGR→RGB, `(x - mean) / std` in float32 ([`normalize`]);
//! 4. the model's `inference` (slide windows of `crop` every `stride`, or whole) on a
//!    [`SegModel`] → logits at the resized size;
//! 5. bilinear resize of the logits to the original size (`align_corners` of the decode head);
//! 6. argmax over classes (first maximum on ties);
//! 7. `IoUMetric`: label map read as Pillow does, `reduce_zero_label`, per-image float32 areas,
//!    totals summed in image order.
//!
//! **Images too small for the crop.** BEiT's relative position bias is fixed to the patch grid
//! of `img_size`, so every slide window must be exactly `crop` pixels; MMSegmentation crashes on
//! an image whose resized side is shorter than the crop (with `(2560, 640)`, an aspect ratio
//! above 4). Such an image is refused **before** any computation with an error naming it
//! ([`EvalError::TooSmall`]); with `skip_bad` it is left out and listed instead. There is no
//! padding fallback: any choice would give numbers MMSegmentation never produced.
//!
//! **ms+flip** ([`MsFlip`], MMSegmentation 0.x `MultiScaleFlipAug` + `Resize(min_size=640)` +
//! `aug_test`): scales `(int(2560 r), int(640 r))` for r in 0.5..1.75; each image is resized
//! to short side `max(min(scale), min_size)` (long side unbounded), once unflipped and once
//! flipped horizontally (12 augmentations, in that order); per augmentation the slide logits are
//! resized to the original size, softmax is taken over classes, the flipped ones are flipped
//! back, and the 12 probability maps are summed in order and divided by 12 (float32); the
//! prediction is their argmax. MMSegmentation 1.x's `--tta` differs (spec §5.5) and is not
//! implemented. 0.x normalises with `mmcv.imnormalize` (multiplication by `1/std`); this
//! implementation divides as 1.x's `SegDataPreProcessor` does (≤ 1 ulp apart).
//!
//! **Results file, resume, shards.** [`evaluate`] appends one JSON line per image (its area
//! vectors, or why it was skipped) to `results.jsonl` (`results.shard-K-of-N.jsonl` for
//! `--shard K/N`) and flushes it, after a header line that identifies the run. Restarted with
//! the same settings it reads the file, drops a torn last line, and continues with the images
//! not yet recorded; a file from different settings is refused. Totals are always re-summed from
//! the per-image records in image order, so a resumed run, and [`merge`] of the shard files,
//! give bit-identical float32 totals to one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::array::AnyArray;
use crate::config::{SegmentorConfig, TestMode};
use crate::conformance::case::Dtype;
use crate::conformance::{Backend, OutTensor, SegmentorRequest};
use crate::data::ade20k::{self, DatasetSpec, Shard, Skipped};
use crate::data::image::{self, ImageError};
use crate::data::transforms::{normalize, rescale_size, resize_bilinear_u8};
use crate::metrics::{
    compute_metrics, intersect_and_union, reduce_zero_label, AreaTotals, Metrics, ADE20K_CLASSES, IGNORE_INDEX,
};
use crate::reference::ops::{argmax_channels, interpolate_bilinear};
use crate::reference::segmentor::EncoderDecoder;
use crate::reference::Recorder;

/// Errors of an evaluation. [`EvalError::is_bad_input`] tells which ones `--skip-bad` may skip.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Dataset(#[from] ade20k::DatasetError),
    #[error(
        "image {path}: resized from {h0}x{w0} to {h}x{w}, which is smaller than the {ch}x{cw} slide-inference crop; \
         MMSegmentation crashes on such an image (BEiT's relative position bias is fixed to the crop's patch grid; \
         with Resize(2560, 640) this happens for aspect ratios above 4), so it is refused rather than padded \
         (pass --skip-bad to leave such images out and list them)"
    )]
    TooSmall { path: String, h0: usize, w0: usize, h: usize, w: usize, ch: usize, cw: usize },
    #[error("image {img}: the annotation {ann} is {lh}x{lw}, the image {h}x{w} (after EXIF orientation)")]
    LabelShape { img: PathBuf, ann: PathBuf, h: usize, w: usize, lh: usize, lw: usize },
    #[error("model on image {path}: {msg}")]
    Model { path: String, msg: String },
    #[error("{path}: {msg}")]
    Results { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EvalError {
    /// A problem with one image or annotation (skippable with `--skip-bad`), not with the run.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, EvalError::Image(_) | EvalError::TooSmall { .. } | EvalError::LabelShape { .. })
    }
}

fn cfg_err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Config(msg.into()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io { path: path.to_path_buf(), source }
}

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
    /// The ADE20K configs' preprocessor (spec §5.2).
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
            let key = |k: &str| format!("test_pipeline[{i}].{k}");
            let obj = t
                .as_object()
                .ok_or_else(|| EvalError::Config(format!("test_pipeline[{i}]: expected a transform dict, got {t}")))?;
            let ty = obj
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| EvalError::Config(format!("{}: missing", key("type"))))?;
            let check_keys = |allowed: &[&str]| -> Result<(), EvalError> {
                for k in obj.keys() {
                    if k != "type" && !allowed.contains(&k.as_str()) {
                        return cfg_err(format!("{}: not supported for {ty}", key(k)));
                    }
                }
                Ok(())
            };
            match ty {
                "LoadImageFromFile" => {
                    check_keys(&["to_float32", "color_type", "imdecode_backend", "backend_args", "ignore_empty"])?;
                    if obj.get("to_float32").is_some_and(|x| x != &Value::Bool(false)) {
                        return cfg_err(format!("{}: only false is supported", key("to_float32")));
                    }
                    if obj.get("color_type").is_some_and(|x| x != "color") {
                        return cfg_err(format!("{}: only 'color' is supported", key("color_type")));
                    }
                    if obj.get("imdecode_backend").is_some_and(|x| x != "cv2") {
                        return cfg_err(format!("{}: only 'cv2' is supported", key("imdecode_backend")));
                    }
                    loaded_image = true;
                }
                "Resize" => {
                    check_keys(&["scale", "keep_ratio", "interpolation", "backend", "clip_object_border"])?;
                    if resize.is_some() {
                        return cfg_err(format!("test_pipeline[{i}]: a second Resize is not supported"));
                    }
                    if !loaded_image {
                        return cfg_err(format!("test_pipeline[{i}]: Resize before LoadImageFromFile"));
                    }
                    if obj.get("interpolation").is_some_and(|x| x != "bilinear") {
                        return cfg_err(format!("{}: only 'bilinear' is supported", key("interpolation")));
                    }
                    if obj.get("backend").is_some_and(|x| x != "cv2") {
                        return cfg_err(format!("{}: only 'cv2' is supported", key("backend")));
                    }
                    let scale = obj.get("scale").ok_or_else(|| EvalError::Config(format!("{}: required (scale_factor is not supported)", key("scale"))))?;
                    let pair = match scale {
                        Value::Array(a) if a.len() == 2 => a.iter().map(|x| x.as_u64().map(|u| u as usize)).collect::<Option<Vec<_>>>(),
                        Value::Number(n) => n.as_u64().map(|u| vec![u as usize, u as usize]),
                        _ => None,
                    }
                    .filter(|p| p.iter().all(|&x| x > 0))
                    .ok_or_else(|| EvalError::Config(format!("{}: expected [w, h] (positive integers), got {scale}", key("scale"))))?;
                    let keep = match obj.get("keep_ratio") {
                        None | Some(Value::Null) => false,
                        Some(Value::Bool(b)) => *b,
                        Some(x) => return cfg_err(format!("{}: expected true/false, got {x}", key("keep_ratio"))),
                    };
                    resize = Some(if keep { ResizeSpec::KeepRatio { scale: (pair[0], pair[1]) } } else { ResizeSpec::Exact { w: pair[0], h: pair[1] } });
                }
                "LoadAnnotations" => {
                    check_keys(&["reduce_zero_label", "imdecode_backend", "backend_args"])?;
                    if resize.is_none() {
                        return cfg_err(format!(
                            "test_pipeline[{i}]: LoadAnnotations before Resize would resize the ground truth, which MMSegmentation's metric cannot use"
                        ));
                    }
                    if obj.get("imdecode_backend").is_some_and(|x| x != "pillow") {
                        return cfg_err(format!("{}: only 'pillow' is supported", key("imdecode_backend")));
                    }
                    reduce = match obj.get("reduce_zero_label") {
                        None | Some(Value::Null) => None,
                        Some(Value::Bool(b)) => Some(*b),
                        Some(x) => return cfg_err(format!("{}: expected true/false, got {x}", key("reduce_zero_label"))),
                    };
                }
                "PackSegInputs" => check_keys(&["meta_keys"])?,
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

/// MMSegmentation 0.x multi-scale + flip TTA (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsFlip {
    /// `MultiScaleFlipAug.img_scale` (the base `(long, short)` scale).
    pub img_scale: (usize, usize),
    pub ratios: Vec<f64>,
    pub flip: bool,
    /// `Resize(min_size=...)` of the 0.x BEiT ms configs (640): the short side is at least this,
    /// and the long-side bound is dropped.
    pub min_size: Option<usize>,
}

impl MsFlip {
    /// The BEiT ADE20K ms+flip recipe of MMSegmentation 0.x (spec §5.5).
    pub fn ade20k() -> Self {
        MsFlip {
            img_scale: (2560, 640),
            ratios: vec![0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
            flip: true,
            min_size: Some(640),
        }
    }

    /// From a case's `aug` object: `{"type": "MultiScaleFlipAug", "semantics": "mmseg-0.x",
    /// "img_scale": [w, h], "img_ratios": [...], "flip": true, "flip_direction": "horizontal",
    /// "min_size": 640}`.
    pub fn from_value(v: &Value) -> Result<Self, EvalError> {
        let obj =
            v.as_object().ok_or_else(|| EvalError::Config(format!("dataset.aug: expected an object, got {v}")))?;
        let mut out = MsFlip::ade20k();
        for (k, x) in obj {
            let bad = || EvalError::Config(format!("dataset.aug.{k}: unexpected value {x}"));
            match k.as_str() {
                "type" if x == "MultiScaleFlipAug" => {}
                "semantics" if x == "mmseg-0.x" => {}
                "img_scale" => {
                    let a = x.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
                    let p: Vec<usize> =
                        a.iter().map(|e| e.as_u64().map(|u| u as usize)).collect::<Option<_>>().ok_or_else(bad)?;
                    out.img_scale = (p[0], p[1]);
                }
                "img_ratios" => {
                    out.ratios = x
                        .as_array()
                        .ok_or_else(bad)?
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<_>>()
                        .ok_or_else(bad)?
                }
                "flip" => out.flip = x.as_bool().ok_or_else(bad)?,
                "flip_direction" => {
                    let ok = x == "horizontal" || x.as_array().is_some_and(|a| a.len() == 1 && a[0] == "horizontal");
                    if !ok {
                        return cfg_err(format!("dataset.aug.flip_direction: only 'horizontal' is supported, got {x}"));
                    }
                }
                "min_size" => {
                    out.min_size = if x.is_null() { None } else { Some(x.as_u64().ok_or_else(bad)? as usize) }
                }
                "description" => {}
                _ => return Err(bad()),
            }
        }
        if out.ratios.is_empty() || out.ratios.iter().any(|r| r.is_nan() || *r <= 0.0) {
            return cfg_err("dataset.aug.img_ratios: expected positive ratios");
        }
        Ok(out)
    }

    /// The scales `(int(long * r), int(short * r))`.
    pub fn scales(&self) -> Vec<(usize, usize)> {
        self.ratios
            .iter()
            .map(|r| ((self.img_scale.0 as f64 * r) as usize, (self.img_scale.1 as f64 * r) as usize))
            .collect()
    }

    /// The augmentations of an `h0`×`w0` image in 0.x order: per scale, unflipped then flipped:
    /// (resized size, flipped).
    pub fn augs(&self, hw: (usize, usize)) -> Vec<((usize, usize), bool)> {
        let mut out = Vec::new();
        for scale in self.scales() {
            let size = ms0_resize(hw, scale, self.min_size);
            out.push((size, false));
            if self.flip {
                out.push((size, true));
            }
        }
        out
    }
}

/// MMSegmentation 0.x `Resize._resize_img(keep_ratio=True, min_size)`: with `min_size`, the
/// target becomes `(short * h / w, short)` (portrait) or `(short, short * w / h)` with
/// `short = max(min(scale), min_size)` (float64), then `mmcv.imrescale`.
pub fn ms0_resize(hw: (usize, usize), scale: (usize, usize), min_size: Option<usize>) -> (usize, usize) {
    let (h, w) = hw;
    let Some(m) = min_size else { return rescale_size(hw, scale) };
    let s = scale.0.min(scale.1);
    let short = if s < m { m } else { s };
    let target = if h > w {
        ((short * h) as f64 / w as f64, short as f64)
    } else {
        (short as f64, (short * w) as f64 / h as f64)
    };
    let long = target.0.max(target.1);
    let shorter = target.0.min(target.1);
    let sf = f64::min(long / h.max(w) as f64, shorter / h.min(w) as f64);
    ((h as f64 * sf + 0.5) as usize, (w as f64 * sf + 0.5) as usize)
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

// ------------------------------------------------------------------------------ models

/// A segmentation network: `EncoderDecoder.inference` on one normalised image.
pub trait SegModel: Sync {
    fn describe(&self) -> String;
    /// `(1, 3, H, W)` normalised input → `(1, classes, H, W)` logits (whole or slide, as the
    /// model's `test_cfg` says).
    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, String>;
}

/// The ndarray reference model, float32.
pub struct RefModel(pub EncoderDecoder<f32>);

impl SegModel for RefModel {
    fn describe(&self) -> String {
        "ref (ndarray reference, float32)".into()
    }
    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, String> {
        self.0.forward(&input, &mut Recorder::none()).map(|o| o.seg_logits).map_err(|e| e.to_string())
    }
}

/// Any conformance [`Backend`], through its `run_segmentor` (the model is rebuilt per call:
/// meant for small fixture models).
pub struct BackendModel<'a> {
    pub backend: &'a dyn Backend,
    pub model: &'a SegmentorConfig,
    pub weights: Vec<(String, AnyArray)>,
}

impl SegModel for BackendModel<'_> {
    fn describe(&self) -> String {
        self.backend.name()
    }
    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, String> {
        let req = SegmentorRequest {
            model: self.model,
            weights: self.weights.clone(),
            inputs: AnyArray::F32(input.into_dyn()),
            dtype: Dtype::F32,
            wanted: vec!["seg_logits".into()],
        };
        let mut out = self.backend.run_segmentor(req).map_err(|e| e.to_string())?;
        match out.remove("seg_logits") {
            Some(OutTensor::Float(a)) => {
                a.mapv(|v| v as f32).into_dimensionality().map_err(|_| "seg_logits: expected a 4-D array".to_string())
            }
            _ => Err(format!("backend `{}` did not produce seg_logits", self.backend.name())),
        }
    }
}

// ------------------------------------------------------------------------------ one image

/// The prediction for one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `(classes, H0, W0)`: the logits resized to the original size (single scale), or the mean
    /// of the 12 softmax maps (ms+flip): the map whose argmax is `pred`.
    pub seg: Array3<f32>,
    /// `(H0, W0)` class indices.
    pub pred: Array2<i64>,
    /// The resized (unflipped, unnormalised) network inputs, H×W×3 BGR, one per augmentation
    /// (flipped augmentations repeat their scale's image unflipped).
    pub resized: Vec<Array3<u8>>,
}

/// Softmax over the class axis of `(1, C, H, W)` in float32: `exp(x - max) / sum`.
fn softmax_classes(x: &mut Array4<f32>) {
    let (_, c, h, w) = x.dim();
    let mut m = Array2::<f32>::from_elem((h, w), f32::NEG_INFINITY);
    for k in 0..c {
        ndarray::Zip::from(&mut m).and(x.slice(ndarray::s![0, k, .., ..])).for_each(|m, &v| *m = m.max(v));
    }
    let mut sum = Array2::<f32>::zeros((h, w));
    for k in 0..c {
        ndarray::Zip::from(x.slice_mut(ndarray::s![0, k, .., ..])).and(&m).and(&mut sum).for_each(|v, &m, s| {
            *v = (*v - m).exp();
            *s += *v;
        });
    }
    for k in 0..c {
        ndarray::Zip::from(x.slice_mut(ndarray::s![0, k, .., ..])).and(&sum).for_each(|v, &s| *v /= s);
    }
}

/// Runs the test pipeline and the model on a decoded BGR image (see the module docs). `name`
/// names the image in errors. Checks the sizes against the crop before any computation.
pub fn predict(
    settings: &EvalSettings,
    model: &dyn SegModel,
    img: ArrayView3<u8>,
    name: &str,
) -> Result<Prediction, EvalError> {
    let (h0, w0, _) = img.dim();
    settings.check_size(name, (h0, w0))?;
    let p = &settings.preprocess;
    let run = |x: &Array3<u8>| -> Result<Array4<f32>, EvalError> {
        let input = normalize(x.view(), &p.mean, &p.std, p.flip_channels).insert_axis(Axis(0));
        let logits = model.seg_logits(input).map_err(|msg| EvalError::Model { path: name.to_string(), msg })?;
        Ok(interpolate_bilinear(logits.view(), (h0, w0), settings.align_corners))
    };
    let plan = settings.plan((h0, w0));
    let mut resized_cache: Vec<((usize, usize), Array3<u8>)> = Vec::new();
    let mut resized_out = Vec::with_capacity(plan.len());
    let mut acc: Option<Array4<f32>> = None;
    for &(size, flipped) in &plan {
        let resized = match resized_cache.iter().find(|(s, _)| *s == size) {
            Some((_, r)) => r.clone(),
            None => {
                let r = resize_bilinear_u8(img, size);
                resized_cache.push((size, r.clone()));
                r
            }
        };
        let input = if flipped {
            let mut f = resized.clone();
            f.invert_axis(Axis(1));
            f.as_standard_layout().into_owned()
        } else {
            resized.clone()
        };
        let mut out = run(&input)?;
        if settings.aug.is_some() {
            softmax_classes(&mut out);
            if flipped {
                out.invert_axis(Axis(3));
                out = out.as_standard_layout().into_owned();
            }
            match acc.as_mut() {
                None => acc = Some(out),
                Some(a) => *a += &out,
            }
        } else {
            acc = Some(out);
        }
        resized_out.push(resized);
    }
    let mut seg4 = acc.expect("at least one augmentation");
    if settings.aug.is_some() {
        let n = plan.len() as f32;
        seg4.mapv_inplace(|v| v / n);
    }
    let pred = argmax_channels(seg4.view()).index_axis_move(Axis(0), 0);
    Ok(Prediction { seg: seg4.index_axis_move(Axis(0), 0), pred, resized: resized_out })
}

/// Per-image areas of `IoUMetric` for a prediction and the label map as stored on disk.
pub fn image_areas(pred: &Array2<i64>, label: &Array2<u8>, reduce_zero: bool, num_classes: usize) -> AreaTotals {
    let label = if reduce_zero { reduce_zero_label(label.view()) } else { label.clone() };
    intersect_and_union(pred.view(), label.view(), num_classes, IGNORE_INDEX).expect("shapes checked by the caller")
}

// ------------------------------------------------------------------------------ results file

/// One line of a results file: an evaluated image (its per-image float32 areas) or a skipped one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub index: usize,
    pub stem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intersect: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub union: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_label: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl ImageRecord {
    fn areas(&self) -> Option<AreaTotals> {
        Some(AreaTotals {
            intersect: self.intersect.clone()?,
            union: self.union.clone()?,
            pred_label: self.pred_label.clone()?,
            label: self.label.clone()?,
        })
    }
}

/// The first line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsHeader {
    /// Always 1 (the version of this file format).
    pub beit_seg_results: u32,
    /// Everything that determines the numbers; a resumed run must match it exactly, and shard
    /// files must match each other except for `shard`.
    pub run: Value,
    /// Images of the whole run (after `--limit`, before sharding).
    pub num_images: usize,
    pub num_classes: usize,
    pub shard: Option<Shard>,
}

const RESULTS_VERSION: u32 = 1;

/// Reads a results file: the header and the complete records. A torn last line (a killed
/// run) is dropped and reported as the byte length of the good prefix (`Some(len)`).
pub fn read_results(path: &Path) -> Result<(ResultsHeader, Vec<ImageRecord>, Option<u64>), EvalError> {
    let bad = |msg: String| EvalError::Results { path: path.to_path_buf(), msg };
    let text = std::fs::read(path).map_err(io_err(path))?;
    let mut good_len = 0usize;
    let mut header: Option<ResultsHeader> = None;
    let mut records = Vec::new();
    let mut torn = false;
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < text.len() {
        line_no += 1;
        let end = text[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i);
        let (line, next, complete) = match end {
            Some(e) => (&text[pos..e], e + 1, true),
            None => (&text[pos..], text.len(), false),
        };
        let parsed: Result<Value, _> = serde_json::from_slice(line);
        match parsed {
            Ok(v) if complete => {
                if header.is_none() {
                    let h: ResultsHeader = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line 1 is not a beit-seg results header: {e}")))?;
                    if h.beit_seg_results != RESULTS_VERSION {
                        return Err(bad(format!(
                            "results format version {} is not supported (expected {RESULTS_VERSION})",
                            h.beit_seg_results
                        )));
                    }
                    header = Some(h);
                } else {
                    let r: ImageRecord = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line {line_no}: not an image record: {e}")))?;
                    records.push(r);
                }
                good_len = next;
            }
            _ if !complete || next == text.len() => {
                // The last line, unterminated or unparsable: a write cut off by a kill.
                torn = true;
                break;
            }
            Ok(_) => unreachable!(),
            Err(e) => {
                return Err(bad(format!("line {line_no}: invalid JSON ({e}); only the last line may be incomplete")))
            }
        }
        pos = next;
    }
    let header = header.ok_or_else(|| bad("no header line (empty or torn file)".into()))?;
    Ok((header, records, torn.then_some(good_len as u64)))
}

/// Sums per-image records in image-index order (float32, as `IoUMetric` sums its results).
/// Errors on duplicate indices.
pub fn sum_records(records: &[ImageRecord], num_classes: usize) -> Result<AreaTotals, String> {
    let mut sorted: Vec<&ImageRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    for w in sorted.windows(2) {
        if w[0].index == w[1].index {
            return Err(format!("image index {} ({}) is recorded twice", w[0].index, w[0].stem));
        }
    }
    let mut t = AreaTotals::zeros(num_classes);
    for r in sorted {
        if r.skipped.is_some() {
            continue;
        }
        let a = r.areas().ok_or_else(|| format!("image {} ({}): record has no areas", r.index, r.stem))?;
        t.add(&a).map_err(|e| format!("image {} ({}): {e}", r.index, r.stem))?;
    }
    Ok(t)
}

// ------------------------------------------------------------------------------ a run

/// Options of [`evaluate`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only the first N images of the sorted listing.
    pub limit: Option<usize>,
    pub shard: Option<Shard>,
    /// Directory for `results*.jsonl` and `metrics*.json` (created).
    pub out_dir: PathBuf,
    /// Write predicted label PNGs here (`<stem>.png`; class + 1 when `reduce_zero_label`, the
    /// ADE20K annotation convention).
    pub save_pred: Option<PathBuf>,
    /// Record undecodable / too small / mismatched images as skipped instead of failing.
    pub skip_bad: bool,
    /// Print a progress line per image on stderr.
    pub progress: bool,
    /// Stop (as if killed) after this many newly evaluated images; for tests of resuming.
    pub stop_after: Option<usize>,
    /// Class names for the table (default: ADE20K's when there are 150 classes).
    pub class_names: Option<Vec<String>>,
}

/// What a run (or a merge) produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub totals: AreaTotals,
    pub metrics: Metrics,
    /// Images evaluated (not skipped).
    pub evaluated: usize,
    pub skipped: Vec<Skipped>,
    /// All planned images are recorded (false after `stop_after`).
    pub complete: bool,
    pub results_path: PathBuf,
    pub metrics_path: Option<PathBuf>,
    /// The JSON written to `metrics_path`.
    pub json: Value,
    /// Per-class table + summary, as printed.
    pub report: String,
}

fn shard_suffix(shard: Option<Shard>) -> String {
    shard.map(|s| format!(".shard-{}-of-{}", s.k, s.n)).unwrap_or_default()
}

/// The results file of a run in `out_dir`.
pub fn results_path(out_dir: &Path, shard: Option<Shard>) -> PathBuf {
    out_dir.join(format!("results{}.jsonl", shard_suffix(shard)))
}

fn class_names(opts_names: Option<&Vec<String>>, n: usize) -> Vec<String> {
    match opts_names {
        Some(v) => v.clone(),
        None if n == ADE20K_CLASSES.len() => ADE20K_CLASSES.iter().map(|s| s.to_string()).collect(),
        None => (0..n).map(|i| i.to_string()).collect(),
    }
}

/// The per-class table and the summary line of a result.
pub fn format_report(metrics: &Metrics, names: &[String]) -> String {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let table = metrics.table(&refs);
    format!(
        "per class results:\n{table}\naAcc: {:.2}  mIoU: {:.2}  mAcc: {:.2}",
        metrics.a_acc, metrics.m_iou, metrics.m_acc
    )
}

fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), EvalError> {
    crate::fsutil::replace_file_atomic(path, text.as_bytes()).map_err(io_err(path))
}

/// Builds the final JSON (the fixture format's `metrics` plus run information).
fn result_json(
    metrics: &Metrics,
    header: &ResultsHeader,
    evaluated: usize,
    skipped: &[Skipped],
    names: &[String],
    partial: Option<&str>,
) -> Value {
    json!({
        "format": "beit-seg-eval/1",
        "metrics": metrics,
        "classes": names,
        "images_evaluated": evaluated,
        "images_skipped": skipped,
        "num_images": header.num_images,
        "partial": partial,
        "run": header.run,
    })
}

/// Evaluates (the shard of) a dataset, resuming from an existing results file (see the module
/// docs). `run_identity` is recorded in the header and must match on resume; it should hold
/// everything that determines the numbers (model config, checkpoint, settings, decoder...).
pub fn evaluate(
    settings: &EvalSettings,
    model: &dyn SegModel,
    spec: &DatasetSpec,
    run_identity: Value,
    opts: &RunOptions,
) -> Result<Outcome, EvalError> {
    let listing = ade20k::list(spec, opts.skip_bad)?;
    let total = listing.samples.len() + listing.skipped.len();
    let num_images = opts.limit.map_or(total, |l| l.min(total));
    let in_run = |i: usize| i < num_images && opts.shard.map_or(true, |s| s.contains(i));
    // The data is identified by its layout and listing (not its root path, so shards may run on
    // machines that mount it elsewhere).
    let mut stems_hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a 64
    let mut all: Vec<(usize, &str)> = listing.samples.iter().map(|s| (s.index, s.stem.as_str())).collect();
    all.extend(listing.skipped.iter().map(|s| (s.index, s.stem.as_str())));
    all.sort();
    for (_, stem) in all.iter().take(num_images) {
        for b in stem.bytes().chain([b'\n']) {
            stems_hash = (stems_hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    let names = class_names(opts.class_names.as_ref(), settings.num_classes);
    let dataset_id = json!({
        "img_dir": spec.img_dir, "ann_dir": spec.ann_dir, "img_suffix": spec.img_suffix, "seg_map_suffix": spec.seg_map_suffix,
        "listed": total, "stems_fnv1a64": format!("{stems_hash:016x}"),
    });
    let header = ResultsHeader {
        beit_seg_results: RESULTS_VERSION,
        run: json!({"identity": run_identity, "settings": settings, "dataset": dataset_id, "limit": opts.limit,
                    "skip_bad": opts.skip_bad, "classes": names}),
        num_images,
        num_classes: settings.num_classes,
        shard: opts.shard,
    };
    // Compared as text: JSON numbers do not always survive a parse exactly (serde_json's fast
    // float parser), but the same settings always print the same line.
    let header_line = serde_json::to_string(&header).expect("serializable");
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    let rpath = results_path(&opts.out_dir, opts.shard);
    let mut records: Vec<ImageRecord> = Vec::new();
    if rpath.exists() {
        let (_, recs, torn) = read_results(&rpath)?;
        let first_line = first_line(&rpath)?;
        if first_line != header_line {
            return Err(EvalError::Results {
                path: rpath,
                msg: "this results file is from a run with different settings (model, checkpoint, data, limit, shard or options); \
                      remove it or choose another --out directory"
                    .into(),
            });
        }
        if let Some(len) = torn {
            let f = OpenOptions::new().write(true).open(&rpath).map_err(io_err(&rpath))?;
            f.set_len(len).map_err(io_err(&rpath))?;
            if opts.progress {
                eprintln!("eval: {}: dropped an incomplete last line (interrupted write)", rpath.display());
            }
        }
        for r in &recs {
            if !in_run(r.index) {
                return Err(EvalError::Results {
                    path: rpath.clone(),
                    msg: format!("image index {} ({}) does not belong to this run", r.index, r.stem),
                });
            }
        }
        records = recs;
        if opts.progress && !records.is_empty() {
            eprintln!("eval: resuming from {} ({} images already recorded)", rpath.display(), records.len());
        }
    } else {
        let mut f = File::create(&rpath).map_err(io_err(&rpath))?;
        writeln!(f, "{header_line}").map_err(io_err(&rpath))?;
        f.sync_data().map_err(io_err(&rpath))?;
    }
    sum_records(&records, settings.num_classes).map_err(|msg| EvalError::Results { path: rpath.clone(), msg })?;
    let done: std::collections::BTreeSet<usize> = records.iter().map(|r| r.index).collect();

    // The work list: samples and listing-skipped images of this run, in index order.
    enum Work<'a> {
        Image(&'a ade20k::Sample),
        Missing(&'a Skipped),
    }
    let mut work: Vec<(usize, Work)> = listing.samples.iter().map(|s| (s.index, Work::Image(s))).collect();
    work.extend(listing.skipped.iter().map(|s| (s.index, Work::Missing(s))));
    work.sort_by_key(|(i, _)| *i);
    work.retain(|(i, _)| in_run(*i) && !done.contains(i));
    let planned = (0..num_images).filter(|&i| in_run(i)).count();

    let mut file = OpenOptions::new().append(true).open(&rpath).map_err(io_err(&rpath))?;
    let start = Instant::now();
    let mut new_images = 0usize;
    let mut stopped = false;
    for (n_done, (index, w)) in work.iter().enumerate() {
        if opts.stop_after.is_some_and(|k| new_images >= k) {
            stopped = true;
            break;
        }
        let t0 = Instant::now();
        let rec = match w {
            Work::Missing(s) => {
                ImageRecord { index: *index, stem: s.stem.clone(), skipped: Some(s.reason.clone()), ..empty_record() }
            }
            Work::Image(s) => match eval_one(settings, model, s, opts) {
                Ok((shape, a)) => ImageRecord {
                    index: *index,
                    stem: s.stem.clone(),
                    shape: Some(shape),
                    intersect: Some(a.intersect),
                    union: Some(a.union),
                    pred_label: Some(a.pred_label),
                    label: Some(a.label),
                    seconds: Some(t0.elapsed().as_secs_f64()),
                    ..empty_record()
                },
                Err(e) if opts.skip_bad && e.is_bad_input() => {
                    if opts.progress {
                        eprintln!("eval: skipping {}: {e}", s.stem);
                    }
                    ImageRecord { index: *index, stem: s.stem.clone(), skipped: Some(e.to_string()), ..empty_record() }
                }
                Err(e) => return Err(e),
            },
        };
        let line = serde_json::to_string(&rec).expect("serializable");
        file.write_all(format!("{line}\n").as_bytes()).map_err(io_err(&rpath))?;
        file.flush().map_err(io_err(&rpath))?;
        records.push(rec);
        new_images += 1;
        if opts.progress {
            let elapsed = start.elapsed().as_secs_f64();
            let rate = new_images as f64 / elapsed.max(1e-9);
            let left = work.len() - n_done - 1;
            eprintln!(
                "eval: [{}/{}] {}  {:.3} img/s  elapsed {}  ETA {}",
                records.len(),
                planned,
                records.last().map(|r| r.stem.as_str()).unwrap_or(""),
                rate,
                fmt_duration(elapsed),
                fmt_duration(left as f64 / rate)
            );
        }
    }
    drop(file);

    let totals =
        sum_records(&records, settings.num_classes).map_err(|msg| EvalError::Results { path: rpath.clone(), msg })?;
    let metrics = compute_metrics(&totals);
    let mut skipped: Vec<Skipped> = records
        .iter()
        .filter_map(|r| {
            r.skipped.as_ref().map(|why| Skipped {
                index: r.index,
                stem: r.stem.clone(),
                path: PathBuf::new(),
                reason: why.clone(),
            })
        })
        .collect();
    skipped.sort_by_key(|s| s.index);
    let evaluated = records.iter().filter(|r| r.skipped.is_none()).count();
    let complete = !stopped && records.len() == planned;
    let partial = match (complete, opts.shard) {
        (false, _) => Some("incomplete run".to_string()),
        (true, Some(s)) => Some(format!("shard {s} only; combine the shards with `beit-seg merge`")),
        (true, None) => None,
    };
    let json = as_written(result_json(&metrics, &header, evaluated, &skipped, &names, partial.as_deref()));
    let metrics_path = if complete {
        let p = opts.out_dir.join(format!("metrics{}.json", shard_suffix(opts.shard)));
        write_atomic(&p, &serde_json::to_string_pretty(&json).expect("serializable"))?;
        Some(p)
    } else {
        None
    };
    let report = format_report(&metrics, &names);
    Ok(Outcome { totals, metrics, evaluated, skipped, complete, results_path: rpath, metrics_path, json, report })
}

fn first_line(path: &Path) -> Result<String, EvalError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut line = String::new();
    BufReader::new(f).read_line(&mut line).map_err(io_err(path))?;
    Ok(line.trim_end_matches('\n').to_string())
}

/// The JSON as it will read back from the file (numbers parsed from their text).
fn as_written(v: Value) -> Value {
    serde_json::from_str(&serde_json::to_string(&v).expect("serializable")).expect("round trip")
}

fn empty_record() -> ImageRecord {
    ImageRecord {
        index: 0,
        stem: String::new(),
        skipped: None,
        shape: None,
        intersect: None,
        union: None,
        pred_label: None,
        label: None,
        seconds: None,
    }
}

/// Decodes, predicts and scores one sample.
fn eval_one(
    settings: &EvalSettings,
    model: &dyn SegModel,
    s: &ade20k::Sample,
    opts: &RunOptions,
) -> Result<([usize; 2], AreaTotals), EvalError> {
    let img = image::read_bgr(&s.img_path)?;
    let label = image::read_label(&s.ann_path)?;
    let (h, w, _) = img.dim();
    let (lh, lw) = label.dim();
    if (lh, lw) != (h, w) {
        return Err(EvalError::LabelShape { img: s.img_path.clone(), ann: s.ann_path.clone(), h, w, lh, lw });
    }
    let p = predict(settings, model, img.view(), &s.img_path.display().to_string())?;
    if let Some(dir) = &opts.save_pred {
        let vals = image::labels_to_png_values(p.pred.view(), settings.pipeline.reduce_zero_label);
        image::write_label_png(&dir.join(format!("{}.png", s.stem)), vals.view())?;
    }
    Ok(([h, w], image_areas(&p.pred, &label, settings.pipeline.reduce_zero_label, settings.num_classes)))
}

/// Combines the results files of the shards of one run into the totals and metrics one
/// uninterrupted run gives (bit-identical: per-image areas are summed in image order). Every
/// image of the run must be recorded exactly once over the files. Writes the result JSON to
/// `out`.
pub fn merge(files: &[PathBuf], out: &Path, class_names_opt: Option<Vec<String>>) -> Result<Outcome, EvalError> {
    let first = files.first().ok_or_else(|| EvalError::Config("merge: no results files given".into()))?;
    let mut header0: Option<ResultsHeader> = None;
    let mut records = Vec::new();
    for f in files {
        let (h, recs, torn) = read_results(f)?;
        if torn.is_some() {
            return Err(EvalError::Results {
                path: f.clone(),
                msg: "the last line is incomplete: this run was interrupted; resume it first".into(),
            });
        }
        match &header0 {
            None => header0 = Some(h),
            Some(h0) => {
                let same = h0.run == h.run && h0.num_images == h.num_images && h0.num_classes == h.num_classes;
                if !same {
                    return Err(EvalError::Results {
                        path: f.clone(),
                        msg: format!(
                            "not from the same run as {} (different settings, model, data or limit)",
                            first.display()
                        ),
                    });
                }
            }
        }
        records.extend(recs);
    }
    let header = header0.expect("at least one file");
    let mut seen = vec![0usize; header.num_images];
    for r in &records {
        match seen.get_mut(r.index) {
            Some(c) => *c += 1,
            None => {
                return Err(EvalError::Results {
                    path: first.clone(),
                    msg: format!("image index {} is outside the run ({} images)", r.index, header.num_images),
                })
            }
        }
    }
    let dup: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c > 1).map(|(i, _)| i).collect();
    if !dup.is_empty() {
        return Err(EvalError::Results {
            path: first.clone(),
            msg: format!("images recorded more than once over the files: indices {:?}", &dup[..dup.len().min(10)]),
        });
    }
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c == 0).map(|(i, _)| i).collect();
    if !missing.is_empty() {
        return Err(EvalError::Results {
            path: first.clone(),
            msg: format!(
                "{} of {} images are not recorded in the given files (a shard is missing or unfinished), e.g. indices {:?}",
                missing.len(),
                header.num_images,
                &missing[..missing.len().min(10)]
            ),
        });
    }
    let totals =
        sum_records(&records, header.num_classes).map_err(|msg| EvalError::Results { path: first.clone(), msg })?;
    let metrics = compute_metrics(&totals);
    let mut skipped: Vec<Skipped> = records
        .iter()
        .filter_map(|r| {
            r.skipped.as_ref().map(|why| Skipped {
                index: r.index,
                stem: r.stem.clone(),
                path: PathBuf::new(),
                reason: why.clone(),
            })
        })
        .collect();
    skipped.sort_by_key(|s| s.index);
    let evaluated = records.iter().filter(|r| r.skipped.is_none()).count();
    let recorded: Option<Vec<String>> = header
        .run
        .get("classes")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
    let names = class_names(class_names_opt.as_ref().or(recorded.as_ref()), header.num_classes);
    let merged_header = ResultsHeader { shard: None, ..header.clone() };
    let json = as_written(result_json(&metrics, &merged_header, evaluated, &skipped, &names, None));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomic(out, &serde_json::to_string_pretty(&json).expect("serializable"))?;
    let report = format_report(&metrics, &names);
    Ok(Outcome {
        totals,
        metrics,
        evaluated,
        skipped,
        complete: true,
        results_path: first.clone(),
        metrics_path: Some(out.to_path_buf()),
        json,
        report,
    })
}

/// Reads the image lines of a results file (for tools and tests).
pub fn read_records(path: &Path) -> Result<Vec<ImageRecord>, EvalError> {
    read_results(path).map(|(_, r, _)| r)
}

/// Lines of a file (helper for tests and tools that inspect results files).
pub fn count_lines(path: &Path) -> Result<usize, EvalError> {
    let f = File::open(path).map_err(io_err(path))?;
    Ok(BufReader::new(f).lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms0_scales_and_sizes() {
        let a = MsFlip::ade20k();
        assert_eq!(a.scales(), vec![(1280, 320), (1920, 480), (2560, 640), (3200, 800), (3840, 960), (4480, 1120)]);
        // 512x683: short sides 640, 640, 640, 800, 960, 1120 (the long-side cap is dropped).
        let shorts: Vec<usize> = a.augs((512, 683)).iter().step_by(2).map(|((h, w), _)| (*h).min(*w)).collect();
        assert_eq!(shorts, vec![640, 640, 640, 800, 960, 1120]);
        assert_eq!(a.augs((512, 683)).len(), 12);
        // A portrait image.
        assert_eq!(ms0_resize((683, 512), (2560, 640), Some(640)), (854, 640));
        // Without min_size it is mmcv.imrescale.
        assert_eq!(ms0_resize((512, 683), (1280, 320), None), (320, 427));
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = Array4::from_shape_fn((1, 3, 2, 2), |(_, c, y, x)| (c * 3 + y + x) as f32 * 0.7 - 2.0);
        softmax_classes(&mut x);
        for y in 0..2 {
            for xx in 0..2 {
                let s: f32 = (0..3).map(|c| x[[0, c, y, xx]]).sum();
                assert!((s - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn too_small_is_refused_by_name() {
        let cfg = serde_json::json!({
            "backbone": {"type": "BEiT", "img_size": [64, 64], "embed_dims": 32, "num_layers": 4, "num_heads": 2, "out_indices": [0, 1, 2, 3]},
            "neck": {"type": "Feature2Pyramid", "embed_dim": 32, "rescales": [4, 2, 1, 0.5]},
            "decode_head": {"type": "UPerHead", "in_channels": [32, 32, 32, 32], "in_index": [0, 1, 2, 3], "channels": 16, "num_classes": 5},
            "test_cfg": {"mode": "slide", "crop_size": [64, 64], "stride": [43, 43]}
        });
        let m = SegmentorConfig::from_value(&cfg).unwrap();
        let pipe = TestPipeline { resize: ResizeSpec::KeepRatio { scale: (256, 64) }, reduce_zero_label: true };
        let s = EvalSettings::new(&m, &cfg, pipe, None).unwrap();
        assert!(s.check_size("ok.jpg", (64, 200)).is_ok());
        let e = s.check_size("long.jpg", (20, 100)).unwrap_err();
        assert!(e.is_bad_input());
        let msg = e.to_string();
        assert!(msg.contains("long.jpg") && msg.contains("51x256") && msg.contains("64x64"), "{msg}");
    }
}
