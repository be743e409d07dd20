//! Reading fixture cases (`beit-fixture/1`, see docs/fixture-format.md): discovery of case
//! directories, the `case.json` manifest, and the per-output tolerances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::array::{read_npy, AnyArray, ArrayError};
pub use crate::float::Dtype;

/// The fixture format this reader implements.
pub const FORMAT: &str = "beit-fixture/1";

/// A problem with a case directory, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// A bad `case.json` (or a file it names).
    #[error("{path}: {msg}")]
    Manifest {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// An unreadable array file of the case.
    #[error(transparent)]
    Array(#[from] ArrayError),
    /// A missing or unreadable file or directory (the message names it).
    #[error("{0}")]
    Io(String),
}

/// Element-wise rule `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tolerance {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

impl Tolerance {
    /// The fp32 default of the format (used when a case gives none, and for `--as-f32`).
    pub const FP32: Tolerance = Tolerance { rtol: 1e-4, atol: 1e-4 };

    fn from_value(v: &Value, path: &Path, key: &str) -> Result<Self, CaseError> {
        let get = |k: &str| -> Result<f64, CaseError> {
            v.get(k).and_then(Value::as_f64).ok_or_else(|| CaseError::Manifest {
                path: path.to_path_buf(),
                msg: format!("`{key}.{k}` must be a number"),
            })
        };
        let t = Tolerance { rtol: get("rtol")?, atol: get("atol")? };
        if !(t.rtol >= 0.0 && t.atol >= 0.0 && t.rtol.is_finite() && t.atol.is_finite()) {
            return Err(CaseError::Manifest {
                path: path.to_path_buf(),
                msg: format!(
                    "`{key}` must have finite, non-negative rtol and atol, got rtol {} atol {}",
                    t.rtol, t.atol
                ),
            });
        }
        Ok(t)
    }
}

/// The kind of a case (docs/fixture-format.md), parsed when the case is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseKind {
    /// A model config, weights and an input batch; every named module output.
    Segmentor,
    /// A small dataset through the whole evaluation (test pipeline, model, metric).
    Pipeline,
    /// `IoUMetric` on given predictions and labels.
    Metric,
    /// OpenCV's bilinear resize of uint8 images.
    Resize,
    /// A checkpoint in another key dialect converted to MMSegmentation names.
    Converter,
    /// A relative-position table resized to another window.
    RelposResize,
    /// A kind this reader does not know: reported as skipped (a failure with `--strict`).
    Unknown(String),
}

impl CaseKind {
    /// The kind named `s` in `case.json` (an unknown name is [`CaseKind::Unknown`]).
    pub fn parse(s: &str) -> CaseKind {
        match s {
            "segmentor" => CaseKind::Segmentor,
            "pipeline" => CaseKind::Pipeline,
            "metric" => CaseKind::Metric,
            "resize" => CaseKind::Resize,
            "converter" => CaseKind::Converter,
            "relpos_resize" => CaseKind::RelposResize,
            other => CaseKind::Unknown(other.to_string()),
        }
    }

    /// The name in `case.json`.
    pub fn name(&self) -> &str {
        match self {
            CaseKind::Segmentor => "segmentor",
            CaseKind::Pipeline => "pipeline",
            CaseKind::Metric => "metric",
            CaseKind::Resize => "resize",
            CaseKind::Converter => "converter",
            CaseKind::RelposResize => "relpos_resize",
            CaseKind::Unknown(s) => s,
        }
    }

    /// The manifest keys of this kind besides the common ones ([`COMMON_KEYS`]).
    pub fn keys(&self) -> &'static [&'static str] {
        match self {
            CaseKind::Segmentor => {
                &["model", "weights", "weights_dialect", "inputs", "outputs", "precision", "truth", "budget"]
            }
            CaseKind::Pipeline => &[
                "model",
                "weights",
                "weights_dialect",
                "dataset",
                "outputs",
                "metrics",
                "per_class_table",
                "precision",
                "truth",
                "budget",
                "truth_metrics",
            ],
            CaseKind::Metric => {
                &["num_classes", "ignore_index", "reduce_zero_label", "inputs", "metrics", "classes", "per_class_table"]
            }
            CaseKind::Resize => &["inputs", "sizes", "outputs"],
            CaseKind::Converter => &["source", "dialect", "options", "expected"],
            CaseKind::RelposResize => &["inputs", "src_window", "dst_window", "outputs"],
            CaseKind::Unknown(_) => &[],
        }
    }

    /// Every known kind name.
    pub const KNOWN: [&'static str; 6] = ["segmentor", "pipeline", "metric", "resize", "converter", "relpos_resize"];
}

