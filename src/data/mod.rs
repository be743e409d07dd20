//! The data side of an MMSegmentation evaluation: the test transforms (keep-ratio rescale with
//! OpenCV's fixed-point bilinear resize) and the data preprocessor (channel flip + normalize).
//!
//! Everything here is a small pure function that matches one OpenCV / mmcv / MMSegmentation
//! function bit for bit (docs/mmseg-beit-upernet.md §5.1, §5.2, §9.1); the metric is in [`crate::metrics`].

pub mod ade20k;
pub mod image;
pub mod transforms;

pub use transforms::{normalize, rescale_size, resize_bilinear_u8, ADE20K_MEAN, ADE20K_SCALE, ADE20K_STD};
