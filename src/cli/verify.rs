//! `beit-seg verify`: fixture cases against one of our backends, or against tensors another
//! implementation wrote (`--candidate`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::progress::Progress;
use super::{write_report, BackendArgs};
use crate::backend::{self, Backend};
use crate::conformance::candidate::CandidateSource;
use crate::conformance::case::{discover, Case, NameFilter};
use crate::conformance::names::NameMap;
use crate::conformance::report::{case_text, to_json, to_junit, CaseReport, CaseStatus, Summary, Verbosity};
use crate::conformance::{run_case, run_case_dir, Scope, Target, VerifyOptions};

/// Run fixture cases (beit-fixture/1) and compare every expected tensor.
///
/// Each CASE is a case directory (with case.json) or a directory searched recursively for cases
/// (one with none is an error). Prints one line per case (and the tensor table of each case that
/// fails or passes only partially) and closes with `N passed, N failed, N skipped`. A case in
/// which nothing was compared is NO EVIDENCE, never a pass. Exit status: 0 all pass, 1 a case
/// failed (or showed no evidence), 2 usage error, 3 a case could not be checked.
///
/// Examples:
///   beit-seg verify fixtures/                         # the reference on every bundled case
///   beit-seg verify --candidate out/ fixtures/tiny-whole   # tensors another port wrote
///   beit-seg verify --candidate hf-out/ --names hf fixtures/tiny-whole fixtures/var-odd-size
///   beit-seg verify --candidate vit-out/ --scope backbone fixtures/tiny-whole   # a backbone port
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Case directories, or directories containing cases.
    #[arg(required = true, value_name = "CASE")]
    pub dirs: Vec<PathBuf>,
    /// The implementation under test (ignored with --candidate, but for --precision: the
    /// precision the candidate ran in; fp16/bf16 are judged on the half-precision twins of that
    /// precision against MMSegmentation's own half-precision error, other cases are skipped).
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Compare tensors another implementation wrote instead of running ours: DIR/<output>.npy
    /// for one case (or DIR.npz / DIR.safetensors), DIR/<case name>/<output>.npy for several;
    /// `metrics.json` for pipeline/metric cases (docs/fixture-format.md, docs/validating.md).
    #[arg(long, value_name = "DIR")]
    pub candidate: Option<PathBuf>,
    /// Name map from the candidate's tensor names to fixture names: `hf`, `timm` (built in) or
    /// a JSON file (format beit-seg-names/1).
    #[arg(long, value_name = "MAP", requires = "candidate")]
    pub names: Option<String>,
    /// Write what our backend produced as a candidate directory (DIR/<case>/<output>.npy).
    #[arg(long, value_name = "DIR", conflicts_with = "candidate")]
    pub save_outputs: Option<PathBuf>,
    /// Only run cases whose name matches this glob (`*`, `?`, `[..]`); may be repeated.
    #[arg(long)]
    pub filter: Vec<String>,
    /// Write the full report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Replace existing --json / --junit / --save-outputs files (never a device, FIFO or an input
    /// of the run).
    #[arg(long)]
    pub force: bool,
    /// Run (or, with --candidate, compare) float64 cases in float32 with the fp32 tolerance
    /// (reported as such).
    #[arg(long)]
    pub as_f32: bool,
    /// Do not fail a case for in-scope expected tensors that are not produced: it passes as
    /// `PASS (partial: k/n)` (for bring-up; a case in which nothing was compared still fails).
    #[arg(long)]
    pub allow_uncovered: bool,
    /// Hold the implementation to the expected tensors under this module path only (`backbone`,
    /// `neck`, `decode_head`, `decode_head.psp_modules`, ...); may be repeated. Everything in
    /// scope must be produced; what is outside and not produced is reported as out of scope.
    #[arg(long, value_name = "MODULE")]
    pub scope: Vec<String>,
    /// Leave expected tensors matching this glob out of the scope (`*` crosses dots:
    /// `backbone.layers.*.ffn.*`); may be repeated.
    #[arg(long, value_name = "GLOB")]
    pub ignore: Vec<String>,
    /// Unknown case.json keys and unknown kinds are errors (default: a warning / a skip).
    #[arg(long)]
    pub strict: bool,
    /// Print only failing cases (with their failing rows) and the summary, and no progress.
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the full tensor table of every case (default: only of cases that fail or pass
    /// partially).
    #[arg(long, short)]
    pub verbose: bool,
}

