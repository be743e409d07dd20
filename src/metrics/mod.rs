//! MMSegmentation 1.2.2's `IoUMetric` (`mmseg/evaluation/metrics/iou_metric.py`), exactly
//! (docs/mmseg-beit-upernet.md §7): per-image histograms, float32 totals, per-class IoU / Acc and the summary numbers
//! `aAcc`, `mIoU`, `mAcc` rounded the way MMSegmentation prints them.
//!
//! Float semantics reproduced bit for bit:
//! * per-image areas are float32 (`torch.histc`), `union = (pred + label) - intersect`;
//! * totals are Python `sum` over images of the float32 tensors, in image order
//!   ([`AreaTotals::add`]);
//! * `aAcc = total_intersect.sum() / total_label.sum()` with torch's CPU float32 sum order
//!   ([`torch_sum_f32`]; matters only once counts pass 2^24);
//! * `IoU`, `Acc` are float32 divisions (0/0 = NaN);
//! * summary `np.round(np.nanmean(v) * 100, 2)`: numpy's float32 pairwise `nanmean`
//!   ([`nanmean_f32`]), then — because `np.float32 * 100` is float64 in numpy 1.26 — the
//!   scaling and the half-even rounding in float64 ([`summary_percent`]);
//! * per-class table `np.round(v * 100, 2)` in float32 ([`class_percent`]).

mod classes;
mod sums;
mod table;
#[cfg(test)]
mod tests;

use ndarray::{Array2, ArrayView2, Zip};
use serde::{Deserialize, Deserializer, Serialize};

pub use classes::{class_names_or_default, ADE20K_CLASSES};
pub use sums::{class_percent, nanmean_f32, np_round2_f64, numpy_sum_f32, summary_percent, torch_sum_f32};
pub use table::per_class_table;

/// `ignore_index` of the ADE20K configs (and `IoUMetric`'s default).
pub const IGNORE_INDEX: i64 = 255;

/// A problem with the inputs of the metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("prediction shape {pred:?} does not match label shape {label:?}")]
    ShapeMismatch { pred: Vec<usize>, label: Vec<usize> },
    #[error("area totals of {0} and {1} classes cannot be added")]
    ClassCountMismatch(usize, usize),
    #[error("num_classes must be at least 1")]
    NoClasses,
}

/// MMSegmentation's `LoadAnnotations(reduce_zero_label=True)` on a uint8 label map
/// (`mmseg/datasets/transforms/loading.py`): `gt[gt == 0] = 255; gt = gt - 1;
/// gt[gt == 254] = 255` (uint8 arithmetic). So 0 ("other") → 255 (ignored), 1..=254 → x - 1
/// except that 255 stays 255.
pub fn reduce_zero_label(label: ArrayView2<u8>) -> Array2<u8> {
    label.mapv(|v| {
        let v = if v == 0 { 255 } else { v };
        let v = v.wrapping_sub(1);
        if v == 254 {
            255
        } else {
            v
        }
    })
}

/// Per-class pixel areas (`IoUMetric.intersect_and_union` of one image, or totals over images),
/// float32 as in MMSegmentation. Serialized with the fixture format's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaTotals {
    #[serde(rename = "total_area_intersect")]
    pub intersect: Vec<f32>,
    #[serde(rename = "total_area_union")]
    pub union: Vec<f32>,
    #[serde(rename = "total_area_pred_label")]
    pub pred_label: Vec<f32>,
    #[serde(rename = "total_area_label")]
    pub label: Vec<f32>,
}

impl AreaTotals {
    /// All-zero totals (Python `sum` starts from 0; `0 + t == t` exactly).
    pub fn zeros(num_classes: usize) -> Self {
        let z = vec![0.0f32; num_classes];
        AreaTotals { intersect: z.clone(), union: z.clone(), pred_label: z.clone(), label: z }
    }

    pub fn num_classes(&self) -> usize {
        self.intersect.len()
    }

    /// Adds another image's (or group's) areas element-wise in float32, as
    /// `sum(results[i])` in `IoUMetric.compute_metrics` does image by image.
    pub fn add(&mut self, other: &AreaTotals) -> Result<(), MetricError> {
        if other.num_classes() != self.num_classes() {
            return Err(MetricError::ClassCountMismatch(self.num_classes(), other.num_classes()));
        }
        for (a, b) in [
            (&mut self.intersect, &other.intersect),
            (&mut self.union, &other.union),
            (&mut self.pred_label, &other.pred_label),
            (&mut self.label, &other.label),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
        Ok(())
    }

    /// Totals over images in order: `sum(...)` of `IoUMetric.compute_metrics`.
    pub fn sum<'a>(
        num_classes: usize,
        images: impl IntoIterator<Item = &'a AreaTotals>,
    ) -> Result<AreaTotals, MetricError> {
        let mut t = AreaTotals::zeros(num_classes);
        for a in images {
            t.add(a)?;
        }
        Ok(t)
    }
}

