//! What a port written in Rust uses to check itself in its own `cargo test`, without the CLI:
//! where the bundled cases are ([`fixtures_dir`], [`case_dir`], [`bundled_cases`]), what a case
//! holds ([`Case::model_config`], [`Case::model_json`], [`Case::weights`], [`Case::input`],
//! [`Case::expected`]), one call that checks a case ([`verify_case`]) and a test assertion
//! ([`CaseReport::assert_pass`]) whose panic message is the table `beit-seg verify` prints.
//!
//! A dependent crate adds beit-seg as a dev-dependency (`beit-seg = { git = "…" }` or
//! `{ path = "…" }`); the fixtures are found in beit-seg's own checkout, or where the
//! environment variable [`FIXTURES_ENV`] (`BEIT_SEG_FIXTURES`) points. docs/validating.md,
//! "From Rust", has a complete test.
//!
//! ```
//! use beit_seg::conformance::{verify_case, Candidate, Case, VerifyOptions};
//!
//! let case = Case::bundled("tiny-whole").unwrap();
//! let cfg = case.model_config().unwrap();              // typed MMSegmentation config
//! assert_eq!(cfg.backbone.embed_dims, 32);
//! assert_eq!(case.model_json().unwrap()["backbone"]["type"], "BEiT");   // the same, as JSON
//! let weights = case.weights().unwrap();                // MMSegmentation state dict, by name
//! assert!(weights.iter().any(|(k, _)| k == "backbone.cls_token"));
//! assert_eq!(case.input().unwrap().shape(), &[2, 3, 96, 128]);
//!
//! // A port run on the case: here one that returns MMSegmentation's own tensors.
//! let port = Candidate::from_fn(|case: &Case| case.expected());
//! let report = verify_case(&case.dir, &port, &VerifyOptions::default());
//! report.assert_pass();
//! ```

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::case::{discover, Case, CaseError};
use super::compare::{Status, TensorResult};
use super::report::{case_text, CaseReport, CaseStatus, Verbosity};
use super::{kinds, run_case_dir, RunError, Target, VerifyOptions};
use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::weights::StateDict;

/// The environment variable that points at a fixtures directory (the bundled `fixtures/`, or
/// any directory of cases in the fixture format), read at run time by [`fixtures_dir`].
pub const FIXTURES_ENV: &str = "BEIT_SEG_FIXTURES";

/// The directory of bundled cases: `$BEIT_SEG_FIXTURES` when set, otherwise the `fixtures/`
/// folder of the beit-seg source this library was built from (present for a path or git
/// dependency). An error says which was tried.
pub fn fixtures_dir() -> Result<PathBuf, CaseError> {
    if let Some(d) = std::env::var_os(FIXTURES_ENV) {
        let d = PathBuf::from(d);
        return if d.is_dir() {
            Ok(d)
        } else {
            Err(CaseError::Io(format!("{FIXTURES_ENV}={}: not a directory", d.display())))
        };
    }
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    if d.is_dir() {
        Ok(d)
    } else {
        Err(CaseError::Io(format!(
            "{}: no fixtures directory in the beit-seg source this library was built from; set {FIXTURES_ENV} to a \
             checkout's fixtures/",
            d.display()
        )))
    }
}

/// The directory of bundled case `name` (`tiny-whole`, `real-640-f64`, ...) under
/// [`fixtures_dir`]; an error if it holds no `case.json`.
pub fn case_dir(name: &str) -> Result<PathBuf, CaseError> {
    let root = fixtures_dir()?;
    let d = root.join(name);
    if d.join("case.json").is_file() {
        Ok(d)
    } else {
        Err(CaseError::Io(format!(
            "{}: no case `{name}` (no case.json); `ls {}` lists the cases",
            d.display(),
            root.display()
        )))
    }
}

/// Every case directory under [`fixtures_dir`], sorted by path.
pub fn bundled_cases() -> Result<Vec<PathBuf>, CaseError> {
    discover(&[fixtures_dir()?])
}

