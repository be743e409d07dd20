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

use ndarray::{Array2, ArrayView2, Zip};
use serde::{Deserialize, Deserializer, Serialize};

/// The 150 class names of `ADE20KDataset.METAINFO['classes']` (MMSegmentation 1.2.2), in label
/// order (after `reduce_zero_label`). Note `"bed "` with a trailing space, as in MMSegmentation.
pub const ADE20K_CLASSES: [&str; 150] = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed ",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
];

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

/// torch's CPU float32 `Tensor.sum()` of a contiguous 1-D tensor (`aten/src/ATen/native/cpu/
/// SumKernel.cpp`, `cascade_sum`), single-threaded (torch only splits reductions above 32768
/// elements): with at least 8 elements `vectorized_inner_sum` (8-lane vectors, `row_sum` with
/// 4 ILP accumulators and the multi-level cascade of `multi_row_sum`, then the scalar tail and
/// the lanes added one by one), below 8 `scalar_inner_sum` (`row_sum` on scalars). Verified
/// against torch 2.11 on x86-64 (AVX512 machine; the sum kernel uses 8 float lanes).
pub fn torch_sum_f32(v: &[f32]) -> f32 {
    const W: usize = 8; // lanes of Vectorized<float> in the dispatched sum kernel
    let n = v.len();
    if n < W {
        return row_sum::<1>(v, n)[0];
    }
    let vec_size = n / W;
    let lanes = row_sum::<W>(v, vec_size);
    let mut total = 0.0f32;
    for &x in &v[vec_size * W..] {
        total += x;
    }
    for &x in &lanes {
        total += x;
    }
    total
}

/// torch's `row_sum` over `count` consecutive `L`-lane items of `v` (ILP factor 4). The index
/// loops mirror torch's C++ so that the float32 addition order is visibly the same.
#[allow(clippy::needless_range_loop)]
fn row_sum<const L: usize>(v: &[f32], count: usize) -> [f32; L] {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let size_ilp = count / ILP;
    // multi_row_sum: a "row" is ILP consecutive items; acc[level][k][lane].
    let mut acc = [[[0.0f32; L]; ILP]; LEVELS];
    let ceil_log2 = |x: usize| if x <= 1 { 0 } else { (usize::BITS - (x - 1).leading_zeros()) as usize };
    let level_power = 4.max(ceil_log2(size_ilp) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let add_item = |acc: &mut [f32; L], at: usize| {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += v[at * L + l];
        }
    };
    let mut i = 0usize;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for k in 0..ILP {
                add_item(&mut acc[0][k], i * ILP + k);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                for l in 0..L {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0;
                }
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for k in 0..ILP {
            add_item(&mut acc[0][k], i * ILP + k);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            for l in 0..L {
                acc[0][k][l] += acc[j][k][l];
            }
        }
    }
    let mut partial = acc[0];
    for t in size_ilp * ILP..count {
        add_item(&mut partial[0], t);
    }
    for k in 1..ILP {
        for l in 0..L {
            partial[0][l] += partial[k][l];
        }
    }
    partial[0]
}

