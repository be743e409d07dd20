//! `conv2d` for 3x3 kernels at stride 1 and dilation 1 by Winograd's F(2x2, 3x3), in libtorch
//! ops: the algorithm of [`crate::reference::ops::conv2d_winograd`] (its module doc has the
//! matrices), expressed as library calls per block of tile rows so that the work stays in
//! MKL / libtorch's kernels:
//!
//! 1. the block's input rows, zero-padded, copied into a block buffer `d` (Cin, 2·rows + 2, W');
//! 2. input transform `V = Bᵀ d B` of every 4x4 tile (stride 2): the tiles gathered from the
//!    view `d.unfold(1, 4, 2).unfold(2, 4, 2)` into (16, Cin·T) (one strided copy), then one
//!    (16 x 16) matmul by `Bᵀ ⊗ Bᵀ` (`K[4a + b][4i + j] = Bᵀ[a][i]·Bᵀ[b][j]`);
//! 3. `M[ξ] = U[ξ] · V[ξ]` for the 16 positions: one `bmm` of (16, Cout, Cin) by (16, Cin, T);
//! 4. output transform `Aᵀ M A`: one (4 x 16) matmul, whose (2, 2, Cout, rows, tw) result is
//!    copied through a strided view straight into the block's output rows; the bias is added
//!    once at the end.
//!
//! Every block buffer is allocated once per call and reused by all blocks (`*_out` variants):
//! fresh buffers of ~100 MB per block cost their page faults again each time. (An earlier
//! version did step 2 as a stride-2 depthwise convolution with 16 filters per channel: 2.5x
//! slower, oneDNN has no fast kernel for a channel multiplier of 16.)
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
    /// The input transform `Bᵀ ⊗ Bᵀ`, (16, 16): row ξ = 4a + b, column 4i + j.
    k: Tensor,
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
        let k = f64s(k, &[16, 16])?.f_to_kind(kind)?;
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
        Ok(Winograd { u, k, at, cin, cout })
    }

    /// `F.conv2d(x, weight, bias, stride=1, padding, dilation=1)` for an NCHW `x`.
    pub fn conv2d(&self, x: &Tensor, bias: Option<&Tensor>, padding: i64) -> Result<Tensor> {
        self.conv2d_blocked(x, bias, padding, BLOCK_ELEMS)
    }

    /// [`Self::conv2d`] with blocks of at most `block_elems / (16·Cin·tw)` tile rows (at least
    /// one): the block size changes the memory, never the result (tests use small blocks).
    pub fn conv2d_blocked(&self, x: &Tensor, bias: Option<&Tensor>, padding: i64, block_elems: i64) -> Result<Tensor> {
        let s = x.size();
        let (b, h, w) = (s[0], s[2], s[3]);
        let (ho, wo) = (h + 2 * padding - 2, w + 2 * padding - 2);
        if ho <= 0 || wo <= 0 {
            return Err(super::ModelError::Input(format!(
                "conv2d: a 3x3 kernel with padding {padding} does not fit a {h}x{w} input"
            )));
        }
        let (cin, cout) = (self.cin, self.cout);
        let (th, tw) = ((ho + 1) / 2, (wo + 1) / 2);
        let rows = (block_elems / (16 * cin * tw).max(1)).clamp(1, th);
        let opts = (x.kind(), x.device());
        // Block buffers, reused by every block and image: the padded input rows (zero padding
        // up to 2·tw + 2 columns, one extra for odd outputs), the gathered tiles, V, M, Aᵀ M A.
        let d = Tensor::f_empty([cin, 2 * rows + 2, 2 * tw + 2], opts)?;
        let tiles = Tensor::f_empty([16 * cin * rows * tw], opts)?;
        let v = Tensor::f_empty([16 * cin * rows * tw], opts)?;
        let m = Tensor::f_empty([16 * cout * rows * tw], opts)?;
        let o = Tensor::f_empty([4 * cout * rows * tw], opts)?;
        let mut y = Tensor::f_empty([b, cout, 2 * th, 2 * tw], opts)?;
        for i in 0..b {
            let xi = x.f_select(0, i)?; // (Cin, H, W)
            let yi = y.f_select(0, i)?;
            let mut r0 = 0;
            while r0 < th {
                let nr = rows.min(th - r0);
                let t = nr * tw;
                // 1. input rows 2·r0 - padding .. + 2·nr + 2, zero outside the image
                let lo = 2 * r0 - padding;
                let (r_in0, r_in1) = (lo.max(0), (lo + 2 * nr + 2).min(h));
                let mut db = d.f_narrow(1, 0, 2 * nr + 2)?;
                let _ = db.f_zero_()?;
                if r_in1 > r_in0 {
                    db.f_narrow(1, r_in0 - lo, r_in1 - r_in0)?.f_narrow(2, padding, w)?.f_copy_(&xi.f_narrow(
                        1,
                        r_in0,
                        r_in1 - r_in0,
                    )?)?;
                }
                // 2. tiles (Cin, nr, tw, 4, 4) → (4, 4, Cin, nr, tw) = (16, Cin·T); V = K · tiles
                let tb = tiles.f_narrow(0, 0, 16 * cin * t)?;
                tb.f_view([4, 4, cin, nr, tw])?
                    .f_copy_(&db.f_unfold(1, 4, 2)?.f_unfold(2, 4, 2)?.f_permute([3, 4, 0, 1, 2])?)?;
                let vb = v.f_narrow(0, 0, 16 * cin * t)?.f_view([16, cin * t])?;
                let _ = self.k.f_mm_out(&vb, &tb.f_view([16, cin * t])?)?;
                // 3. M = U · V, (16, Cout, T)
                let mb = m.f_narrow(0, 0, 16 * cout * t)?.f_view([16, cout, t])?;
                let _ = self.u.f_bmm_out(&mb, &vb.f_view([16, cin, t])?)?;
                // 4. (4, Cout·T) = (r, q, Cout, nr, tw) → output rows 2·r0 + 2·row + r, columns
                //    2·col + q of image i, through the view (Cout, nr, r, tw, q) of those rows
                let ob = o.f_narrow(0, 0, 4 * cout * t)?.f_view([4, cout * t])?;
                let _ = self.at.f_mm_out(&ob, &mb.f_view([16, cout * t])?)?;
                yi.f_narrow(1, 2 * r0, 2 * nr)?
                    .f_view([cout, nr, 2, tw, 2])?
                    .f_permute([2, 4, 0, 1, 3])?
                    .f_copy_(&ob.f_view([2, 2, cout, nr, tw])?)?;
                r0 += nr;
            }
        }
        if let Some(bv) = bias {
            let _ = y.f_add_(&bv.f_reshape([1, -1, 1, 1])?)?;
        }
        Ok(if (2 * th, 2 * tw) == (ho, wo) { y } else { y.f_narrow(2, 0, ho)?.f_narrow(3, 0, wo)?.f_contiguous()? })
    }
}
