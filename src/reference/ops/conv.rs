//! Convolutions: `conv2d` (im2col + GEMM, tiled) and `conv_transpose2d` (GEMM + col2im).

use ndarray::parallel::prelude::*;
use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};

use super::gemm::{gemm_block, gemm_into, PAR_BLOCKS};
use super::winograd::Winograd;
use super::{channel_filled, window_out_len};
use crate::Float;

/// Element budget of one im2col / column buffer (per concurrent task): 4 Mi elements
/// (16 MiB in f32, 32 MiB in f64).
const TILE_ELEMS: usize = 1 << 22;
/// An im2col tile aims for at least this many output pixels (GEMM columns), so that the
/// repacking of the weight matrix by the GEMM stays small next to the arithmetic.
const MIN_TILE_COLS: usize = 512;

/// Geometry of a 2-D convolution (per axis: input, kernel, stride, padding, dilation; output
/// width).
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    wo: usize,
}

impl ConvGeom {
    /// The output columns `[lo, hi)` whose input column `ow·sw + kj·dw - pw` lies in `[0, w)`.
    fn valid_out_cols(&self, kj: usize) -> (usize, usize) {
        let off = (kj * self.dw) as isize - self.pw as isize;
        let sw = self.sw as isize;
        let lo = if off >= 0 { 0 } else { (-off + sw - 1) / sw };
        let rem = self.w as isize - off;
        let hi = if rem <= 0 { 0 } else { (rem + sw - 1) / sw };
        let hi = (hi as usize).min(self.wo);
        ((lo as usize).min(hi), hi)
    }
}

/// Writes the im2col rows of input channels `c0..c1` for output rows `oh0..oh0 + nrows` into
/// `cols` (row `((c - c0)·kh + ki)·kw + kj`, column `(oh - oh0)·wo + ow`), zero where the
/// kernel tap falls into the padding. `x` is one image (C, H, W) in standard layout.
fn im2col_tile<T: Float>(
    x: &ArrayView3<T>,
    g: &ConvGeom,
    (c0, c1): (usize, usize),
    (oh0, nrows): (usize, usize),
    cols: &mut [T],
) {
    let ncols = nrows * g.wo;
    let xs = x.as_slice().expect("im2col input is in standard layout");
    let plane = g.h * g.w;
    let ranges: Vec<(usize, usize)> = (0..g.kw).map(|kj| g.valid_out_cols(kj)).collect();
    let mut r = 0;
    for c in c0..c1 {
        let xp = &xs[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            for (kj, &(lo, hi)) in ranges.iter().enumerate() {
                let dst = &mut cols[r * ncols..(r + 1) * ncols];
                r += 1;
                // Input column of output column `ow` is `ow * sw + kj * dw - pw`; for ow in
                // [lo, hi) it is non-negative, so `base = lo * sw + kj * dw - pw` is too.
                let base = (lo * g.sw + kj * g.dw).wrapping_sub(g.pw);
                for (t, drow) in dst.chunks_exact_mut(g.wo).enumerate() {
                    let ih = ((oh0 + t) * g.sh + ki * g.dh) as isize - g.ph as isize;
                    if ih < 0 || ih >= g.h as isize {
                        drow.fill(T::zero());
                        continue;
                    }
                    let src = &xp[ih as usize * g.w..(ih as usize + 1) * g.w];
                    drow[..lo].fill(T::zero());
                    drow[hi..].fill(T::zero());
                    if hi > lo {
                        if g.sw == 1 {
                            drow[lo..hi].copy_from_slice(&src[base..base + (hi - lo)]);
                        } else {
                            for (d, s) in drow[lo..hi].iter_mut().zip(src[base..].iter().step_by(g.sw)) {
                                *d = *s;
                            }
                        }
                    }
                }
            }
        }
    }
    debug_assert_eq!(r * ncols, cols.len(), "im2col buffer size");
}

