//! Pure numerical operators of the reference, each matching one PyTorch function.
//!
//! Every op is generic over [`Float`] and computes in the tensor's own dtype `T` (PyTorch's
//! CPU "opmath" type is the dtype itself for `float32` and `float64`) unless its doc says
//! otherwise. Matrix products go through ndarray's `general_mat_mul` (the `matrixmultiply`
//! GEMM), convolutions through im2col + GEMM, and the large loops are parallelised with rayon
//! over batch images, channels, planes, rows or GEMM column blocks. None of the parallel
//! splits changes the order of any floating-point reduction, so results do not depend on the
//! number of threads.
//!
//! Shape contracts are checked with `assert!` (with a message): callers validate user data
//! before calling, so a failed assertion is a bug in the caller.

use ndarray::parallel::prelude::*;
use ndarray::{
    linalg::general_mat_mul, s, Array, Array2, Array3, Array4, ArrayView, ArrayView1, ArrayView2, ArrayView3,
    ArrayView4, ArrayViewMut2, Axis, Dimension, Zip,
};

use crate::Float;

/// Element budget of one im2col / column buffer (per concurrent task): 4 Mi elements
/// (16 MiB in f32, 32 MiB in f64).
const TILE_ELEMS: usize = 1 << 22;
/// Below this many multiply-adds a GEMM runs as one call on the current thread.
const PAR_GEMM_MIN_WORK: usize = 1 << 18;
/// Smallest block of rows/columns a parallel GEMM is split into.
const PAR_GEMM_MIN_CHUNK: usize = 32;
/// An im2col tile aims for at least this many output pixels (GEMM columns), so that the
/// repacking of the weight matrix by the GEMM stays small next to the arithmetic.
const MIN_TILE_COLS: usize = 512;

/// `n` converted to `T` (exact for every size a tensor can have in practice).
#[inline]
fn cast<T: Float>(n: usize) -> T {
    T::from_f64_lossy(n as f64)
}

/// Sum of a sequence with eight interleaved partial sums (combined pairwise), the way
/// vectorised reductions accumulate; more accurate than one running sum.
#[inline]
fn sum_lanes<T: Float>(values: impl Iterator<Item = T>) -> T {
    let mut acc = [T::zero(); 8];
    for (i, v) in values.enumerate() {
        acc[i & 7] += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `c = a · b + beta · c`, split into independent column (or row) blocks run in parallel.
///
/// Each block is one `general_mat_mul` over the full inner dimension, so every output element
/// is computed exactly as a single large GEMM would compute it.
fn gemm_into<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, beta: T, mut c: ArrayViewMut2<T>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    debug_assert_eq!(b.nrows(), k, "gemm: inner dimensions differ");
    debug_assert_eq!(c.dim(), (m, n), "gemm: output shape mismatch");
    let threads = rayon::current_num_threads();
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if threads <= 1 || work < PAR_GEMM_MIN_WORK || m.max(n) < 2 * PAR_GEMM_MIN_CHUNK {
        general_mat_mul(T::one(), &a, &b, beta, &mut c);
        return;
    }
    let tasks = 4 * threads;
    if n >= m {
        let chunk = n.div_ceil(tasks).max(PAR_GEMM_MIN_CHUNK);
        c.axis_chunks_iter_mut(Axis(1), chunk)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), chunk).into_par_iter())
            .for_each(|(mut cc, bc)| general_mat_mul(T::one(), &a, &bc, beta, &mut cc));
    } else {
        let chunk = m.div_ceil(tasks).max(PAR_GEMM_MIN_CHUNK);
        c.axis_chunks_iter_mut(Axis(0), chunk)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .for_each(|(mut cc, ac)| general_mat_mul(T::one(), &ac, &b, beta, &mut cc));
    }
}

/// Runs `f(input_plane, output_plane)` for every (batch, channel) plane, in parallel.
fn par_planes<T: Float, F>(x: ArrayView4<T>, out: &mut Array4<T>, f: F)
where
    F: Fn(ArrayView2<T>, ArrayViewMut2<T>) + Sync + Send,
{
    debug_assert_eq!(x.dim().0, out.dim().0);
    debug_assert_eq!(x.dim().1, out.dim().1);
    out.outer_iter_mut().into_par_iter().zip(x.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        ob.outer_iter_mut().into_par_iter().zip(xb.outer_iter().into_par_iter()).for_each(|(op, xp)| f(xp, op));
    });
}

/// A zero (B, C, H, W) array whose channel planes are filled with `bias[c]` when given.
fn channel_filled<T: Float>(shape: (usize, usize, usize, usize), bias: Option<ArrayView1<T>>) -> Array4<T> {
    let mut out = Array4::zeros(shape);
    if let Some(bias) = bias {
        Zip::from(out.axis_iter_mut(Axis(1))).and(&bias).par_for_each(|mut plane, &bv| plane.fill(bv));
    }
    out
}

/// `torch.nn.functional.linear`: `y = x · weightᵀ + bias`.
///
/// `x` is (N, in), `weight` (out, in), `bias` (out); the result is (N, out). One GEMM (split
/// into parallel blocks) with the bias as its initial accumulator (`beta = 1`).
pub fn linear<T: Float>(x: ArrayView2<T>, weight: ArrayView2<T>, bias: Option<ArrayView1<T>>) -> Array2<T> {
    let (n, in_features) = x.dim();
    let (out_features, w_in) = weight.dim();
    assert_eq!(in_features, w_in, "linear: x has {in_features} features but weight expects {w_in}");
    let (mut y, beta) = match bias {
        Some(b) => {
            assert_eq!(b.len(), out_features, "linear: bias length {} != out_features {out_features}", b.len());
            (Array2::from_shape_fn((n, out_features), |(_, j)| b[j]), T::one())
        }
        None => (Array2::zeros((n, out_features)), T::zero()),
    };
    if n > 0 && out_features > 0 {
        gemm_into(x, weight.t(), beta, y.view_mut());
    }
    y
}

/// `torch.nn.LayerNorm` over the last dimension of `x` (N, C):
/// `mean = Σx/C`, `var = Σ(x-mean)²/C` (biased, two passes),
/// `y = (x - mean) · rstd · weight + bias` with `rstd = 1/sqrt(var + eps)`.
///
/// Like PyTorch's CPU kernel, the reciprocal standard deviation is computed once per row and
/// multiplied in (rather than dividing every element). `eps` is rounded to `T` first (as
/// PyTorch casts it to the opmath type). Parallel over rows.
pub fn layer_norm<T: Float>(
    x: ArrayView2<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) -> Array2<T> {
    let (n, c) = x.dim();
    if let Some(w) = &weight {
        assert_eq!(w.len(), c, "layer_norm: weight length {} != {c}", w.len());
    }
    if let Some(b) = &bias {
        assert_eq!(b.len(), c, "layer_norm: bias length {} != {c}", b.len());
    }
    let eps = T::from_f64_lossy(eps);
    let count: T = cast(c);
    let mut y = Array2::zeros((n, c));
    Zip::from(y.rows_mut()).and(x.rows()).par_for_each(|mut yr, xr| {
        let mean = sum_lanes(xr.iter().copied()) / count;
        let var = sum_lanes(xr.iter().map(|&v| (v - mean) * (v - mean))) / count;
        let rstd = T::one() / (var + eps).sqrt();
        Zip::indexed(&mut yr).and(&xr).for_each(|j, yv, &xv| {
            let mut v = (xv - mean) * rstd;
            if let Some(w) = &weight {
                v *= w[j];
            }
            if let Some(b) = &bias {
                v += b[j];
            }
            *yv = v;
        });
    });
    y
}

