//! Resizing relative-position-bias tables, exactly as MMSegmentation's
//! `BEiT.resize_rel_pos_embed` / `_geometric_sequence_interpolation` (docs/mmseg-beit-upernet.md §6.3; copied by mmseg
//! from UNILM's `semantic_segmentation/mmcv_custom/checkpoint.py`).
//!
//! A table for a `W × W` patch window has `(2W-1)² + 3` rows (one per relative offset
//! `(dy, dx)`, row-major in `dy`, then the three class-token rows) and one column per head. To
//! go from a source window to a destination window of different size:
//!
//! 1. the last 3 rows are kept verbatim and appended at the end;
//! 2. a ratio `q` is found by bisection (float64, `left, right = 1.01, 1.5`, loop while
//!    `right - left > 1e-6`, `q = (left + right) / 2`, `gp = (1 - q**(src//2)) / (1 - q)`,
//!    `right = q if gp > dst//2 else left = q`; the **last midpoint** is used);
//! 3. source abscissae are the partial sums `dis = [1, 1+q, 1+q+q², ...]` (`src//2` of them),
//!    mirrored: `[-dis reversed] + [0] + dis`, so that offsets near 0 are sampled densely;
//! 4. each head's `(src × src)` block is interpolated at the integer offsets
//!    `arange(-t, t + 0.1, 1.0)`, `t = dst // 2`, with scipy's `interp2d(kind='cubic')`, i.e. the
//!    interpolating bicubic tensor-product spline with not-a-knot ends (= FITPACK `regrid_smth`
//!    with `s = 0` = `RectBivariateSpline(kx=3, ky=3, s=0)`). Here: a not-a-knot cubic spline
//!    along `dx`, then along `dy`, in float64, solved with our own pivoting tridiagonal solver.
//!    Targets outside the source range (when the last bisection midpoint leaves the outermost
//!    abscissa just below `dst // 2`, or for tiny sources) take the boundary value, as FITPACK
//!    clamps evaluation points to the knot interval.
//!
//! Precision: computed in float64 and rounded once to the table's dtype. MMSegmentation casts
//! each head to float32 before interpolating (`.float().numpy()`) and the result to float32
//! (`torch.Tensor(...)`); for float32 tables (all released checkpoints) this is the same thing,
//! for float64 tables ours keeps float64 precision throughout.

use ndarray::{Array2, ArrayD, Ix2};

use super::CheckpointError;
use crate::array::AnyArray;
use crate::Float;

/// Number of class-token rows at the end of every table.
pub const EXTRA_ROWS: usize = 3;

fn err(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::RelPos { msg: msg.into() }
}

/// Rows of the table for a `(Wh, Ww)` window: `(2Wh-1)(2Ww-1) + 3`.
pub fn table_rows(window: (usize, usize)) -> usize {
    (2 * window.0).saturating_sub(1) * (2 * window.1).saturating_sub(1) + EXTRA_ROWS
}

/// The square window whose table has `rows` rows, if any.
pub fn window_of_rows(rows: usize) -> Option<(usize, usize)> {
    let body = rows.checked_sub(EXTRA_ROWS)?;
    let s = (body as f64).sqrt().round() as usize;
    (s * s == body && s % 2 == 1).then_some((s.div_ceil(2), s.div_ceil(2)))
}

/// The bisected geometric ratio `q` of `_geometric_sequence_interpolation` for side lengths
/// `src_size = 2*Wsrc-1`, `dst_size = 2*Wdst-1` (the last midpoint of the loop).
pub fn geometric_ratio(src_size: usize, dst_size: usize) -> f64 {
    let n = (src_size / 2) as f64;
    let target = (dst_size / 2) as f64;
    let (mut left, mut right) = (1.01f64, 1.5f64);
    let mut q = (left + right) / 2.0;
    while right - left > 1e-6 {
        q = (left + right) / 2.0;
        // Python: geometric_progression(1, q, n) = 1 * (1.0 - q**n) / (1.0 - q)
        let gp = (1.0 - q.powf(n)) / (1.0 - q);
        if gp > target {
            right = q;
        } else {
            left = q;
        }
    }
    q
}