/// `torch.nn.functional.conv2d` with `groups = 1` and zero padding.
///
/// `x` (B, Cin, H, W), `weight` (Cout, Cin, kh, kw), `bias` (Cout); output
/// (B, Cout, Ho, Wo) with `Ho = (H + 2p - d(k-1) - 1)/s + 1` (likewise Wo):
/// `y[b,o,i,j] = bias[o] + Σ_{c,u,v} weight[o,c,u,v] · x[b,c, i·s + u·d - p, j·s + v·d - p]`.
///
/// Computed as `weight.reshape(Cout, Cin·kh·kw) · im2col(x)` per image, with the output bias as
/// the GEMM's initial accumulator. A 1x1 kernel with stride 1 and no padding is one GEMM on the
/// (Cin, H·W) view. Otherwise the im2col matrix is built in tiles of output rows (and, for very
/// many input channels, blocks of input channels accumulated into the output) so that its
/// memory stays bounded; tiles run in parallel, as do the images of the batch.
pub fn conv2d<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
) -> Array4<T> {
    if super::plain_kernels() {
        return super::plain::conv2d(x, weight, bias, stride, padding, dilation);
    }
    conv2d_tiled(x, weight, bias, stride, padding, dilation, TILE_ELEMS)
}

/// [`conv2d`] with an explicit im2col element budget per tile (small budgets are used by the
/// tests to exercise the tiling and input-channel blocking).
pub(super) fn conv2d_tiled<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    tile_elems: usize,
) -> Array4<T> {
    let (b, cin, h, w) = x.dim();
    let (cout, w_cin, kh, kw) = weight.dim();
    assert_eq!(cin, w_cin, "conv2d: input has {cin} channels but weight expects {w_cin}");
    if let Some(bv) = &bias {
        assert_eq!(bv.len(), cout, "conv2d: bias length {} != out channels {cout}", bv.len());
    }
    let ho = window_out_len("conv2d", h, kh, stride.0, padding.0, dilation.0);
    let wo = window_out_len("conv2d", w, kw, stride.1, padding.1, dilation.1);
    let g = ConvGeom {
        h,
        w,
        kh,
        kw,
        sh: stride.0,
        sw: stride.1,
        ph: padding.0,
        pw: padding.1,
        dh: dilation.0,
        dw: dilation.1,
        wo,
    };
    let mut out = channel_filled((b, cout, ho, wo), bias);
    if b == 0 || cout == 0 || ho * wo == 0 {
        return out;
    }
    let beta0 = if bias.is_some() { T::one() } else { T::zero() };
    let kk = kh * kw;
    let w_std = weight.as_standard_layout();
    let wmat = w_std.view().into_shape_with_order((cout, cin * kk)).expect("standard-layout weight reshapes");
    let x_std = x.as_standard_layout();
    let x_std = x_std.view();
    let pointwise = kh == 1 && kw == 1 && stride == (1, 1) && padding == (0, 0);

    // Tiling of one image: whole output rows per tile, input channels in blocks. The channel
    // blocks (which set the summation order) depend only on the shapes and the budget, not on
    // the thread count; tiles are made smaller than `rows_nominal` only to feed up to
    // `PAR_BLOCKS` threads (a constant, so that the tiles are a function of the shapes alone).
    let rows_budget = tile_elems / (cin * kk * wo).max(1);
    let rows_min = MIN_TILE_COLS.div_ceil(wo);
    let rows_nominal = rows_budget.max(rows_min).clamp(1, ho);
    let rows_par = ho.div_ceil(PAR_BLOCKS);
    let rows_per_tile = rows_par.min(rows_nominal).max(1);
    let cin_block = (tile_elems / (kk * rows_nominal * wo)).clamp(1, cin.max(1));
    let n_kblocks = cin.div_ceil(cin_block);
    let cin_block = if n_kblocks > 0 { cin.div_ceil(n_kblocks) } else { 1 };

    out.outer_iter_mut().into_par_iter().zip(x_std.outer_iter().into_par_iter()).for_each(|(ob, xb)| {
        let mut omat = ob.into_shape_with_order((cout, ho * wo)).expect("output image is contiguous");
        if pointwise {
            let xmat = xb.into_shape_with_order((cin, h * w)).expect("standard-layout image reshapes");
            gemm_into(wmat, xmat, beta0, omat.view_mut());
            return;
        }
        omat.axis_chunks_iter_mut(Axis(1), rows_per_tile * wo).into_par_iter().enumerate().for_each(|(t, mut oc)| {
            let oh0 = t * rows_per_tile;
            let nrows = oc.ncols() / wo;
            let ncols = nrows * wo;
            let mut cols = vec![T::zero(); cin_block.min(cin) * kk * ncols];
            let mut c0 = 0;
            while c0 < cin {
                let c1 = (c0 + cin_block).min(cin);
                let rows = (c1 - c0) * kk;
                let buf = &mut cols[..rows * ncols];
                im2col_tile(&xb, &g, (c0, c1), (oh0, nrows), buf);
                let bmat = ArrayView2::from_shape((rows, ncols), &*buf).expect("im2col buffer shape");
                let a = wmat.slice(s![.., c0 * kk..c1 * kk]);
                let beta = if c0 == 0 { beta0 } else { T::one() };
                gemm_block(a, bmat, beta, oc.view_mut());
                c0 = c1;
            }
        });
    });
    out
}

