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
    /// Every compared tensor passed and everything in scope was produced (or, with
    /// `allow_uncovered`, a partial pass).
    Pass,
    /// A compared tensor failed, or an expected tensor was not covered.
    Fail,
    /// The case could not be checked: a broken or unreadable case, input or candidate, or a
    /// backend error (exit status 3 when no case failed).
    Error,
    /// The case's kind is not implemented by this backend (reported, never counted as passed).
    Skipped,
    /// Nothing was compared: no expected tensor (within the scope) was produced, or the scope
    /// selects none. Never a pass, whatever the flags (counted as failed, exit status 1).
    NoEvidence,
}

impl CaseStatus {
    /// The word the report prints.
    pub fn word(self) -> &'static str {
        match self {
            CaseStatus::Pass => "PASS",
            CaseStatus::Fail => "FAIL",
            CaseStatus::Error => "ERROR",
            CaseStatus::Skipped => "SKIP",
            CaseStatus::NoEvidence => "NO EVIDENCE",
        }
    }
}

/// What a case's verdict rests on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Expected tensors (and metric quantities) of the case.
    pub expected: usize,
    /// Those within the scope (`--scope`, `--ignore`; all of them by default).
    pub in_scope: usize,
    /// In-scope tensors the implementation produced.
    pub covered: usize,
    /// Tensors compared (passed or failed), in scope or not: the evidence.
    pub compared: usize,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// The case directory.
    pub dir: PathBuf,
    /// The case's kind (`segmentor`, ...).
    pub kind: String,
    /// What produced the outputs: `ref`, `tch`, `lib` (model-free kinds) or `candidate`.
    pub backend: String,
    /// The case's dtype, and the dtype it was run in (they differ only with `--as-f32`).
    pub dtype: String,
    /// The dtype (or half precision) the case was run or judged in.
    pub run_dtype: String,
    /// The verdict.
    pub status: CaseStatus,
    /// Passed with in-scope tensors not produced (`--allow-uncovered`): `PASS (partial: k/n)`.
    pub partial: bool,
    /// The scope the case was held to (`all`, `backbone`, ...).
    pub scope: String,
    /// What the verdict rests on.
    pub coverage: Coverage,
    /// Why the case failed to load or run, or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One row per expected tensor (and metric), in forward order.
    pub tensors: Vec<TensorResult>,
    /// Candidate tensors that matched no expected name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused: Vec<String>,
    /// Warnings (unknown manifest keys, ...), printed on stderr.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Wall time of the case.
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
            partial: false,
            scope: "all".into(),
            coverage: Coverage::default(),
            message: None,
            tensors: vec![],
            unused: vec![],
            warnings: vec![],
            seconds: 0.0,
        }
    }

    /// Expected tensors that were produced (compared), in or out of scope.
    pub fn covered(&self) -> usize {
        self.tensors.iter().filter(|t| t.status.compared()).count()
    }
    /// The compared tensor with the largest error relative to what the rule allows.
    pub fn worst(&self) -> Option<&TensorResult> {
        self.tensors
            .iter()
            .filter(|t| t.status.compared() && !t.ratio.is_nan())
            .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
    }
    /// How many compared tensors failed.
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
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases that could not be checked (also counted in `failed` of the closing line).
    pub errors: usize,
    /// Cases skipped (an unknown kind, another precision).
    pub skipped: usize,
    /// Cases in which nothing was compared (also counted in `failed` of the closing line).
    pub no_evidence: usize,
    /// Passed cases with in-scope tensors not produced (`--allow-uncovered`; within `passed`).
    pub partial: usize,
    /// In-scope expected tensors of the checked cases, and those produced.
    pub tensors: usize,
    /// In-scope expected tensors that were produced.
    pub covered: usize,
}