impl std::fmt::Display for CaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Manifest keys every kind may have.
pub const COMMON_KEYS: [&str; 8] =
    ["format", "name", "kind", "description", "provenance", "dtype", "tolerance", "tolerances"];

/// One fixture case directory.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case directory (files named by the manifest are relative to it).
    pub dir: PathBuf,
    /// `case.json` as parsed JSON.
    pub manifest: Value,
    /// `name` (the directory name when absent).
    pub name: String,
    /// `kind`.
    pub kind: CaseKind,
    /// `description`.
    pub description: String,
    /// Manifest keys this reader does not know (a typo such as `tolerence` would otherwise be
    /// silently ignored): warned about, an error with `--strict`.
    pub unknown_keys: Vec<String>,
    /// `dtype`: what MMSegmentation ran in, and the dtype of the weights, inputs and float
    /// outputs (float32 when absent).
    pub dtype: Dtype,
    /// `tolerance` (the fp32 default when absent).
    pub tolerance: Tolerance,
    /// `tolerances`: per-output overrides.
    pub tolerances: BTreeMap<String, Tolerance>,
    /// Expected outputs: name → file (relative to `dir`), in manifest order. For a
    /// half-precision twin, the float64 truth (`truth`), which outputs are judged against.
    pub outputs: Vec<(String, PathBuf)>,
    /// A half-precision twin's precision, budget and autocast outputs (`"precision"`).
    pub half: Option<crate::conformance::budget::HalfTwin>,
}

impl Case {
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("case.json")
    }

    /// Reads `case.json` in `dir`.
    pub fn load(dir: &Path) -> Result<Case, CaseError> {
        let path = dir.join("case.json");
        let text = crate::files::read_regular_to_string(&path, crate::files::MAX_TEXT_BYTES)
            .map_err(|e| CaseError::Io(format!("{}: {e}", path.display())))?;
        Self::parse(&text, dir)
    }

    /// Parses the text of `dir/case.json` (what [`Case::load`] reads; no file is touched).
    pub fn parse(text: &str, dir: &Path) -> Result<Case, CaseError> {
        let path = dir.join("case.json");
        let manifest: Value = serde_json::from_str(text)
            .map_err(|e| CaseError::Manifest { path: path.clone(), msg: format!("invalid JSON: {e}") })?;
        let bad = manifest_error(&path);
        if !manifest.is_object() {
            return Err(bad("the manifest must be a JSON object".into()));
        }
        check_format(&manifest, &path)?;
        let kind = parse_kind(&manifest, &path)?;
        let obj = manifest.as_object().ok_or_else(|| bad("the manifest must be a JSON object".into()))?;
        let unknown_keys: Vec<String> = if matches!(kind, CaseKind::Unknown(_)) {
            Vec::new()
        } else {
            obj.keys()
                .filter(|k| !COMMON_KEYS.contains(&k.as_str()) && !kind.keys().contains(&k.as_str()))
                .cloned()
                .collect()
        };
        let name = manifest
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        let description = manifest.get("description").and_then(Value::as_str).unwrap_or("").to_string();
        let dtype = match manifest.get("dtype").and_then(Value::as_str) {
            None | Some("float32") => Dtype::F32,
            Some("float64") => Dtype::F64,
            Some(o) => return Err(bad(format!("`dtype` must be float32 or float64, got {o:?}"))),
        };
        let tolerance = match manifest.get("tolerance") {
            Some(v) => Tolerance::from_value(v, &path, "tolerance")?,
            None => Tolerance::FP32,
        };
        let mut tolerances = BTreeMap::new();
        if let Some(obj) = manifest.get("tolerances").and_then(Value::as_object) {
            for (k, v) in obj {
                tolerances.insert(k.clone(), Tolerance::from_value(v, &path, &format!("tolerances.{k}"))?);
            }
        }
        let mut outputs = file_map(&manifest, "outputs", &path)?;
        let half = match manifest.get("precision") {
            None => None,
            Some(v) => Some(parse_half_twin(&manifest, v, dtype, &mut outputs, &path)?),
        };
        Ok(Case {
            dir: dir.to_path_buf(),
            manifest,
            name,
            kind,
            description,
            unknown_keys,
            dtype,
            tolerance,
            tolerances,
            outputs,
            half,
        })
    }

    /// The tolerance for output `name`.
    pub fn tolerance_for(&self, name: &str) -> Tolerance {
        self.tolerances.get(name).copied().unwrap_or(self.tolerance)
    }

    /// A required string field naming a file of the case, resolved against the case directory.
    pub fn file_field(&self, key: &str) -> Result<PathBuf, CaseError> {
        let f = self.manifest.get(key).and_then(Value::as_str).ok_or_else(|| CaseError::Manifest {
            path: self.manifest_path(),
            msg: format!("`{key}` (a file name) is missing"),
        })?;
        let f = inside_case(f)
            .map_err(|msg| CaseError::Manifest { path: self.manifest_path(), msg: format!("`{key}`: {msg}") })?;
        Ok(self.dir.join(f))
    }

    /// The file of input `name` (from the `inputs` object).
    pub fn input_file(&self, name: &str) -> Result<PathBuf, CaseError> {
        let f = self.manifest.get("inputs").and_then(|i| i.get(name)).and_then(Value::as_str).ok_or_else(|| {
            CaseError::Manifest { path: self.manifest_path(), msg: format!("`inputs.{name}` (a file name) is missing") }
        })?;
        let f = inside_case(f).map_err(|msg| CaseError::Manifest {
            path: self.manifest_path(),
            msg: format!("`inputs.{name}`: {msg}"),
        })?;
        Ok(self.dir.join(f))
    }

    /// Reads an expected output.
    ///
    /// An expected float tensor holding NaN or inf is an error naming the file: a value that
    /// cannot be compared is never silently equal (a NaN fixture would pass a NaN candidate).
    pub fn read_output(&self, rel: &Path) -> Result<AnyArray, CaseError> {
        let path = self.dir.join(rel);
        let a = read_npy(&path)?;
        if let Some(s) = crate::weights::non_finite_summary(&a) {
            return Err(CaseError::Manifest {
                path,
                msg: format!("the expected tensor is not finite ({s}): it cannot be judged; regenerate the fixture"),
            });
        }
        Ok(a)
    }
}

