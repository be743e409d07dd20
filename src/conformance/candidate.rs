//! Tensors written by another implementation (`verify --candidate DIR`), read in the layout of
//! docs/fixture-format.md ("Validating another implementation"):
//!
//! * one case: `DIR/<output name>.npy`, or one `DIR.npz` / `DIR.safetensors` (DIR may name the
//!   file itself, or its stem);
//! * several cases: `DIR/<case name>/<output name>.npy` or `DIR/<case name>.npz|.safetensors`;
//! * pipeline and metric cases add `metrics.json` (MMSegmentation's keys).
//!
//! A name map ([`NameMap`]) renames and re-lays tensors first. This module also writes that
//! layout (`verify --save-outputs DIR`) from our own backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::names::{apply, Mapped, NameMap, NamesError};
use crate::array::{read_npy, read_npz, AnyArray, ArrayError};

/// Problems with a candidate directory; each names the file or tensor.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// Nothing for the case where a candidate should be.
    #[error("no candidate outputs for case `{case}`: looked for {looked}")]
    NotFound {
        /// The case's name.
        case: String,
        /// The paths that were tried.
        looked: String,
    },
    /// A candidate file or directory that does not fit the layout.
    #[error("{path}: {msg}")]
    Bad {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An unreadable `.npy` / `.npz`.
    #[error(transparent)]
    Array(#[from] ArrayError),
    /// An unreadable `.safetensors` archive.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A name map that does not apply (a failed transform, two tensors for one name).
    #[error(transparent)]
    Names(#[from] NamesError),
    /// An in-memory candidate ([`super::memory::Candidate::from_fn`]) returned an error.
    #[error("the candidate failed on case `{case}`: {msg}")]
    Produce {
        /// The case's name.
        case: String,
        /// The candidate's error, as it displays.
        msg: String,
    },
}

/// Where candidate outputs come from, and how their names map to fixture names.
pub struct CandidateSource {
    /// `DIR` of `--candidate DIR` (a directory, an `.npz` / `.safetensors`, or its stem).
    pub root: PathBuf,
    /// `--names`: the candidate's names to fixture names.
    pub names: Option<NameMap>,
}

/// A case's candidate outputs, under fixture names.
#[derive(Debug, Default)]
pub struct CandidateOutputs {
    /// The file or directory they were read from.
    pub location: PathBuf,
    /// Fixture name → (tensor after the map's transforms, the candidate's own name).
    pub tensors: BTreeMap<String, (AnyArray, String)>,
    /// Candidate names that matched no expected tensor (listed, not a failure).
    pub unused: Vec<String>,
    /// `metrics.json`, when present.
    pub metrics: Option<Value>,
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

fn is_archive(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == "npz" || e == "safetensors")
}

/// The entries of a candidate directory, by what they are.
#[derive(Default)]
struct Listing {
    npy: usize,
    archives: Vec<String>,
    subdirs: Vec<String>,
    metrics: bool,
}

fn list_dir(dir: &Path) -> Result<Listing, CandidateError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| CandidateError::Bad { path: dir.to_path_buf(), msg: format!("cannot list: {e}") })?;
    let mut l = Listing::default();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if p.is_dir() {
            l.subdirs.push(name);
        } else if name.ends_with(".npy") {
            l.npy += 1;
        } else if name == "metrics.json" {
            l.metrics = true;
        } else if name.ends_with(".npz") || name.ends_with(".safetensors") {
            l.archives.push(name);
        }
    }
    l.subdirs.sort();
    l.archives.sort();
    Ok(l)
}

fn first_few(v: &[String]) -> String {
    let mut s = v.iter().take(5).map(|x| format!("`{x}`")).collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(&format!(", ... ({} in all)", v.len()));
    }
    s
}

impl CandidateSource {
    /// Checks that the root exists in one of the layouts (a directory, an `.npz` /
    /// `.safetensors` file, or the stem of one), before any case runs.
    pub fn check_root(&self) -> Result<(), CandidateError> {
        let r = &self.root;
        let bad = |msg: String| CandidateError::Bad { path: r.clone(), msg };
        if r.is_dir() || is_archive(r) {
            return Ok(());
        }
        if r.exists() {
            return Err(bad(
                "is a file, but a candidate is a directory (DIR/<output>.npy, DIR/<case>/...) or an .npz / \
                 .safetensors file"
                    .into(),
            ));
        }
        if [".npz", ".safetensors"].iter().any(|e| with_ext(r, e).is_file()) {
            return Ok(());
        }
        Err(bad("no such file or directory (nor DIR.npz / DIR.safetensors)".into()))
    }

