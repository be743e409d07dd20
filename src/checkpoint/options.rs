//! How the checkpoint readers read: [`ReadOptions`].

/// How to read tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Read float16 / bfloat16 tensors widened (exactly) to float32. When false such a tensor is
    /// an error that says so.
    pub widen_half: bool,
    /// Turn objects of globals outside the allow-list into inert [`super::Value::Opaque`]
    /// placeholders instead of failing (nothing is executed either way). Off by default, as
    /// `torch.load(weights_only=True)`.
    pub opaque_globals: bool,
}
