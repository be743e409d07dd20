//! One image through the test pipeline and a [`Model`]: resize, normalise, slide or whole
//! inference, logits back to the original size, (ms+flip: softmax, flip back, mean), argmax.

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis};

use super::{EvalError, EvalSettings};
use crate::backend::Model;
use crate::data::transforms::{normalize, resize_bilinear_u8};
use crate::metrics::{intersect_and_union, reduce_zero_label, AreaTotals, IGNORE_INDEX};
use crate::reference::ops::{argmax_channels, interpolate_bilinear};

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
        let logits = model.seg_logits(input).map_err(|source| EvalError::Model { path: name.to_string(), source })?;
        Ok(interpolate_bilinear(logits.view(), (h0, w0), settings.align_corners))
    };
    let plan = settings.plan((h0, w0));
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

/// Per-image areas of `IoUMetric` for a prediction and the label map as stored on disk.
pub fn image_areas(pred: &Array2<i64>, label: &Array2<u8>, reduce_zero: bool, num_classes: usize) -> AreaTotals {
    let label = if reduce_zero { reduce_zero_label(label.view()) } else { label.clone() };
    intersect_and_union(pred.view(), label.view(), num_classes, IGNORE_INDEX).expect("shapes checked by the caller")
}
