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
    linalg::general_mat_mul, s, Array, Array2, Array3, Array4, ArrayView, ArrayView1, ArrayView2,
    ArrayView3, ArrayView4, ArrayViewMut2, Axis, Dimension, Zip,
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
    out.outer_iter_mut()
        .into_par_iter()
        .zip(x.outer_iter().into_par_iter())
        .for_each(|(mut ob, xb)| {
            ob.outer_iter_mut()
                .into_par_iter()
                .zip(xb.outer_iter().into_par_iter())
                .for_each(|(op, xp)| f(xp, op));
        });
}

/// A zero (B, C, H, W) array whose channel planes are filled with `bias[c]` when given.
fn channel_filled<T: Float>(
    shape: (usize, usize, usize, usize),
    bias: Option<ArrayView1<T>>,
) -> Array4<T> {
    let mut out = Array4::zeros(shape);
    if let Some(bias) = bias {
        Zip::from(out.axis_iter_mut(Axis(1)))
            .and(&bias)
            .par_for_each(|mut plane, &bv| plane.fill(bv));
    }
    out
}

/// `torch.nn.functional.linear`: `y = x · weightᵀ + bias`.
///
/// `x` is (N, in), `weight` (out, in), `bias` (out); the result is (N, out). One GEMM (split
/// into parallel blocks) with the bias as its initial accumulator (`beta = 1`).
pub fn linear<T: Float>(
    x: ArrayView2<T>,
    weight: ArrayView2<T>,
    bias: Option<ArrayView1<T>>,
) -> Array2<T> {
    let (n, in_features) = x.dim();
    let (out_features, w_in) = weight.dim();
    assert_eq!(
        in_features, w_in,
        "linear: x has {in_features} features but weight expects {w_in}"
    );
    let (mut y, beta) = match bias {
        Some(b) => {
            assert_eq!(
                b.len(),
                out_features,
                "linear: bias length {} != out_features {out_features}",
                b.len()
            );
            let y = b
                .broadcast((n, out_features))
                .expect("bias broadcasts over rows")
                .to_owned();
            (y, T::one())
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
    Zip::from(y.rows_mut())
        .and(x.rows())
        .par_for_each(|mut yr, xr| {
            let mean = sum_lanes(xr.iter().copied()) / count;
            let var = sum_lanes(xr.iter().map(|&v| (v - mean) * (v - mean))) / count;
            let rstd = T::one() / (var + eps).sqrt();
            Zip::indexed(&mut yr).and(&xr).for_each(|j, yv, &xv| {
                let mut v = (xv - mean) * rstd;
                if let Some(w) = &weight {
                    v = v * w[j];
                }
                if let Some(b) = &bias {
                    v = v + b[j];
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
fn window_out_len(
    op: &str,
    n: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> usize {
    assert!(k > 0 && s > 0 && d > 0, "{op}: kernel, stride and dilation must be positive");
    let ek = d * (k - 1) + 1;
    assert!(
        n + 2 * p >= ek,
        "{op}: kernel extent {ek} is larger than the padded input size {}",
        n + 2 * p
    );
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
    let wmat = w_std
        .view()
        .into_shape_with_order((cout, cin * kk))
        .expect("standard-layout weight reshapes");
    let x_std = x.as_standard_layout();
    let x_std = x_std.view();
    let pointwise = kh == 1 && kw == 1 && stride == (1, 1) && padding == (0, 0);

    // Tiling of one image: whole output rows per tile, input channels in blocks.
    let threads = rayon::current_num_threads();
    let rows_budget = tile_elems / (cin * kk * wo).max(1);
    let rows_min = MIN_TILE_COLS.div_ceil(wo);
    let rows_par = ho.div_ceil(2 * threads);
    let rows_per_tile = rows_par.min(rows_budget.max(rows_min)).max(1);
    let cin_block = (tile_elems / (kk * rows_per_tile * wo)).clamp(1, cin.max(1));
    let n_kblocks = cin.div_ceil(cin_block);
    let cin_block = if n_kblocks > 0 { cin.div_ceil(n_kblocks) } else { 1 };

    out.outer_iter_mut()
        .into_par_iter()
        .zip(x_std.outer_iter().into_par_iter())
        .for_each(|(ob, xb)| {
            let mut omat = ob
                .into_shape_with_order((cout, ho * wo))
                .expect("output image is contiguous");
            if pointwise {
                let xmat = xb
                    .into_shape_with_order((cin, h * w))
                    .expect("standard-layout image reshapes");
                gemm_into(wmat, xmat, beta0, omat.view_mut());
                return;
            }
            omat.axis_chunks_iter_mut(Axis(1), rows_per_tile * wo)
                .into_par_iter()
                .enumerate()
                .for_each(|(t, mut oc)| {
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
                        let bmat = ArrayView2::from_shape((rows, ncols), &*buf)
                            .expect("im2col buffer shape");
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
    assert!(
        full > 2 * p,
        "conv_transpose2d: padding {p} leaves no output (uncropped size {full})"
    );
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
    assert_eq!(
        cin, w_cin,
        "conv_transpose2d: input has {cin} channels but weight expects {w_cin}"
    );
    if let Some(bv) = &bias {
        assert_eq!(
            bv.len(),
            cout,
            "conv_transpose2d: bias length {} != out channels {cout}",
            bv.len()
        );
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
    let wmat = w_std
        .view()
        .into_shape_with_order((cin, cout * kk))
        .expect("standard-layout weight reshapes");
    let x_std = x.as_standard_layout();
    let x_std = x_std.view();

    let threads = rayon::current_num_threads();
    let chunk_budget = (tile_elems / (kk * hw)).max(1);
    let chunk_par = cout.div_ceil(2 * threads);
    let chunk = chunk_budget.min(chunk_par).max(1);
    let chunk = cout.div_ceil(cout.div_ceil(chunk));
    let (sh, sw, ph, pw) = (stride.0, stride.1, padding.0 as isize, padding.1 as isize);

    out.outer_iter_mut()
        .into_par_iter()
        .zip(x_std.outer_iter().into_par_iter())
        .for_each(|(mut ob, xb)| {
            let xmat = xb
                .into_shape_with_order((cin, hw))
                .expect("standard-layout image reshapes");
            ob.axis_chunks_iter_mut(Axis(0), chunk)
                .into_par_iter()
                .enumerate()
                .for_each(|(t, mut oc)| {
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
    (0..m)
        .map(|i| ((i * n) / m, ((i + 1) * n).div_ceil(m)))
        .collect()
}

/// `torch.nn.AdaptiveAvgPool2d(out)` on `x` (B, C, H, W) → (B, C, out.0, out.1).
///
/// Output `(i, j)` is the mean over the bin rows `[floor(i·H/Ho), ceil((i+1)·H/Ho))` × bin
/// columns (likewise): the sum accumulated in `T` in row-major order over the bin, then divided
/// by the bin height and then by the bin width (`sum / kh / kw`, exactly as PyTorch's CPU
/// kernel). Output sizes larger than the input repeat bins of size 1. Parallel over planes.
pub fn adaptive_avg_pool2d<T: Float>(x: ArrayView4<T>, out: (usize, usize)) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    assert!(
        (h > 0 || out.0 == 0) && (w > 0 || out.1 == 0),
        "adaptive_avg_pool2d: empty input plane"
    );
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
pub fn interpolate_bilinear<T: Float>(
    x: ArrayView4<T>,
    out: (usize, usize),
    align_corners: bool,
) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    if (h, w) == out {
        return x.to_owned();
    }
    assert!(
        (h > 0 || out.0 == 0) && (w > 0 || out.1 == 0),
        "interpolate_bilinear: empty input plane"
    );
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
    out.outer_iter_mut()
        .into_par_iter()
        .zip(x.outer_iter().into_par_iter())
        .for_each(|(mut ob, xb)| {
            ob.outer_iter_mut()
                .into_par_iter()
                .enumerate()
                .for_each(|(row, mut orow)| {
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
    assert_eq!(
        x.ncols(),
        gamma.len(),
        "mul_channel_inplace: gamma length {} != {} columns",
        gamma.len(),
        x.ncols()
    );
    Zip::from(x.rows_mut()).par_for_each(|mut row| {
        Zip::from(&mut row).and(&gamma).for_each(|v, &g| *v = *v * g);
    });
}