/// Source abscissae `[-dis reversed] + [0] + dis` (length `src_size`).
pub fn source_grid(src_size: usize, q: f64) -> Vec<f64> {
    let half = src_size / 2;
    let mut dis = Vec::with_capacity(half);
    let mut cur = 1.0f64;
    for i in 0..half {
        dis.push(cur);
        cur += q.powf((i + 1) as f64);
    }
    let mut x: Vec<f64> = dis.iter().rev().map(|d| -d).collect();
    x.push(0.0);
    x.extend_from_slice(&dis);
    x
}

/// Target abscissae `np.arange(-t, t + 0.1, 1.0)` with `t = dst_size // 2.0`.
pub fn target_grid(dst_size: usize) -> Vec<f64> {
    let t = (dst_size / 2) as f64;
    let n = (2.0 * t + 0.1).ceil() as usize;
    (0..n).map(|i| -t + i as f64).collect()
}

/// Solves the tridiagonal system with sub-diagonal `dl` (n-1), diagonal `d` (n) and
/// super-diagonal `du` (n-1) for right-hand side `b` (overwritten by the solution), by Gaussian
/// elimination with partial pivoting, through LAPACK (ndarray-linalg's tridiagonal solve:
/// `dgttrf` + `dgttrs`, the factor-and-solve pair of `dgtsv`): the `blas` build. `dl`, `d` and
/// `du` are left as they are.
#[cfg(feature = "blas")]
pub fn solve_tridiagonal(dl: &mut [f64], d: &mut [f64], du: &mut [f64], b: &mut [f64]) -> Result<(), CheckpointError> {
    use ndarray_linalg::{MatrixLayout, SolveTridiagonal, Tridiagonal};
    let n = d.len();
    if b.len() != n || (n > 0 && (dl.len() != n - 1 || du.len() != n - 1)) {
        return Err(err("tridiagonal system: inconsistent lengths"));
    }
    if n == 0 {
        return Ok(());
    }
    let size = i32::try_from(n).map_err(|_| err(format!("tridiagonal system of {n} unknowns is too large")))?;
    let a =
        Tridiagonal { l: MatrixLayout::C { row: size, lda: size }, dl: dl.to_vec(), d: d.to_vec(), du: du.to_vec() };
    let x = a
        .solve_tridiagonal(&ndarray::ArrayView1::from(&*b))
        .map_err(|e| err(format!("tridiagonal system is singular (LAPACK: {e})")))?;
    b.copy_from_slice(x.as_slice().ok_or_else(|| err("tridiagonal solution is not contiguous"))?);
    Ok(())
}

/// Solves the tridiagonal system with sub-diagonal `dl` (n-1), diagonal `d` (n) and
/// super-diagonal `du` (n-1) for right-hand side `b` (overwritten by the solution), by Gaussian
/// elimination with partial pivoting (a port of LAPACK `dgtsv`): the default, pure-Rust build.
/// The inputs are overwritten.
#[cfg(not(feature = "blas"))]
pub fn solve_tridiagonal(dl: &mut [f64], d: &mut [f64], du: &mut [f64], b: &mut [f64]) -> Result<(), CheckpointError> {
    let n = d.len();
    if b.len() != n || (n > 0 && (dl.len() != n - 1 || du.len() != n - 1)) {
        return Err(err("tridiagonal system: inconsistent lengths"));
    }
    if n == 0 {
        return Ok(());
    }
    let singular = || err("tridiagonal system is singular");
    for i in 0..n - 1 {
        if d[i].abs() >= dl[i].abs() {
            if d[i] == 0.0 {
                return Err(singular());
            }
            let fact = dl[i] / d[i];
            d[i + 1] -= fact * du[i];
            b[i + 1] -= fact * b[i];
            dl[i] = 0.0; // from here on dl[i] holds the second super-diagonal of row i
        } else {
            // Interchange rows i and i+1.
            let fact = d[i] / dl[i];
            d[i] = dl[i];
            let temp = d[i + 1];
            d[i + 1] = du[i] - fact * temp;
            if i + 2 < n {
                dl[i] = du[i + 1];
                du[i + 1] = -fact * dl[i];
            } else {
                dl[i] = 0.0;
            }
            du[i] = temp;
            let tb = b[i];
            b[i] = b[i + 1];
            b[i + 1] = tb - fact * b[i + 1];
        }
    }
    if d[n - 1] == 0.0 {
        return Err(singular());
    }
    b[n - 1] /= d[n - 1];
    if n > 1 {
        b[n - 2] = (b[n - 2] - du[n - 2] * b[n - 1]) / d[n - 2];
    }
    for i in (0..n.saturating_sub(2)).rev() {
        b[i] = (b[i] - du[i] * b[i + 1] - dl[i] * b[i + 2]) / d[i];
    }
    Ok(())
}