impl Summary {
    /// The totals of `reports`.
    pub fn of(reports: &[CaseReport]) -> Summary {
        let mut s = Summary::default();
        for r in reports {
            match r.status {
                CaseStatus::Pass => s.passed += 1,
                CaseStatus::Fail => s.failed += 1,
                CaseStatus::Error => s.errors += 1,
                CaseStatus::Skipped => s.skipped += 1,
                CaseStatus::NoEvidence => s.no_evidence += 1,
            }
            s.partial += usize::from(r.status == CaseStatus::Pass && r.partial);
            if r.status != CaseStatus::Skipped {
                s.tensors += r.coverage.in_scope;
                s.covered += r.coverage.covered;
            }
        }
        s
    }
    /// Produced in-scope tensors over in-scope tensors, in percent (100 when there are none).
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
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed,
            self.failed + self.errors + self.no_evidence,
            self.skipped
        )
    }

    /// The exit status of `verify`: 0 all checked cases pass, 1 a case failed (or showed no
    /// evidence), 3 a case could not be checked (and none failed).
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 || self.no_evidence > 0 {
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
        Status::OutOfScope => "out of scope",
    }
}

/// The one line of a case: status, name, kind, dtype, target, coverage, worst error, time.
pub fn case_line(r: &CaseReport) -> String {
    let st = if r.status == CaseStatus::Pass && r.partial {
        format!("PASS (partial: {}/{})", r.coverage.covered, r.coverage.in_scope)
    } else {
        r.status.word().to_string()
    };
    let dtype = if r.dtype == r.run_dtype { r.dtype.clone() } else { format!("{} run as {}", r.dtype, r.run_dtype) };
    let c = r.coverage;
    let mut detail = String::new();
    if c.expected > 0 && matches!(r.status, CaseStatus::Pass | CaseStatus::Fail | CaseStatus::NoEvidence) {
        let ok = r.tensors.iter().filter(|t| t.status == Status::Pass).count();
        detail.push_str(&format!("  {ok}/{} ok", c.compared));
        if r.scope == "all" {
            detail.push_str(&format!(", coverage {}", percent(c.covered, c.in_scope)));
        } else {
            detail.push_str(&format!(
                ", scope {}: {}/{} covered ({}), {} out of scope",
                r.scope,
                c.covered,
                c.in_scope,
                percent(c.covered, c.in_scope),
                c.expected - c.in_scope
            ));
        }
        match r.worst() {
            Some(w) if w.ratio > 0.0 => {
                let of = if w.budgeted { "budget" } else { "tol" };
                detail.push_str(&format!(", worst {} of {of} ({})", ratio_text(w.ratio), clip(&w.name, 60)))
            }
            Some(_) => detail.push_str(", all exact"),
            None => {}
        }
    }
    format!("{st:<5} {}  [{}, {}, {}]{detail}  ({:.2}s)", clip(&r.name, 200), r.kind, dtype, r.backend, r.seconds)
}

fn percent(k: usize, n: usize) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * k as f64 / n as f64)
    }
}

/// An error/allowed ratio as the report prints it: `0.12`, `3.4e3`, `inf`.
pub fn ratio_text(r: f64) -> String {
    if r.is_infinite() {
        "inf".into()
    } else if r.is_nan() {
        "-".into()
    } else if r == 0.0 {
        "0".into()
    } else if r != 0.0 && !(1e-2..1e3).contains(&r) {
        format!("{r:.1e}")
    } else {
        format!("{r:.2}")
    }
}

/// `s` cut to at most `max` characters (with `...`), for names that come from files.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{head}...")
    }
}

/// How much of each case `verify` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Only failing (or no-evidence, error, skipped) cases, with their failing rows, and the
    /// summary.
    Quiet,
    /// One line per case; the full table of cases that fail or are partial.
    #[default]
    Normal,
    /// Every table.
    Verbose,
}

/// What `verify` prints for one case at `v` (ends with a newline; empty when nothing).
pub fn case_text(r: &CaseReport, v: Verbosity) -> String {
    let bad = !matches!(r.status, CaseStatus::Pass | CaseStatus::Skipped);
    match v {
        Verbosity::Quiet if !bad && r.status != CaseStatus::Skipped => String::new(),
        Verbosity::Quiet => format!("{}\n{}", case_line(r), case_table(r, true)),
        Verbosity::Normal if bad || r.partial => format!("{}\n{}", case_line(r), case_table(r, false)),
        Verbosity::Normal => {
            let mut s = format!("{}\n", case_line(r));
            if let Some(m) = r.message.as_ref().filter(|_| r.status == CaseStatus::Skipped) {
                s.push_str(&format!("    {m}\n"));
            }
            s
        }
        Verbosity::Verbose => format!("{}\n{}", case_line(r), case_table(r, false)),
    }
}

