//! Dataset listing in MMSegmentation's `BaseSegDataset` / `ADE20KDataset` layout
//! (`ADEChallengeData2016`):
//!
//! ```text
//! <root>/images/validation/ADE_val_00000001.jpg      img_dir, img_suffix
//! <root>/annotations/validation/ADE_val_00000001.png ann_dir, seg_map_suffix
//! ```
//!
//! As `BaseSegDataset.load_data_list`: every file under `img_dir` (recursively) whose name ends
//! with `img_suffix` is an image; its annotation is `ann_dir/<relative path without the
//! suffix><seg_map_suffix>`; the list is sorted by image path (byte order of the UTF-8 path,
//! the same as Python's string order). The stem (relative path without the suffix, `/`
//! separated) names the image in outputs.
//!
//! A missing annotation is an error naming both files; with `skip_bad` the image is left out
//! and reported in [`Listing::skipped`] instead. Decoding problems (unreadable files, label maps
//! that are not 8-bit single-channel) are found when an image is loaded
//! ([`crate::data::image`]), and are handled the same way by the evaluation.

use std::path::{Path, PathBuf};

/// Where the images and annotations are, and how they are named.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    pub root: PathBuf,
    pub img_dir: String,
    pub ann_dir: String,
    pub img_suffix: String,
    pub seg_map_suffix: String,
}

impl DatasetSpec {
    /// ADE20K's validation split (`ADEChallengeData2016`, `.jpg` images, `.png` annotations).
    pub fn ade20k_val(root: impl Into<PathBuf>) -> Self {
        DatasetSpec {
            root: root.into(),
            img_dir: "images/validation".into(),
            ann_dir: "annotations/validation".into(),
            img_suffix: ".jpg".into(),
            seg_map_suffix: ".png".into(),
        }
    }

    pub fn img_root(&self) -> PathBuf {
        self.root.join(&self.img_dir)
    }

    pub fn ann_root(&self) -> PathBuf {
        self.root.join(&self.ann_dir)
    }
}

/// One image of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Position in the sorted listing (before `--limit` / sharding).
    pub index: usize,
    /// Relative path below `img_dir` without `img_suffix`, `/`-separated.
    pub stem: String,
    pub img_path: PathBuf,
    pub ann_path: PathBuf,
}

/// An image left out, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Position in the sorted listing.
    pub index: usize,
    pub stem: String,
    pub path: PathBuf,
    pub reason: String,
}

/// The result of [`list`].
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub samples: Vec<Sample>,
    /// Images without an annotation (only with `skip_bad`).
    pub skipped: Vec<Skipped>,
}

/// A problem with the dataset layout; names the directory or file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {msg}")]
    Layout { path: PathBuf, msg: String },
    #[error("{path}: cannot read directory: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("image {img}: its annotation {ann} does not exist (pass --skip-bad to leave such images out)")]
    MissingAnnotation { img: PathBuf, ann: PathBuf },
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), DatasetError> {
    let rd = std::fs::read_dir(dir).map_err(|err| DatasetError::Io { path: dir.to_path_buf(), err })?;
    for e in rd {
        let e = e.map_err(|err| DatasetError::Io { path: dir.to_path_buf(), err })?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        // Follows symlinks, as Python's os.scandir-based listing does for files.
        if path.is_dir() {
            walk(&path, &r, out)?;
        } else {
            out.push((r, path));
        }
    }
    Ok(())
}

/// Lists the dataset (see the module docs). Errors if `img_dir` is missing or holds no image,
/// or (unless `skip_bad`) if an annotation is missing.
pub fn list(spec: &DatasetSpec, skip_bad: bool) -> Result<Listing, DatasetError> {
    let img_root = spec.img_root();
    if !img_root.is_dir() {
        return Err(DatasetError::Layout {
            path: img_root,
            msg: format!("image directory not found (data root {}, img_dir `{}`)", spec.root.display(), spec.img_dir),
        });
    }
    let ann_root = spec.ann_root();
    if !ann_root.is_dir() {
        return Err(DatasetError::Layout {
            path: ann_root,
            msg: format!(
                "annotation directory not found (data root {}, ann_dir `{}`)",
                spec.root.display(),
                spec.ann_dir
            ),
        });
    }
    let mut files = Vec::new();
    walk(&img_root, "", &mut files)?;
    let mut images: Vec<(String, PathBuf)> = files.into_iter().filter(|(r, _)| r.ends_with(&spec.img_suffix)).collect();
    // BaseSegDataset sorts by img_path (a string); `<img_root>/` is a common prefix.
    images.sort_by(|a, b| a.0.cmp(&b.0));
    if images.is_empty() {
        return Err(DatasetError::Layout { path: img_root, msg: format!("no `*{}` images found", spec.img_suffix) });
    }
    let mut listing = Listing::default();
    for (rel, img_path) in images {
        let stem = rel[..rel.len() - spec.img_suffix.len()].to_string();
        let ann_path = ann_root.join(format!("{stem}{}", spec.seg_map_suffix));
        if !ann_path.is_file() {
            if skip_bad {
                listing.skipped.push(Skipped {
                    index: listing.samples.len() + listing.skipped.len(),
                    stem,
                    path: img_path,
                    reason: format!("annotation {} does not exist", ann_path.display()),
                });
                continue;
            }
            return Err(DatasetError::MissingAnnotation { img: img_path, ann: ann_path });
        }
        let index = listing.samples.len() + listing.skipped.len();
        listing.samples.push(Sample { index, stem, img_path, ann_path });
    }
    Ok(listing)
}

/// `K/N` (0-based shard `K` of `N`): images whose index `i` has `i % N == K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    pub fn contains(&self, index: usize) -> bool {
        index % self.n == self.k
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected K/N, e.g. 0/4"))?;
        let k: usize = k.trim().parse().map_err(|_| format!("`{s}`: K is not a number"))?;
        let n: usize = n.trim().parse().map_err(|_| format!("`{s}`: N is not a number"))?;
        if n == 0 || k >= n {
            return Err(format!("`{s}`: need 0 <= K < N"));
        }
        Ok(Shard { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parse() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { k: 1, n: 3 });
        assert!("3/3".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        let s = Shard { k: 2, n: 3 };
        assert!(s.contains(5) && !s.contains(4));
    }

    #[test]
    fn listing_sorted_and_missing_annotation_named() {
        let root = std::env::temp_dir().join(format!("beit-seg-ade-{}", std::process::id()));
        let spec = DatasetSpec::ade20k_val(&root);
        std::fs::create_dir_all(spec.img_root().join("sub")).unwrap();
        std::fs::create_dir_all(spec.ann_root().join("sub")).unwrap();
        for n in ["b.jpg", "a.jpg", "sub/c.jpg", "notes.txt"] {
            std::fs::write(spec.img_root().join(n), b"x").unwrap();
        }
        for n in ["a.png", "sub/c.png"] {
            std::fs::write(spec.ann_root().join(n), b"x").unwrap();
        }
        let e = list(&spec, false).unwrap_err().to_string();
        assert!(e.contains("b.jpg") && e.contains("b.png"), "{e}");
        let l = list(&spec, true).unwrap();
        let stems: Vec<_> = l.samples.iter().map(|s| (s.index, s.stem.as_str())).collect();
        assert_eq!(stems, vec![(0, "a"), (2, "sub/c")]);
        assert_eq!(l.skipped.len(), 1);
        std::fs::remove_dir_all(&root).ok();
    }
}
