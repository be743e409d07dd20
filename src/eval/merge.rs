//! `beit-seg merge`: the results files of the shards of one run → the totals and metrics one
//! uninterrupted run gives.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::results::{
    comparable_run, identity_mismatch, read_results, skipped_and_evaluated, sum_records, ResultsHeader,
};
use super::run::{as_written, format_report, result_json, Outcome};
use super::{io_err, EvalError};
use crate::metrics::class_names_or_default;
use crate::metrics::compute_metrics;

/// Combines the results files of the shards of one run into the totals and metrics one
/// uninterrupted run gives (bit-identical: per-image areas are summed in image order). Every
/// image of the run must be recorded exactly once over the files. Writes the result JSON to
/// `out`.
pub fn merge(files: &[PathBuf], out: &Path, class_names_opt: Option<Vec<String>>) -> Result<Outcome, EvalError> {
    merge_with(files, out, class_names_opt, false)
}

/// [`merge`]; `force` replaces an existing `out` (a regular file only; never one of `files`).
/// Every check is made before anything is written: `out` is not one of the inputs, not a
/// device or FIFO, and exists only with `force`; no results file is still being written by an
/// `eval` (its lock); every file is of the same run (content identities, named on mismatch).
pub fn merge_with(
    files: &[PathBuf],
    out: &Path,
    class_names_opt: Option<Vec<String>>,
    force: bool,
) -> Result<Outcome, EvalError> {
    let first = files.first().ok_or_else(|| EvalError::Config("merge: no results files given".into()))?;
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    crate::fsutil::check_output(out, force, &inputs)
        .map_err(|e| EvalError::Results { path: out.to_path_buf(), msg: e.to_string() })?;
    for (i, f) in files.iter().enumerate() {
        if let Some(g) = files[..i].iter().find(|g| crate::fsutil::same_file(f, g)) {
            return Err(EvalError::Results {
                path: f.clone(),
                msg: format!("is given twice (also as {})", g.display()),
            });
        }
    }
    let mut header0: Option<ResultsHeader> = None;
    let mut records = Vec::new();
    for f in files {
        let lock = crate::fsutil::open_regular(f).map_err(io_err(f))?;
        if !crate::fsutil::try_lock(&lock, false).map_err(io_err(f))? {
            return Err(EvalError::Results {
                path: f.clone(),
                msg: "an eval is still writing this file (it is locked); merge it when that run has finished".into(),
            });
        }
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
                if let Some(why) = identity_mismatch(h0, &first.display().to_string(), &h, &f.display().to_string()) {
                    return Err(EvalError::Results { path: f.clone(), msg: format!("not from the same run: {why}") });
                }
                let same = comparable_run(&h0.run) == comparable_run(&h.run)
                    && h0.num_images == h.num_images
                    && h0.num_classes == h.num_classes;
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
    let (skipped, evaluated) = skipped_and_evaluated(&records);
    let recorded: Option<Vec<String>> = header
        .run
        .get("classes")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
    let names = class_names_or_default(class_names_opt.as_deref().or(recorded.as_deref()), header.num_classes);
    let merged_header = ResultsHeader { shard: None, ..header.clone() };
    let json = as_written(result_json(&metrics, &merged_header, evaluated, &skipped, &names, None));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    crate::fsutil::write_output_bytes(
        out,
        force,
        &inputs,
        serde_json::to_string_pretty(&json).expect("serializable").as_bytes(),
    )
    .map_err(|e| EvalError::Results { path: out.to_path_buf(), msg: e.to_string() })?;
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