/// The per-tensor table of one case; with `failures_only`, only failing and uncovered rows.
pub fn case_table(r: &CaseReport, failures_only: bool) -> String {
    let mut out = String::new();
    if let Some(m) = &r.message {
        let _ = writeln!(out, "    {m}");
    }
    if !r.unused.is_empty() {
        let shown: Vec<String> = r.unused.iter().take(20).map(|u| clip(u, 120)).collect();
        let more = if r.unused.len() > 20 { format!(", ... ({} more)", r.unused.len() - 20) } else { String::new() };
        let _ = writeln!(out, "    unused candidate tensors ({}): {}{more}", r.unused.len(), shown.join(", "));
    }
    let rows: Vec<&TensorResult> =
        r.tensors.iter().filter(|t| !failures_only || matches!(t.status, Status::Fail | Status::NotCovered)).collect();
    if rows.is_empty() {
        return out;
    }
    // Names come from files: the column is at most 100 characters wide (longer names are cut).
    let w = rows.iter().map(|t| t.name.chars().count()).max().unwrap_or(6).clamp(6, 100);
    // Half-precision twins: max_rel is the relative RMS error, the bounds are rms/max_abs.
    let budgeted = rows.iter().any(|t| t.budgeted);
    let (rel, bounds, ratio) =
        if budgeted { ("rel_rms", "bound rms/abs", "err/budget") } else { ("max_rel", "rtol/atol", "err/tol") };
    let _ = writeln!(
        out,
        "    {:<w$}  {:<20} {:>9} {:>9} {:>8}  {:<17} {:>10}  result",
        "tensor", "shape", "max_abs", rel, "viol", bounds, ratio
    );
    for t in rows {
        let shape = format!("{:?}", t.expected_shape);
        let mut extra = String::new();
        if let (Some(n), Some(f)) = (t.near_ties, t.flips) {
            let _ = write!(extra, " (near-ties {n}, flips {f})");
        }
        if !matches!(t.status, Status::Pass | Status::OutOfScope) {
            if let Some(note) = &t.note {
                let _ = write!(extra, " {}", clip(note, 300));
            }
        }
        let _ = writeln!(
            out,
            "    {:<w$}  {:<20} {:>9} {:>9} {:>8}  {:<17} {:>10}  {}{}",
            clip(&t.name, 100),
            clip(&shape, 40),
            sci(t.max_abs),
            sci(t.max_rel),
            t.violations,
            if t.budgeted {
                format!("{:.1e}/{:.1e}", t.tolerance.rtol, t.tolerance.atol)
            } else {
                format!("{:.0e}/{:.0e}", t.tolerance.rtol, t.tolerance.atol)
            },
            if t.status.compared() { ratio_text(t.ratio) } else { "-".into() },
            status_word(t.status),
            extra
        );
    }
    out
}

/// The machine-readable report of `--json`.
#[derive(Serialize)]
pub struct JsonReport<'a> {
    /// `beit-seg-verify/1`.
    pub format: &'static str,
    /// The totals.
    pub summary: &'a Summary,
    /// [`Summary::coverage_percent`].
    pub coverage_percent: f64,
    /// Every case.
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
            CaseStatus::Fail | CaseStatus::Error | CaseStatus::NoEvidence => {
                let kind = if r.status == CaseStatus::Error { NonSuccessKind::Error } else { NonSuccessKind::Failure };
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
        let c = r.coverage;
        tc.add_property(quick_junit::Property::new("scope", r.scope.as_str()));
        tc.add_property(quick_junit::Property::new("coverage", format!("{}/{}", c.covered, c.in_scope)));
        tc.add_property(quick_junit::Property::new("compared", c.compared.to_string()));
        tc.add_property(quick_junit::Property::new("expected", c.expected.to_string()));
        tc.add_property(quick_junit::Property::new("partial", r.partial.to_string()));
        tc.set_time(std::time::Duration::from_secs_f64(r.seconds.max(0.0)));
        suite.add_test_case(tc);
    }
    let mut report = Report::new("beit-seg");
    report.add_test_suite(suite);
    report.to_string().unwrap_or_else(|e| format!("<!-- JUnit serialisation failed: {e} -->\n"))
}
