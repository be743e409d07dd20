//! Attention with an additive bias gathered from a per-head table (BEiT's relative position
//! bias): `softmax(q · kᵀ + bias[h]) · v` per (batch, head).

use ndarray::parallel::prelude::*;
use ndarray::{s, Array2, Array4, ArrayView2, ArrayView4, Axis};

use super::activation::softmax_rows_biased_inplace;
use super::gemm::gemm_block;
use super::{plain, plain_kernels};
use crate::Float;

/// Query rows per block of the blocked kernel: a (128, N) block of scores (820 KB at BEiT-B's
/// 640 crop, N = 1601) stays in a core's L2 cache through the bias, the softmax and the product
/// with v.
const ATTN_ROWS: usize = 128;

/// An additive attention bias gathered from a table with one column per head:
/// `bias[h, i, j] = table[index[i, j], h]` (BEiT:
/// `relative_position_bias_table[relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)`).
pub struct GatheredBias<T: Float> {
    /// (nH, rows): the table transposed, one contiguous row per head.
    table: Array2<T>,
    /// (N, N), every entry a row of the table.
    index: Array2<usize>,
    /// `index` row-major as `u32` (a quarter of the cache traffic of `usize`).
    index32: Vec<u32>,
}

impl<T: Float> GatheredBias<T> {
    /// `table` (rows, nH), `index` (N, N) with every entry < rows (asserted).
    pub fn new(table: ArrayView2<T>, index: Array2<usize>) -> Self {
        let rows = table.nrows();
        assert!(index.iter().all(|&i| i < rows), "gathered bias: an index entry is not a row of the {rows}-row table");
        let index32 = index.iter().map(|&i| u32::try_from(i).expect("table rows fit in u32")).collect();
        GatheredBias { table: table.t().as_standard_layout().into_owned(), index, index32 }
    }

    /// The table, (nH, rows): row `h` is head `h`'s column of the table given to [`Self::new`].
    pub fn table(&self) -> ArrayView2<'_, T> {
        self.table.view()
    }

    pub fn num_heads(&self) -> usize {
        self.table.nrows()
    }
}

/// Dot-product attention with a gathered bias, per batch image `b` and head `h`:
/// `out[b, h] = softmax(q[b, h] · k[b, h]ᵀ + bias[h], dim=-1) · v[b, h]`.
///
/// `q`, `k` (B, nH, N, d), `v` (B, nH, N, dv) → (B, nH, N, dv). Scale `q` before the call
/// (`q = q * scale` rounds first, as in MMSegmentation). `q · kᵀ + bias` is rounded before the
/// softmax, as in `attn = attn + bias; attn.softmax(dim=-1)`.
pub fn attention<T: Float>(q: ArrayView4<T>, k: ArrayView4<T>, v: ArrayView4<T>, bias: &GatheredBias<T>) -> Array4<T> {
    let (b, nh, n, d) = q.dim();
    assert_eq!(k.dim(), (b, nh, n, d), "attention: k is {:?}, q is {:?}", k.dim(), q.dim());
    let (vb, vh, vn, _) = v.dim();
    assert_eq!((vb, vh, vn), (b, nh, n), "attention: v is {:?}, q is {:?}", v.dim(), q.dim());
    assert_eq!(bias.num_heads(), nh, "attention: the bias has {} heads, q {nh}", bias.num_heads());
    assert_eq!(bias.index.dim(), (n, n), "attention: bias index {:?} for {n} tokens", bias.index.dim());
    if plain_kernels() {
        return plain::attention(q, k, v, bias.table.view(), bias.index.view());
    }
    attention_blocked(q, k, v, bias)
}

/// [`attention`] in parallel over (batch, head), each head in blocks of [`ATTN_ROWS`] query rows
/// (rows are independent: every row's arithmetic is that of the whole (N, N) matrix).
pub(super) fn attention_blocked<T: Float>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    bias: &GatheredBias<T>,
) -> Array4<T> {
    let (b, nh, n, _) = q.dim();
    let dv = v.dim().3;
    let mut out = Array4::<T>::zeros((b, nh, n, dv));
    let mut flat = out.view_mut().into_shape_with_order((b * nh, n, dv)).expect("fresh array");
    flat.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(bh, mut o)| {
        let (bi, h) = (bh / nh, bh % nh);
        let (qh, kh, vh) = (q.slice(s![bi, h, .., ..]), k.slice(s![bi, h, .., ..]), v.slice(s![bi, h, .., ..]));
        let table = bias.table.row(h);
        let table = table.as_slice().expect("standard layout");
        for r0 in (0..n).step_by(ATTN_ROWS) {
            let r1 = (r0 + ATTN_ROWS).min(n);
            let mut scores = Array2::<T>::zeros((r1 - r0, n));
            gemm_block(qh.slice(s![r0..r1, ..]), kh.t(), T::zero(), scores.view_mut());
            softmax_rows_biased_inplace(scores.view_mut(), table, &bias.index32[r0 * n..r1 * n]);
            gemm_block(scores.view(), vh, T::zero(), o.slice_mut(s![r0..r1, ..]));
        }
    });
    out
}