/// Slopes of the not-a-knot cubic spline through `(x[i], y[i])` (scipy `CubicSpline`'s
/// formulation; `x` strictly increasing, at least 4 points).
fn not_a_knot_slopes(x: &[f64], y: &[f64]) -> Result<Vec<f64>, CheckpointError> {
    let n = x.len();
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let slope: Vec<f64> = (0..n - 1).map(|i| (y[i + 1] - y[i]) / dx[i]).collect();
    let mut dl = vec![0.0; n - 1];
    let mut d = vec![0.0; n];
    let mut du = vec![0.0; n - 1];
    let mut b = vec![0.0; n];
    for i in 1..n - 1 {
        dl[i - 1] = dx[i];
        d[i] = 2.0 * (dx[i - 1] + dx[i]);
        du[i] = dx[i - 1];
        b[i] = 3.0 * (dx[i] * slope[i - 1] + dx[i - 1] * slope[i]);
    }
    // Not-a-knot: the third derivative is continuous at x[1] and x[n-2].
    let d0 = x[2] - x[0];
    d[0] = dx[1];
    du[0] = d0;
    b[0] = ((dx[0] + 2.0 * d0) * dx[1] * slope[0] + dx[0] * dx[0] * slope[1]) / d0;
    let dn = x[n - 1] - x[n - 3];
    d[n - 1] = dx[n - 3];
    dl[n - 2] = dn;
    b[n - 1] = (dx[n - 2] * dx[n - 2] * slope[n - 3] + (2.0 * dn + dx[n - 2]) * dx[n - 3] * slope[n - 2]) / dn;
    solve_tridiagonal(&mut dl, &mut d, &mut du, &mut b)?;
    Ok(b)
}

/// The matrix `W` (targets × sources) of not-a-knot cubic spline interpolation from abscissae
/// `x` to `t`: for data `y` on `x`, the spline's values at `t` are `W · y`.
pub fn spline_matrix(x: &[f64], t: &[f64]) -> Result<Array2<f64>, CheckpointError> {
    let n = x.len();
    if n < 4 {
        return Err(err(format!(
            "a cubic spline needs at least 4 points per axis, the source has {n} (as scipy's interp2d)"
        )));
    }
    if x.windows(2).any(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater)) {
        return Err(err("source abscissae are not strictly increasing"));
    }
    let mut w = Array2::<f64>::zeros((t.len(), n));
    let mut y = vec![0.0; n];
    for k in 0..n {
        y.iter_mut().for_each(|v| *v = 0.0);
        y[k] = 1.0;
        let s = not_a_knot_slopes(x, &y)?;
        for (j, &tj) in t.iter().enumerate() {
            // FITPACK (`fpbisp`, behind interp2d / RectBivariateSpline) clamps arguments to the
            // knot range: outside the data the spline is continued by its boundary value.
            let tj = tj.clamp(x[0], x[n - 1]);
            // Interval i with x[i] <= tj < x[i+1], clamped to the end intervals.
            let i = x.partition_point(|&xv| xv <= tj).saturating_sub(1).min(n - 2);
            let h = x[i + 1] - x[i];
            let slope = (y[i + 1] - y[i]) / h;
            let tt = (s[i] + s[i + 1] - 2.0 * slope) / h;
            let c0 = tt / h;
            let c1 = (slope - s[i]) / h - tt;
            let c2 = s[i];
            let c3 = y[i];
            let u = tj - x[i];
            w[[j, k]] = ((c0 * u + c1) * u + c2) * u + c3;
        }
    }
    Ok(w)
}