/// `beit-seg verify`.
pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let filter = NameFilter::new(&a.filter)?;
    if let (Some(j), Some(x)) = (&a.json, &a.junit) {
        if j == x || crate::files::same_file(j, x) {
            bail!("--json and --junit name the same file {}", j.display());
        }
    }
    let cases = select_cases(&a, &filter)?;
    // The reports are checked before any case runs: never over an input (a case's files, the
    // candidate's), never over a device or FIFO, over an existing file only with --force.
    let case_files: Vec<PathBuf> = cases.iter().map(|(d, _)| d.join("case.json")).collect();
    let mut inputs: Vec<&Path> = case_files.iter().map(PathBuf::as_path).collect();
    if let Some(c) = &a.candidate {
        inputs.push(c);
    }
    for p in [&a.json, &a.junit].into_iter().flatten() {
        crate::files::check_output(p, a.force, &inputs)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    let opts = VerifyOptions {
        as_f32: a.as_f32,
        allow_uncovered: a.allow_uncovered,
        scope: Scope::new(&a.scope, &a.ignore)?,
        precision: a.candidate.as_ref().map(|_| a.backend.precision),
        strict: a.strict,
        save_outputs: a.save_outputs.clone(),
        force: a.force,
    };
    check_distinct_names(&a, &cases)?;
    let under_test = UnderTest::open(&a)?;
    let target = under_test.target(cases.len() == 1);
    let reports = run_cases(&cases, &target, &opts, &a)?;
    let s = Summary::of(&reports);
    print_summary(&reports, &s, &opts, &target)?;
    if let Some(p) = &a.json {
        write_report(p, &to_json(&reports), a.force, &inputs)?;
    }
    if let Some(p) = &a.junit {
        write_report(p, &to_junit(&reports), a.force, &inputs)?;
    }
    outln!("{}", s.closing_line())?;
    Ok(ExitCode::from(s.exit_code()))
}

