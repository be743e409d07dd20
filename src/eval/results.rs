//! The results file of an evaluation (`results.jsonl`): a header line identifying the run, then
//! one JSON line per image with its float32 areas (or why it was skipped). Appended and flushed
//! per image, so a killed run resumes; totals are re-summed in image order.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{io_err, EvalError};
use crate::data::ade20k::Shard;
use crate::metrics::AreaTotals;

// ------------------------------------------------------------------------------ results file

/// One line of a results file: an evaluated image (its per-image float32 areas) or a skipped one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub index: usize,
    pub stem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intersect: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub union: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_label: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl ImageRecord {
    fn areas(&self) -> Option<AreaTotals> {
        Some(AreaTotals {
            intersect: self.intersect.clone()?,
            union: self.union.clone()?,
            pred_label: self.pred_label.clone()?,
            label: self.label.clone()?,
        })
    }
}

/// The first line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsHeader {
    /// Always 2 (the version of this file format; 1 identified the checkpoint by name and size).
    pub beit_seg_results: u32,
    /// Everything that determines the numbers; a resumed run must match it exactly, and shard
    /// files must match each other except for `shard`.
    pub run: Value,
    /// Content identities (SHA-256, hex) of what determines the numbers, compared first on
    /// resume and merge so that a mismatch is named: `checkpoint` (the weights' tensors,
    /// [`crate::weights::content_sha256`]), `config` (the model config), `data` (the image and
    /// annotation listing with file sizes), `pipeline` (test pipeline, preprocessing,
    /// augmentation, classes), `options` (limit, skip-bad, backend, JPEG decoder).
    #[serde(default)]
    pub ids: std::collections::BTreeMap<String, String>,
    /// Images of the whole run (after `--limit`, before sharding).
    pub num_images: usize,
    pub num_classes: usize,
    pub shard: Option<Shard>,
}

pub(super) const RESULTS_VERSION: u32 = 2;

/// Memory `merge` needs per image of a run (which files record it, the missing ones) and per
/// class (totals, metrics, names, the result JSON and table), generously: a header's run size is
/// checked against the memory limit with these before anything is allocated for it.
const RUN_BYTES_PER_IMAGE: f64 = 16.0;
const RUN_BYTES_PER_CLASS: f64 = 1024.0;

/// The identities of [`ResultsHeader::ids`], in the order they are compared, with their names.
const IDS: [(&str, &str); 5] = [
    ("checkpoint", "checkpoint (weights)"),
    ("config", "model config"),
    ("data", "data (image and annotation listing)"),
    ("pipeline", "test pipeline / preprocessing / classes"),
    ("options", "run options (limit, skip-bad, backend, JPEG decoder)"),
];

fn describe_id(h: &ResultsHeader, key: &str) -> String {
    let v = h.ids.get(key).map(String::as_str).unwrap_or("(none)");
    let name = match key {
        "checkpoint" => h.run.pointer("/identity/checkpoint/name").and_then(Value::as_str).map(|n| format!(" ({n})")),
        _ => None,
    };
    format!("sha256 {v}{}", name.unwrap_or_default())
}

/// Why two results headers are not of the same run, naming both identities (`a_name` /
/// `b_name` say whose each is); `None` when every identity matches. The shard is not compared.
pub fn identity_mismatch(a: &ResultsHeader, a_name: &str, b: &ResultsHeader, b_name: &str) -> Option<String> {
    for (key, what) in IDS {
        if a.ids.get(key) != b.ids.get(key) {
            return Some(format!(
                "a different {what}: {a_name} has {}, {b_name} has {}",
                describe_id(a, key),
                describe_id(b, key)
            ));
        }
    }
    if a.num_images != b.num_images || a.num_classes != b.num_classes {
        return Some(format!(
            "a different run size: {a_name} has {} images and {} classes, {b_name} has {} and {}",
            a.num_images, a.num_classes, b.num_images, b.num_classes
        ));
    }
    None
}