/// Exact GELU, `torch.nn.GELU(approximate='none')`: `x · 0.5 · (1 + erf(x / √2))`.
///
/// Evaluated in f64 (libm `erf`) and rounded to `T` once: for f64 this is exactly
/// `x * 0.5 * (1 + T::erf(x * FRAC_1_SQRT_2))`; for f32 it is the correctly rounded value up to
/// the f64 evaluation error.
#[inline]
pub fn gelu<T: Float>(x: T) -> T {
    let v = x.to_f64_exact();
    T::from_f64_lossy(v * 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)))
}

/// [`gelu`] applied element-wise in place (parallel).
pub fn gelu_inplace<T: Float, D: Dimension>(x: &mut Array<T, D>) {
    x.par_mapv_inplace(gelu);
}

/// `torch.relu` in place: `max(x, 0)`; NaN stays NaN (parallel).
pub fn relu_inplace<T: Float, D: Dimension>(x: &mut Array<T, D>) {
    x.par_mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
}

/// `torch.softmax(x, dim=-1)` in place on a 2-D view: per row, `e = exp(x - max(x))`,
/// `y = e / Σe`. A NaN anywhere in a row makes the whole row NaN, as in PyTorch. Parallel
/// over rows.
pub fn softmax_rows_inplace<T: Float>(mut x: ArrayViewMut2<T>) {
    Zip::from(x.rows_mut()).par_for_each(|mut row| {
        let max = row.fold(T::neg_infinity(), |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = sum_lanes(row.iter().copied());
        row.mapv_inplace(|v| v / sum);
    });
}

/// Output length of a convolution/pooling window sweep along one axis:
/// `(n + 2p - d(k-1) - 1)/s + 1`, asserting that the (dilated) kernel fits the padded input.
fn window_out_len(op: &str, n: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    assert!(k > 0 && s > 0 && d > 0, "{op}: kernel, stride and dilation must be positive");
    let ek = d * (k - 1) + 1;
    assert!(n + 2 * p >= ek, "{op}: kernel extent {ek} is larger than the padded input size {}", n + 2 * p);
    (n + 2 * p - ek) / s + 1
}

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
    conv2d_tiled(x, weight, bias, stride, padding, dilation, TILE_ELEMS)
}

