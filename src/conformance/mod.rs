//! The conformance runner behind `beit-seg verify`: loads each case, obtains its outputs from a
//! [`Target`] — one of our backends, or the tensors another implementation wrote (a candidate
//! directory) — and compares every expected tensor by the rules of the fixture format.
//!
//! Flow: [`case`] (manifest → [`Case`], typed [`CaseKind`]) → [`kinds`] (what each kind expects
//! and how our library or model produces it) → [`compare`] / [`metrics_cmp`] (the rules) →
//! [`report`] (tables, JSON, JUnit). Backends never see expected values; errors and the words
//! "expected"/"got" are always relative to the fixture (MMSegmentation).

#![deny(missing_docs)]

pub mod budget;
pub mod candidate;
pub mod case;
pub mod compare;
pub mod kinds;
pub mod memory;
pub mod metrics_cmp;
pub mod names;
pub mod port;
pub mod report;
pub mod scope;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{Backend, BackendError};
use candidate::{CandidateError, CandidateSource};
use case::{CaseError, CaseKind};
use compare::Status;
use memory::CandidateRef;
use report::{CaseStatus, Coverage};

pub use crate::array::AnyArray;
pub use crate::config::SegmentorConfig;
pub use crate::float::{Dtype, Precision};
pub use case::Case;
pub use memory::Candidate;
pub use names::NameMap;
pub use port::{bundled_cases, case_dir, fixtures_dir, verify_case, FIXTURES_ENV};
pub use report::CaseReport;
pub use scope::Scope;

/// What produces a case's outputs. Only references, so a `Target` is `Copy` and never owns
/// what it points at (a temporary `&Target::Candidate { source: &source, .. }` at the end of a
/// block borrows nothing that is dropped first).
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// One of our backends runs the model (the library itself for the model-free kinds).
    Backend(&'a dyn Backend),
    /// Another implementation wrote them (`verify --candidate DIR`); `single` when one case runs.
    Candidate {
        /// The directory (or archive) and the optional name map.
        source: &'a CandidateSource,
        /// Only one case runs (then the directory itself may hold its tensors).
        single: bool,
    },
    /// Another implementation in this process returns them ([`Candidate`]: a list of tensors or
    /// a closure run per case); judged exactly as a candidate directory. `&candidate` converts
    /// into this ([`verify_case`] takes either).
    InMemory(&'a Candidate<'a>),
}

impl<'a> Target<'a> {
    /// `ref`, `tch` or `candidate`.
    pub fn name(&self) -> String {
        match self {
            Target::Backend(b) => b.name().to_string(),
            Target::Candidate { .. } | Target::InMemory(_) => "candidate".to_string(),
        }
    }

    /// What the fixture kinds run: a backend, or a candidate (a directory or in memory: one
    /// path from here on).
    pub(crate) fn producer(&self) -> Producer<'a> {
        match *self {
            Target::Backend(b) => Producer::Backend(b),
            Target::Candidate { source, single } => Producer::Candidate(CandidateRef::Dir { source, single }),
            Target::InMemory(c) => Producer::Candidate(CandidateRef::Memory(c)),
        }
    }

    /// The candidate (directory or in memory), or `None` for a backend.
    pub(crate) fn candidate(&self) -> Option<CandidateRef<'a>> {
        match self.producer() {
            Producer::Backend(_) => None,
            Producer::Candidate(c) => Some(c),
        }
    }
}

/// [`Target`] as the fixture kinds see it.
pub(crate) enum Producer<'t> {
    /// Our backend runs the model.
    Backend(&'t dyn Backend),
    /// Another implementation's tensors are read.
    Candidate(CandidateRef<'t>),
}

impl<'a, 'c: 'a> From<&'a Candidate<'c>> for Target<'a> {
    fn from(c: &'a Candidate<'c>) -> Self {
        Target::InMemory(c)
    }
}

impl<'a> From<&Target<'a>> for Target<'a> {
    fn from(t: &Target<'a>) -> Self {
        *t
    }
}

/// Options of a verify run.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Run (or compare) float64 cases in float32 with the fp32 tolerance (reported as such).
    pub as_f32: bool,
    /// Do not fail a case because some expected tensors (within the scope) are not produced: it
    /// passes as `PASS (partial: k/n)` if what was compared passes. A case in which nothing was
    /// compared is never a pass.
    pub allow_uncovered: bool,
    /// The expected tensors an implementation must produce (default: all).
    pub scope: Scope,
    /// The precision a candidate claims (`--precision`; a backend says its own): a half
    /// precision is judged on the half-precision twins of that precision only, other cases are
    /// skipped. None: fp32.
    pub precision: Option<crate::float::Precision>,
    /// Unknown manifest keys and unknown kinds fail the case instead of a warning / skip.
    pub strict: bool,
    /// Also write what our backend produced as a candidate directory (`DIR/<case>/<name>.npy`).
    pub save_outputs: Option<PathBuf>,
    /// `--save-outputs` may replace existing (regular) files.
    pub force: bool,
}

