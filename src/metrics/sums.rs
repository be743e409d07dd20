//! Float32 summation orders and rounding of torch and numpy, reproduced exactly (what the
//! summary numbers of `IoUMetric` depend on).

/// torch's CPU float32 `Tensor.sum()` of a contiguous 1-D tensor (`aten/src/ATen/native/cpu/
/// SumKernel.cpp`, `cascade_sum`), single-threaded (torch only splits reductions above 32768
/// elements): with at least 8 elements `vectorized_inner_sum` (8-lane vectors, `row_sum` with
/// 4 ILP accumulators and the multi-level cascade of `multi_row_sum`, then the scalar tail and
/// the lanes added one by one), below 8 `scalar_inner_sum` (`row_sum` on scalars). Verified
/// against torch 2.11 on x86-64 (AVX512 machine; the sum kernel uses 8 float lanes).
pub fn torch_sum_f32(v: &[f32]) -> f32 {
    const W: usize = 8; // lanes of Vectorized<float> in the dispatched sum kernel
    let n = v.len();
    if n < W {
        return row_sum::<1>(v, n)[0];
    }
    let vec_size = n / W;
    let lanes = row_sum::<W>(v, vec_size);
    let mut total = 0.0f32;
    for &x in &v[vec_size * W..] {
        total += x;
    }
    for &x in &lanes {
        total += x;
    }
    total
}

/// torch's `row_sum` over `count` consecutive `L`-lane items of `v` (ILP factor 4). The index
/// loops mirror torch's C++ so that the float32 addition order is visibly the same.
#[allow(clippy::needless_range_loop)]
fn row_sum<const L: usize>(v: &[f32], count: usize) -> [f32; L] {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let size_ilp = count / ILP;
    // multi_row_sum: a "row" is ILP consecutive items; acc[level][k][lane].
    let mut acc = [[[0.0f32; L]; ILP]; LEVELS];
    let ceil_log2 = |x: usize| if x <= 1 { 0 } else { (usize::BITS - (x - 1).leading_zeros()) as usize };
    let level_power = 4.max(ceil_log2(size_ilp) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let add_item = |acc: &mut [f32; L], at: usize| {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += v[at * L + l];
        }
    };
    let mut i = 0usize;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for k in 0..ILP {
                add_item(&mut acc[0][k], i * ILP + k);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                for l in 0..L {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0;
                }
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for k in 0..ILP {
            add_item(&mut acc[0][k], i * ILP + k);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            for l in 0..L {
                acc[0][k][l] += acc[j][k][l];
            }
        }
    }
    let mut partial = acc[0];
    for t in size_ilp * ILP..count {
        add_item(&mut partial[0], t);
    }
    for k in 1..ILP {
        for l in 0..L {
            partial[0][l] += partial[k][l];
        }
    }
    partial[0]
}

/// numpy's float32 `add.reduce` of a contiguous 1-D array (`pairwise_sum` in
/// `numpy/core/src/umath/loops_utils.h.src`): below 8 elements a plain loop; up to 128, eight
/// interleaved accumulators combined as `((r0+r1)+(r2+r3)) + ((r4+r5)+(r6+r7))` plus the tail;
/// above, split at `n/2` rounded down to a multiple of 8 and recurse. All in float32.
pub fn numpy_sum_f32(v: &[f32]) -> f32 {
    let n = v.len();
    if n < 8 {
        let mut r = 0.0f32;
        for &x in v {
            r += x;
        }
        r
    } else if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&v[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += v[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum_f32(&v[..n2]) + numpy_sum_f32(&v[n2..])
    }
}

/// `np.nanmean` of a float32 array as numpy 1.26 computes it: NaNs replaced by 0, the float32
/// pairwise sum of all elements ([`numpy_sum_f32`]) divided by the count of non-NaN elements
/// (the quotient rounded to float32); NaN when every element is NaN (or there are none).
pub fn nanmean_f32(v: &[f32]) -> f32 {
    let cleaned: Vec<f32> = v.iter().map(|&x| if x.is_nan() { 0.0 } else { x }).collect();
    let cnt = v.iter().filter(|x| !x.is_nan()).count();
    let tot = numpy_sum_f32(&cleaned);
    (tot as f64 / cnt as f64) as f32
}

/// numpy's `np.round(x, 2)` on float64: `rint(x * 100.0) / 100.0` (half to even).
pub fn np_round2_f64(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// A summary value of `IoUMetric.compute_metrics`: `np.round(np.nanmean(v) * 100, 2)` for a
/// float32 array `v` (`aAcc` is a one-element array). In numpy 1.26 `np.float32 * 100` is a
/// float64, so: float32 `nanmean`, widened, times 100, then [`np_round2_f64`].
pub fn summary_percent(v: &[f32]) -> f64 {
    np_round2_f64(nanmean_f32(v) as f64 * 100.0)
}

/// A per-class table value: `np.round(v * 100, 2)` on a float32 array, all in float32
/// (`(v * 100) * 100`, `rint`, `/ 100`).
pub fn class_percent(v: f32) -> f32 {
    ((v * 100.0f32) * 100.0f32).round_ties_even() / 100.0f32
}
