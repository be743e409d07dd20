//! The results file of an evaluation (`results.jsonl`): a header line identifying the run, then
//! one JSON line per image with its float32 areas (or why it was skipped). Appended and flushed
//! per image, so a killed run resumes; totals are re-summed in image order.

use std::fs::File;
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
    /// Always 1 (the version of this file format).
    pub beit_seg_results: u32,
    /// Everything that determines the numbers; a resumed run must match it exactly, and shard
    /// files must match each other except for `shard`.
    pub run: Value,
    /// Images of the whole run (after `--limit`, before sharding).
    pub num_images: usize,
    pub num_classes: usize,
    pub shard: Option<Shard>,
}

pub(super) const RESULTS_VERSION: u32 = 1;

/// Reads a results file: the header and the complete records. A torn last line (a killed
/// run) is dropped and reported as the byte length of the good prefix (`Some(len)`).
pub fn read_results(path: &Path) -> Result<(ResultsHeader, Vec<ImageRecord>, Option<u64>), EvalError> {
    let bad = |msg: String| EvalError::Results { path: path.to_path_buf(), msg };
    let text = std::fs::read(path).map_err(io_err(path))?;
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
                    let h: ResultsHeader = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line 1 is not a beit-seg results header: {e}")))?;
                    if h.beit_seg_results != RESULTS_VERSION {
                        return Err(bad(format!(
                            "results format version {} is not supported (expected {RESULTS_VERSION})",
                            h.beit_seg_results
                        )));
                    }
                    header = Some(h);
                } else {
                    let r: ImageRecord = serde_json::from_value(v)
                        .map_err(|e| bad(format!("line {line_no}: not an image record: {e}")))?;
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
    let f = File::open(path).map_err(io_err(path))?;
    Ok(BufReader::new(f).lines().count())
}