/// `torch.nn.functional.conv_transpose2d` with `groups = 1`, `dilation = 1`,
/// `output_padding = 0`.
///
/// `x` (B, Cin, H, W), `weight` (Cin, Cout, kh, kw), `bias` (Cout); output (B, Cout, Ho, Wo) with
/// `Ho = (H - 1)·s - 2p + kh` (likewise Wo):
/// `y[b,o, i·s + u - p, j·s + v - p] += Σ_c x[b,c,i,j] · weight[c,o,u,v]`, then `+ bias[o]`.
///
/// Computed as `cols = weight.reshape(Cin, Cout·kh·kw)ᵀ · x.reshape(Cin, H·W)` followed by a
/// col2im scatter-add in PyTorch's order (taps `(u, v)` ascending, then input positions;
/// positions falling into the cropped padding are skipped), then the bias. Works on blocks of
/// output channels (bounded column buffer), in parallel over images and channel blocks.
/// Requires H, W ≥ 1 and a positive output size.
pub fn conv_transpose2d<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Array4<T> {
    if super::plain_kernels() {
        return super::plain::conv_transpose2d(x, weight, bias, stride, padding);
    }
    conv_transpose2d_tiled(x, weight, bias, stride, padding, TILE_ELEMS)
}

/// Output length of a transposed convolution along one axis: `(n - 1)·s - 2p + k`.
fn transposed_out_len(n: usize, k: usize, s: usize, p: usize) -> usize {
    assert!(n > 0, "conv_transpose2d: empty input spatial size");
    assert!(k > 0 && s > 0, "conv_transpose2d: kernel and stride must be positive");
    let full = (n - 1) * s + k;
    assert!(full > 2 * p, "conv_transpose2d: padding {p} leaves no output (uncropped size {full})");
    full - 2 * p
}

