//! Reading fixture cases (`beit-fixture/1`, see docs/fixture-format.md): discovery of case
//! directories, the `case.json` manifest, and the per-output tolerances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::array::{read_npy, AnyArray, ArrayError};

/// The fixture format this reader implements.
pub const FORMAT: &str = "beit-fixture/1";

/// A problem with a case directory, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{path}: {msg}")]
    Manifest { path: PathBuf, msg: String },
    #[error(transparent)]
    Array(#[from] ArrayError),
    #[error("{0}")]
    Io(String),
}

/// Element-wise rule `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tolerance {
    pub rtol: f64,
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
        Ok(Tolerance { rtol: get("rtol")?, atol: get("atol")? })
    }
}

/// The precision a case was generated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

/// One fixture case directory.
#[derive(Debug, Clone)]
pub struct Case {
    pub dir: PathBuf,
    pub manifest: Value,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub dtype: Dtype,
    pub tolerance: Tolerance,
    pub tolerances: BTreeMap<String, Tolerance>,
    /// Expected outputs: name → file (relative to `dir`), in manifest order.
    pub outputs: Vec<(String, PathBuf)>,
}

impl Case {
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("case.json")
    }

    /// Reads `case.json` in `dir`.
    pub fn load(dir: &Path) -> Result<Case, CaseError> {
        let path = dir.join("case.json");
        let text = std::fs::read_to_string(&path).map_err(|e| CaseError::Io(format!("{}: {e}", path.display())))?;
        let manifest: Value = serde_json::from_str(&text)
            .map_err(|e| CaseError::Manifest { path: path.clone(), msg: format!("invalid JSON: {e}") })?;
        let bad = |msg: String| CaseError::Manifest { path: path.clone(), msg };
        if !manifest.is_object() {
            return Err(bad("the manifest must be a JSON object".into()));
        }
        match manifest.get("format").and_then(Value::as_str) {
            Some(FORMAT) => {}
            Some(f) if f.starts_with("beit-fixture/") => {
                return Err(bad(format!("format `{f}` is newer than this reader ({FORMAT})")))
            }
            other => return Err(bad(format!("`format` must be \"{FORMAT}\", got {other:?}"))),
        }
        let kind =
            manifest.get("kind").and_then(Value::as_str).ok_or_else(|| bad("`kind` is missing".into()))?.to_string();
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
        let mut outputs = Vec::new();
        if let Some(o) = manifest.get("outputs") {
            let obj = o.as_object().ok_or_else(|| bad("`outputs` must be an object {name: file}".into()))?;
            for (k, v) in obj {
                let f = v.as_str().ok_or_else(|| bad(format!("`outputs.{k}` must be a file name")))?;
                outputs.push((k.clone(), PathBuf::from(f)));
            }
        }
        Ok(Case { dir: dir.to_path_buf(), manifest, name, kind, description, dtype, tolerance, tolerances, outputs })
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
        Ok(self.dir.join(f))
    }

    /// The file of input `name` (from the `inputs` object).
    pub fn input_file(&self, name: &str) -> Result<PathBuf, CaseError> {
        let f = self.manifest.get("inputs").and_then(|i| i.get(name)).and_then(Value::as_str).ok_or_else(|| {
            CaseError::Manifest { path: self.manifest_path(), msg: format!("`inputs.{name}` (a file name) is missing") }
        })?;
        Ok(self.dir.join(f))
    }

    /// Reads an expected output.
    pub fn read_output(&self, rel: &Path) -> Result<AnyArray, CaseError> {
        Ok(read_npy(&self.dir.join(rel))?)
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
        walk(p, &mut found)?;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), CaseError> {
    if dir.join("case.json").is_file() {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| CaseError::Io(format!("{}: {e}", dir.display())))?;
    let mut subdirs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    for d in subdirs {
        walk(&d, found)?;
    }
    Ok(())
}

/// Shell-style glob match (`*`, `?`) of a case name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    rec(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("tiny-*", "tiny-whole"));
        assert!(glob_match("*-f64", "slide-b2-f64"));
        assert!(!glob_match("*-f64", "slide-b2"));
        assert!(glob_match("var-?o-aux", "var-no-aux"));
        assert!(glob_match("*", ""));
    }
}