/// The case directories under `a.dirs` whose name passes `filter`, each with its `case.json`
/// read once (`None` when unreadable: the run reports why); an error when none is left.
fn select_cases(a: &VerifyArgs, filter: &NameFilter) -> Result<Vec<(PathBuf, Option<Case>)>> {
    // Each case.json is read once: the filter needs its name, the run its manifest.
    let mut cases: Vec<(PathBuf, Option<Case>)> = discover(&a.dirs)?
        .into_iter()
        .map(|d| {
            let c = Case::load(&d).ok();
            (d, c)
        })
        .collect();
    cases.retain(|(d, c)| {
        let name = match c {
            Some(c) => c.name.clone(),
            None => d.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        filter.matches(&name)
    });
    if cases.is_empty() {
        bail!("no fixture case matches --filter {:?} under {:?}", a.filter, a.dirs);
    }
    Ok(cases)
}

/// Refuses two cases of one name where they would share a candidate subfolder or overwrite
/// each other's --save-outputs, before anything runs.
fn check_distinct_names(a: &VerifyArgs, cases: &[(PathBuf, Option<Case>)]) -> Result<()> {
    if a.save_outputs.is_none() && (a.candidate.is_none() || cases.len() <= 1) {
        return Ok(());
    }
    let mut seen: std::collections::BTreeMap<String, &PathBuf> = Default::default();
    for (d, c) in cases {
        let Some(c) = c else { continue };
        if let Some(first) = seen.insert(c.name.clone(), d) {
            bail!(
                "two cases are named `{}` ({} and {}): their candidate / --save-outputs folders would be one; \
                 rename one (case.json `name`) or run them separately",
                c.name,
                first.display(),
                d.display()
            );
        }
    }
    Ok(())
}

/// What the cases are checked against, owned for the run (a [`Target`] only borrows it).
enum UnderTest {
    /// One of our backends.
    Backend(Box<dyn Backend>),
    /// The tensors another implementation wrote (`--candidate`, `--names`).
    Candidate(CandidateSource),
}

impl UnderTest {
    /// Opens the backend, or checks the candidate directory and loads its name map.
    fn open(a: &VerifyArgs) -> Result<UnderTest> {
        Ok(match &a.candidate {
            Some(dir) => {
                let names = a.names.as_deref().map(NameMap::load).transpose()?;
                let source = CandidateSource { root: dir.clone(), names };
                source.check_root()?;
                UnderTest::Candidate(source)
            }
            None => UnderTest::Backend(backend::open(&a.backend.spec())?),
        })
    }

    /// The [`Target`] the cases run on; `single` when one case runs.
    fn target(&self, single: bool) -> Target<'_> {
        match self {
            UnderTest::Backend(b) => Target::Backend(b.as_ref()),
            UnderTest::Candidate(source) => Target::Candidate { source, single },
        }
    }
}

/// Runs every case with a progress bar, printing each case's text and warnings as it ends.
fn run_cases(
    cases: &[(PathBuf, Option<Case>)],
    target: &Target<'_>,
    opts: &VerifyOptions,
    a: &VerifyArgs,
) -> Result<Vec<CaseReport>> {
    let verbosity = if a.quiet {
        Verbosity::Quiet
    } else if a.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let bar = Progress::new("cases", cases.len() as u64, a.quiet);
    let mut reports = Vec::new();
    for (i, (dir, case)) in cases.iter().enumerate() {
        bar.set(i as u64, cases.len() as u64, &dir.display().to_string());
        let r = match case {
            Some(case) => run_case(case, target, opts),
            // Unreadable: run_case_dir reports why, as an ERROR row.
            None => run_case_dir(dir, target, opts),
        };
        for w in &r.warnings {
            bar.note(&format!("warning: {w}"));
            if matches!(bar, Progress::Quiet) {
                errln!("warning: {w}");
            }
        }
        let text = case_text(&r, verbosity);
        if !text.is_empty() {
            bar.print(&text)?;
        }
        reports.push(r);
    }
    bar.finish();
    Ok(reports)
}

/// The lines after the cases: coverage, partial passes, and each case that did not pass.
fn print_summary(reports: &[CaseReport], s: &Summary, opts: &VerifyOptions, target: &Target<'_>) -> Result<()> {
    outln!()?;
    if s.tensors > 0 {
        let scope = if opts.scope.is_all() { String::new() } else { format!(" in scope {}", opts.scope.describe()) };
        outln!(
            "coverage: {}/{} expected tensors{scope} produced ({:.1}%) by {}",
            s.covered,
            s.tensors,
            s.coverage_percent(),
            target.name()
        )?;
    }
    if s.partial > 0 {
        outln!("partial: {} case(s) passed with expected tensors not produced (--allow-uncovered)", s.partial)?;
    }
    for r in
        reports.iter().filter(|r| matches!(r.status, CaseStatus::Fail | CaseStatus::Error | CaseStatus::NoEvidence))
    {
        let first = r.first_failure().map(|t| format!(" (first failing tensor: {})", t.name)).unwrap_or_default();
        let what = match r.status {
            CaseStatus::Error => "could not check",
            CaseStatus::NoEvidence => "no evidence",
            _ => "failed",
        };
        outln!("{what}: {}{first}", r.name)?;
    }
    Ok(())
}