/// Resizes a relative-position-bias table of shape `((2Hs-1)(2Ws-1) + 3, heads)` for window
/// `src_window = (Hs, Ws)` to `dst_window`, as MMSegmentation's `BEiT.resize_rel_pos_embed`
/// (module docs). Windows are patch grids (e.g. `(14, 14)` for a 224 pretrain, `(40, 40)` for
/// 640 crops, i.e. 27 → 79 table sides). Both windows must be square (mmseg raises
/// `NotImplementedError` otherwise). Equal sizes return the table unchanged.
pub fn resize_rel_pos_table<T: Float>(
    table: &Array2<T>,
    src_window: (usize, usize),
    dst_window: (usize, usize),
) -> Result<Array2<T>, CheckpointError> {
    if src_window.0 != src_window.1 || dst_window.0 != dst_window.1 {
        return Err(err(format!(
            "only square windows are supported (as in MMSegmentation), got {src_window:?} -> {dst_window:?}"
        )));
    }
    if src_window.0 == 0 || dst_window.0 == 0 {
        return Err(err("windows must be non-empty"));
    }
    let (rows, heads) = table.dim();
    let expect = table_rows(src_window);
    if rows != expect {
        return Err(err(format!("a table for window {src_window:?} has {expect} rows, this one has {rows}")));
    }
    let src = 2 * src_window.0 - 1;
    if src_window == dst_window {
        return Ok(table.clone());
    }
    // The new table, the spline matrix and one head's products, before any is allocated.
    let d = 2.0 * dst_window.0 as f64 - 1.0;
    let need = (d * d + EXTRA_ROWS as f64) * heads as f64 * std::mem::size_of::<T>() as f64
        + 8.0 * (2.0 * d * src as f64 + d * d);
    crate::limits::check_memory(
        &format!("resizing a relative position table to window {dst_window:?} ({d}x{d} table sides, {heads} heads)"),
        need,
    )
    .map_err(err)?;
    let dst = 2 * dst_window.0 - 1;
    let q = geometric_ratio(src, dst);
    let x = source_grid(src, q);
    let t = target_grid(dst);
    if t.len() != dst {
        return Err(err(format!("internal: {} target points for side {dst}", t.len())));
    }
    let w = spline_matrix(&x, &t)?;
    let mut out = Array2::<T>::zeros((dst * dst + EXTRA_ROWS, heads));
    let mut z = Array2::<f64>::zeros((src, src));
    for h in 0..heads {
        for r in 0..src {
            for c in 0..src {
                z[[r, c]] = table[[r * src + c, h]].to_f64_exact();
            }
        }
        // rows: dy (W · z), columns: dx (· Wᵀ)
        let tmp = w.dot(&z); // (dst, src)
        let new = tmp.dot(&w.t()); // (dst, dst)
        for r in 0..dst {
            for c in 0..dst {
                out[[r * dst + c, h]] = T::from_f64_lossy(new[[r, c]]);
            }
        }
        for e in 0..EXTRA_ROWS {
            out[[dst * dst + e, h]] = table[[src * src + e, h]];
        }
    }
    Ok(out)
}

/// Resizes a table held as an [`AnyArray`] (float32 or float64, 2-D) to `dst_window`, inferring
/// the source window from its row count. `Ok(None)` when it already has the right size.
pub fn resize_rel_pos_any(table: &AnyArray, dst_window: (usize, usize)) -> Result<Option<AnyArray>, CheckpointError> {
    let shape = table.shape();
    if shape.len() != 2 {
        return Err(err(format!("a relative position bias table is 2-D (rows, heads), this one has shape {shape:?}")));
    }
    if shape[0] == table_rows(dst_window) {
        return Ok(None);
    }
    let src_window = window_of_rows(shape[0])
        .ok_or_else(|| err(format!("{} rows is not (2W-1)^2 + 3 for any square window W", shape[0])))?;
    fn two<T: Clone>(a: &ArrayD<T>) -> Result<Array2<T>, CheckpointError> {
        a.clone().into_dimensionality::<Ix2>().map_err(|e| err(e.to_string()))
    }
    Ok(Some(match table {
        AnyArray::F32(a) => AnyArray::F32(resize_rel_pos_table(&two(a)?, src_window, dst_window)?.into_dyn()),
        AnyArray::F64(a) => AnyArray::F64(resize_rel_pos_table(&two(a)?, src_window, dst_window)?.into_dyn()),
        other => {
            return Err(err(format!(
                "a relative position bias table must be float, this one is {}",
                other.dtype_name()
            )))
        }
    }))
}
