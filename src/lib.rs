//! beit-seg: a numerical reference and conformance suite for MMSegmentation's BEiT + UPerNet
//! semantic segmentation.
//!
//! Data flows one way (see docs/architecture.md), and the modules are listed in that order:
//! files ([`mod@array`], [`checkpoint`]) → config ([`config`]) + weights ([`weights`]) → a model on a
//! backend ([`model`] shared, [`mod@reference`], `fast`, [`backend`]) → named outputs → evaluation
//! ([`data`], [`metrics`], [`eval`]) and comparison ([`conformance`]) → reports.
//!
//! A port written in Rust checks itself against the fixtures in its own `cargo test` with
//! [`conformance`]: [`conformance::verify_case`] on a [`conformance::Candidate::from_fn`]
//! closure that receives each [`conformance::Case`] (config, weights, input) and returns named
//! tensors (docs/validating.md, "From Rust").
pub mod array;
// Rustdoc link warnings (`-D warnings` in scripts/test.sh) are allowed in the modules below until
// their doc comments are fixed (private or ambiguous intra-doc links, `<stem>` read as HTML); the
// conformance API, array, config, float, weights, model and metrics are held to them.
#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod files;
pub mod float;
pub mod limits;
pub mod weights;

#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod backend;
pub mod bench;
#[cfg(feature = "tch")]
pub mod fast;
pub mod model;
#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod reference;

pub mod conformance;
#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod data;
#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod eval;
pub mod metrics;

#[allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::redundant_explicit_links
)]
pub mod cli;

pub use device::Device;
pub use float::{Dtype, Float, Precision};
