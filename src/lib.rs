//! beit-seg: a numerical reference and conformance suite for MMSegmentation's BEiT + UPerNet
//! semantic segmentation.
//!
//! Data flows one way: files → [`config`] + [`weights`] → [`reference`] model → outputs →
//! [`conformance`] comparison and report.
pub mod array;
pub mod checkpoint;
pub mod config;
pub mod conformance;
pub mod float;
pub mod fsutil;
pub mod reference;
pub mod weights;

pub use float::Float;
pub mod cli_eval;
pub mod data;
pub mod eval;
#[cfg(feature = "tch")]
pub mod fast;
pub mod metrics;
