//! The `resize` fixture kind (see docs/fixture-format.md): every output `img.<k>` must equal
//! [`resize_bilinear_u8`] of input `img.<k>` at `sizes["img.<k>"]` exactly (uint8; 2-D inputs
//! are one-channel images). With a candidate, its `img.<k>` tensors are compared exactly.

use ndarray::{ArrayD, Dimension, Ix2, Ix3};
use serde_json::Value;

use super::{expected_shapes, input_files, manifest_err, read_expected, KindOutcome};
use crate::array::{read_npy, AnyArray};
use crate::conformance::case::{Case, Tolerance};
use crate::conformance::compare::{compare_floats, TensorResult};
use crate::conformance::{RunError, Target};
use crate::data::transforms::resize_bilinear_u8;

const EXACT: Tolerance = Tolerance { rtol: 0.0, atol: 0.0 };

fn as_hwc_u8(a: AnyArray, what: &str) -> Result<ndarray::Array3<u8>, RunError> {
    match a {
        AnyArray::U8(x) => match x.ndim() {
            2 => Ok(x.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?.insert_axis(ndarray::Axis(2))),
            3 => Ok(x.into_dimensionality::<Ix3>().map_err(|e| e.to_string())?),
            n => Err(format!("{what}: expected an H×W×C (or H×W) uint8 image, got {n} dimensions").into()),
        },
        other => Err(format!("{what}: expected uint8, got {} {:?}", other.dtype_name(), other.shape()).into()),
    }
}

/// Runs a `resize` case: OpenCV's INTER_LINEAR from our library, or the candidate's tensors.
pub fn run_resize(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    if let Some(candidate) = target.candidate() {
        let expected = read_expected(case)?;
        let cand = candidate.read(case, &expected_shapes(&expected))?;
        let tensors = expected
            .iter()
            .map(|(name, e)| match cand.tensors.get(name) {
                None => TensorResult::not_covered(name, e.shape(), EXACT),
                Some((a, _)) => compare_floats(name, &a.to_f64(), &e.to_f64(), EXACT),
            })
            .collect();
        return Ok(KindOutcome { tensors, unused: cand.unused, ..Default::default() });
    }
    Ok(KindOutcome { tensors: resize_ours(case)?, ..Default::default() })
}

fn resize_ours(case: &Case) -> Result<Vec<TensorResult>, RunError> {
    let inputs = input_files(case)?;
    let sizes = case
        .manifest
        .get("sizes")
        .and_then(Value::as_object)
        .ok_or_else(|| manifest_err(case, "`sizes` must be an object {input: [h, w]}"))?;
    let mut results = Vec::with_capacity(case.outputs.len());
    for (name, out_file) in &case.outputs {
        let (_, in_file) = inputs
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| manifest_err(case, format!("output `{name}` has no input of the same name")))?;
        let size = sizes
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| match a.as_slice() {
                [h, w] => Some((h.as_u64()? as usize, w.as_u64()? as usize)),
                _ => None,
            })
            .filter(|&(h, w)| h > 0 && w > 0)
            .ok_or_else(|| manifest_err(case, format!("`sizes.{name}` must be [h, w] with positive integers")))?;
        let raw = read_npy(in_file)?;
        let two_d = raw.shape().len() == 2;
        let img = as_hwc_u8(raw, &format!("{} ({name})", in_file.display()))?;
        let expected = case.read_output(out_file)?;
        let exp_shape = expected.shape().to_vec();
        let exp = match expected {
            AnyArray::U8(x) => x,
            other => {
                return Err(format!(
                    "{}: expected a uint8 image, got {}",
                    case.dir.join(out_file).display(),
                    other.dtype_name()
                )
                .into())
            }
        };
        let out = resize_bilinear_u8(img.view(), size);
        let out: ArrayD<u8> = if two_d { out.index_axis_move(ndarray::Axis(2), 0).into_dyn() } else { out.into_dyn() };
        results.push(compare_exact_u8(name, &out, &exp, &exp_shape, img.dim(), size));
    }
    Ok(results)
}

/// Exact comparison of two uint8 images: the count of differing values and the first one.
fn compare_exact_u8(
    name: &str,
    actual: &ArrayD<u8>,
    expected: &ArrayD<u8>,
    exp_shape: &[usize],
    src: (usize, usize, usize),
    size: (usize, usize),
) -> TensorResult {
    let mut r = compare_floats(name, &actual.mapv(f64::from), &expected.mapv(f64::from), EXACT);
    let what = format!("resize {}x{}x{} -> {}x{}", src.0, src.1, src.2, size.0, size.1);
    if actual.shape() != exp_shape {
        r.note = Some(format!("{what}: {}", r.note.unwrap_or_default()));
        return r;
    }
    let first = actual.indexed_iter().find(|(i, a)| expected[i] != **a);
    r.note = Some(match first {
        None => format!("{what}: all {} values equal", r.numel),
        Some((idx, a)) => format!(
            "{what}: {} of {} values differ; first at {:?}: got {a}, expected {}",
            r.violations,
            r.numel,
            idx.slice(),
            expected[&idx]
        ),
    });
    r
}
