//! `beit-seg merge`: the results files of the shards of one run → the totals and metrics one
//! uninterrupted run gives.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::results::{
    comparable_run, identity_mismatch, read_results, skipped_and_evaluated, sum_records, ImageRecord, ResultsHeader,
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
    check_merge_paths(files, out, force, &inputs)?;
    let (header, records) = read_shards(files, first)?;
    check_every_image_once(&records, header.num_images, first)?;
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
    write_merged(out, force, &inputs, &json)?;
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

/// `out` may be written (not an input, not a device or FIFO, existing only with `force`) and
/// no results file is given twice.
fn check_merge_paths(files: &[PathBuf], out: &Path, force: bool, inputs: &[&Path]) -> Result<(), EvalError> {
    crate::files::check_output(out, force, inputs)
        .map_err(|e| EvalError::Results { path: out.to_path_buf(), msg: e.to_string() })?;
    for (i, f) in files.iter().enumerate() {
        if let Some(g) = files[..i].iter().find(|g| crate::files::same_file(f, g)) {
            return Err(EvalError::Results {
                path: f.clone(),
                msg: format!("is given twice (also as {})", g.display()),
            });
        }
    }
    Ok(())
}

/// Reads every shard's results file (unlocked and complete), checking that each is of the same
/// run as `first`: the first header and all the records, in file order.
fn read_shards(files: &[PathBuf], first: &Path) -> Result<(ResultsHeader, Vec<ImageRecord>), EvalError> {
    let mut header0: Option<ResultsHeader> = None;
    let mut records = Vec::new();
    for f in files {
        let (h, recs) = read_finished_shard(f)?;
        match &header0 {
            None => header0 = Some(h),
            Some(h0) => check_same_run(h0, first, &h, f)?,
        }
        records.extend(recs);
    }
    let header = header0.expect("at least one file");
    Ok((header, records))
}

/// One results file that no `eval` is still writing (its lock) and whose last line is whole.
fn read_finished_shard(f: &Path) -> Result<(ResultsHeader, Vec<ImageRecord>), EvalError> {
    let lock = crate::files::open_regular(f).map_err(io_err(f))?;
    if !crate::files::try_lock(&lock, false).map_err(io_err(f))? {
        return Err(EvalError::Results {
            path: f.to_path_buf(),
            msg: "an eval is still writing this file (it is locked); merge it when that run has finished".into(),
        });
    }
    let (h, recs, torn) = read_results(f)?;
    if torn.is_some() {
        return Err(EvalError::Results {
            path: f.to_path_buf(),
            msg: "the last line is incomplete: this run was interrupted; resume it first".into(),
        });
    }
    Ok((h, recs))
}

/// Refuses shard `f` (header `h`) when it is not of the same run as `first` (header `h0`): other
/// content identities, settings, model, data or limit.
fn check_same_run(h0: &ResultsHeader, first: &Path, h: &ResultsHeader, f: &Path) -> Result<(), EvalError> {
    if let Some(why) = identity_mismatch(h0, &first.display().to_string(), h, &f.display().to_string()) {
        return Err(EvalError::Results { path: f.to_path_buf(), msg: format!("not from the same run: {why}") });
    }
    let same = comparable_run(&h0.run) == comparable_run(&h.run)
        && h0.num_images == h.num_images
        && h0.num_classes == h.num_classes;
    if !same {
        return Err(EvalError::Results {
            path: f.to_path_buf(),
            msg: format!("not from the same run as {} (different settings, model, data or limit)", first.display()),
        });
    }
    Ok(())
}

/// Every image of the run (`0..num_images`) is recorded exactly once over the files.
fn check_every_image_once(records: &[ImageRecord], num_images: usize, first: &Path) -> Result<(), EvalError> {
    let mut seen = vec![0usize; num_images];
    for r in records {
        match seen.get_mut(r.index) {
            Some(c) => *c += 1,
            None => {
                return Err(EvalError::Results {
                    path: first.to_path_buf(),
                    msg: format!("image index {} is outside the run ({} images)", r.index, num_images),
                })
            }
        }
    }
    let dup: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c > 1).map(|(i, _)| i).collect();
    if !dup.is_empty() {
        return Err(EvalError::Results {
            path: first.to_path_buf(),
            msg: format!("images recorded more than once over the files: indices {:?}", &dup[..dup.len().min(10)]),
        });
    }
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c == 0).map(|(i, _)| i).collect();
    if !missing.is_empty() {
        return Err(EvalError::Results {
            path: first.to_path_buf(),
            msg: format!(
                "{} of {} images are not recorded in the given files (a shard is missing or unfinished), e.g. indices {:?}",
                missing.len(),
                num_images,
                &missing[..missing.len().min(10)]
            ),
        });
    }
    Ok(())
}

/// Writes the merged result JSON to `out` (its folder created), atomically.
fn write_merged(out: &Path, force: bool, inputs: &[&Path], json: &Value) -> Result<(), EvalError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    crate::files::write_output_bytes(
        out,
        force,
        inputs,
        serde_json::to_string_pretty(json).expect("serializable").as_bytes(),
    )
    .map_err(|e| EvalError::Results { path: out.to_path_buf(), msg: e.to_string() })
}
