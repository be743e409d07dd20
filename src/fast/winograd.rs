//! `conv2d` for 3x3 kernels at stride 1 and dilation 1 by Winograd's F(2x2, 3x3), in libtorch
//! ops: the algorithm of [`crate::reference::ops::conv2d_winograd`] (its module doc has the
//! matrices), expressed as three library calls per block of tile rows so that the work stays in
//! oneDNN / MKL:
//!
//! 1. input transform `V = Bᵀ d B` of every 4x4 tile (stride 2): a depthwise convolution of the
//!    zero-padded input with 16 fixed 4x4 filters per channel, `K_ξ[i][j] = Bᵀ[a][i]·Bᵀ[b][j]`
//!    for ξ = 4a + b (groups = Cin, 16·Cin outputs);
//! 2. `M[ξ] = U[ξ] · V[ξ]` for the 16 positions: one `bmm` of (16, Cout, Cin) by (16, Cin, T);
//! 3. output transform `Aᵀ M A`: one (4 x 16) matmul, then a reshape that interleaves the 2x2
//!    outputs of every tile, a crop to the output size and the bias.
//!
//! Used on the CPU in fp32 and fp64 (the direct convolution is oneDNN's, 2.25x the multiplies);
//! not for fp16/bf16 (AMX makes the direct convolution faster) nor on CUDA (cuDNN picks its own
//! algorithms).

use tch::{Kind, Tensor};

use super::Result;

/// Tile rows per block: the block's `V` is 16·Cin·rows·(W/2) elements (126 MB for the UPerHead's
/// fpn_bottleneck at BEiT-B 640 with 8 rows), so the memory stays bounded.
const BLOCK_ELEMS: i64 = 1 << 25;

/// A 3x3 kernel transformed for F(2x2, 3x3), with the fixed transform filters.
pub struct Winograd {
    /// `U[ξ] = (G g Gᵀ)[ξ]`, (16, Cout, Cin), in the model's kind.
    u: Tensor,
    /// The input transform as a depthwise kernel, (16·Cin, 1, 4, 4).
    bt: Tensor,
    /// The output transform, (4, 16): row `2r + q` holds `Aᵀ[r][a]·Aᵀ[q][b]` at ξ = 4a + b.
    at: Tensor,
    cin: i64,
    cout: i64,
}

const BT: [[f64; 4]; 4] = [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]];
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
const AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

impl Winograd {
    /// Transforms a (Cout, Cin, 3, 3) kernel (computed in float64, rounded once to `kind`).
    pub fn new(weight: &Tensor, kind: Kind) -> Result<Self> {
        let s = weight.size();
        let (cout, cin) = (s[0], s[1]);
        let dev = weight.device();
        let f64s = |v: Vec<f64>, shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(&v)?.f_reshape(shape)?.f_to_device(dev)?)
        };
        let g = f64s(G.iter().flatten().copied().collect(), &[4, 3])?;
        // (Cout, Cin, 4, 4) = G · w · Gᵀ → (16, Cout, Cin)
        let u = g
            .f_matmul(&weight.f_to_kind(Kind::Double)?)?
            .f_matmul(&g.f_transpose(0, 1)?)?
            .f_permute([2, 3, 0, 1])?
            .f_reshape([16, cout, cin])?
            .f_to_kind(kind)?
            .f_contiguous()?;
        // Filter ξ = 4a + b: K[i][j] = Bᵀ[a][i]·Bᵀ[b][j].
        let mut k = Vec::with_capacity(16 * 16);
        for ra in &BT {
            for rb in &BT {
                for &x in ra {
                    k.extend(rb.iter().map(|&y| x * y));
                }
            }
        }
        let bt = f64s(k, &[16, 1, 4, 4])?.f_repeat([cin, 1, 1, 1])?.f_to_kind(kind)?;
        // Row 2r + q, column ξ = 4a + b: Aᵀ[r][a]·Aᵀ[q][b].
        let mut o = Vec::with_capacity(4 * 16);
        for rr in &AT {
            for rq in &AT {
                for &x in rr {
                    o.extend(rq.iter().map(|&y| x * y));
                }
            }
        }
        let at = f64s(o, &[4, 16])?.f_to_kind(kind)?;
        Ok(Winograd { u, bt, at, cin, cout })
    }

    /// `F.conv2d(x, weight, bias, stride=1, padding, dilation=1)` for an NCHW `x`.
    pub fn conv2d(&self, x: &Tensor, bias: Option<&Tensor>, padding: i64) -> Result<Tensor> {
        let s = x.size();
        let (b, h, w) = (s[0], s[2], s[3]);
        let (ho, wo) = (h + 2 * padding - 2, w + 2 * padding - 2);
        if ho <= 0 || wo <= 0 {
            return Err(super::FastError::Input(format!(
                "conv2d: a 3x3 kernel with padding {padding} does not fit a {h}x{w} input"
            )));
        }
        let (th, tw) = ((ho + 1) / 2, (wo + 1) / 2);
        // Zero padding up to 2·th + 2 rows and 2·tw + 2 columns (one extra for odd outputs).
        let xp = x.f_constant_pad_nd([padding, 2 * tw + 2 - w - padding, padding, 2 * th + 2 - h - padding])?;
        let rows = (BLOCK_ELEMS / (16 * self.cin * tw).max(1)).clamp(1, th);
        // Blocks are written into one output (no concatenation); images one at a time, so that
        // `V` of a block is a strided view for `bmm`, never a copy.
        let y = Tensor::f_empty([b, self.cout, 2 * th, 2 * tw], (x.kind(), x.device()))?;
        for i in 0..b {
            let xi = xp.f_narrow(0, i, 1)?;
            let mut r0 = 0;
            while r0 < th {
                let nr = rows.min(th - r0);
                let t = nr * tw;
                let xb = xi.f_narrow(2, 2 * r0, 2 * nr + 2)?;
                // 1. (1, 16·Cin, nr, tw) → (Cin, 16, T) → the view (16, Cin, T)
                let v = xb
                    .f_conv2d(&self.bt, None::<&Tensor>, [2, 2], [0, 0], [1, 1], self.cin)?
                    .f_view([self.cin, 16, t])?
                    .f_transpose(0, 1)?;
                // 2. (16, Cout, T)
                let m = self.u.f_bmm(&v)?;
                // 3. (4, Cout·T) → (Cout, nr, 2, tw, 2) → rows 2·r0.. of image i
                let yb = self
                    .at
                    .f_matmul(&m.f_view([16, -1])?)?
                    .f_view([2, 2, self.cout, nr, tw])?
                    .f_permute([2, 3, 0, 4, 1])?
                    .f_reshape([1, self.cout, 2 * nr, 2 * tw])?;
                let mut dst = y.f_narrow(0, i, 1)?.f_narrow(2, 2 * r0, 2 * nr)?;
                dst.f_copy_(&yb)?;
                r0 += nr;
            }
        }
        let y = y.f_narrow(2, 0, ho)?.f_narrow(3, 0, wo)?;
        Ok(match bias {
            Some(bv) => y.f_add(&bv.f_reshape([1, -1, 1, 1])?)?,
            None => y.f_contiguous()?,
        })
    }
}