/// [`conv_transpose2d`] with an explicit column-buffer element budget (for the tests).
pub(super) fn conv_transpose2d_tiled<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
    tile_elems: usize,
) -> Array4<T> {
    let (b, cin, h, w) = x.dim();
    let (w_cin, cout, kh, kw) = weight.dim();
    assert_eq!(cin, w_cin, "conv_transpose2d: input has {cin} channels but weight expects {w_cin}");
    if let Some(bv) = &bias {
        assert_eq!(bv.len(), cout, "conv_transpose2d: bias length {} != out channels {cout}", bv.len());
    }
    let ho = transposed_out_len(h, kh, stride.0, padding.0);
    let wo = transposed_out_len(w, kw, stride.1, padding.1);
    let mut out = Array4::zeros((b, cout, ho, wo));
    if b == 0 || cout == 0 {
        return out;
    }
    let kk = kh * kw;
    let hw = h * w;
    let w_std = weight.as_standard_layout();
    let wmat = w_std.view().into_shape_with_order((cin, cout * kk)).expect("standard-layout weight reshapes");
    let x_std = x.as_standard_layout();
    let x_std = x_std.view();

    let chunk_budget = (tile_elems / (kk * hw)).max(1);
    let chunk_par = cout.div_ceil(PAR_BLOCKS);
    let chunk = chunk_budget.min(chunk_par).max(1);
    let chunk = cout.div_ceil(cout.div_ceil(chunk));
    let (sh, sw, ph, pw) = (stride.0, stride.1, padding.0 as isize, padding.1 as isize);

    out.outer_iter_mut().into_par_iter().zip(x_std.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        let xmat = xb.into_shape_with_order((cin, hw)).expect("standard-layout image reshapes");
        ob.axis_chunks_iter_mut(Axis(0), chunk).into_par_iter().enumerate().for_each(|(t, mut oc)| {
            let co0 = t * chunk;
            let nco = oc.len_of(Axis(0));
            let a = wmat.slice(s![.., co0 * kk..(co0 + nco) * kk]);
            let mut cols = Array2::zeros((nco * kk, hw));
            gemm_block(a.t(), xmat, T::zero(), cols.view_mut());
            let cs = cols.as_slice().expect("fresh array is contiguous");
            for (ci, mut plane) in oc.outer_iter_mut().enumerate() {
                let ps = plane.as_slice_mut().expect("output plane is contiguous");
                for ki in 0..kh {
                    for kj in 0..kw {
                        let row = &cs[((ci * kh + ki) * kw + kj) * hw..][..hw];
                        for ih in 0..h {
                            let oh = (ih * sh + ki) as isize - ph;
                            if oh < 0 || oh >= ho as isize {
                                continue;
                            }
                            let orow = &mut ps[oh as usize * wo..(oh as usize + 1) * wo];
                            for (iw, &v) in row[ih * w..(ih + 1) * w].iter().enumerate() {
                                let ow = (iw * sw + kj) as isize - pw;
                                if ow >= 0 && (ow as usize) < wo {
                                    orow[ow as usize] += v;
                                }
                            }
                        }
                    }
                }
                if let Some(bv) = &bias {
                    let bval = bv[co0 + ci];
                    ps.iter_mut().for_each(|v| *v += bval);
                }
            }
        });
    });
    out
}

/// `nn.Conv2d(groups=1, padding_mode='zeros')` holding its parameters:
/// `forward(x) = conv2d(x, weight, bias, stride, padding, dilation)`.
///
/// A 3x3 kernel at stride 1 and dilation 1 is transformed here for Winograd's F(2x2, 3x3) (see
/// `winograd.rs`; the weight itself is not kept); every other shape runs by [`conv2d`]. With
/// the plain twins ([`super::plain_kernels`]) it keeps the weight and runs
/// [`super::plain::conv2d`].
pub struct Conv2d<T: Float> {
    kernel: Kernel<T>,
    pub bias: Option<Array1<T>>,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

/// The weight of a [`Conv2d`], laid out for the algorithm that runs it.
enum Kernel<T: Float> {
    /// (Cout, Cin, kh, kw).
    Weight(Array4<T>),
    Winograd(Winograd<T>),
}

impl<T: Float> Conv2d<T> {
    /// `weight` (Cout, Cin, kh, kw), `bias` (Cout).
    pub fn new(weight: Array4<T>, bias: Option<Array1<T>>, stride: usize, padding: usize, dilation: usize) -> Self {
        let (_, _, kh, kw) = weight.dim();
        let kernel = if (kh, kw, stride, dilation) == (3, 3, 1, 1) && !super::plain_kernels() {
            Kernel::Winograd(Winograd::new(weight.view()))
        } else {
            Kernel::Weight(weight)
        };
        Conv2d { kernel, bias, stride, padding, dilation }
    }

    /// (B, Cin, H, W) → (B, Cout, Ho, Wo).
    pub fn forward(&self, x: ArrayView4<T>) -> Array4<T> {
        let (s, p, d) = (self.stride, self.padding, self.dilation);
        let bias = self.bias.as_ref().map(|b| b.view());
        match &self.kernel {
            Kernel::Winograd(kernel) => kernel.conv2d(x, bias, (p, p)),
            Kernel::Weight(w) => conv2d(x, w.view(), bias, (s, s), (p, p), (d, d)),
        }
    }
}