/// [`conv2d`] with an explicit im2col element budget per tile (small budgets are used by the
/// tests to exercise the tiling and input-channel blocking).
fn conv2d_tiled<T: Float>(
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
    // the thread count; tiles are made smaller than `rows_nominal` only to feed the threads.
    let threads = rayon::current_num_threads();
    let rows_budget = tile_elems / (cin * kk * wo).max(1);
    let rows_min = MIN_TILE_COLS.div_ceil(wo);
    let rows_nominal = rows_budget.max(rows_min).clamp(1, ho);
    let rows_par = ho.div_ceil(2 * threads);
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
                general_mat_mul(T::one(), &a, &bmat, beta, &mut oc);
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
fn conv_transpose2d_tiled<T: Float>(
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

    let threads = rayon::current_num_threads();
    let chunk_budget = (tile_elems / (kk * hw)).max(1);
    let chunk_par = cout.div_ceil(2 * threads);
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
            general_mat_mul(T::one(), &a.t(), &xmat, T::zero(), &mut cols);
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

/// `torch.nn.BatchNorm2d` in eval mode, in place on `x` (B, C, H, W):
/// `y = (x - running_mean)/sqrt(running_var + eps) · weight + bias` per channel (dim 1).
///
/// Computed as PyTorch's CPU eval kernel does, all in `T`: per channel
/// `invstd = 1/sqrt(var + eps)`, `alpha = weight · invstd`, `beta = bias - mean · alpha`, then
/// `y = x · alpha + beta`. `eps` is rounded to `T` first. Parallel over channels.
pub fn batch_norm_inplace<T: Float>(
    x: &mut Array4<T>,
    running_mean: ArrayView1<T>,
    running_var: ArrayView1<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) {
    let c = x.len_of(Axis(1));
    assert_eq!(running_mean.len(), c, "batch_norm: running_mean length != {c}");
    assert_eq!(running_var.len(), c, "batch_norm: running_var length != {c}");
    if let Some(wv) = &weight {
        assert_eq!(wv.len(), c, "batch_norm: weight length != {c}");
    }
    if let Some(bv) = &bias {
        assert_eq!(bv.len(), c, "batch_norm: bias length != {c}");
    }
    let eps = T::from_f64_lossy(eps);
    let mut alpha = Array::zeros(c);
    let mut beta = Array::zeros(c);
    for ch in 0..c {
        let invstd = T::one() / (running_var[ch] + eps).sqrt();
        let wv = weight.as_ref().map_or(T::one(), |wv| wv[ch]);
        let bv = bias.as_ref().map_or(T::zero(), |bv| bv[ch]);
        alpha[ch] = invstd * wv;
        beta[ch] = bv - running_mean[ch] * alpha[ch];
    }
    Zip::from(x.axis_iter_mut(Axis(1)))
        .and(&alpha)
        .and(&beta)
        .par_for_each(|mut plane, &a, &b| plane.mapv_inplace(|v| v * a + b));
}

/// `torch.nn.MaxPool2d(kernel, stride, padding)` (dilation 1, `ceil_mode=False`):
/// output `(H + 2p - k)/s + 1` (likewise W), `y[i,j] = max` over the window
/// `[i·s - p, i·s - p + k) × [j·s - p, j·s - p + k)` clipped to the input (the padding acts as
/// -inf). As PyTorch's CPU kernel: a NaN in the window makes the result NaN. Requires
/// `p ≤ k/2` (PyTorch's own check). Parallel over planes.
pub fn max_pool2d<T: Float>(
    x: ArrayView4<T>,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    assert!(
        padding.0 <= kernel.0 / 2 && padding.1 <= kernel.1 / 2,
        "max_pool2d: padding must be at most half of the kernel size"
    );
    let ho = window_out_len("max_pool2d", h, kernel.0, stride.0, padding.0, 1);
    let wo = window_out_len("max_pool2d", w, kernel.1, stride.1, padding.1, 1);
    let mut out = Array4::zeros((b, c, ho, wo));
    let x_std = x.as_standard_layout();
    let window = |o: usize, s: usize, p: usize, k: usize, n: usize| {
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min(n as isize);
        (start.max(0) as usize, end.max(0) as usize)
    };
    par_planes(x_std.view(), &mut out, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for oh in 0..ho {
            let (ih0, ih1) = window(oh, stride.0, padding.0, kernel.0, h);
            for ow in 0..wo {
                let (iw0, iw1) = window(ow, stride.1, padding.1, kernel.1, w);
                let mut m = T::neg_infinity();
                for ih in ih0..ih1 {
                    for &v in &xs[ih * w + iw0..ih * w + iw1] {
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                op[[oh, ow]] = m;
            }
        }
    });
    out
}

/// The adaptive pooling bins of an axis of length `n` pooled to `m`:
/// bin `i` is `[floor(i·n/m), ceil((i+1)·n/m))`.
fn adaptive_bins(n: usize, m: usize) -> Vec<(usize, usize)> {
    (0..m).map(|i| ((i * n) / m, ((i + 1) * n).div_ceil(m))).collect()
}

/// `torch.nn.AdaptiveAvgPool2d(out)` on `x` (B, C, H, W) → (B, C, out.0, out.1).
///
/// Output `(i, j)` is the mean over the bin rows `[floor(i·H/Ho), ceil((i+1)·H/Ho))` × bin
/// columns (likewise): the sum accumulated in `T` in row-major order over the bin, then divided
/// by the bin height and then by the bin width (`sum / kh / kw`, exactly as PyTorch's CPU
/// kernel). Output sizes larger than the input repeat bins of size 1. Parallel over planes.
pub fn adaptive_avg_pool2d<T: Float>(x: ArrayView4<T>, out: (usize, usize)) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    assert!((h > 0 || out.0 == 0) && (w > 0 || out.1 == 0), "adaptive_avg_pool2d: empty input plane");
    let rows = adaptive_bins(h, out.0);
    let colbins = adaptive_bins(w, out.1);
    let mut y = Array4::zeros((b, c, out.0, out.1));
    let x_std = x.as_standard_layout();
    par_planes(x_std.view(), &mut y, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for (i, &(h0, h1)) in rows.iter().enumerate() {
            let kh: T = cast(h1 - h0);
            for (j, &(w0, w1)) in colbins.iter().enumerate() {
                let kw: T = cast(w1 - w0);
                let mut sum = T::zero();
                for ih in h0..h1 {
                    for &v in &xs[ih * w + w0..ih * w + w1] {
                        sum += v;
                    }
                }
                op[[i, j]] = sum / kh / kw;
            }
        }
    });
    y
}

/// One entry of a bilinear index/weight table: `(i0, i1, l0, l1)`.
type LinearTap<T> = (usize, usize, T, T);

/// PyTorch's `compute_indices_weights_linear` for one axis (input length `n`, output `m`),
/// all in `T`.
fn linear_taps<T: Float>(n: usize, m: usize, align_corners: bool) -> Vec<LinearTap<T>> {
    let scale: T = if align_corners {
        if m > 1 {
            cast::<T>(n - 1) / cast::<T>(m - 1)
        } else {
            T::zero()
        }
    } else {
        cast::<T>(n) / cast::<T>(m)
    };
    let half = T::from_f64_lossy(0.5);
    (0..m)
        .map(|d| {
            let src = if align_corners {
                scale * cast::<T>(d)
            } else {
                let s = scale * (cast::<T>(d) + half) - half;
                if s < T::zero() {
                    T::zero()
                } else {
                    s
                }
            };
            let i0 = src.floor().to_usize().unwrap_or(0).min(n - 1);
            let i1 = i0 + usize::from(i0 < n - 1);
            let l1 = (src - cast::<T>(i0)).max(T::zero()).min(T::one());
            (i0, i1, T::one() - l1, l1)
        })
        .collect()
}

/// `F.interpolate(x, size=out, mode='bilinear', align_corners=...)` (no antialias), as
/// PyTorch's CPU kernel computes it, with all coordinate math in `T`. Per axis
/// (input `n`, output `m`):
/// `scale = align_corners ? (m > 1 ? (n-1)/(m-1) : 0) : n/m`;
/// `src = align_corners ? scale·d : max(scale·(d + 0.5) - 0.5, 0)`;
/// `i0 = min(floor(src), n-1)`, `i1 = i0 + (i0 < n-1)`, `l1 = clamp(src - i0, 0, 1)`,
/// `l0 = 1 - l1`; value `l0h·(l0w·x[i0,j0] + l1w·x[i0,j1]) + l1h·(l0w·x[i1,j0] + l1w·x[i1,j1])`.
///
/// Equal input and output sizes return a copy of `x` (the formula is the identity there).
/// Parallel over planes.
pub fn interpolate_bilinear<T: Float>(x: ArrayView4<T>, out: (usize, usize), align_corners: bool) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    if (h, w) == out {
        return x.as_standard_layout().into_owned();
    }
    assert!((h > 0 || out.0 == 0) && (w > 0 || out.1 == 0), "interpolate_bilinear: empty input plane");
    let th = linear_taps::<T>(h, out.0, align_corners);
    let tw = linear_taps::<T>(w, out.1, align_corners);
    let mut y = Array4::zeros((b, c, out.0, out.1));
    let x_std = x.as_standard_layout();
    par_planes(x_std.view(), &mut y, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for (mut orow, &(h0, h1, a0, a1)) in op.outer_iter_mut().zip(&th) {
            let r0 = &xs[h0 * w..(h0 + 1) * w];
            let r1 = &xs[h1 * w..(h1 + 1) * w];
            for (o, &(w0, w1, b0, b1)) in orow.iter_mut().zip(&tw) {
                *o = a0 * (b0 * r0[w0] + b1 * r0[w1]) + a1 * (b0 * r1[w0] + b1 * r1[w1]);
            }
        }
    });
    y
}

/// `logits.argmax(dim=1)`: (B, C, H, W) → (B, H, W) class indices. Ties pick the first
/// maximal channel; a NaN counts as the maximum (the first NaN wins), as in PyTorch.
/// Requires C ≥ 1. Parallel over images and rows.
pub fn argmax_channels<T: Float>(x: ArrayView4<T>) -> Array3<i64> {
    let (b, c, h, w) = x.dim();
    assert!(c > 0, "argmax_channels: no channels");
    let mut out = Array3::<i64>::zeros((b, h, w));
    out.outer_iter_mut().into_par_iter().zip(x.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        ob.outer_iter_mut().into_par_iter().enumerate().for_each(|(row, mut orow)| {
            let mut best = xb.slice(s![0, row, ..]).to_vec();
            for ch in 1..c {
                let xrow = xb.slice(s![ch, row, ..]);
                for ((bv, o), &v) in best.iter_mut().zip(orow.iter_mut()).zip(xrow) {
                    if !bv.is_nan() && (v > *bv || v.is_nan()) {
                        *bv = v;
                        *o = ch as i64;
                    }
                }
            }
        });
    });
    out
}

/// `a += b` element-wise (`torch.Tensor.add_`, same shapes), in parallel.
pub fn add_inplace<T: Float, D: Dimension>(a: &mut Array<T, D>, b: ArrayView<T, D>) {
    assert_eq!(a.shape(), b.shape(), "add_inplace: shape mismatch");
    Zip::from(a).and(&b).par_for_each(|a, &b| *a += b);
}