/// Why a case could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The case directory or its manifest.
    #[error(transparent)]
    Case(#[from] CaseError),
    /// An array file of the case.
    #[error(transparent)]
    Array(#[from] crate::array::ArrayError),
    /// A checkpoint file of the case.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// Weights that cannot become the model's state dict.
    #[error(transparent)]
    Load(#[from] crate::weights::LoadError),
    /// Our backend refused the model or the input.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The evaluation of a pipeline case.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// The dataset of a pipeline case.
    #[error(transparent)]
    Dataset(#[from] crate::data::ade20k::DatasetError),
    /// An image of a pipeline case.
    #[error(transparent)]
    Image(#[from] crate::data::image::ImageError),
    /// The metric of a metric case.
    #[error(transparent)]
    Metric(#[from] crate::metrics::MetricError),
    /// The candidate (a directory or in memory).
    #[error(transparent)]
    Candidate(#[from] CandidateError),
    /// A bad manifest entry.
    #[error("{path}: {msg}")]
    Manifest {
        /// The case's `case.json`.
        path: PathBuf,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// A bad input file (the message names it).
    #[error("{0}")]
    Input(String),
    /// This build cannot check the case at all (reported as skipped, never passed).
    #[error("{0}")]
    Skip(String),
}

impl From<String> for RunError {
    fn from(msg: String) -> Self {
        RunError::Input(msg)
    }
}

impl RunError {
    /// An error about `case`'s manifest.
    pub fn manifest(case: &Case, msg: impl std::fmt::Display) -> RunError {
        RunError::Manifest { path: case.dir.join("case.json"), msg: msg.to_string() }
    }
}

/// Loads and runs one case directory.
pub fn run_case_dir(dir: &Path, target: &Target<'_>, opts: &VerifyOptions) -> CaseReport {
    let start = Instant::now();
    let mut rep = match Case::load(dir) {
        Ok(case) => run_case(&case, target, opts),
        Err(e) => {
            let mut r = CaseReport::new(
                dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                dir.to_path_buf(),
                "?".into(),
                target.name(),
            );
            r.status = CaseStatus::Error;
            r.message = Some(format!("cannot load case: {e}"));
            r
        }
    };
    rep.seconds = start.elapsed().as_secs_f64();
    rep
}

/// Runs a loaded case.
pub fn run_case(case: &Case, target: &Target<'_>, opts: &VerifyOptions) -> CaseReport {
    let start = Instant::now();
    let run_dtype = if opts.as_f32 { Dtype::F32 } else { case.dtype };
    let mut rep = CaseReport::new(case.name.clone(), case.dir.clone(), case.kind.to_string(), target.name());
    rep.dtype = case.dtype.name().into();
    rep.run_dtype = run_dtype.name().into();
    if skipped_for_precision(&mut rep, case, target, opts) {
        rep.seconds = start.elapsed().as_secs_f64();
        return rep;
    }
    if refused_unknown(&mut rep, case, opts) {
        return rep;
    }
    match kinds::run(case, target, opts, run_dtype) {
        Ok(out) => record_outcome(&mut rep, case, target, opts, out),
        Err(RunError::Skip(why)) => {
            rep.status = CaseStatus::Skipped;
            rep.message = Some(why);
        }
        Err(e) => {
            rep.status = CaseStatus::Error;
            rep.message = Some(e.to_string());
        }
    }
    rep.seconds = start.elapsed().as_secs_f64();
    rep
}

/// Notes the precisions in `rep` and skips the case (returns true) when the target claims a
/// half precision and the case is not a half-precision twin of that precision.
fn skipped_for_precision(rep: &mut CaseReport, case: &Case, target: &Target<'_>, opts: &VerifyOptions) -> bool {
    let claimed = match target {
        Target::Backend(b) => b.precision(),
        Target::Candidate { .. } | Target::InMemory(_) => opts.precision.unwrap_or(crate::float::Precision::Fp32),
    };
    if let Some(twin) = &case.half {
        rep.dtype = twin.precision.name().into();
    }
    if !claimed.is_half() {
        return false;
    }
    rep.run_dtype = claimed.name().into();
    if case.half.as_ref().is_some_and(|t| t.precision == claimed) {
        return false;
    }
    rep.status = CaseStatus::Skipped;
    rep.message = Some(format!(
        "{claimed} is judged on the {claimed} half-precision twins (MMSegmentation's own {claimed} error); this \
         case is {}",
        rep.dtype
    ));
    true
}

/// Warns about unknown manifest keys and skips an unknown kind; with `--strict` either is an
/// error. Returns true when the case is not to run.
fn refused_unknown(rep: &mut CaseReport, case: &Case, opts: &VerifyOptions) -> bool {
    if !case.unknown_keys.is_empty() {
        let keys = case.unknown_keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let msg = format!(
            "{}: unknown key(s) {keys} for kind `{}` (a misspelling is otherwise silently ignored)",
            case.dir.join("case.json").display(),
            case.kind
        );
        if opts.strict {
            rep.status = CaseStatus::Error;
            rep.message = Some(format!("{msg}; --strict makes this an error"));
            return true;
        }
        rep.warnings.push(msg);
    }
    if let CaseKind::Unknown(k) = &case.kind {
        let msg = format!("kind `{k}` is not known to this version (known: {})", CaseKind::KNOWN.join(", "));
        rep.status = if opts.strict { CaseStatus::Error } else { CaseStatus::Skipped };
        rep.message = Some(if opts.strict { format!("{msg}; --strict makes this an error") } else { msg });
        return true;
    }
    false
}

/// Puts what a case kind produced into `rep` (tensor rows, verdict, unused names) and writes
/// `--save-outputs`.
fn record_outcome(
    rep: &mut CaseReport,
    case: &Case,
    target: &Target<'_>,
    opts: &VerifyOptions,
    out: kinds::KindOutcome,
) {
    rep.scope = opts.scope.describe();
    rep.tensors = out.tensors;
    judge(rep, target, opts, out.unused.len(), out.notes);
    rep.unused = out.unused;
    if rep.kind != "pipeline" && rep.kind != "segmentor" {
        if let Target::Backend(_) = target {
            // The model-free kinds check the library itself, the same for every backend.
            rep.backend = "lib".into();
        }
    }
    if let (Some(dir), Some(produced)) = (&opts.save_outputs, out.produced) {
        // Never over a file of the case itself.
        let mut case_files: Vec<PathBuf> = case.outputs.iter().map(|(_, f)| case.dir.join(f)).collect();
        case_files.push(case.dir.join("case.json"));
        let inputs: Vec<&Path> = case_files.iter().map(PathBuf::as_path).collect();
        let to = dir.join(&case.name);
        if let Err(e) = candidate::save_outputs_to(&to, &produced, out.produced_metrics.as_ref(), opts.force, &inputs) {
            rep.status = CaseStatus::Error;
            rep.message = Some(format!("--save-outputs: {e}"));
        }
    }
}

/// The verdict of a case from its tensor results: FAIL if a compared tensor failed; NO EVIDENCE
/// if nothing was compared (whatever the flags); FAIL if in-scope tensors were not produced
/// (unless `allow_uncovered`: then a partial PASS); PASS otherwise. Not-produced tensors outside
/// the scope become [`Status::OutOfScope`].
fn judge(rep: &mut CaseReport, target: &Target<'_>, opts: &VerifyOptions, unused: usize, notes: Vec<String>) {
    let producer = match target {
        Target::Backend(b) => format!("not produced by backend `{}`", b.name()),
        Target::Candidate { .. } | Target::InMemory(_) => "not produced by the candidate".to_string(),
    };
    for t in &mut rep.tensors {
        if t.status == Status::NotCovered {
            if !opts.scope.contains(&t.name) {
                t.status = Status::OutOfScope;
                t.note = Some("out of scope".into());
            } else if t.note.as_deref() == Some("not produced") {
                t.note = Some(producer.clone());
            }
        }
    }
    let ts = &rep.tensors;
    let c = Coverage {
        expected: ts.len(),
        in_scope: ts.iter().filter(|t| opts.scope.contains(&t.name)).count(),
        covered: ts.iter().filter(|t| opts.scope.contains(&t.name) && t.status.compared()).count(),
        compared: ts.iter().filter(|t| t.status.compared()).count(),
    };
    rep.coverage = c;
    let uncovered = ts.iter().filter(|t| t.status == Status::NotCovered).count();
    let mut msgs = Vec::new();
    rep.status = if let Some(f) = ts.iter().find(|t| t.status == Status::Fail) {
        msgs.push(format!("first failing tensor: {}", f.name));
        CaseStatus::Fail
    } else if c.compared == 0 {
        msgs.push(if c.expected == 0 {
            "the case has no expected outputs: nothing to compare".to_string()
        } else if c.in_scope == 0 {
            format!("the scope `{}` selects none of the case's {} expected tensors", opts.scope.describe(), c.expected)
        } else if unused > 0 {
            format!(
                "none of the {} expected tensors was produced, but {unused} tensor(s) with other names were: \
                 a name map (--names) may be missing",
                c.in_scope
            )
        } else {
            format!("none of the {} expected tensors was produced", c.in_scope)
        });
        CaseStatus::NoEvidence
    } else if uncovered > 0 && !opts.allow_uncovered {
        CaseStatus::Fail
    } else {
        CaseStatus::Pass
    };
    rep.partial = rep.status == CaseStatus::Pass && uncovered > 0;
    if uncovered > 0 && rep.status != CaseStatus::NoEvidence {
        let how = if rep.partial { " (--allow-uncovered: partial pass)" } else { "" };
        let within = if opts.scope.is_all() { "" } else { " within the scope" };
        msgs.push(format!("{uncovered} expected tensor(s){within} {producer}{how}"));
    }
    msgs.extend(notes);
    rep.message = (!msgs.is_empty()).then(|| msgs.join("; "));
}
