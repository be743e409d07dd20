//! `conv2d` for 3x3 kernels at stride 1 and dilation 1 by Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): every
//! 2x2 block of outputs costs 16 multiplies per (output, input) channel pair instead of 36, so
//! the UPerHead's 3x3 convolutions (78% of a BEiT-B + UPerNet crop's FLOP) need 2.25x fewer
//! multiply-adds. It computes the same cross-correlation as `torch.nn.functional.conv2d`:
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for each 4x4 input tile `d` (zero-padded) and 3x3 kernel
//! `g`, summed over input channels, with
//!
//! ```text
//!      | 1  0 -1  0 |        | 1    0    0  |
//! Bᵀ = | 0  1  1  0 |    G = | 1/2  1/2  1/2|    Aᵀ = | 1  1  1  0 |
//!      | 0 -1  1  0 |        | 1/2 -1/2  1/2|         | 0  1 -1 -1 |
//!      | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! (entries 0, ±1, ±1/2: the transforms add and subtract, they never amplify). Numerically it
//! is a different summation order from im2col, with errors of the same order (a few ulp times
//! the sum of |terms|, see the tests); float64 stays far inside the 1e-9 of the float64 twins.
//!
//! Layout: the kernel transform `U` (Cout, 16, Cin) is computed once at load time
//! ([`Winograd::new`], in f64 and rounded once). Per image, output tiles are processed in
//! blocks of whole tile rows; per block and per block of input channels the input transform
//! `V` (Cin_blk, 16, T) is built, then for each of the 16 positions ξ one GEMM
//! `M[:, ξ, :] (+)= U[ξ][:, cblk] · V[:, ξ, :]` (Cout x Cin_blk x T), then the output transform
//! writes the block's output rows. The blocks depend only on the shapes, each GEMM is
//! single-threaded, so the result does not depend on the thread count.

use ndarray::parallel::prelude::*;
use ndarray::{s, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut2, Axis};
use rayon::slice::ParallelSliceMut;

use super::gemm::gemm_block;
use super::window_out_len;
use crate::Float;

/// Output tiles (GEMM columns) aimed at per block: enough that the GEMM's repacking of the
/// kernel block stays small next to its arithmetic, small enough to bound the buffers.
const BLOCK_TILES: usize = 512;
/// Input channels per GEMM (the GEMM's inner dimension); a block of `V` is
/// `CIN_BLOCK x 16 x BLOCK_TILES` elements.
const CIN_BLOCK: usize = 512;

/// A 3x3 kernel transformed for F(2x2, 3x3): `U[o, ξ, c] = (G · weight[o, c] · Gᵀ)[ξ / 4, ξ % 4]`.
pub struct Winograd<T: Float> {
    /// (Cout, 16, Cin).
    u: Array3<T>,
}

/// `G · g · Gᵀ` of one 3x3 kernel (row-major 4x4), in f64.
fn kernel_transform(g: &[[f64; 3]; 3]) -> [f64; 16] {
    // t = G · g (4x3)
    let mut t = [[0.0; 3]; 4];
    for j in 0..3 {
        t[0][j] = g[0][j];
        t[1][j] = 0.5 * (g[0][j] + g[1][j] + g[2][j]);
        t[2][j] = 0.5 * (g[0][j] - g[1][j] + g[2][j]);
        t[3][j] = g[2][j];
    }
    // u = t · Gᵀ (4x4)
    let mut u = [0.0; 16];
    for a in 0..4 {
        let r = &t[a];
        u[4 * a] = r[0];
        u[4 * a + 1] = 0.5 * (r[0] + r[1] + r[2]);
        u[4 * a + 2] = 0.5 * (r[0] - r[1] + r[2]);
        u[4 * a + 3] = r[2];
    }
    u
}

impl<T: Float> Winograd<T> {
    /// Transforms a (Cout, Cin, 3, 3) kernel. Panics on another kernel size (callers check).
    pub fn new(weight: ArrayView4<T>) -> Self {
        let (cout, cin, kh, kw) = weight.dim();
        assert!(kh == 3 && kw == 3, "Winograd: kernel is {kh}x{kw}, not 3x3");
        let mut u = Array3::<T>::zeros((cout, 16, cin));
        u.outer_iter_mut().into_par_iter().zip(weight.outer_iter().into_par_iter()).for_each(|(mut uo, wo)| {
            for (c, wc) in wo.outer_iter().enumerate() {
                let mut g = [[0.0; 3]; 3];
                for (i, row) in g.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = wc[[i, j]].to_f64_exact();
                    }
                }
                for (xi, v) in kernel_transform(&g).into_iter().enumerate() {
                    uo[[xi, c]] = T::from_f64_lossy(v);
                }
            }
        });
        Winograd { u }
    }

    pub fn out_channels(&self) -> usize {
        self.u.dim().0
    }

    pub fn in_channels(&self) -> usize {
        self.u.dim().2
    }
}