/// `x *= gamma` per column: x (N, C), gamma (C) (the layer-scale `gamma * x`), in parallel
/// over rows.
pub fn mul_channel_inplace<T: Float>(x: &mut Array2<T>, gamma: ArrayView1<T>) {
    assert_eq!(x.ncols(), gamma.len(), "mul_channel_inplace: gamma length {} != {} columns", gamma.len(), x.ncols());
    Zip::from(x.rows_mut()).par_for_each(|mut row| {
        Zip::from(&mut row).and(&gamma).for_each(|v, &g| *v *= g);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array1, Array4, ArrayD, IxDyn};

    /// A tiny deterministic pseudo-random generator (64-bit LCG, top 53 bits).
    struct Lcg(u64);

    impl Lcg {
        fn new(seed: u64) -> Self {
            Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
        }
        /// Uniform in [-1, 1).
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
        fn vec<T: Float>(&mut self, n: usize) -> Array1<T> {
            Array1::from_shape_fn(n, |_| T::from_f64_lossy(self.next()))
        }
        fn mat<T: Float>(&mut self, shape: (usize, usize)) -> Array2<T> {
            Array2::from_shape_fn(shape, |_| T::from_f64_lossy(self.next()))
        }
        fn t4<T: Float>(&mut self, shape: (usize, usize, usize, usize)) -> Array4<T> {
            Array4::from_shape_fn(shape, |_| T::from_f64_lossy(self.next()))
        }
    }

    fn f64s<T: Float, D: Dimension>(a: &Array<T, D>) -> Array<f64, D> {
        a.mapv(|v| v.to_f64_exact())
    }

    /// `|got - want| <= tol * mag + tiny`, elementwise.
    fn assert_close<T: Float, D: Dimension>(
        got: &Array<T, D>,
        want: &Array<f64, D>,
        mag: &Array<f64, D>,
        tol: f64,
        what: &str,
    ) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        for ((g, w), m) in got.iter().zip(want).zip(mag) {
            let g = g.to_f64_exact();
            let err = (g - w).abs();
            assert!(
                err <= tol * m + 1e-300 || (g.is_nan() && w.is_nan()),
                "{what} ({}): got {g}, want {w}, err {err}, bound {}",
                T::DTYPE,
                tol * m
            );
        }
    }

    /// Bound factor on the error of a K-term dot product in `T`, relative to Σ|terms|.
    fn dot_tol<T: Float>(k: usize) -> f64 {
        2.0 * (k as f64 + 2.0) * T::epsilon().to_f64_exact()
    }

    // ---------------------------------------------------------------- linear

    fn check_linear<T: Float>() {
        let mut rng = Lcg::new(1);
        for &(n, i, o, with_bias) in &[
            (5, 7, 3, true),
            (1, 1, 1, false),
            (70, 50, 90, true),   // parallel split over columns
            (300, 40, 33, false), // parallel split over rows
            (4, 0, 3, true),      // no input features: y = bias
        ] {
            let x = rng.mat::<T>((n, i));
            let w = rng.mat::<T>((o, i));
            let b = rng.vec::<T>(o);
            let y = linear(x.view(), w.view(), with_bias.then(|| b.view()));
            let (xf, wf, bf) = (f64s(&x), f64s(&w), f64s(&b));
            let mut want = Array2::zeros((n, o));
            let mut mag = Array2::zeros((n, o));
            for r in 0..n {
                for c in 0..o {
                    let mut acc = if with_bias { bf[c] } else { 0.0 };
                    let mut m = acc.abs();
                    for k in 0..i {
                        acc += xf[[r, k]] * wf[[c, k]];
                        m += (xf[[r, k]] * wf[[c, k]]).abs();
                    }
                    want[[r, c]] = acc;
                    mag[[r, c]] = m;
                }
            }
            assert_close(&y, &want, &mag, dot_tol::<T>(i + 1), "linear");
        }
        // Non-contiguous input (a transposed view) gives the same result.
        let xt = rng.mat::<T>((6, 9));
        let w = rng.mat::<T>((4, 6));
        let y1 = linear(xt.t(), w.view(), None);
        let y2 = linear(xt.t().as_standard_layout().view(), w.view(), None);
        assert_eq!(y1, y2);
    }

    #[test]
    fn linear_matches_naive() {
        check_linear::<f32>();
        check_linear::<f64>();
    }

    // ------------------------------------------------------------ layer norm

    fn check_layer_norm<T: Float>() {
        let mut rng = Lcg::new(2);
        let (n, c) = (13, 768);
        let x = rng.mat::<T>((n, c)).mapv(|v| v * T::from_f64_lossy(3.0) + T::one());
        // Plain normalisation: mean 0, variance 1 (up to eps).
        let y = layer_norm(x.view(), None, None, 0.0);
        for row in y.rows() {
            let r = row.mapv(|v| v.to_f64_exact());
            let mean = r.sum() / c as f64;
            let var = r.mapv(|v| (v - mean) * (v - mean)).sum() / c as f64;
            let tol = 1e3 * T::epsilon().to_f64_exact();
            assert!(mean.abs() < tol, "layer_norm mean {mean}");
            assert!((var - 1.0).abs() < tol, "layer_norm var {var}");
        }
        // Affine version against a naive f64 evaluation.
        let w = rng.vec::<T>(c);
        let b = rng.vec::<T>(c);
        let eps = 1e-6;
        let y = layer_norm(x.view(), Some(w.view()), Some(b.view()), eps);
        let (xf, wf, bf) = (f64s(&x), f64s(&w), f64s(&b));
        let mut want = Array2::zeros((n, c));
        let mut mag = Array2::zeros((n, c));
        for r in 0..n {
            let row = xf.row(r);
            let mean = row.sum() / c as f64;
            let var = row.mapv(|v| (v - mean) * (v - mean)).sum() / c as f64;
            for j in 0..c {
                let z = (row[j] - mean) / (var + eps).sqrt();
                want[[r, j]] = z * wf[j] + bf[j];
                mag[[r, j]] = (z * wf[j]).abs() + bf[j].abs() + (wf[j] * 1.0).abs();
            }
        }
        assert_close(&y, &want, &mag, 50.0 * T::epsilon().to_f64_exact(), "layer_norm");
        // Weight only / bias only.
        let yw = layer_norm(x.view(), Some(w.view()), None, eps);
        let yb = layer_norm(x.view(), None, Some(b.view()), eps);
        let y0 = layer_norm(x.view(), None, None, eps);
        assert_eq!(yw, &y0 * &w);
        assert_eq!(yb, &y0 + &b);
    }

    #[test]
    fn layer_norm_normalises() {
        check_layer_norm::<f32>();
        check_layer_norm::<f64>();
    }

    // ------------------------------------------------------------ activations

    #[test]
    fn gelu_values() {
        // Φ(1) and -Φ(-1). PyTorch's scalar kernel, `x * 0.5 * (1 + erf(x * M_SQRT1_2))` with
        // glibc's erf, gives 0.841344746068543 and -0.15865525393145702 (as does libm here):
        // one ulp from the values of `0.5 * x * (1 + erf(x / sqrt(2)))`, whose argument rounds
        // differently. Both are accepted to within 2 ulp.
        let ulp = |v: f64| f64::EPSILON * v.abs();
        assert!((gelu(1.0f64) - 0.8413447460685429).abs() <= 2.0 * ulp(0.8413447460685429));
        assert!((gelu(-1.0f64) + 0.15865525393145707).abs() <= 2.0 * ulp(0.15865525393145707));
        assert_eq!(gelu(1.0f64), 0.841344746068543);
        assert_eq!(gelu(-1.0f64), -0.15865525393145702);
        assert_eq!(gelu(0.0f64), 0.0);
        assert_eq!(gelu(1.0f32), 0.8413447460685429f64 as f32);
        assert_eq!(gelu(-1.0f32), -0.15865525393145707f64 as f32);
        for &v in &[-6.0f64, -2.5, -0.3, 0.1, 0.7, 3.0, 9.0] {
            let want = v * 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            assert!((gelu(v) - want).abs() <= 1e-15 * want.abs().max(1e-300));
            let v32 = v as f32;
            let w = v32 as f64;
            let want32 = (w * 0.5 * (1.0 + libm::erf(w * std::f64::consts::FRAC_1_SQRT_2))) as f32;
            assert_eq!(gelu(v32), want32);
        }
        assert!(gelu(f64::NAN).is_nan());
        let mut a = Array2::from_shape_fn((3, 4), |(i, j)| i as f32 - j as f32 * 0.5);
        let want = a.mapv(gelu);
        gelu_inplace(&mut a);
        assert_eq!(a, want);
    }

    #[test]
    fn relu_values() {
        let mut a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![-1.0f64, 0.0, 2.5, -0.1, f64::NAN, 7.0]).unwrap();
        relu_inplace(&mut a);
        let v = a.into_raw_vec_and_offset().0;
        assert_eq!(&v[..4], &[0.0, 0.0, 2.5, 0.0]);
        assert!(v[4].is_nan());
        assert_eq!(v[5], 7.0);
    }

    fn check_softmax<T: Float>() {
        let mut rng = Lcg::new(3);
        let x = rng.mat::<T>((17, 45)).mapv(|v| v * T::from_f64_lossy(20.0));
        let mut y = x.clone();
        softmax_rows_inplace(y.view_mut());
        let xf = f64s(&x);
        for (r, row) in y.rows().into_iter().enumerate() {
            let s: f64 = row.iter().map(|v| v.to_f64_exact()).sum();
            assert!((s - 1.0).abs() < 64.0 * T::epsilon().to_f64_exact(), "softmax sum {s}");
            let max = xf.row(r).fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let z: f64 = xf.row(r).iter().map(|&v| (v - max).exp()).sum();
            for (j, v) in row.iter().enumerate() {
                let want = (xf[[r, j]] - max).exp() / z;
                let err = (v.to_f64_exact() - want).abs();
                assert!(
                    err <= 64.0 * T::epsilon().to_f64_exact() * want.max(1e-30) + 1e-300,
                    "softmax {r},{j}: got {v}, want {want}"
                );
            }
        }
        // Works on a non-contiguous (transposed) view, and a NaN poisons its row only.
        let mut z = x.t().to_owned();
        z[[0, 3]] = T::nan();
        let mut zt = z.t().to_owned();
        softmax_rows_inplace(z.view_mut().reversed_axes());
        softmax_rows_inplace(zt.view_mut());
        assert!(zt.row(3).iter().all(|v| v.is_nan()));
        assert!(zt.row(2).iter().all(|v| !v.is_nan()));
        for (a, b) in z.t().iter().zip(zt.iter()) {
            assert!(a == b || (a.is_nan() && b.is_nan()));
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        check_softmax::<f32>();
        check_softmax::<f64>();
    }

    // ------------------------------------------------------------ convolution

    /// Direct 7-loop convolution in f64: (value, Σ|terms|).
    #[allow(clippy::type_complexity)]
    fn naive_conv2d(
        x: &Array4<f64>,
        w: &Array4<f64>,
        b: Option<&Array1<f64>>,
        s: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
    ) -> (Array4<f64>, Array4<f64>) {
        let (bn, cin, h, wd) = x.dim();
        let (cout, _, kh, kw) = w.dim();
        let ho = (h + 2 * p.0 - d.0 * (kh - 1) - 1) / s.0 + 1;
        let wo = (wd + 2 * p.1 - d.1 * (kw - 1) - 1) / s.1 + 1;
        let mut y = Array4::zeros((bn, cout, ho, wo));
        let mut m = Array4::zeros((bn, cout, ho, wo));
        for n in 0..bn {
            for o in 0..cout {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut acc = b.map_or(0.0, |b| b[o]);
                        let mut mag = acc.abs();
                        for c in 0..cin {
                            for u in 0..kh {
                                for v in 0..kw {
                                    let ih = (i * s.0 + u * d.0) as isize - p.0 as isize;
                                    let iw = (j * s.1 + v * d.1) as isize - p.1 as isize;
                                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                        let t = w[[o, c, u, v]] * x[[n, c, ih as usize, iw as usize]];
                                        acc += t;
                                        mag += t.abs();
                                    }
                                }
                            }
                        }
                        y[[n, o, i, j]] = acc;
                        m[[n, o, i, j]] = mag;
                    }
                }
            }
        }
        (y, m)
    }

    type ConvCase = (
        (usize, usize, usize, usize), // B, Cin, H, W
        (usize, usize, usize),        // Cout, kh, kw
        (usize, usize),               // stride
        (usize, usize),               // padding
        (usize, usize),               // dilation
        bool,                         // bias
    );

    const CONV_CASES: &[ConvCase] = &[
        ((2, 3, 9, 11), (4, 3, 3), (1, 1), (1, 1), (1, 1), true),
        ((1, 5, 12, 10), (3, 1, 1), (1, 1), (0, 0), (1, 1), true), // pointwise fast path
        ((2, 5, 12, 10), (3, 1, 1), (1, 1), (0, 0), (1, 1), false),
        ((1, 4, 13, 14), (2, 1, 1), (2, 2), (0, 0), (1, 1), true), // strided 1x1
        ((1, 2, 8, 8), (3, 1, 1), (1, 1), (1, 2), (1, 1), true),   // padded 1x1
        ((3, 2, 15, 9), (5, 3, 2), (2, 1), (1, 0), (1, 1), true),
        ((1, 3, 16, 17), (2, 3, 3), (1, 2), (2, 3), (2, 2), false), // dilated
        ((1, 2, 7, 7), (2, 7, 7), (1, 1), (3, 3), (1, 1), true),
        ((1, 3, 5, 6), (2, 5, 6), (1, 1), (0, 0), (1, 1), true), // kernel = input
        ((1, 2, 4, 4), (2, 3, 3), (3, 3), (4, 4), (1, 1), true), // padding > kernel
        ((2, 6, 20, 3), (4, 2, 3), (3, 1), (0, 1), (2, 1), true),
        ((1, 8, 40, 40), (8, 3, 3), (1, 1), (1, 1), (1, 1), true), // several row tiles
    ];

    fn check_conv2d<T: Float>() {
        let mut rng = Lcg::new(4);
        for (ci, &((bn, cin, h, wd), (cout, kh, kw), s, p, d, with_bias)) in CONV_CASES.iter().enumerate() {
            let x = rng.t4::<T>((bn, cin, h, wd));
            let w = rng.t4::<T>((cout, cin, kh, kw));
            let b = rng.vec::<T>(cout);
            let bias = with_bias.then(|| b.view());
            let (want, mag) = naive_conv2d(&f64s(&x), &f64s(&w), with_bias.then(|| f64s(&b)).as_ref(), s, p, d);
            let tol = dot_tol::<T>(cin * kh * kw + 1);
            let y = conv2d(x.view(), w.view(), bias, s, p, d);
            assert_close(&y, &want, &mag, tol, &format!("conv2d case {ci}"));
            // Tiny budgets: many row tiles, input channels accumulated in small blocks.
            for budget in [1, 2 * kh * kw * wd] {
                let yt = conv2d_tiled(x.view(), w.view(), bias, s, p, d, budget);
                assert_close(&yt, &want, &mag, tol, &format!("conv2d case {ci} budget {budget}"));
            }
            // Non-standard-layout input and weight.
            let xp = x.view().permuted_axes([0, 1, 3, 2]).to_owned();
            let xp = xp.view().permuted_axes([0, 1, 3, 2]);
            let wf = w.t().to_owned();
            let yp = conv2d(xp, wf.t(), bias, s, p, d);
            assert_eq!(yp, y, "conv2d case {ci}: layout independence");
        }
    }

    #[test]
    fn conv2d_matches_direct_convolution() {
        check_conv2d::<f32>();
        check_conv2d::<f64>();
    }

    /// Direct transposed convolution by scatter in f64: (value, Σ|terms|).
    fn naive_conv_transpose2d(
        x: &Array4<f64>,
        w: &Array4<f64>,
        b: Option<&Array1<f64>>,
        s: (usize, usize),
        p: (usize, usize),
    ) -> (Array4<f64>, Array4<f64>) {
        let (bn, cin, h, wd) = x.dim();
        let (_, cout, kh, kw) = w.dim();
        let ho = (h - 1) * s.0 + kh - 2 * p.0;
        let wo = (wd - 1) * s.1 + kw - 2 * p.1;
        let mut y = Array4::zeros((bn, cout, ho, wo));
        let mut m = Array4::zeros((bn, cout, ho, wo));
        for n in 0..bn {
            for c in 0..cin {
                for i in 0..h {
                    for j in 0..wd {
                        for o in 0..cout {
                            for u in 0..kh {
                                for v in 0..kw {
                                    let oh = (i * s.0 + u) as isize - p.0 as isize;
                                    let ow = (j * s.1 + v) as isize - p.1 as isize;
                                    if oh >= 0 && ow >= 0 && (oh as usize) < ho && (ow as usize) < wo {
                                        let t = x[[n, c, i, j]] * w[[c, o, u, v]];
                                        y[[n, o, oh as usize, ow as usize]] += t;
                                        m[[n, o, oh as usize, ow as usize]] += t.abs();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = b {
            for n in 0..bn {
                for o in 0..cout {
                    y.slice_mut(s![n, o, .., ..]).mapv_inplace(|v| v + b[o]);
                    m.slice_mut(s![n, o, .., ..]).mapv_inplace(|v| v + b[o].abs());
                }
            }
        }
        (y, m)
    }

    fn check_conv_transpose2d<T: Float>() {
        let mut rng = Lcg::new(5);
        type Case = ((usize, usize, usize, usize), (usize, usize, usize), (usize, usize), (usize, usize), bool);
        let cases: &[Case] = &[
            ((2, 6, 5, 4), (7, 2, 2), (2, 2), (0, 0), true), // the model's case
            ((1, 3, 4, 5), (2, 3, 3), (2, 2), (1, 1), true), // overlapping, cropped
            ((1, 2, 3, 3), (3, 4, 3), (1, 3), (0, 1), false),
            ((2, 4, 6, 2), (5, 3, 1), (3, 1), (1, 0), true),
            ((1, 3, 1, 1), (2, 2, 2), (1, 1), (0, 0), true),
            ((1, 2, 5, 5), (3, 5, 5), (2, 2), (2, 2), true),
        ];
        for (ci, &((bn, cin, h, wd), (cout, kh, kw), s, p, with_bias)) in cases.iter().enumerate() {
            let x = rng.t4::<T>((bn, cin, h, wd));
            let w = rng.t4::<T>((cin, cout, kh, kw));
            let b = rng.vec::<T>(cout);
            let bias = with_bias.then(|| b.view());
            let (want, mag) = naive_conv_transpose2d(&f64s(&x), &f64s(&w), with_bias.then(|| f64s(&b)).as_ref(), s, p);
            let tol = dot_tol::<T>(cin * kh * kw + 1);
            let y = conv_transpose2d(x.view(), w.view(), bias, s, p);
            assert_close(&y, &want, &mag, tol, &format!("conv_transpose2d case {ci}"));
            let yt = conv_transpose2d_tiled(x.view(), w.view(), bias, s, p, 1);
            assert_eq!(yt, y, "conv_transpose2d case {ci}: channel blocking");
        }
    }

    #[test]
    fn conv_transpose2d_matches_scatter() {
        check_conv_transpose2d::<f32>();
        check_conv_transpose2d::<f64>();
    }

    // ------------------------------------------------------------ batch norm

    fn check_batch_norm<T: Float>() {
        let mut rng = Lcg::new(6);
        let (bn, c, h, w) = (2, 5, 3, 4);
        let x = rng.t4::<T>((bn, c, h, w));
        let mean = rng.vec::<T>(c);
        let var = rng.vec::<T>(c).mapv(|v| v.abs() + T::from_f64_lossy(0.1));
        let wt = rng.vec::<T>(c);
        let bs = rng.vec::<T>(c);
        let eps = 1e-5;
        let mut y = x.clone();
        batch_norm_inplace(&mut y, mean.view(), var.view(), Some(wt.view()), Some(bs.view()), eps);
        let xf = f64s(&x);
        let mut want = Array4::zeros(x.dim());
        let mut mag = Array4::zeros(x.dim());
        for ((n, ch, i, j), v) in want.indexed_iter_mut() {
            let z = (xf[[n, ch, i, j]] - mean[ch].to_f64_exact()) / (var[ch].to_f64_exact() + eps).sqrt()
                * wt[ch].to_f64_exact();
            *v = z + bs[ch].to_f64_exact();
            let mref: &mut f64 = &mut mag[[n, ch, i, j]];
            *mref = (xf[[n, ch, i, j]] * wt[ch].to_f64_exact()).abs() / (var[ch].to_f64_exact() + eps).sqrt()
                + (mean[ch].to_f64_exact() * wt[ch].to_f64_exact()).abs() / (var[ch].to_f64_exact() + eps).sqrt()
                + bs[ch].to_f64_exact().abs();
        }
        assert_close(&y, &want, &mag, 16.0 * T::epsilon().to_f64_exact(), "batch_norm");
        // Exactly PyTorch's alpha/beta formulation, and weight/bias defaults.
        let mut y2 = x.clone();
        batch_norm_inplace(&mut y2, mean.view(), var.view(), None, None, eps);
        let e = T::from_f64_lossy(eps);
        for ((n, ch, i, j), &v) in y2.indexed_iter() {
            let alpha = T::one() / (var[ch] + e).sqrt();
            let beta = T::zero() - mean[ch] * alpha;
            assert_eq!(v, x[[n, ch, i, j]] * alpha + beta);
        }
    }

    #[test]
    fn batch_norm_matches_formula() {
        check_batch_norm::<f32>();
        check_batch_norm::<f64>();
    }

    // ------------------------------------------------------------ pooling

    fn naive_max_pool(x: &Array4<f64>, k: (usize, usize), s: (usize, usize), p: (usize, usize)) -> Array4<f64> {
        let (bn, c, h, w) = x.dim();
        let ho = (h + 2 * p.0 - k.0) / s.0 + 1;
        let wo = (w + 2 * p.1 - k.1) / s.1 + 1;
        Array4::from_shape_fn((bn, c, ho, wo), |(n, ch, i, j)| {
            let mut m = f64::NEG_INFINITY;
            for u in 0..k.0 {
                for v in 0..k.1 {
                    let ih = (i * s.0 + u) as isize - p.0 as isize;
                    let iw = (j * s.1 + v) as isize - p.1 as isize;
                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                        let val = x[[n, ch, ih as usize, iw as usize]];
                        if val.is_nan() || m.is_nan() {
                            m = f64::NAN;
                        } else {
                            m = m.max(val);
                        }
                    }
                }
            }
            m
        })
    }

    fn check_max_pool<T: Float>() {
        let mut rng = Lcg::new(7);
        for &(shape, k, s, p) in &[
            ((2, 3, 9, 8), (3, 3), (2, 2), (1, 1)),
            ((1, 2, 7, 10), (2, 3), (2, 3), (1, 0)),
            ((1, 1, 5, 5), (5, 5), (1, 1), (2, 2)),
            ((1, 2, 6, 6), (1, 1), (1, 1), (0, 0)),
        ] {
            let mut x = rng.t4::<T>(shape);
            x[[0, 0, 1, 1]] = T::nan();
            let y = max_pool2d(x.view(), k, s, p);
            let want = naive_max_pool(&f64s(&x), k, s, p);
            assert_eq!(y.shape(), want.shape());
            for (a, b) in y.iter().zip(&want) {
                assert!(a.to_f64_exact() == *b || (a.is_nan() && b.is_nan()), "max_pool {a} vs {b}");
            }
        }
    }

    #[test]
    fn max_pool2d_matches_naive() {
        check_max_pool::<f32>();
        check_max_pool::<f64>();
    }

    #[test]
    fn adaptive_bins_match_pytorch() {
        assert_eq!(adaptive_bins(20, 3), vec![(0, 7), (6, 14), (13, 20)]);
        assert_eq!(adaptive_bins(20, 6), vec![(0, 4), (3, 7), (6, 10), (10, 14), (13, 17), (16, 20)]);
        assert_eq!(adaptive_bins(40, 1), vec![(0, 40)]);
        assert_eq!(adaptive_bins(3, 5), vec![(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]);
        assert_eq!(adaptive_bins(2, 4), vec![(0, 1), (0, 1), (1, 2), (1, 2)]);
    }

    fn check_adaptive_avg_pool<T: Float>() {
        let mut rng = Lcg::new(8);
        for &(shape, out) in &[
            ((2, 3, 20, 20), (3, 6)),
            ((1, 2, 40, 40), (1, 1)),
            ((1, 2, 40, 40), (2, 2)),
            ((1, 2, 40, 40), (6, 6)),
            ((1, 1, 3, 2), (5, 4)), // larger than the input
            ((1, 1, 7, 9), (7, 9)), // identity
        ] {
            let x = rng.t4::<T>(shape);
            let y = adaptive_avg_pool2d(x.view(), out);
            let xf = f64s(&x);
            let (bh, bw) = (adaptive_bins(shape.2, out.0), adaptive_bins(shape.3, out.1));
            let mut want = Array4::zeros((shape.0, shape.1, out.0, out.1));
            let mut mag = Array4::zeros(want.dim());
            for ((n, c, i, j), v) in want.indexed_iter_mut() {
                let win = xf.slice(s![n, c, bh[i].0..bh[i].1, bw[j].0..bw[j].1]);
                *v = win.sum() / win.len() as f64;
                mag[[n, c, i, j]] = win.mapv(f64::abs).sum() / win.len() as f64;
            }
            assert_close(&y, &want, &mag, dot_tol::<T>(shape.2 * shape.3), "adaptive_avg_pool2d");
            if (shape.2, shape.3) == out {
                assert_eq!(y, x);
            }
        }
        // A one-hot input lands in every bin that covers it.
        let mut x = Array4::<T>::zeros((1, 1, 20, 1));
        x[[0, 0, 6, 0]] = T::one();
        let y = adaptive_avg_pool2d(x.view(), (3, 1));
        assert_eq!(y[[0, 0, 0, 0]], T::one() / cast(7));
        assert_eq!(y[[0, 0, 1, 0]], T::one() / cast(8));
        assert_eq!(y[[0, 0, 2, 0]], T::zero());
    }

    #[test]
    fn adaptive_avg_pool2d_means_over_bins() {
        check_adaptive_avg_pool::<f32>();
        check_adaptive_avg_pool::<f64>();
    }

    // ------------------------------------------------------------ bilinear

    #[test]
    fn bilinear_hand_computed() {
        let x = arr2(&[[1.0f64, 2.0], [3.0, 4.0]]).into_shape_with_order((1, 1, 2, 2)).unwrap();
        let y = interpolate_bilinear(x.view(), (4, 4), false);
        let want =
            arr2(&[[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]);
        assert_eq!(y.slice(s![0, 0, .., ..]), want);
        let y32 = interpolate_bilinear(x.mapv(|v| v as f32).view(), (4, 4), false);
        assert_eq!(y32.slice(s![0, 0, .., ..]), want.mapv(|v| v as f32));

        let y = interpolate_bilinear(x.view(), (4, 4), true);
        let want = Array2::from_shape_fn((4, 4), |(i, j)| 1.0 + 2.0 * i as f64 / 3.0 + j as f64 / 3.0);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        let y32 = interpolate_bilinear(x.mapv(|v| v as f32).view(), (4, 4), true);
        for (a, b) in y32.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Corners are preserved exactly with align_corners.
        assert_eq!(y[[0, 0, 0, 0]], 1.0);
        assert_eq!(y[[0, 0, 3, 3]], 4.0);
        assert_eq!(y[[0, 0, 0, 3]], 2.0);
        assert_eq!(y[[0, 0, 3, 0]], 3.0);
    }

    /// The documented formula, written out directly in `T`.
    fn naive_bilinear<T: Float>(x: &Array4<T>, out: (usize, usize), ac: bool) -> Array4<T> {
        let (bn, c, h, w) = x.dim();
        let coord = |d: usize, n: usize, m: usize| -> (usize, usize, T, T) {
            let nt = T::from_f64_lossy(n as f64);
            let mt = T::from_f64_lossy(m as f64);
            let dt = T::from_f64_lossy(d as f64);
            let half = T::from_f64_lossy(0.5);
            let src = if ac {
                let scale = if m > 1 { (nt - T::one()) / (mt - T::one()) } else { T::zero() };
                scale * dt
            } else {
                let v = nt / mt * (dt + half) - half;
                if v < T::zero() {
                    T::zero()
                } else {
                    v
                }
            };
            let i0 = (src.floor().to_f64_exact() as usize).min(n - 1);
            let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
            let l1 = (src - T::from_f64_lossy(i0 as f64)).max(T::zero()).min(T::one());
            (i0, i1, T::one() - l1, l1)
        };
        Array4::from_shape_fn((bn, c, out.0, out.1), |(n, ch, i, j)| {
            let (h0, h1, a0, a1) = coord(i, h, out.0);
            let (w0, w1, b0, b1) = coord(j, w, out.1);
            a0 * (b0 * x[[n, ch, h0, w0]] + b1 * x[[n, ch, h0, w1]])
                + a1 * (b0 * x[[n, ch, h1, w0]] + b1 * x[[n, ch, h1, w1]])
        })
    }

    fn check_bilinear<T: Float>() {
        let mut rng = Lcg::new(9);
        for &(shape, out) in &[
            ((2, 3, 5, 7), (11, 13)),
            ((1, 2, 40, 40), (160, 160)),
            ((1, 2, 17, 23), (4, 5)),
            ((1, 1, 6, 6), (1, 1)),
            ((1, 1, 1, 1), (3, 2)),
            ((1, 2, 8, 9), (8, 20)), // one axis unchanged
        ] {
            let x = rng.t4::<T>(shape);
            for ac in [false, true] {
                let y = interpolate_bilinear(x.view(), out, ac);
                let want = naive_bilinear(&x, out, ac);
                assert_eq!(y, want, "bilinear {shape:?} -> {out:?}, align_corners={ac}");
                let xf = x.view().reversed_axes().to_owned();
                let yt = interpolate_bilinear(xf.view().reversed_axes(), out, ac);
                assert_eq!(yt, y);
                let yt = interpolate_bilinear(xf.view().reversed_axes(), (shape.2, shape.3), ac);
                assert!(yt.is_standard_layout());
                assert_eq!(yt, x);
            }
            // Same size is the identity (both modes).
            for ac in [false, true] {
                let y = interpolate_bilinear(x.view(), (shape.2, shape.3), ac);
                assert_eq!(y, x);
            }
        }
        // Identity also via the general formula when only the other axis changes.
        let x = rng.t4::<T>((1, 1, 4, 6));
        let y = interpolate_bilinear(x.view(), (4, 12), false);
        let back = interpolate_bilinear(y.view(), (4, 6), false);
        assert_eq!(back.shape(), x.shape());
        let y2 = interpolate_bilinear(x.view(), (9, 6), false);
        for i in 0..9 {
            let tap = linear_taps::<T>(4, 9, false)[i];
            for j in 0..6 {
                assert_eq!(
                    y2[[0, 0, i, j]],
                    tap.2 * (T::one() * x[[0, 0, tap.0, j]] + T::zero() * x[[0, 0, tap.0, j]])
                        + tap.3 * (T::one() * x[[0, 0, tap.1, j]] + T::zero() * x[[0, 0, tap.1, j]])
                );
            }
        }
    }

    #[test]
    fn bilinear_matches_formula() {
        check_bilinear::<f32>();
        check_bilinear::<f64>();
    }

    // ------------------------------------------------------------ argmax & helpers

    #[test]
    fn argmax_first_max_and_nan() {
        let mut x = Array4::<f32>::zeros((2, 4, 2, 3));
        // (0, :, 0, 0): ties at 1 and 3 -> 1.
        x[[0, 1, 0, 0]] = 5.0;
        x[[0, 3, 0, 0]] = 5.0;
        // (0, :, 0, 1): all equal -> 0.
        // (0, :, 0, 2): last channel is max.
        x[[0, 3, 0, 2]] = 1.0;
        // (0, :, 1, 0): NaN at 2 beats a larger value at 3, and the first NaN wins.
        x[[0, 2, 1, 0]] = f32::NAN;
        x[[0, 3, 1, 0]] = f32::NAN;
        x[[0, 1, 1, 0]] = 100.0;
        // (0, :, 1, 1): NaN in channel 0.
        x[[0, 0, 1, 1]] = f32::NAN;
        x[[0, 2, 1, 1]] = 3.0;
        // (1, :, 1, 2): negative values, max at 2.
        for c in 0..4 {
            x[[1, c, 1, 2]] = -10.0 - (c as f32 - 2.0).abs();
        }
        let y = argmax_channels(x.view());
        assert_eq!(y.dim(), (2, 2, 3));
        assert_eq!(y[[0, 0, 0]], 1);
        assert_eq!(y[[0, 0, 1]], 0);
        assert_eq!(y[[0, 0, 2]], 3);
        assert_eq!(y[[0, 1, 0]], 2);
        assert_eq!(y[[0, 1, 1]], 0);
        assert_eq!(y[[1, 1, 2]], 2);
        assert_eq!(y[[1, 0, 0]], 0);

        // Random logits against a naive argmax (f64).
        let mut rng = Lcg::new(10);
        let x = rng.t4::<f64>((2, 7, 5, 6));
        let y = argmax_channels(x.view());
        for ((n, i, j), &k) in y.indexed_iter() {
            let lane = x.slice(s![n, .., i, j]);
            let mut best = 0;
            for c in 1..7 {
                if lane[c] > lane[best] {
                    best = c;
                }
            }
            assert_eq!(k, best as i64);
        }
    }

    #[test]
    fn add_and_channel_scale() {
        let mut rng = Lcg::new(11);
        let a0 = rng.t4::<f32>((2, 3, 4, 5));
        let b = rng.t4::<f32>((2, 3, 4, 5));
        let mut a = a0.clone();
        add_inplace(&mut a, b.view());
        assert_eq!(a, &a0 + &b);

        let x0 = rng.mat::<f64>((7, 5));
        let g = rng.vec::<f64>(5);
        let mut x = x0.clone();
        mul_channel_inplace(&mut x, g.view());
        assert_eq!(x, &x0 * &g);
    }
}