    /// The file or directory holding case `case`'s outputs; `single` when only one case runs
    /// (then DIR itself may hold them). A layout that does not fit the invocation is an error
    /// that says what was found: case subfolders but none for this case, an empty directory, a
    /// file where a directory is expected, or two candidates for one case.
    pub fn locate(&self, case: &str, single: bool) -> Result<PathBuf, CandidateError> {
        let r = &self.root;
        let bad = |path: &Path, msg: String| CandidateError::Bad { path: path.to_path_buf(), msg };
        let archives = |stem: &Path| -> Vec<PathBuf> {
            [".npz", ".safetensors"].iter().map(|e| with_ext(stem, e)).filter(|f| f.is_file()).collect()
        };
        let one_of = |stem: &Path, dir: Option<PathBuf>| -> Result<Option<PathBuf>, CandidateError> {
            let mut found: Vec<PathBuf> = dir.into_iter().collect();
            found.extend(archives(stem));
            match found.len() {
                0 => Ok(None),
                1 => Ok(found.pop()),
                _ => Err(bad(
                    stem,
                    format!(
                        "two candidates for case `{case}`: {}; keep one",
                        found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
                    ),
                )),
            }
        };
        if r.is_dir() {
            let sub = r.join(case);
            if sub.exists() && !sub.is_dir() && !is_archive(&sub) {
                return Err(bad(&sub, format!("is a file, but the outputs of case `{case}` are a directory")));
            }
            if let Some(p) = one_of(&sub, sub.is_dir().then(|| sub.clone()))? {
                return Ok(p);
            }
            if single {
                if let Some(p) = one_of(r, None)? {
                    return Err(bad(
                        r,
                        format!("is a directory, and {} exists too: two candidates; keep one", p.display()),
                    ));
                }
                let l = list_dir(r)?;
                if l.npy > 0 || l.metrics {
                    return Ok(r.clone());
                }
                let msg = if !l.subdirs.is_empty() || !l.archives.is_empty() {
                    let mut found = l.subdirs.iter().map(|d| format!("{d}/")).collect::<Vec<_>>();
                    found.extend(l.archives.iter().cloned());
                    format!(
                        "holds case subfolders or archives ({}) but none for case `{case}`, and no <output>.npy \
                         of its own: name the subfolder `{case}`, or pass the subfolder itself",
                        first_few(&found)
                    )
                } else {
                    format!("is empty: no <output>.npy files, no `{case}/` subfolder")
                };
                return Err(bad(r, msg));
            }
        } else if single {
            if is_archive(r) {
                return Ok(r.clone());
            }
            if let Some(p) = one_of(r, None)? {
                return Ok(p);
            }
        }
        let looked = if single {
            format!("{0}/<output>.npy, {0}.npz, {0}.safetensors, {0}/{case}/", r.display())
        } else {
            format!("{0}/{case}/, {0}/{case}.npz, {0}/{case}.safetensors (several cases: one per case)", r.display())
        };
        Err(CandidateError::NotFound { case: case.to_string(), looked })
    }

    /// Reads case `case`'s candidate outputs and maps them to fixture names; `expected` gives the
    /// expected shape of every fixture tensor (for `tokens_to_nchw` and the unused list).
    pub fn read(
        &self,
        case: &str,
        single: bool,
        expected: &BTreeMap<String, Vec<usize>>,
    ) -> Result<CandidateOutputs, CandidateError> {
        let location = self.locate(case, single)?;
        let (raw, metrics) = read_raw(&location)?;
        to_fixture_names(raw, self.names.as_ref(), expected, location, metrics)
    }
}

/// Maps a candidate's tensors (its own names) to fixture names through `names`, applying each
/// rule's transforms; a name that matches no expected tensor is listed as unused. The one path
/// for directory and in-memory candidates.
pub(crate) fn to_fixture_names(
    raw: Vec<(String, AnyArray)>,
    names: Option<&NameMap>,
    expected: &BTreeMap<String, Vec<usize>>,
    location: PathBuf,
    metrics: Option<Value>,
) -> Result<CandidateOutputs, CandidateError> {
    let mut out = CandidateOutputs { location, metrics, ..Default::default() };
    for (name, a) in raw {
        let (fixture, transform) = match names {
            None => (name.clone(), Vec::new()),
            Some(m) => match m.map(&name) {
                Mapped::Dropped => continue,
                Mapped::To { fixture, transform } => (fixture, transform),
            },
        };
        let Some(shape) = expected.get(&fixture) else {
            out.unused.push(if fixture == name { name } else { format!("{name} (→ {fixture})") });
            continue;
        };
        let a = apply(a, &transform, Some(shape), &name, &fixture)?;
        if let Some((_, first)) = out.tensors.get(&fixture) {
            return Err(NamesError::Collision { a: first.clone(), b: name, fixture }.into());
        }
        out.tensors.insert(fixture, (a, name));
    }
    Ok(out)
}

