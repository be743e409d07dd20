//! Runner of the `pipeline` fixture kind (docs/fixture-format.md): a small dataset in ADE20K
//! layout goes through the whole evaluation of [`crate::eval`] — decode, the case's
//! `test_pipeline` (`LoadImageFromFile`, `Resize`, `LoadAnnotations`, `PackSegInputs`; any
//! other transform is refused by name), the `data_preprocessor`, the model on the given
//! [`Backend`](crate::backend::Backend) (slide or whole, per `test_cfg`), the resize back to the original size, the
//! argmax and `IoUMetric` — optionally with the MMSegmentation 0.x ms+flip augmentation of
//! `dataset.aug`.
//!
//! Outputs compared (per image stem):
//! * `resized_input.<stem>` (3×H×W uint8 BGR after the test transforms): exactly;
//!   with `aug`, `resized_input.<stem>.<k>` for (unflipped) augmentation `k`;
//! * `seg_logits.<stem>` (classes×H0×W0; with `aug`, the mean softmax probabilities): with the
//!   case's float tolerance;
//! * `pred.<stem>` (H0×W0 int64): exactly, except near-ties of `seg_logits.<stem>`;
//! * `metrics`: by the format's rule, allowing what the counted near-tie flips imply.
//!
//! JPEG images are decoded bit-identically to OpenCV (`crate::data::image`), so a ±1 level
//! difference can only come from the implementation under test.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::segmentor::case_weights;
use super::{compare_candidate, compare_case_outputs, expected_shapes, manifest_err, read_expected, KindOutcome};
use crate::backend::OutTensor;
use crate::config::SegmentorConfig;
use crate::conformance::case::{Case, Dtype, Tolerance};
use crate::conformance::compare::TensorResult;
use crate::conformance::metrics_cmp::{compare_metrics, metrics_json};
use crate::conformance::{Producer, RunError, Target, VerifyOptions};
use crate::data::ade20k::{self, DatasetSpec};
use crate::data::image;
use crate::eval::{image_areas, predict, DatasetSection, EvalError, EvalSettings, MsFlip, TestPipeline};
use crate::metrics::{compute_metrics, AreaTotals};

const EXACT: Tolerance = Tolerance { rtol: 0.0, atol: 0.0 };

/// Runs a `pipeline` case on `target`.
pub fn run(case: &Case, target: &Target<'_>, opts: &VerifyOptions) -> Result<KindOutcome, RunError> {
    let _ = opts;
    run_pipeline(case, target)
}

/// The `dataset` object of a pipeline case: layout, test pipeline and optional `aug`, parsed by
/// [`DatasetSection::from_value`] (the parser `eval --config` uses), with the ADE20K layout as
/// the default and a required `test_pipeline`.
pub fn dataset_from_case(case: &Case) -> Result<(DatasetSpec, TestPipeline, Option<MsFlip>), RunError> {
    let ds = case
        .manifest
        .get("dataset")
        .filter(|ds| ds.is_object())
        .ok_or_else(|| manifest_err(case, "`dataset` (an object) is missing"))?;
    let section = DatasetSection::from_value(ds).map_err(|e| manifest_err(case, e))?;
    let data_root = section.data_root.as_deref().unwrap_or(".");
    let root = crate::conformance::case::inside_case(data_root)
        .map_err(|m| manifest_err(case, format!("`dataset.data_root`: {m}")))?;
    let or = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_string());
    let spec = DatasetSpec {
        root: case.dir.join(root),
        img_dir: or(section.img_dir, "images/validation"),
        ann_dir: or(section.ann_dir, "annotations/validation"),
        img_suffix: or(section.img_suffix, ".jpg"),
        seg_map_suffix: or(section.seg_map_suffix, ".png"),
    };
    let pipeline = section.test_pipeline.ok_or_else(|| manifest_err(case, "`dataset.test_pipeline` is missing"))?;
    Ok((spec, pipeline, section.aug))
}