/// Writes `V[c - c0, ξ, t]` (`v`: (c1 - c0, 16, T) contiguous) for input channels `c0..c1` and
/// the tiles of tile rows `tr0..tr0 + nrows` (tile `(tr, tj)` at column `(tr - tr0)·tw + tj`),
/// zero padding outside the image. `x` is one image (Cin, H, W) in standard layout.
fn input_transform<T: Float>(
    x: &ArrayView3<T>,
    pad: (usize, usize),
    (c0, c1): (usize, usize),
    (tr0, nrows, tw): (usize, usize, usize),
    v: &mut [T],
) {
    let (_, h, w) = x.dim();
    let xs = x.as_slice().expect("input is in standard layout");
    let ntiles = nrows * tw;
    let bw = 2 * tw + 2;
    debug_assert_eq!(v.len(), (c1 - c0) * 16 * ntiles, "V block size");
    v.par_chunks_mut(16 * ntiles).enumerate().for_each(|(ci, vc)| {
        let c = c0 + ci;
        let plane = &xs[c * h * w..(c + 1) * h * w];
        // Four zero-padded input rows of one tile row: buf[r][j] = x[c, 2·tr - ph + r, j - pw].
        let mut buf = vec![T::zero(); 4 * bw];
        for tr in 0..nrows {
            buf.fill(T::zero());
            for r in 0..4 {
                let ih = (2 * (tr0 + tr) + r) as isize - pad.0 as isize;
                if ih < 0 || ih >= h as isize {
                    continue;
                }
                let src = &plane[ih as usize * w..(ih as usize + 1) * w];
                // Input column iw lands at j = iw + pw; keep j < bw.
                let n = w.min(bw.saturating_sub(pad.1));
                buf[r * bw + pad.1..r * bw + pad.1 + n].copy_from_slice(&src[..n]);
            }
            let (b0, rest) = buf.split_at(bw);
            let (b1, rest) = rest.split_at(bw);
            let (b2, b3) = rest.split_at(bw);
            for tj in 0..tw {
                let j = 2 * tj;
                // t = Bᵀ · d (rows), then v = t · B (columns).
                let mut t = [[T::zero(); 4]; 4];
                for k in 0..4 {
                    let (d0, d1, d2, d3) = (b0[j + k], b1[j + k], b2[j + k], b3[j + k]);
                    t[0][k] = d0 - d2;
                    t[1][k] = d1 + d2;
                    t[2][k] = d2 - d1;
                    t[3][k] = d1 - d3;
                }
                let col = tr * tw + tj;
                for (a, ta) in t.iter().enumerate() {
                    vc[(4 * a) * ntiles + col] = ta[0] - ta[2];
                    vc[(4 * a + 1) * ntiles + col] = ta[1] + ta[2];
                    vc[(4 * a + 2) * ntiles + col] = ta[2] - ta[1];
                    vc[(4 * a + 3) * ntiles + col] = ta[1] - ta[3];
                }
            }
        }
    });
}

/// `out[o, 2·tr + r, 2·tj + q] = (Aᵀ · M[o, ·, t] · A)[r, q] (+ bias[o])` for the tiles of one
/// block (`m`: (Cout, 16, T)), clipped to the output rows of `out` (Cout, rows, Wo).
fn output_transform<T: Float>(
    m: &Array3<T>,
    bias: Option<ArrayView1<T>>,
    tw: usize,
    out: &mut ndarray::ArrayViewMut3<T>,
) {
    let ntiles = m.dim().2;
    let (_, rows, wo) = out.dim();
    out.outer_iter_mut().into_par_iter().zip(m.outer_iter().into_par_iter()).enumerate().for_each(
        |(o, (mut plane, mo))| {
            let b = bias.as_ref().map_or(T::zero(), |b| b[o]);
            let ms = mo.as_slice().expect("block accumulator is contiguous");
            let p = |xi: usize, t: usize| ms[xi * ntiles + t];
            for t in 0..ntiles {
                let (tr, tj) = (t / tw, t % tw);
                // s = Aᵀ · M (2x4), then y = s · A (2x2).
                let mut s = [[T::zero(); 4]; 2];
                let (s0, s1) = s.split_at_mut(1);
                for (c, (a, b)) in s0[0].iter_mut().zip(s1[0].iter_mut()).enumerate() {
                    *a = p(c, t) + p(4 + c, t) + p(8 + c, t);
                    *b = p(4 + c, t) - p(8 + c, t) - p(12 + c, t);
                }
                for (r, sr) in s.iter().enumerate() {
                    let oy = 2 * tr + r;
                    if oy >= rows {
                        continue;
                    }
                    let y0 = sr[0] + sr[1] + sr[2];
                    let y1 = sr[1] - sr[2] - sr[3];
                    let ox = 2 * tj;
                    plane[[oy, ox]] = y0 + b;
                    if ox + 1 < wo {
                        plane[[oy, ox + 1]] = y1 + b;
                    }
                }
            }
        },
    );
}

