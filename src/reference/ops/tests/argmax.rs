//! `argmax_channels`: ties, NaN and random logits.

use ndarray::{s, Array4};

use super::Rng;
use crate::reference::ops::argmax_channels;

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
    let mut rng = Rng::new(10);
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
