//! One image through the test pipeline and a [`Model`]: resize, normalise, slide or whole
//! inference, logits back to the original size, (ms+flip: softmax, flip back, mean), argmax.

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis};

use super::{EvalError, EvalSettings};
use crate::backend::Model;
use crate::data::transforms::{normalize, resize_bilinear_u8};
use crate::metrics::{intersect_and_union, reduce_zero_label, AreaTotals, IGNORE_INDEX};
use crate::reference::ops::{argmax_channels, resize};

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
pub(crate) fn softmax_classes(x: &mut Array4<f32>) {
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
    model: &dyn Model,
    img: ArrayView3<u8>,
    name: &str,
) -> Result<Prediction, EvalError> {
    predict_with(settings, model, img, name, &|_, _| {})
}

/// Reports progress inside one image: `(augmentations done, augmentations planned)`.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// [`predict`], calling `progress` after each augmentation (12 with ms+flip, else 1), so a
/// front end can show progress while the library stays UI-free.
pub fn predict_with(
    settings: &EvalSettings,
    model: &dyn Model,
    img: ArrayView3<u8>,
    name: &str,
    progress: Progress<'_>,
) -> Result<Prediction, EvalError> {
    let (h0, w0, _) = img.dim();
    settings.check_size(name, (h0, w0))?;
    let p = &settings.preprocess;
    let run = |x: &Array3<u8>| -> Result<Array4<f32>, EvalError> {
        let input = normalize(x.view(), &p.mean, &p.std, p.flip_channels).insert_axis(Axis(0));
        let logits = model.seg_logits(input).map_err(|err| EvalError::Model { path: name.to_string(), err })?;
        check_finite(&logits, name)?;
        Ok(resize(logits.view(), (h0, w0), settings.align_corners))
    };
    let plan = settings.plan((h0, w0));
    check_memory(settings, &plan, (h0, w0), name)?;
    let mut resized_cache: Vec<((usize, usize), Array3<u8>)> = Vec::new();
    let mut resized_out = Vec::with_capacity(plan.len());
    let mut acc: Option<Array4<f32>> = None;
    for (done, &(size, flipped)) in plan.iter().enumerate() {
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
        progress(done + 1, plan.len());
    }
    let mut seg4 = acc.expect("at least one augmentation");
    if settings.aug.is_some() {
        let n = plan.len() as f32;
        seg4.mapv_inplace(|v| v / n);
    }
    let pred = argmax_channels(seg4.view()).index_axis_move(Axis(0), 0);
    Ok(Prediction { seg: seg4.index_axis_move(Axis(0), 0), pred, resized: resized_out })
}

/// Refuses logits with NaN or infinite values (a broken checkpoint or config), naming the image
/// and the first bad position: they would otherwise become a prediction and metrics.
fn check_finite(logits: &Array4<f32>, name: &str) -> Result<(), EvalError> {
    let (mut nan, mut inf) = (0usize, 0usize);
    let mut first = None;
    for ((_, c, y, x), &v) in logits.indexed_iter() {
        if !v.is_finite() {
            if v.is_nan() {
                nan += 1;
            } else {
                inf += 1;
            }
            first.get_or_insert((c, y, x));
        }
    }
    match first {
        None => Ok(()),
        Some((class, y, x)) => {
            Err(EvalError::NonFinite { path: name.to_string(), nan, inf, total: logits.len(), class, y, x })
        }
    }
}

/// Refuses an image whose planned work (the resized inputs, their logits at the resized size and
/// at the original size) would not fit the memory limit ([`crate::limits`]), before anything is
/// allocated: a small PNG can declare 16000x16000 pixels, a config a Resize scale of 4e9.
fn check_memory(
    settings: &EvalSettings,
    plan: &[((usize, usize), bool)],
    (h0, w0): (usize, usize),
    name: &str,
) -> Result<(), EvalError> {
    let c = settings.num_classes as f64;
    let orig = (h0 as f64) * (w0 as f64);
    let mut worst = 0.0f64;
    let mut worst_size = (h0, w0);
    for &((h, w), _) in plan {
        let px = (h as f64) * (w as f64);
        // uint8 image + float32 input + slide accumulators (logits and counts) at this size.
        let need = 3.0 * px + 12.0 * px + 4.0 * (c + 1.0) * px;
        if need > worst {
            worst = need;
            worst_size = (h, w);
        }
    }
    // Logits at the original size (and the ms+flip sum), plus the argmax.
    let total = worst + 4.0 * c * orig * if settings.aug.is_some() { 2.0 } else { 1.0 } + 8.0 * orig;
    crate::limits::check_memory(
        &format!(
            "the {h0}x{w0} image resized to {}x{} (test pipeline Resize {:?}) with {} classes",
            worst_size.0, worst_size.1, settings.pipeline.resize, settings.num_classes
        ),
        total,
    )
    .map_err(|msg| EvalError::TooLarge { path: name.to_string(), msg })
}

/// Per-image areas of `IoUMetric` for a prediction and the label map as stored on disk.
pub fn image_areas(pred: &Array2<i64>, label: &Array2<u8>, reduce_zero: bool, num_classes: usize) -> AreaTotals {
    let label = if reduce_zero { reduce_zero_label(label.view()) } else { label.clone() };
    intersect_and_union(pred.view(), label.view(), num_classes, IGNORE_INDEX).expect("shapes checked by the caller")
}