fn run_pipeline(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    if case.dtype != Dtype::F32 {
        return Err(manifest_err(
            case,
            "pipeline cases run in float32 (the images are uint8 and MMSegmentation's test runs in fp32)",
        ));
    }
    let model_v = case.manifest.get("model").ok_or_else(|| manifest_err(case, "`model` is missing"))?;
    let model = SegmentorConfig::from_value(model_v).map_err(|e| manifest_err(case, e))?;
    let (spec, pipeline, aug) = dataset_from_case(case)?;
    let settings = EvalSettings::new(&model, model_v, pipeline, aug).map_err(|e| manifest_err(case, e))?;
    let expected = read_expected(case)?;
    let tol_for = |name: &str| if name.starts_with("resized_input.") { EXACT } else { case.tolerance_for(name) };
    let backend = match target.producer() {
        Producer::Backend(b) => b,
        Producer::Candidate(candidate) => {
            let cand = candidate.read(case, &expected_shapes(&expected))?;
            let mut tensors = compare_candidate(case, &expected, &cand, false, tol_for);
            let actual = cand.metrics.clone().unwrap_or_else(|| Value::Object(Default::default()));
            tensors.extend(judge_metrics(case, &actual, &tensors)?);
            return Ok(KindOutcome { tensors, unused: cand.unused, ..Default::default() });
        }
    };
    let weights = case_weights(case, &model)?;
    let listing = ade20k::list(&spec, false)?;
    let model_run = backend.load(&model, weights, Dtype::F32)?;

    let mut produced: BTreeMap<String, OutTensor> = BTreeMap::new();
    let mut totals = AreaTotals::zeros(settings.num_classes);
    for s in &listing.samples {
        let bytes = std::fs::read(&s.img_path).map_err(|e| format!("{}: {e}", s.img_path.display()))?;
        let img = image::decode_bgr(&bytes, &s.img_path)?;
        let label = image::read_label(&s.ann_path)?;
        let (h, w, _) = img.dim();
        let (lh, lw) = label.dim();
        if (lh, lw) != (h, w) {
            return Err(EvalError::LabelShape { img: s.img_path.clone(), ann: s.ann_path.clone(), h, w, lh, lw }.into());
        }
        let p = predict(&settings, model_run.as_ref(), img.view(), &s.img_path.display().to_string())?;
        totals.add(&image_areas(&p.pred, &label, settings.pipeline.reduce_zero_label, settings.num_classes))?;
        let chw = |r: &ndarray::Array3<u8>| r.view().permuted_axes([2, 0, 1]).mapv(|v| v as f64).into_dyn();
        if settings.aug.is_none() {
            produced.insert(format!("resized_input.{}", s.stem), OutTensor::Float(chw(&p.resized[0])));
        } else {
            for (k, (r, (_, flipped))) in p.resized.iter().zip(settings.plan((h, w))).enumerate() {
                if !flipped {
                    produced.insert(format!("resized_input.{}.{k}", s.stem), OutTensor::Float(chw(r)));
                }
            }
        }
        produced.insert(format!("seg_logits.{}", s.stem), OutTensor::Float(p.seg.mapv(|v| v as f64).into_dyn()));
        produced.insert(format!("pred.{}", s.stem), OutTensor::Label(p.pred.into_dyn()));
    }
    // Every expected per-image output must name an image of the dataset.
    let stems: BTreeSet<&str> = listing.samples.iter().map(|s| s.stem.as_str()).collect();
    for (name, _) in &expected {
        let stem = name.split_once('.').map(|(_, rest)| rest).unwrap_or("");
        let known = stems.contains(stem)
            || stem.rsplit_once('.').is_some_and(|(st, k)| stems.contains(st) && k.parse::<usize>().is_ok());
        if !known {
            return Err(manifest_err(
                case,
                format!("output `{name}` does not name an image of the dataset ({} images)", stems.len()),
            ));
        }
    }

    let mut results = compare_case_outputs(case, &expected, &produced, tol_for);
    let actual = metrics_json(&compute_metrics(&totals));
    results.extend(judge_metrics(case, &actual, &results)?);
    Ok(KindOutcome { tensors: results, ..Default::default() })
}

/// The metric rows of a pipeline case: against `metrics` by the fixture rule (widened by the
/// allowed near-tie flips of `tensors`), or for a half-precision twin against `truth_metrics`
/// by the budget rule.
fn judge_metrics(case: &Case, actual: &Value, tensors: &[TensorResult]) -> Result<Vec<TensorResult>, RunError> {
    let flips: usize = tensors.iter().filter(|r| r.name.starts_with("pred.")).filter_map(|r| r.flips).sum();
    if let Some(twin) = &case.half {
        let truth = case.manifest.get("truth_metrics");
        return match (truth, twin.budget.get("metrics")) {
            (Some(t), Some(b)) => Ok(crate::conformance::budget::compare_metrics(actual, t, b, flips)),
            (None, None) => Ok(vec![]),
            _ => Err(manifest_err(
                case,
                "a half-precision pipeline twin needs both `truth_metrics` and `budget.metrics`",
            )),
        };
    }
    let Some(m) = case.manifest.get("metrics") else { return Ok(vec![]) };
    compare_metrics(actual, m, flips).map_err(|e| manifest_err(case, e))
}
