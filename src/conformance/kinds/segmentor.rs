//! The `segmentor` kind: a model config, weights and an input batch; every named module
//! output, `seg_logits` and `pred` are compared.

use super::{
    compare_candidate, compare_case_outputs, expected_shapes, outputs_to_arrays, read_expected, tolerance_for,
    KindOutcome,
};
use crate::config::SegmentorConfig;
use crate::conformance::case::{Case, Dtype};
use crate::conformance::{Producer, RunError, Target, VerifyOptions};
use crate::weights::{load_state_dict, non_finite_summary};

/// The case's model config.
pub fn model_config(case: &Case) -> Result<SegmentorConfig, RunError> {
    let v = case.manifest.get("model").ok_or_else(|| RunError::manifest(case, "`model` is missing"))?;
    SegmentorConfig::from_value(v).map_err(|e| RunError::manifest(case, e))
}

/// The case's weights as an MMSegmentation state dict: the `.npz` in mmseg names, or any
/// checkpoint in another dialect (`weights_dialect`, or detected), converted with rel-pos
/// tables resized to the configured window.
pub fn case_weights(case: &Case, model: &SegmentorConfig) -> Result<crate::weights::StateDict, RunError> {
    let path = case.file_field("weights")?;
    let dialect = match case.manifest.get("weights_dialect").and_then(|v| v.as_str()) {
        Some(n) => Some(
            crate::checkpoint::Dialect::from_name(n)
                .ok_or_else(|| RunError::manifest(case, format!("unknown weights_dialect `{n}`")))?,
        ),
        None => None,
    };
    Ok(load_state_dict(&path, model, dialect)?)
}

/// Runs a `segmentor` case: our backend on its weights and input, or the candidate's tensors.
pub fn run(case: &Case, target: &Target<'_>, opts: &VerifyOptions, run_dtype: Dtype) -> Result<KindOutcome, RunError> {
    let model = model_config(case)?;
    let expected = read_expected(case)?;
    let tol_for = |name: &str| tolerance_for(case, opts.as_f32, name);
    match target.producer() {
        Producer::Backend(backend) => {
            let weights = case_weights(case, &model)?;
            let input_path = case.input_file("inputs")?;
            let inputs = crate::array::read_npy(&input_path)?;
            if let Some(s) = non_finite_summary(&inputs) {
                return Err(RunError::manifest(
                    case,
                    format!("{}: the input is not finite: {s}", input_path.display()),
                ));
            }
            let m = backend.load(&model, weights, run_dtype)?;
            let wanted: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
            let produced = m.run(&inputs, &wanted)?;
            let tensors = compare_case_outputs(case, &expected, &produced, tol_for);
            let saved = opts.save_outputs.as_ref().map(|_| outputs_to_arrays(&produced));
            Ok(KindOutcome { tensors, produced: saved, ..Default::default() })
        }
        Producer::Candidate(candidate) => {
            let cand = candidate.read(case, &expected_shapes(&expected))?;
            let tensors = compare_candidate(case, &expected, &cand, opts.as_f32, tol_for);
            let mut notes = vec![format!("candidate: {}", cand.location.display())];
            if opts.as_f32 && case.dtype == Dtype::F64 {
                notes.push("float64 case compared at the fp32 tolerance (--as-f32)".into());
            }
            Ok(KindOutcome { tensors, unused: cand.unused, notes, ..Default::default() })
        }
    }
}
