//! What every backend of the model shares, independent of the tensor library: the
//! [`Recorder`] of named module outputs, the geometry of BEiT's relative position bias and of
//! slide inference ([`geometry`]), the plan of a decode head ([`heads`]), and the output names that several modules share ([`names`]).
//!
//! The reference (`crate::reference`, ndarray) and the libtorch path (`crate::fast`) differ only
//! in arithmetic; everything here is computed once, for both.

pub mod geometry;
pub mod heads;
pub mod names;
pub mod recorder;

pub use geometry::{
    check_relative_position_index, is_one_whole_window, relative_position_index, slide_windows, Window,
};
pub use names::join;
pub use recorder::Recorder;

/// The stages of `encode_decode`, in the order both backends run them (what `profile` times:
/// each backend's `encode_decode_timed` calls a lap function as each one ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Backbone,
    Neck,
    DecodeHead,
    /// The final resize of the logits to the input size.
    Resize,
}