/// numpy's float32 `add.reduce` of a contiguous 1-D array (`pairwise_sum` in
/// `numpy/core/src/umath/loops_utils.h.src`): below 8 elements a plain loop; up to 128, eight
/// interleaved accumulators combined as `((r0+r1)+(r2+r3)) + ((r4+r5)+(r6+r7))` plus the tail;
/// above, split at `n/2` rounded down to a multiple of 8 and recurse. All in float32.
pub fn numpy_sum_f32(v: &[f32]) -> f32 {
    let n = v.len();
    if n < 8 {
        let mut r = 0.0f32;
        for &x in v {
            r += x;
        }
        r
    } else if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&v[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += v[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum_f32(&v[..n2]) + numpy_sum_f32(&v[n2..])
    }
}

/// `np.nanmean` of a float32 array as numpy 1.26 computes it: NaNs replaced by 0, the float32
/// pairwise sum of all elements ([`numpy_sum_f32`]) divided by the count of non-NaN elements
/// (the quotient rounded to float32); NaN when every element is NaN (or there are none).
pub fn nanmean_f32(v: &[f32]) -> f32 {
    let cleaned: Vec<f32> = v.iter().map(|&x| if x.is_nan() { 0.0 } else { x }).collect();
    let cnt = v.iter().filter(|x| !x.is_nan()).count();
    let tot = numpy_sum_f32(&cleaned);
    (tot as f64 / cnt as f64) as f32
}

/// numpy's `np.round(x, 2)` on float64: `rint(x * 100.0) / 100.0` (half to even).
pub fn np_round2_f64(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// A summary value of `IoUMetric.compute_metrics`: `np.round(np.nanmean(v) * 100, 2)` for a
/// float32 array `v` (`aAcc` is a one-element array). In numpy 1.26 `np.float32 * 100` is a
/// float64, so: float32 `nanmean`, widened, times 100, then [`np_round2_f64`].
pub fn summary_percent(v: &[f32]) -> f64 {
    np_round2_f64(nanmean_f32(v) as f64 * 100.0)
}

/// A per-class table value: `np.round(v * 100, 2)` on a float32 array, all in float32
/// (`(v * 100) * 100`, `rint`, `/ 100`).
pub fn class_percent(v: f32) -> f32 {
    ((v * 100.0f32) * 100.0f32).round_ties_even() / 100.0f32
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

/// numpy's `str()` of a float32 scalar in the range the table holds (shortest round-trip
/// digits, at least one decimal: `50.0`, `33.33`, `nan`).
fn np_str_f32(x: f32) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{x}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// PrettyTable's centring: odd excess goes right for odd-length text, left otherwise.
fn center(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let excess = width.saturating_sub(len);
    let (l, r) = if excess % 2 == 1 {
        if len % 2 == 1 {
            (excess / 2, excess / 2 + 1)
        } else {
            (excess / 2 + 1, excess / 2)
        }
    } else {
        (excess / 2, excess / 2)
    };
    format!("{}{text}{}", " ".repeat(l), " ".repeat(r))
}

/// The per-class table `IoUMetric.compute_metrics` logs (`PrettyTable` with columns `Class`,
/// `IoU`, `Acc`, values `np.round(v * 100, 2)` of the float32 fractions, centred), e.g.
///
/// ```text
/// +-------+-------+-------+
/// | Class |  IoU  |  Acc  |
/// +-------+-------+-------+
/// |  wall | 74.16 | 87.28 |
/// ```
///
/// `class_names` shorter than the class count are completed with the class index.
pub fn per_class_table(class_names: &[&str], iou: &[f32], acc: &[f32]) -> String {
    let n = iou.len().max(acc.len());
    let names: Vec<String> =
        (0..n).map(|i| class_names.get(i).map_or_else(|| i.to_string(), |s| s.to_string())).collect();
    let col = |v: &[f32]| {
        (0..n).map(|i| np_str_f32(class_percent(v.get(i).copied().unwrap_or(f32::NAN)))).collect::<Vec<_>>()
    };
    let columns = [("Class", names), ("IoU", col(iou)), ("Acc", col(acc))];
    let widths: Vec<usize> = columns
        .iter()
        .map(|(h, vals)| vals.iter().map(|v| v.chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let line = |cells: Vec<&str>| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            s.push(' ');
            s.push_str(&center(c, *w));
            s.push_str(" |");
        }
        s
    };
    let mut out = vec![rule.clone(), line(columns.iter().map(|(h, _)| *h).collect()), rule.clone()];
    for i in 0..n {
        out.push(line(columns.iter().map(|(_, v)| v[i].as_str()).collect()));
    }
    out.push(rule);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    #[test]
    fn reduce_zero_label_on_uint8() {
        let l = arr2(&[[0u8, 1, 150], [254, 255, 2]]);
        assert_eq!(reduce_zero_label(l.view()), arr2(&[[255u8, 0, 149], [253, 255, 1]]));
    }

    #[test]
    fn histc_ignores_out_of_range_predictions() {
        let pred = arr2(&[[0i64, 3, -1, 255]]);
        let label = arr2(&[[0u8, 1, 1, 255]]);
        let a = intersect_and_union(pred.view(), label.view(), 3, 255).unwrap();
        assert_eq!(a.intersect, vec![1.0, 0.0, 0.0]);
        assert_eq!(a.pred_label, vec![1.0, 0.0, 0.0]);
        assert_eq!(a.label, vec![1.0, 2.0, 0.0]);
        assert_eq!(a.union, vec![1.0, 2.0, 0.0]);
    }

    #[test]
    fn table_matches_prettytable_layout() {
        let t = per_class_table(
            &["wall", "bed ", "chest of drawers", "a"],
            &[0.5, f32::NAN, 1.0, 0.123456],
            &[0.0, f32::NAN, 0.33333, 0.01],
        );
        let expected = "\
+------------------+-------+-------+
|      Class       |  IoU  |  Acc  |
+------------------+-------+-------+
|       wall       |  50.0 |  0.0  |
|       bed        |  nan  |  nan  |
| chest of drawers | 100.0 | 33.33 |
|        a         | 12.35 |  1.0  |
+------------------+-------+-------+";
        assert_eq!(t, expected);
    }
}