/// Tensors by name and the optional `metrics.json` of a candidate location.
type RawCandidate = (Vec<(String, AnyArray)>, Option<Value>);

/// Every tensor (by file stem or archive key) and `metrics.json` of a candidate location.
fn read_raw(location: &Path) -> Result<RawCandidate, CandidateError> {
    if location.is_file() {
        let tensors = if location.extension().is_some_and(|e| e == "npz") {
            read_npz(location)?
        } else {
            crate::checkpoint::read_any(
                location,
                crate::checkpoint::ReadOptions { widen_half: true, ..Default::default() },
            )?
        };
        let metrics_file = location.with_extension("metrics.json");
        return Ok((tensors, read_metrics(&metrics_file)?));
    }
    let rd = std::fs::read_dir(location)
        .map_err(|e| CandidateError::Bad { path: location.to_path_buf(), msg: format!("cannot list: {e}") })?;
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut tensors = Vec::new();
    for f in files {
        let Some(fname) = f.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(stem) = fname.strip_suffix(".npy") {
            tensors.push((stem.to_string(), read_npy(&f)?));
        }
    }
    Ok((tensors, read_metrics(&location.join("metrics.json"))?))
}

fn read_metrics(path: &Path) -> Result<Option<Value>, CandidateError> {
    // Absent: no metrics. Present but not a regular file (a FIFO, a device): an error.
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let text = crate::files::read_regular_to_string(path, crate::files::MAX_TEXT_BYTES)
        .map_err(|e| CandidateError::Bad { path: path.to_path_buf(), msg: e.to_string() })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CandidateError::Bad { path: path.to_path_buf(), msg: format!("invalid JSON: {e}") })?;
    if !v.is_object() {
        return Err(CandidateError::Bad {
            path: path.to_path_buf(),
            msg: "must be a JSON object (aAcc, mIoU, ...)".into(),
        });
    }
    Ok(Some(v))
}

/// Writes `tensors` as `dir/<name>.npy` (and `metrics` as `dir/metrics.json`): the candidate
/// layout. Existing regular files are replaced (never a device, FIFO or directory); for building
/// candidates in tests and tools. `verify --save-outputs` uses [`save_outputs_to`].
pub fn save_outputs(dir: &Path, tensors: &[(String, AnyArray)], metrics: Option<&Value>) -> Result<(), CandidateError> {
    save_outputs_to(dir, tensors, metrics, true, &[])
}

/// [`save_outputs`] as an output of a command: each file written atomically, over an existing
/// file only with `force`, never over a non-regular file or one of `inputs`
/// ([`crate::files::write_output`]). A name that is not a plain file name (`/`, `..`) is refused.
pub fn save_outputs_to(
    dir: &Path,
    tensors: &[(String, AnyArray)],
    metrics: Option<&Value>,
    force: bool,
    inputs: &[&Path],
) -> Result<(), CandidateError> {
    let bad = |p: &Path, e: &dyn std::fmt::Display| CandidateError::Bad { path: p.to_path_buf(), msg: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| bad(dir, &e))?;
    for (name, a) in tensors {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." || name.len() > 240 {
            return Err(bad(dir, &format!("output name {:?} cannot be a file name", super::report::clip(name, 80))));
        }
        let path = dir.join(format!("{name}.npy"));
        crate::files::write_output(&path, force, inputs, |f| write_npy(std::io::BufWriter::new(f), a))
            .map_err(|e| bad(&path, &e))?;
    }
    if let Some(m) = metrics {
        let path = dir.join("metrics.json");
        let text = serde_json::to_string_pretty(m).map_err(|e| bad(&path, &e))?;
        crate::files::write_output_bytes(&path, force, inputs, text.as_bytes()).map_err(|e| bad(&path, &e))?;
    }
    Ok(())
}

/// One `.npy` (C order) through `npyz`.
fn write_npy<W: std::io::Write>(w: W, a: &AnyArray) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    fn put<T: npyz::Serialize + npyz::AutoSerialize + Clone, W: std::io::Write>(
        w: W,
        shape: &[usize],
        data: impl Iterator<Item = T>,
    ) -> std::io::Result<()> {
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&dims).writer(w).begin_nd()?;
        for v in data {
            w.push(&v)?;
        }
        w.finish()
    }
    match a {
        AnyArray::F32(x) => put(w, x.shape(), x.iter().copied()),
        AnyArray::F64(x) => put(w, x.shape(), x.iter().copied()),
        AnyArray::I64(x) => put(w, x.shape(), x.iter().copied()),
        AnyArray::I32(x) => put(w, x.shape(), x.iter().copied()),
        AnyArray::U8(x) => put(w, x.shape(), x.iter().copied()),
        AnyArray::Bool(x) => put(w, x.shape(), x.iter().copied()),
    }
}