/// Loads case `dir` and checks `target` on it: [`super::run_case`] with the load error turned
/// into an ERROR report. The same verdict as `beit-seg verify` (tolerances or half-precision
/// budgets, coverage, `opts.scope`, NO EVIDENCE when nothing was compared). `target` is a
/// `&Candidate` (a port in this process), a [`Target`] or a `&Target`.
pub fn verify_case<'t>(dir: impl AsRef<Path>, target: impl Into<Target<'t>>, opts: &VerifyOptions) -> CaseReport {
    run_case_dir(dir.as_ref(), &target.into(), opts)
}

impl Case {
    /// Loads bundled case `name` ([`case_dir`]).
    pub fn bundled(name: &str) -> Result<Case, CaseError> {
        Case::load(&case_dir(name)?)
    }

    /// The model config as written in `case.json` (MMSegmentation's own keys: `backbone`,
    /// `neck`, `decode_head`, `auxiliary_head`, `test_cfg`); `None` for kinds without a model.
    pub fn model_json(&self) -> Option<&Value> {
        self.manifest.get("model")
    }

    /// The model config as typed structs ([`SegmentorConfig`]: `backbone.embed_dims`,
    /// `backbone.window()`, `decode_head.channels`, ...). Keys that would change the numerics
    /// and are not understood are an error naming the key.
    pub fn model_config(&self) -> Result<SegmentorConfig, RunError> {
        kinds::segmentor::model_config(self)
    }

    /// The weights as an MMSegmentation state dict (`backbone.layers.0.attn.qkv.weight`, ...),
    /// in file order, in the case's dtype (float64 for the `-f64` twins; cast to the dtype you
    /// run in before loading them). Checkpoints in another key dialect are converted, as
    /// `verify` converts them. Half-precision twins leave out `relative_position_index`
    /// (build it from the window).
    pub fn weights(&self) -> Result<StateDict, RunError> {
        let model = self.model_config()?;
        kinds::segmentor::case_weights(self, &model)
    }

    /// The input batch of a `segmentor` case (`inputs.inputs`): NCHW, normalised, in the
    /// case's dtype. A non-finite input is an error.
    pub fn input(&self) -> Result<AnyArray, RunError> {
        let path = self.input_file("inputs")?;
        let a = crate::array::read_npy(&path)?;
        if let Some(s) = crate::weights::non_finite_summary(&a) {
            return Err(RunError::manifest(self, format!("{}: the input is not finite: {s}", path.display())));
        }
        Ok(a)
    }

    /// The expected outputs by name, in forward order: MMSegmentation's tensors (for a
    /// half-precision twin, its float64 truth). For tests and tools; a port computes its own.
    pub fn expected(&self) -> Result<Vec<(String, AnyArray)>, RunError> {
        kinds::read_expected(self)
    }

    /// The names of the expected outputs, in forward order.
    pub fn expected_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }
}

impl CaseReport {
    /// Whether the case passed (a partial pass with `allow_uncovered` included).
    pub fn passed(&self) -> bool {
        self.status == CaseStatus::Pass
    }

    /// The row of expected tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorResult> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// What `beit-seg verify -v` prints for this case: the one-line verdict and the table of
    /// every expected tensor.
    pub fn text(&self) -> String {
        case_text(self, Verbosity::Verbose)
    }

    /// Panics unless the case passed. The message names the first failing tensor (or why
    /// there is no verdict), then prints what `beit-seg verify` prints for the case: the
    /// one-line verdict and the table. A skipped case is not a pass.
    #[track_caller]
    pub fn assert_pass(&self) {
        if self.passed() {
            return;
        }
        let head = match self.first_failure() {
            Some(t) => {
                let how = if t.status == Status::Fail && t.ratio.is_finite() {
                    format!(" (max abs error {:.2e}, err/tol {})", t.max_abs, super::report::ratio_text(t.ratio))
                } else {
                    String::new()
                };
                let note = t.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
                format!("first failing tensor `{}`{how}{note}", t.name)
            }
            None => self.message.clone().unwrap_or_else(|| "no tensor was compared".into()),
        };
        panic!("beit-seg: case `{}` {}: {head}\n{}", self.name, self.status.word(), case_text(self, Verbosity::Normal));
    }
}