/// The part of a header's `run` that must match exactly between a results file and a resumed
/// run, or between shards: all of it but the checkpoint's file name (the checkpoint is
/// identified by content, [`ResultsHeader::ids`]).
pub fn comparable_run(run: &Value) -> Value {
    let mut v = run.clone();
    if let Some(c) = v.pointer_mut("/identity/checkpoint").and_then(Value::as_object_mut) {
        c.remove("name");
    }
    v
}

/// Checks one image record against the run (see docs/evaluation.md, "Results file"): areas are
/// finite, non-negative integers, one per class; `intersect <= union`, `intersect <= pred_label`,
/// `intersect <= label`, `max(pred_label, label) <= union <= pred_label + label`; the predicted
/// and labelled areas sum to at most the image's pixels when its shape is recorded. The message
/// names the field and the values.
pub fn validate_record(r: &ImageRecord, num_classes: usize, num_images: usize) -> Result<(), String> {
    if r.index >= num_images {
        return Err(format!("`index` {} is outside the run ({num_images} images)", r.index));
    }
    if r.skipped.is_some() {
        return Ok(());
    }
    let fields = [("intersect", &r.intersect), ("union", &r.union), ("pred_label", &r.pred_label), ("label", &r.label)];
    let mut v: Vec<&Vec<f32>> = Vec::with_capacity(4);
    for (name, f) in fields {
        let f =
            f.as_ref().ok_or_else(|| format!("`{name}` is missing (an evaluated image has all four area vectors)"))?;
        if f.len() != num_classes {
            return Err(format!("`{name}` has {} values, the run has {num_classes} classes", f.len()));
        }
        for (c, &x) in f.iter().enumerate() {
            if !(x.is_finite() && x >= 0.0 && x.fract() == 0.0) {
                return Err(format!("`{name}[{c}]` = {x} is not a non-negative whole number of pixels"));
            }
        }
        v.push(f);
    }
    let (i, u, p, l) = (v[0], v[1], v[2], v[3]);
    for c in 0..num_classes {
        let bad = |what: &str| {
            Err(format!("class {c}: {what} (intersect {}, union {}, pred_label {}, label {})", i[c], u[c], p[c], l[c]))
        };
        if i[c] > u[c] {
            return bad("`intersect` is larger than `union`");
        }
        if i[c] > p[c] {
            return bad("`intersect` is larger than `pred_label`");
        }
        if i[c] > l[c] {
            return bad("`intersect` is larger than `label`");
        }
        if u[c] < p[c].max(l[c]) || u[c] as f64 > p[c] as f64 + l[c] as f64 {
            return bad("`union` is not between max(pred_label, label) and pred_label + label");
        }
    }
    if let Some([h, w]) = r.shape {
        let px = h as f64 * w as f64;
        for (name, f) in [("pred_label", p), ("label", l)] {
            let sum: f64 = f.iter().map(|&x| x as f64).sum();
            if sum > px {
                return Err(format!("`{name}` sums to {sum} pixels, more than the {h}x{w} image has"));
            }
        }
    }
    Ok(())
}

