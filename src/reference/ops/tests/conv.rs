//! `conv2d` and `conv_transpose2d` against direct (7-loop / scatter) f64 convolutions.

use ndarray::{s, Array1, Array4};

use super::{assert_close, dot_tol, f64s, Rng};
use crate::reference::ops::conv::{conv2d_tiled, conv_transpose2d_tiled};
use crate::reference::ops::winograd::conv2d_winograd_blocked;
use crate::reference::ops::winograd::Winograd;
use crate::reference::ops::{conv2d, conv_transpose2d};
use crate::Float;

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
    let mut rng = Rng::new(4);
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

/// (B, Cin, H, W), Cout, padding, bias: odd and even sizes, one-row and one-column outputs,
/// padding 0, 1 and 2 (the UPerHead uses 1), many input channels.
type WinogradCase = ((usize, usize, usize, usize), usize, (usize, usize), bool);

const WINOGRAD_CASES: &[WinogradCase] = &[
    ((2, 3, 9, 11), 4, (1, 1), true),
    ((1, 5, 8, 8), 3, (1, 1), false),
    ((1, 2, 1, 1), 2, (1, 1), true),
    ((1, 3, 3, 3), 2, (0, 0), true),
    ((1, 2, 4, 7), 3, (2, 2), true),
    ((1, 4, 6, 5), 2, (0, 1), false),
    ((1, 3, 2, 17), 5, (1, 0), true),
    ((1, 40, 13, 12), 6, (1, 1), true),
];

/// Winograd F(2x2, 3x3) against the direct f64 convolution: its transforms only add and
/// halve, so its error stays within a small multiple of the direct sum's bound (16x here).
fn check_winograd<T: Float>() {
    let mut rng = Rng::new(21);
    for (ci, &((bn, cin, h, wd), cout, p, with_bias)) in WINOGRAD_CASES.iter().enumerate() {
        let x = rng.t4::<T>((bn, cin, h, wd));
        let w = rng.t4::<T>((cout, cin, 3, 3));
        let b = rng.vec::<T>(cout);
        let bias = with_bias.then(|| b.view());
        let (want, mag) = naive_conv2d(&f64s(&x), &f64s(&w), with_bias.then(|| f64s(&b)).as_ref(), (1, 1), p, (1, 1));
        let tol = 16.0 * dot_tol::<T>(cin * 9 + 16);
        let k = Winograd::new(w.view());
        let y = k.conv2d(x.view(), bias, p);
        assert_close(&y, &want, &mag, tol, &format!("winograd case {ci}"));
        // Small blocks: one tile row per block and one input channel per GEMM, or a few.
        for blocks in [(1, 1), (3, 2), (1000, 7)] {
            let yb = conv2d_winograd_blocked(x.view(), &k, bias, p, blocks);
            assert_close(&yb, &want, &mag, tol, &format!("winograd case {ci} blocks {blocks:?}"));
        }
        // A non-standard-layout input gives the same bits.
        let xp = x.view().permuted_axes([0, 1, 3, 2]).to_owned();
        let yp = k.conv2d(xp.view().permuted_axes([0, 1, 3, 2]), bias, p);
        assert_eq!(yp, y, "winograd case {ci}: layout independence");
    }
}

#[test]
fn winograd_conv2d_matches_direct_convolution() {
    check_winograd::<f32>();
    check_winograd::<f64>();
}

#[test]
fn winograd_of_an_identity_kernel_copies_the_input() {
    // A kernel with a single 1 at the centre is the identity (padding 1). Not exact: the
    // input transform rounds sums of up to 16 neighbours (all in [-1, 1]), so the error is a
    // few ulp of 1, not of the value.
    let mut rng = Rng::new(5);
    let x = rng.t4::<f32>((1, 2, 7, 6));
    let mut w = Array4::<f32>::zeros((2, 2, 3, 3));
    w[[0, 0, 1, 1]] = 1.0;
    w[[1, 1, 1, 1]] = 1.0;
    let y = Winograd::new(w.view()).conv2d(x.view(), None, (1, 1));
    for ((_, c, i, j), &v) in y.indexed_iter() {
        assert!((v - x[[0, c, i, j]]).abs() <= 16.0 * f32::EPSILON, "({c},{i},{j}): {v} vs {}", x[[0, c, i, j]]);
    }
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
    let mut rng = Rng::new(5);
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
