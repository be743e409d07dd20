//! MMSegmentation 0.x multi-scale + flip test-time augmentation (`MultiScaleFlipAug` +
//! `Resize(min_size=640)` + `aug_test`), the recipe of the published ms+flip numbers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{cfg_err, EvalError};
use crate::data::transforms::rescale_size;

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