/// `IoUMetric.intersect_and_union` of one image: `mask = label != ignore_index`; pixels with
/// an ignored label are dropped from the prediction too; `intersect = pred[pred == label]`;
/// each area is `torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1)`, which
/// for integer labels counts each value `0..num_classes` in its own bin and **ignores values
/// outside `[0, num_classes - 1]`** (e.g. a prediction of 255 counts for no class, yet its
/// pixel still counts in `area_label`); `area_union = area_pred + area_label - area_intersect`
/// in float32.
///
/// `label` may be uint8 (as decoded) or int64; MMSegmentation converts it to the prediction's
/// dtype (int64), which is what `Into<i64>` does. Counts are exact below 2^24 per image and
/// class (torch accumulates the histogram in float32, which saturates at 2^24); MMSegmentation's
/// `num_classes == 1` quirk (`histc` with `min == max` uses the data range) is not reproduced.
pub fn intersect_and_union<L: Copy + Into<i64>>(
    pred: ArrayView2<i64>,
    label: ArrayView2<L>,
    num_classes: usize,
    ignore_index: i64,
) -> Result<AreaTotals, MetricError> {
    if num_classes == 0 {
        return Err(MetricError::NoClasses);
    }
    if pred.shape() != label.shape() {
        return Err(MetricError::ShapeMismatch { pred: pred.shape().to_vec(), label: label.shape().to_vec() });
    }
    let n = num_classes as i64;
    let mut inter = vec![0u64; num_classes];
    let mut area_pred = vec![0u64; num_classes];
    let mut area_label = vec![0u64; num_classes];
    Zip::from(&pred).and(&label).for_each(|&p, &l| {
        let l: i64 = l.into();
        if l == ignore_index {
            return;
        }
        if (0..n).contains(&p) {
            area_pred[p as usize] += 1;
            if p == l {
                inter[p as usize] += 1;
            }
        }
        if (0..n).contains(&l) {
            area_label[l as usize] += 1;
        }
    });
    let f = |v: Vec<u64>| v.into_iter().map(|c| c as f32).collect::<Vec<f32>>();
    let (intersect, pred_label, label) = (f(inter), f(area_pred), f(area_label));
    let union = pred_label.iter().zip(&label).zip(&intersect).map(|((&p, &l), &i)| p + l - i).collect();
    Ok(AreaTotals { intersect, union, pred_label, label })
}

/// The result of [`compute_metrics`]; serializes to the fixture format's `metrics` object
/// (`aAcc`, `mIoU`, `mAcc`, `per_class` {`IoU`, `Acc`}, `total_area_*`; NaN as `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Overall pixel accuracy in percent, rounded to 2 decimals as MMSegmentation returns it
    /// (float64; NaN when no pixel is labelled).
    #[serde(rename = "aAcc", deserialize_with = "nan_from_null")]
    pub a_acc: f64,
    /// Mean IoU over classes whose IoU is not NaN, percent, 2 decimals.
    #[serde(rename = "mIoU", deserialize_with = "nan_from_null")]
    pub m_iou: f64,
    /// Mean accuracy over classes present in the ground truth, percent, 2 decimals.
    #[serde(rename = "mAcc", deserialize_with = "nan_from_null")]
    pub m_acc: f64,
    pub per_class: PerClass,
    #[serde(flatten)]
    pub totals: AreaTotals,
}

/// Per-class fractions (the float32 values widened exactly); `None` where NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerClass {
    #[serde(rename = "IoU")]
    pub iou: Vec<Option<f64>>,
    #[serde(rename = "Acc")]
    pub acc: Vec<Option<f64>>,
}

fn nan_from_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Metrics {
    /// Per-class IoU as float32 (NaN where undefined).
    pub fn iou_f32(&self) -> Vec<f32> {
        self.per_class.iou.iter().map(|v| v.map_or(f32::NAN, |x| x as f32)).collect()
    }

    /// Per-class Acc as float32 (NaN where undefined).
    pub fn acc_f32(&self) -> Vec<f32> {
        self.per_class.acc.iter().map(|v| v.map_or(f32::NAN, |x| x as f32)).collect()
    }

    /// The per-class table MMSegmentation logs (see [`per_class_table`]).
    pub fn table(&self, class_names: &[&str]) -> String {
        per_class_table(class_names, &self.iou_f32(), &self.acc_f32())
    }
}

/// `IoUMetric.compute_metrics` + `total_area_to_metrics` (with `iou_metrics=['mIoU']`,
/// `nan_to_num=None`) on totals over all images.
pub fn compute_metrics(totals: &AreaTotals) -> Metrics {
    let a_acc = torch_sum_f32(&totals.intersect) / torch_sum_f32(&totals.label);
    let iou: Vec<f32> = totals.intersect.iter().zip(&totals.union).map(|(&i, &u)| i / u).collect();
    let acc: Vec<f32> = totals.intersect.iter().zip(&totals.label).map(|(&i, &l)| i / l).collect();
    let opt = |v: &[f32]| v.iter().map(|&x| (!x.is_nan()).then_some(x as f64)).collect::<Vec<_>>();
    Metrics {
        a_acc: summary_percent(&[a_acc]),
        m_iou: summary_percent(&iou),
        m_acc: summary_percent(&acc),
        per_class: PerClass { iou: opt(&iou), acc: opt(&acc) },
        totals: totals.clone(),
    }
}
