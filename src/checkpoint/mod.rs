//! Checkpoints: a restricted `.pth` reader, key converters between BEiT dialects, and the
//! relative-position-bias resize.
