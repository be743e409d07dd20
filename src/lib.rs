//! beit-seg: a numerical reference and conformance suite for MMSegmentation's BEiT + UPerNet
//! semantic segmentation.
//!
//! Data flows one way (see docs/architecture.md), and the modules are listed in that order:
//! files ([`array`], [`checkpoint`]) → config ([`config`]) + weights ([`weights`]) → a model on a
//! backend ([`model`] shared, [`reference`], `fast`, [`backend`]) → named outputs → evaluation
//! ([`data`], [`metrics`], [`eval`]) and comparison ([`conformance`]) → reports.
pub mod array;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod float;
pub mod fsutil;
pub mod limits;
pub mod weights;

pub mod backend;
pub mod bench;
#[cfg(feature = "tch")]
pub mod fast;
pub mod model;
pub mod reference;

pub mod conformance;
pub mod data;
pub mod eval;
pub mod metrics;

pub mod cli;

pub use device::Device;
pub use float::{Dtype, Float, Precision};