/// A [`CaseError::Manifest`] about the manifest at `path`.
fn manifest_error(path: &Path) -> impl Fn(String) -> CaseError + '_ {
    move |msg| CaseError::Manifest { path: path.to_path_buf(), msg }
}

/// `format`: exactly [`FORMAT`] (a newer `beit-fixture/N` is named as such).
fn check_format(manifest: &Value, path: &Path) -> Result<(), CaseError> {
    let bad = manifest_error(path);
    match manifest.get("format").and_then(Value::as_str) {
        Some(FORMAT) => Ok(()),
        Some(f) if f.starts_with("beit-fixture/") => {
            Err(bad(format!("format `{f}` is newer than this reader ({FORMAT})")))
        }
        other => Err(bad(format!("`format` must be \"{FORMAT}\", got {other:?}"))),
    }
}

/// `kind`: a string (an unknown one is [`CaseKind::Unknown`], not an error).
fn parse_kind(manifest: &Value, path: &Path) -> Result<CaseKind, CaseError> {
    let bad = manifest_error(path);
    match manifest.get("kind") {
        None => Err(bad("`kind` is missing".into())),
        Some(Value::String(k)) => Ok(CaseKind::parse(k)),
        Some(other) => {
            Err(bad(format!("`kind` must be a string (one of {}), got {other}", CaseKind::KNOWN.join(", "))))
        }
    }
}

/// The `{name: file}` object `key` (empty when absent), each file inside the case directory.
fn file_map(manifest: &Value, key: &str, path: &Path) -> Result<Vec<(String, PathBuf)>, CaseError> {
    let bad = manifest_error(path);
    let mut out = Vec::new();
    if let Some(o) = manifest.get(key) {
        let obj = o.as_object().ok_or_else(|| bad(format!("`{key}` must be an object {{name: file}}")))?;
        for (k, v) in obj {
            let f = v.as_str().ok_or_else(|| bad(format!("`{key}.{k}` must be a file name")))?;
            let f = inside_case(f).map_err(|m| bad(format!("`{key}.{k}`: {m}")))?;
            out.push((k.clone(), f));
        }
    }
    Ok(out)
}

