//! What `verify` prints and writes: a per-case table, a coverage figure, the closing
//! `N passed, N failed, N skipped` line, JSON (`--json`) and JUnit XML (`--junit`).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::compare::{Status, TensorResult};

/// Outcome of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    Pass,
    /// A compared tensor failed, an expected tensor was not covered, or the case could not run.
    Fail,
    /// The case's kind is not implemented by this backend (reported, never counted as passed).
    Skipped,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub dir: PathBuf,
    pub kind: String,
    pub backend: String,
    /// The case's dtype, and the dtype it was run in (they differ only with `--as-f32`).
    pub dtype: String,
    pub run_dtype: String,
    pub status: CaseStatus,
    /// Why the case failed to load or run, or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub tensors: Vec<TensorResult>,
    pub seconds: f64,
}

impl CaseReport {
    pub fn covered(&self) -> usize {
        self.tensors.iter().filter(|t| t.status != Status::NotCovered).count()
    }
    pub fn failed_tensors(&self) -> usize {
        self.tensors.iter().filter(|t| t.status == Status::Fail).count()
    }
    /// The first failing tensor in manifest (= forward) order.
    pub fn first_failure(&self) -> Option<&TensorResult> {
        self.tensors.iter().find(|t| t.status == Status::Fail)
    }
}

/// Totals over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub tensors: usize,
    pub covered: usize,
}

impl Summary {
    pub fn of(reports: &[CaseReport]) -> Summary {
        let mut s = Summary::default();
        for r in reports {
            match r.status {
                CaseStatus::Pass => s.passed += 1,
                CaseStatus::Fail => s.failed += 1,
                CaseStatus::Skipped => s.skipped += 1,
            }
            if r.status != CaseStatus::Skipped {
                s.tensors += r.tensors.len();
                s.covered += r.covered();
            }
        }
        s
    }
    pub fn coverage_percent(&self) -> f64 {
        if self.tensors == 0 {
            100.0
        } else {
            100.0 * self.covered as f64 / self.tensors as f64
        }
    }
    /// The closing line, in the form test-result parsers read.
    pub fn closing_line(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped)
    }
}

fn sci(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2e}")
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Pass => "ok",
        Status::Fail => "FAIL",
        Status::NotCovered => "NOT COVERED",
    }
}

/// The header line of one case.
pub fn case_line(r: &CaseReport) -> String {
    let st = match r.status {
        CaseStatus::Pass => "PASS",
        CaseStatus::Fail => "FAIL",
        CaseStatus::Skipped => "SKIP",
    };
    let dtype = if r.dtype == r.run_dtype { r.dtype.clone() } else { format!("{} run as {}", r.dtype, r.run_dtype) };
    let cov = if r.tensors.is_empty() {
        String::new()
    } else {
        format!(
            "  {}/{} tensors ok, coverage {:.0}%",
            r.tensors.iter().filter(|t| t.status == Status::Pass).count(),
            r.tensors.len(),
            100.0 * r.covered() as f64 / r.tensors.len() as f64
        )
    };
    format!("{st}  {}  [{}, {}, {}]{cov}  ({:.2}s)", r.name, r.kind, dtype, r.backend, r.seconds)
}

/// The per-tensor table of one case; with `failures_only`, only failing and uncovered rows.
pub fn case_table(r: &CaseReport, failures_only: bool) -> String {
    let mut out = String::new();
    if let Some(m) = &r.message {
        let _ = writeln!(out, "    {m}");
    }
    let rows: Vec<&TensorResult> = r.tensors.iter().filter(|t| !failures_only || t.status != Status::Pass).collect();
    if rows.is_empty() {
        return out;
    }
    let w = rows.iter().map(|t| t.name.len()).max().unwrap_or(6).max(6);
    let _ = writeln!(
        out,
        "    {:<w$}  {:<20} {:>9} {:>9} {:>8}  {:<17} {}",
        "tensor", "shape", "max_abs", "max_rel", "viol", "rtol/atol", "result"
    );
    for t in rows {
        let shape = format!("{:?}", t.expected_shape);
        let mut extra = String::new();
        if let (Some(n), Some(f)) = (t.near_ties, t.flips) {
            let _ = write!(extra, " (near-ties {n}, flips {f})");
        }
        if t.status != Status::Pass {
            if let Some(note) = &t.note {
                let _ = write!(extra, " {note}");
            }
        }
        let _ = writeln!(
            out,
            "    {:<w$}  {:<20} {:>9} {:>9} {:>8}  {:<17} {}{}",
            t.name,
            shape,
            sci(t.max_abs),
            sci(t.max_rel),
            t.violations,
            format!("{:.0e}/{:.0e}", t.tolerance.rtol, t.tolerance.atol),
            status_word(t.status),
            extra
        );
    }
    out
}

/// The machine-readable report of `--json`.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    pub format: &'static str,
    pub summary: &'a Summary,
    pub coverage_percent: f64,
    pub cases: &'a [CaseReport],
}

/// Writes a JSON value where non-finite floats become `null` (JSON has no NaN).
pub fn to_json(reports: &[CaseReport]) -> String {
    let summary = Summary::of(reports);
    let rep = JsonReport {
        format: "beit-seg-verify/1",
        summary: &summary,
        coverage_percent: summary.coverage_percent(),
        cases: reports,
    };
    serde_json::to_string_pretty(&rep).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// JUnit XML: one testsuite, one testcase per fixture case.
pub fn to_junit(reports: &[CaseReport]) -> String {
    let s = Summary::of(reports);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total_time: f64 = reports.iter().map(|r| r.seconds).sum();
    let _ = writeln!(
        out,
        "<testsuite name=\"beit-seg verify\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        reports.len(),
        s.failed,
        s.skipped,
        total_time
    );
    for r in reports {
        let _ = write!(
            out,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&r.kind),
            xml_escape(&r.name),
            r.seconds
        );
        match r.status {
            CaseStatus::Pass => out.push_str("/>\n"),
            CaseStatus::Skipped => {
                let _ = writeln!(
                    out,
                    "><skipped message=\"{}\"/></testcase>",
                    xml_escape(r.message.as_deref().unwrap_or(""))
                );
            }
            CaseStatus::Fail => {
                let msg = r
                    .message
                    .clone()
                    .or_else(|| r.first_failure().map(|t| format!("first failing tensor: {}", t.name)))
                    .unwrap_or_else(|| "tensors not covered".into());
                let _ = writeln!(
                    out,
                    "><failure message=\"{}\">{}</failure></testcase>",
                    xml_escape(&msg),
                    xml_escape(&case_table(r, true))
                );
            }
        }
    }
    out.push_str("</testsuite>\n");
    out
}
