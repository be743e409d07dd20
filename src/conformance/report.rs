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
    /// A compared tensor failed, or an expected tensor was not covered.
    Fail,
    /// The case could not be checked: a broken or unreadable case, input or candidate, or a
    /// backend error (exit status 3 when no case failed).
    Error,
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
    /// Candidate tensors that matched no expected name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused: Vec<String>,
    /// Warnings (unknown manifest keys, ...), printed on stderr.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl CaseReport {
    /// An empty report of case `name` (status Fail until a result says otherwise).
    pub fn new(name: String, dir: PathBuf, kind: String, backend: String) -> Self {
        CaseReport {
            name,
            dir,
            kind,
            backend,
            dtype: "?".into(),
            run_dtype: "?".into(),
            status: CaseStatus::Fail,
            message: None,
            tensors: vec![],
            unused: vec![],
            warnings: vec![],
            seconds: 0.0,
        }
    }

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
    /// Cases that could not be checked (also counted in `failed` of the closing line).
    pub errors: usize,
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
                CaseStatus::Error => s.errors += 1,
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
    /// The closing line, in the form test-result parsers read (cases that could not be checked
    /// count as failed).
    pub fn closing_line(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed, self.failed + self.errors, self.skipped)
    }

    /// The exit status of `verify`: 0 all checked cases pass, 1 a case failed, 3 a case could
    /// not be checked (and none failed).
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 {
            1
        } else if self.errors > 0 {
            3
        } else {
            0
        }
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
        CaseStatus::Error => "ERROR",
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
    if !r.unused.is_empty() {
        let _ = writeln!(out, "    unused candidate tensors ({}): {}", r.unused.len(), r.unused.join(", "));
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

/// JUnit XML (`quick-junit`): one test suite, one test case per fixture case.
pub fn to_junit(reports: &[CaseReport]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new("beit-seg verify");
    for r in reports {
        let status = match r.status {
            CaseStatus::Pass => TestCaseStatus::success(),
            CaseStatus::Skipped => {
                let mut s = TestCaseStatus::skipped();
                if let Some(m) = &r.message {
                    s.set_message(m.as_str());
                }
                s
            }
            CaseStatus::Fail | CaseStatus::Error => {
                let kind = if r.status == CaseStatus::Fail { NonSuccessKind::Failure } else { NonSuccessKind::Error };
                let mut s = TestCaseStatus::non_success(kind);
                let msg = r
                    .message
                    .clone()
                    .or_else(|| r.first_failure().map(|t| format!("first failing tensor: {}", t.name)))
                    .unwrap_or_else(|| "tensors not covered".into());
                s.set_message(msg);
                s.set_description(case_table(r, true));
                s
            }
        };
        let mut tc = TestCase::new(r.name.as_str(), status);
        tc.set_classname(r.kind.as_str());
        tc.set_time(std::time::Duration::from_secs_f64(r.seconds.max(0.0)));
        suite.add_test_case(tc);
    }
    let mut report = Report::new("beit-seg");
    report.add_test_suite(suite);
    report.to_string().unwrap_or_else(|e| format!("<!-- JUnit serialisation failed: {e} -->\n"))
}