/// A half-precision twin (`precision` = `precision_v`): its `truth` (float64) replaces
/// `outputs`, which become the autocast outputs; the `budget` of each output.
fn parse_half_twin(
    manifest: &Value,
    precision_v: &Value,
    dtype: Dtype,
    outputs: &mut Vec<(String, PathBuf)>,
    path: &Path,
) -> Result<crate::conformance::budget::HalfTwin, CaseError> {
    let bad = manifest_error(path);
    let p = precision_v.as_str().and_then(|s| crate::float::Precision::parse(s).ok()).filter(|p| p.is_half());
    let precision = p.ok_or_else(|| bad(format!("`precision` must be \"bf16\" or \"fp16\", got {precision_v}")))?;
    if dtype != Dtype::F32 {
        return Err(bad("a half-precision twin has `dtype` float32 (its weights and inputs)".into()));
    }
    let truth = file_map(manifest, "truth", path)?;
    let names = |v: &[(String, PathBuf)]| v.iter().map(|(k, _)| k.clone()).collect::<std::collections::BTreeSet<_>>();
    if truth.is_empty() || names(&truth) != names(outputs) {
        return Err(bad("`truth` must name the same tensors as `outputs` (the float64 run of each)".into()));
    }
    let bobj = manifest
        .get("budget")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("a half-precision twin needs `budget` {name: {...}}".into()))?;
    let mut budget = BTreeMap::new();
    for (k, v) in bobj {
        let b = crate::conformance::budget::Budget::from_value(v, &format!("budget.{k}")).map_err(&bad)?;
        budget.insert(k.clone(), b);
    }
    let autocast = std::mem::replace(outputs, truth);
    Ok(crate::conformance::budget::HalfTwin { precision, budget, autocast })
}

/// A file named by a manifest, as a path relative to the case directory: a relative path with no
/// `..` component (a case cannot make `verify` open `/etc/passwd` or `../../secret`).
pub fn inside_case(f: &str) -> Result<PathBuf, String> {
    let p = Path::new(f);
    let ok = !f.is_empty()
        && p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{f:?} must be a relative path inside the case directory (no `..`, not absolute)"))
    }
}

/// Finds case directories: each path is a case (has `case.json`) or is searched recursively;
/// results are sorted by path so runs are reproducible.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CaseError> {
    let mut found = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(CaseError::Io(format!("{}: no such file or directory", p.display())));
        }
        if p.is_file() && p.file_name().is_some_and(|n| n == "case.json") {
            found.push(p.parent().unwrap_or(Path::new(".")).to_path_buf());
            continue;
        }
        let before = found.len();
        walk(p, &mut found)?;
        if found.len() == before {
            return Err(CaseError::Io(format!(
                "{}: contains no fixture case (no case.json in it or below it)",
                p.display()
            )));
        }
    }
    found.sort();
    // One run per case directory, however many paths (symlinks, `a/../a`) reach it.
    let mut seen = std::collections::HashSet::new();
    found.retain(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), CaseError> {
    let mut visited = std::collections::HashSet::new();
    walk_from(dir, found, &mut visited, 0)
}

/// Directories are entered once each (by canonical path) and at most 64 levels deep, so a
/// symlink loop neither repeats cases nor recurses without end.
fn walk_from(
    dir: &Path,
    found: &mut Vec<PathBuf>,
    visited: &mut std::collections::HashSet<PathBuf>,
    depth: usize,
) -> Result<(), CaseError> {
    let canon = std::fs::canonicalize(dir).map_err(|e| CaseError::Io(format!("{}: {e}", dir.display())))?;
    if depth > 64 || !visited.insert(canon) {
        return Ok(());
    }
    if dir.join("case.json").is_file() {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| CaseError::Io(format!("{}: {e}", dir.display())))?;
    let mut subdirs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    for d in subdirs {
        walk_from(&d, found, visited, depth + 1)?;
    }
    Ok(())
}

/// Case-name filters: shell-style globs (`*`, `?`, `[...]`, via `globset`); a name passes when
/// any glob matches (or when there are none).
pub struct NameFilter(Option<globset::GlobSet>);

impl NameFilter {
    /// The filter of `--filter GLOB...` (none: every name passes).
    pub fn new(globs: &[String]) -> Result<Self, CaseError> {
        if globs.is_empty() {
            return Ok(NameFilter(None));
        }
        let mut b = globset::GlobSetBuilder::new();
        for g in globs {
            b.add(globset::Glob::new(g).map_err(|e| CaseError::Io(format!("--filter `{g}`: {e}")))?);
        }
        Ok(NameFilter(Some(b.build().map_err(|e| CaseError::Io(format!("--filter: {e}")))?)))
    }

    /// Whether case `name` passes the filter.
    pub fn matches(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::NameFilter;

    #[test]
    fn globs() {
        let f = |g: &str, n: &str| NameFilter::new(&[g.to_string()]).unwrap().matches(n);
        assert!(f("tiny-*", "tiny-whole"));
        assert!(f("*-f64", "slide-b2-f64"));
        assert!(!f("*-f64", "slide-b2"));
        assert!(f("var-?o-aux", "var-no-aux"));
        assert!(f("*", ""));
        // No exponential backtracking on long names.
        assert!(!f("*a*a*a*a*a*a*a*a*b", &"a".repeat(200)));
        assert!(NameFilter::new(&[]).unwrap().matches("anything"));
    }
}
