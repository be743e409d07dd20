//! `beit-seg verify`: fixture cases against one of our backends, or against tensors another
//! implementation wrote (`--candidate`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::progress::Progress;
use super::{write_report, BackendArgs};
use crate::backend;
use crate::conformance::candidate::CandidateSource;
use crate::conformance::case::{discover, Case, NameFilter};
use crate::conformance::names::NameMap;
use crate::conformance::report::{case_line, case_table, to_json, to_junit, CaseStatus, Summary};
use crate::conformance::{run_case, run_case_dir, Target, VerifyOptions};

/// Run fixture cases (beit-fixture/1) and compare every expected tensor.
///
/// Each CASE is a case directory (with case.json) or a directory searched recursively for cases
/// (one with none is an error). Prints a table per case and closes with `N passed, N failed,
/// N skipped`. Exit status: 0 all pass, 1 a case failed, 2 usage error, 3 a case could not be
/// checked.
///
/// Examples:
///   beit-seg verify fixtures/                         # the reference on every bundled case
///   beit-seg verify --candidate out/ fixtures/tiny-whole   # tensors another port wrote
///   beit-seg verify --candidate hf-out/ --names hf fixtures/tiny-whole fixtures/var-odd-size
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Case directories, or directories containing cases.
    #[arg(required = true, value_name = "CASE")]
    pub dirs: Vec<PathBuf>,
    /// The implementation under test (ignored with --candidate).
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
    /// Replace existing --json / --junit files (never a device, FIFO or an input of the run).
    #[arg(long)]
    pub force: bool,
    /// Run (or, with --candidate, compare) float64 cases in float32 with the fp32 tolerance
    /// (reported as such).
    #[arg(long)]
    pub as_f32: bool,
    /// Do not fail a case for expected tensors that are not produced (still listed).
    #[arg(long)]
    pub allow_uncovered: bool,
    /// Unknown case.json keys and unknown kinds are errors (default: a warning / a skip).
    #[arg(long)]
    pub strict: bool,
    /// Print only failing rows of each table, and no progress.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `beit-seg verify`.
pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let filter = NameFilter::new(&a.filter)?;
    if let (Some(j), Some(x)) = (&a.json, &a.junit) {
        if j == x || crate::fsutil::same_file(j, x) {
            bail!("--json and --junit name the same file {}", j.display());
        }
    }
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
    // The reports are checked before any case runs: never over an input (a case's files, the
    // candidate's), never over a device or FIFO, over an existing file only with --force.
    let case_files: Vec<PathBuf> = cases.iter().map(|(d, _)| d.join("case.json")).collect();
    let mut inputs: Vec<&std::path::Path> = case_files.iter().map(PathBuf::as_path).collect();
    if let Some(c) = &a.candidate {
        inputs.push(c);
    }
    for p in [&a.json, &a.junit].into_iter().flatten() {
        crate::fsutil::check_output(p, a.force, &inputs)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    let opts = VerifyOptions {
        as_f32: a.as_f32,
        allow_uncovered: a.allow_uncovered,
        strict: a.strict,
        save_outputs: a.save_outputs.clone(),
    };
    let backend_box;
    let source;
    let target = match &a.candidate {
        Some(dir) => {
            if !dir.exists() && !dir.with_extension("npz").exists() && !dir.with_extension("safetensors").exists() {
                bail!("--candidate {}: no such file or directory", dir.display());
            }
            let names = a.names.as_deref().map(NameMap::load).transpose()?;
            source = CandidateSource { root: dir.clone(), names };
            Target::Candidate { source: &source, single: cases.len() == 1 }
        }
        None => {
            backend_box = backend::open(&a.backend.spec())?;
            Target::Backend(backend_box.as_ref())
        }
    };
    let bar = Progress::new("cases", cases.len() as u64, a.quiet);
    let mut reports = Vec::new();
    for (i, (dir, case)) in cases.iter().enumerate() {
        bar.set(i as u64, cases.len() as u64, &dir.display().to_string());
        let r = match case {
            Some(case) => run_case(case, &target, &opts),
            // Unreadable: run_case_dir reports why, as an ERROR row.
            None => run_case_dir(dir, &target, &opts),
        };
        for w in &r.warnings {
            bar.note(&format!("warning: {w}"));
            if matches!(bar, Progress::Quiet) {
                errln!("warning: {w}");
            }
        }
        bar.print(&format!("{}\n{}", case_line(&r), case_table(&r, a.quiet)))?;
        reports.push(r);
    }
    bar.finish();
    let s = Summary::of(&reports);
    outln!()?;
    if s.tensors > 0 {
        outln!(
            "coverage: {}/{} expected tensors produced ({:.1}%) by {}",
            s.covered,
            s.tensors,
            s.coverage_percent(),
            target.name()
        )?;
    }
    for r in reports.iter().filter(|r| r.status == CaseStatus::Fail || r.status == CaseStatus::Error) {
        let first = r.first_failure().map(|t| format!(" (first failing tensor: {})", t.name)).unwrap_or_default();
        let what = if r.status == CaseStatus::Error { "could not check" } else { "failed" };
        outln!("{what}: {}{first}", r.name)?;
    }
    if let Some(p) = &a.json {
        write_report(p, &to_json(&reports), a.force, &inputs)?;
    }
    if let Some(p) = &a.junit {
        write_report(p, &to_junit(&reports), a.force, &inputs)?;
    }
    outln!("{}", s.closing_line())?;
    Ok(ExitCode::from(s.exit_code()))
}
