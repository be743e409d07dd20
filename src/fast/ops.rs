//! The libtorch operators the fast path uses, each the call PyTorch itself makes for the
//! corresponding `torch.nn` module, in fallible form.
//!
//! Convolutions call `at::_convolution` directly (what `F.conv2d` / `F.conv_transpose2d` reach)
//! so that TF32 can be refused per call (`allow_tf32 = false`): PyTorch's global default allows
//! TF32 in cuDNN convolutions, which costs ~1e-3 relative error on Ampere/Hopper (docs/mmseg-beit-upernet.md §9.2.17).

use tch::{Kind, Tensor};

use super::Result;

/// No TF32 anywhere: the fp32 path is the conformant one, and TF32 only ever affects fp32.
const ALLOW_TF32: bool = false;

/// `F.conv2d(x, w, b, stride, padding, dilation)`, groups 1, zero padding.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: i64, padding: i64, dilation: i64) -> Result<Tensor> {
    Ok(x.f_internal_convolution(
        w,
        b,
        [stride, stride],
        [padding, padding],
        [dilation, dilation],
        false,
        [0i64, 0],
        1,
        false,
        false,
        true,
        ALLOW_TF32,
    )?)
}

/// `F.conv_transpose2d(x, w, b, stride)`, no padding; weight layout (Cin, Cout, kh, kw).
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: i64) -> Result<Tensor> {
    Ok(x.f_internal_convolution(
        w,
        b,
        [stride, stride],
        [0i64, 0],
        [1i64, 1],
        true,
        [0i64, 0],
        1,
        false,
        false,
        true,
        ALLOW_TF32,
    )?)
}

/// `F.linear(x, w, b)` on the last axis.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    Ok(x.f_linear(w, b)?)
}

/// `nn.LayerNorm` over the last axis, computed in `wide` (float32 for half inputs) and returned in
/// the input's kind. `w`/`b` are already in `wide`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, wide: Kind) -> Result<Tensor> {
    let kind = x.kind();
    let c = *x.size().last().unwrap_or(&0);
    let xw = if kind == wide { x.shallow_clone() } else { x.f_to_kind(wide)? };
    let y = xw.f_layer_norm([c], Some(w), Some(b), eps, true)?;
    Ok(if kind == wide { y } else { y.f_to_kind(kind)? })
}

/// `nn.GELU()` (exact, erf).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_gelu("none")?)
}

/// `nn.ReLU`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_relu()?)
}

/// `nn.BatchNorm2d` in eval mode (running statistics).
pub fn batch_norm(x: &Tensor, w: &Tensor, b: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.f_batch_norm(Some(w), Some(b), Some(mean), Some(var), false, 0.1, eps, true)?)
}

/// `nn.MaxPool2d(k, k)` (stride = kernel, no padding, floor).
pub fn max_pool2d(x: &Tensor, k: i64) -> Result<Tensor> {
    Ok(x.f_max_pool2d([k, k], [k, k], [0i64, 0], [1i64, 1], false)?)
}

/// `nn.AdaptiveAvgPool2d(s)`.
pub fn adaptive_avg_pool2d(x: &Tensor, s: i64) -> Result<Tensor> {
    Ok(x.f_adaptive_avg_pool2d([s, s])?)
}

/// mmseg `resize(x, size, mode='bilinear', align_corners)` = `F.interpolate` with `size=`
/// (no scale factors, no antialias).
pub fn resize(x: &Tensor, size: (i64, i64), align_corners: bool) -> Result<Tensor> {
    Ok(x.f_upsample_bilinear2d([size.0, size.1], align_corners, None, None)?)
}

/// The same NCHW tensor with channels-last strides (NHWC in memory): what PyTorch's
/// `x.contiguous(memory_format=torch.channels_last)` gives.
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

/// Height and width of an NCHW tensor.
pub fn hw(x: &Tensor) -> (i64, i64) {
    let s = x.size();
    (s[s.len() - 2], s[s.len() - 1])
}