/// Reads a results file: the header and the complete records, each checked by
/// [`validate_record`] (an error names the file, line and field). A torn last line (a killed
/// run) is dropped and reported as the byte length of the good prefix (`Some(len)`). Only a
/// regular file is read ([`crate::files::read_regular`]).
pub fn read_results(path: &Path) -> Result<(ResultsHeader, Vec<ImageRecord>, Option<u64>), EvalError> {
    let bad = |msg: String| EvalError::Results { path: path.to_path_buf(), msg };
    let text = crate::files::read_regular(path, crate::limits::memory_limit()).map_err(io_err(path))?;
    let mut good_len = 0usize;
    let mut header: Option<ResultsHeader> = None;
    let mut records = Vec::new();
    let mut torn = false;
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < text.len() {
        line_no += 1;
        let end = text[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i);
        let (line, next, complete) = match end {
            Some(e) => (&text[pos..e], e + 1, true),
            None => (&text[pos..], text.len(), false),
        };
        let parsed: Result<Value, _> = serde_json::from_slice(line);
        match parsed {
            Ok(v) if complete => {
                if header.is_none() {
                    let version = v.get("beit_seg_results").and_then(Value::as_u64);
                    if version == Some(1) {
                        return Err(bad(
                            "results format version 1 (an older beit-seg, which identified the checkpoint only by \
                             file name and size) is not supported; rerun the evaluation into a new --out"
                                .into(),
                        ));
                    }
                    let h: ResultsHeader = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line 1 is not a beit-seg results header: {e}")))?;
                    if h.beit_seg_results != RESULTS_VERSION {
                        return Err(bad(format!(
                            "results format version {} is not supported (expected {RESULTS_VERSION})",
                            h.beit_seg_results
                        )));
                    }
                    // `merge` allocates per image of the run and per class (coverage, totals,
                    // metrics, the JSON): a header claiming 1e18 images aborted it.
                    crate::limits::check_memory(
                        &format!("line 1: a run of {} images and {} classes", h.num_images, h.num_classes),
                        h.num_images as f64 * RUN_BYTES_PER_IMAGE + h.num_classes as f64 * RUN_BYTES_PER_CLASS,
                    )
                    .map_err(bad)?;
                    header = Some(h);
                } else {
                    let r: ImageRecord = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line {line_no}: not an image record: {e}")))?;
                    if let Some(h) = &header {
                        validate_record(&r, h.num_classes, h.num_images)
                            .map_err(|m| bad(format!("line {line_no} (image {} `{}`): {m}", r.index, r.stem)))?;
                    }
                    records.push(r);
                }
                good_len = next;
            }
            _ if !complete || next == text.len() => {
                // The last line, unterminated or unparsable: a write cut off by a kill.
                torn = true;
                break;
            }
            Ok(_) => unreachable!(),
            Err(e) => {
                return Err(bad(format!("line {line_no}: invalid JSON ({e}); only the last line may be incomplete")))
            }
        }
        pos = next;
    }
    let header = header.ok_or_else(|| bad("no header line (empty or torn file)".into()))?;
    Ok((header, records, torn.then_some(good_len as u64)))
}

/// Sums per-image records in image-index order (float32, as `IoUMetric` sums its results).
/// Errors on duplicate indices.
pub fn sum_records(records: &[ImageRecord], num_classes: usize) -> Result<AreaTotals, String> {
    let mut sorted: Vec<&ImageRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    for w in sorted.windows(2) {
        if w[0].index == w[1].index {
            return Err(format!("image index {} ({}) is recorded twice", w[0].index, w[0].stem));
        }
    }
    let mut t = AreaTotals::zeros(num_classes);
    for r in sorted {
        if r.skipped.is_some() {
            continue;
        }
        let a = r.areas().ok_or_else(|| format!("image {} ({}): record has no areas", r.index, r.stem))?;
        t.add(&a).map_err(|e| format!("image {} ({}): {e}", r.index, r.stem))?;
    }
    Ok(t)
}

/// Reads the image lines of a results file (for tools and tests).
pub fn read_records(path: &Path) -> Result<Vec<ImageRecord>, EvalError> {
    read_results(path).map(|(_, r, _)| r)
}

/// Lines of a file (helper for tests and tools that inspect results files).
pub fn count_lines(path: &Path) -> Result<usize, EvalError> {
    let f = crate::files::open_regular(path).map_err(io_err(path))?;
    Ok(BufReader::new(f).lines().count())
}

/// The skipped images of `records` (in index order) and the number of evaluated ones.
pub fn skipped_and_evaluated(records: &[ImageRecord]) -> (Vec<crate::data::ade20k::Skipped>, usize) {
    let mut skipped: Vec<crate::data::ade20k::Skipped> = records
        .iter()
        .filter_map(|r| {
            r.skipped.as_ref().map(|why| crate::data::ade20k::Skipped {
                index: r.index,
                stem: r.stem.clone(),
                path: std::path::PathBuf::new(),
                reason: why.clone(),
            })
        })
        .collect();
    skipped.sort_by_key(|s| s.index);
    (skipped, records.iter().filter(|r| r.skipped.is_none()).count())
}