impl<T: Float> Winograd<T> {
    /// `torch.nn.functional.conv2d(x, weight, bias, stride=1, padding, dilation=1)` with this
    /// transformed 3x3 `weight`: `y[b,o,i,j] = bias[o] + Σ_{c,u,v} weight[o,c,u,v] ·
    /// x[b,c,i+u-ph,j+v-pw]`, output (B, Cout, H + 2ph - 2, W + 2pw - 2).
    pub fn conv2d(&self, x: ArrayView4<T>, bias: Option<ArrayView1<T>>, padding: (usize, usize)) -> Array4<T> {
        conv2d_winograd_blocked(x, self, bias, padding, (BLOCK_TILES, CIN_BLOCK))
    }
}

/// [`Winograd::conv2d`] with explicit block sizes (tiles per block, input channels per GEMM);
/// the tests use small ones to exercise the blocking.
pub(super) fn conv2d_winograd_blocked<T: Float>(
    x: ArrayView4<T>,
    kernel: &Winograd<T>,
    bias: Option<ArrayView1<T>>,
    padding: (usize, usize),
    (block_tiles, cin_block): (usize, usize),
) -> Array4<T> {
    let (b, cin, h, w) = x.dim();
    let (cout, cin_k) = (kernel.out_channels(), kernel.in_channels());
    assert_eq!(cin, cin_k, "conv2d: input has {cin} channels but weight expects {cin_k}");
    if let Some(bv) = &bias {
        assert_eq!(bv.len(), cout, "conv2d: bias length {} != out channels {cout}", bv.len());
    }
    let ho = window_out_len("conv2d", h, 3, 1, padding.0, 1);
    let wo = window_out_len("conv2d", w, 3, 1, padding.1, 1);
    let mut out = Array4::<T>::zeros((b, cout, ho, wo));
    if b == 0 || cout == 0 || ho * wo == 0 {
        return out;
    }
    if cin == 0 {
        if let Some(bv) = &bias {
            for (o, mut plane) in out.axis_iter_mut(Axis(1)).enumerate() {
                plane.fill(bv[o]);
            }
        }
        return out;
    }
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    // Blocks of whole tile rows and of input channels: functions of the shapes alone.
    let rows_per_block = (block_tiles / tw).clamp(1, th);
    let n_cblocks = cin.div_ceil(cin_block.max(1));
    let cb = cin.div_ceil(n_cblocks);
    let x_std = x.as_standard_layout();
    let u = &kernel.u;

    out.outer_iter_mut().into_par_iter().zip(x_std.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        ob.axis_chunks_iter_mut(Axis(1), 2 * rows_per_block).into_par_iter().enumerate().for_each(|(blk, mut oc)| {
            let tr0 = blk * rows_per_block;
            let nrows = rows_per_block.min(th - tr0);
            let ntiles = nrows * tw;
            let mut m = Array3::<T>::zeros((cout, 16, ntiles));
            let mut v = vec![T::zero(); cb * 16 * ntiles];
            let mut c0 = 0;
            while c0 < cin {
                let c1 = (c0 + cb).min(cin);
                let vb = &mut v[..(c1 - c0) * 16 * ntiles];
                input_transform(&xb, padding, (c0, c1), (tr0, nrows, tw), vb);
                let vv = ArrayView3::from_shape((c1 - c0, 16, ntiles), &*vb).expect("V block shape");
                let beta = if c0 == 0 { T::zero() } else { T::one() };
                m.axis_iter_mut(Axis(1)).into_par_iter().enumerate().for_each(|(xi, mx): (usize, ArrayViewMut2<T>)| {
                    let a: ArrayView2<T> = u.slice(s![.., xi, c0..c1]);
                    let bm: ArrayView2<T> = vv.index_axis(Axis(1), xi);
                    gemm_block(a, bm, beta, mx);
                });
                c0 = c1;
            }
            output_transform(&m, bias, tw, &mut oc);
        });
    });
    out
}
