//! Semantic-segmentation evaluation on an ADE20K-layout dataset, as MMSegmentation's
//! `tools/test.py` runs it for the BEiT + UPerNet configs (docs/evaluation.md), plus the multi-scale +
//! flip test-time augmentation of MMSegmentation 0.x.
//!
//! Per image (single scale):
//! 1. decode as `cv2.imdecode(IMREAD_COLOR)` → BGR uint8 (`crate::data::image`);
//! 2. `Resize(scale=(2560, 640), keep_ratio=True)`: [`rescale_size`] + OpenCV's fixed-point
//!    bilinear resize ([`resize_bilinear_u8`]);
//! 3. `SegDataPreProcessor`: BGR→RGB, `(x - mean) / std` in float32 ([`normalize`]);
//! 4. the model's `inference` (slide windows of `crop` every `stride`, or whole) on a
//!    [`SegModel`] → logits at the resized size;
//! 5. bilinear resize of the logits to the original size (`align_corners` of the decode head);
//! 6. argmax over classes (first maximum on ties);
//! 7. `IoUMetric`: label map read as Pillow does, `reduce_zero_label`, per-image float32 areas,
//!    totals summed in image order.
//!
//! **Images too small for the crop.** BEiT's relative position bias is fixed to the patch grid
//! of `img_size`, so every slide window must be exactly `crop` pixels; MMSegmentation crashes on
//! an image whose resized side is shorter than the crop (with `(2560, 640)`, an aspect ratio
//! above 4). Such an image is refused **before** any computation with an error naming it
//! ([`EvalError::TooSmall`]); with `skip_bad` it is left out and listed instead. There is no
//! padding fallback: any choice would give numbers MMSegmentation never produced.
//!
//! **ms+flip** ([`MsFlip`], MMSegmentation 0.x `MultiScaleFlipAug` + `Resize(min_size=640)` +
//! `aug_test`): scales `(int(2560 r), int(640 r))` for r in 0.5..1.75; each image is resized
//! to short side `max(min(scale), min_size)` (long side unbounded), once unflipped and once
//! flipped horizontally (12 augmentations, in that order); per augmentation the slide logits are
//! resized to the original size, softmax is taken over classes, the flipped ones are flipped
//! back, and the 12 probability maps are summed in order and divided by 12 (float32); the
//! prediction is their argmax. MMSegmentation 1.x's `--tta` differs (docs/mmseg-beit-upernet.md §5.5) and is not
//! implemented. 0.x normalises with `mmcv.imnormalize` (multiplication by `1/std`); this
//! implementation divides as 1.x's `SegDataPreProcessor` does (≤ 1 ulp apart).
//!
//! **Results file, resume, shards.** [`evaluate`] appends one JSON line per image (its area
//! vectors, or why it was skipped) to `results.jsonl` (`results.shard-K-of-N.jsonl` for
//! `--shard K/N`) and flushes it, after a header line that identifies the run. Restarted with
//! the same settings it reads the file, drops a torn last line, and continues with the images
//! not yet recorded; a file from different settings is refused. Totals are always re-summed from
//! the per-image records in image order, so a resumed run, and [`merge`] of the shard files,
//! give bit-identical float32 totals to one uninterrupted run.
//!
//! Files, in the order data flows: [`settings`] (test pipeline and preprocessing from config
//! dicts), [`tta`] (the 0.x ms+flip plan), [`predict`] (one image through a [`Model`]),
//! [`results`] (the per-image results file), [`run`] (the resumable, shardable loop),
//! [`merge`] (shards into one run's totals).

pub mod merge;
pub mod predict;
pub mod results;
pub mod run;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod tta;

use std::path::{Path, PathBuf};

pub use merge::{merge, merge_with};
pub use predict::{image_areas, predict, predict_with, Prediction, Progress};
pub use results::{
    count_lines, identity_mismatch, read_records, read_results, sum_records, validate_record, ImageRecord,
    ResultsHeader,
};
pub use run::{evaluate, format_report, results_path, Event, Outcome, ProgressFn, RunOptions};
pub use settings::{DatasetSection, EvalSettings, Preprocess, ResizeSpec, TestPipeline};
pub use tta::{ms0_resize, MsFlip};

use crate::data::ade20k;
use crate::data::image::ImageError;

/// Errors of an evaluation. [`EvalError::is_bad_input`] tells which ones `--skip-bad` may skip.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Dataset(#[from] ade20k::DatasetError),
    #[error(
        "image {path}: resized from {h0}x{w0} to {h}x{w}, which is smaller than the {ch}x{cw} slide-inference crop; \
         MMSegmentation crashes on such an image (BEiT's relative position bias is fixed to the crop's patch grid; \
         with Resize(2560, 640) this happens for aspect ratios above 4), so it is refused rather than padded \
         (pass --skip-bad to leave such images out and list them)"
    )]
    TooSmall { path: String, h0: usize, w0: usize, h: usize, w: usize, ch: usize, cw: usize },
    #[error("image {img}: the annotation {ann} is {lh}x{lw}, the image {h}x{w} (after EXIF orientation)")]
    LabelShape { img: PathBuf, ann: PathBuf, h: usize, w: usize, lh: usize, lw: usize },
    #[error("model on image {path}: {err}")]
    Model { path: String, err: crate::backend::BackendError },
    #[error(
        "image {path}: the model's seg_logits hold {nan} NaN and {inf} infinite values of {total} (first at class {class}, \
         row {y}, column {x}); refusing to turn them into a prediction or metrics (check the weights and the config's \
         eps / std values)"
    )]
    NonFinite { path: String, nan: usize, inf: usize, total: usize, class: usize, y: usize, x: usize },
    #[error("image {path}: {msg}")]
    TooLarge { path: String, msg: String },
    #[error("{path}: {msg}")]
    Results { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

impl EvalError {
    /// A problem with one image or annotation (skippable with `--skip-bad`), not with the run.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, EvalError::Image(_) | EvalError::TooSmall { .. } | EvalError::LabelShape { .. })
    }
}

fn cfg_err<T>(msg: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Config(msg.into()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |err| EvalError::Io { path: path.to_path_buf(), err }
}
