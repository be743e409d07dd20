//! The promise of the module doc: results do not depend on the number of threads. Each product
//! is run in 1-, 2- and 3-thread rayon pools and must agree bit for bit.

use super::Rng;
use crate::reference::ops::activation::softmax_rows_biased_inplace;
use crate::reference::ops::winograd::Winograd;
use crate::reference::ops::{conv2d, conv_transpose2d, linear, matmul};
use crate::Float;

/// `f()` run inside a fresh rayon pool of `threads` threads.
fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool").install(f)
}

fn check_thread_independence<T: Float>() {
    let mut rng = Rng::new(12);
    // Large enough to be split into parallel blocks (by columns, then by rows).
    let x = rng.mat::<T>((300, 200));
    let w = rng.mat::<T>((500, 200));
    let b = rng.vec::<T>(500);
    let xt = rng.mat::<T>((1000, 96));
    let wt = rng.mat::<T>((40, 96));
    let img = rng.t4::<T>((1, 24, 37, 41));
    let k3 = rng.t4::<T>((32, 24, 3, 3));
    let k1 = rng.t4::<T>((32, 24, 1, 1));
    let kt = rng.t4::<T>((24, 16, 2, 2));
    let cb = rng.vec::<T>(32);
    let wino = Winograd::new(k3.view());
    let big = rng.t4::<T>((1, 24, 70, 64));
    let scores = rng.mat::<T>((300, 300));
    let table = rng.vec::<T>(9);
    let index: Vec<u32> = (0..300 * 300).map(|i| (i % 9) as u32).collect();
    let run = || {
        let mut sm = scores.clone();
        softmax_rows_biased_inplace(sm.view_mut(), table.as_slice().expect("contiguous"), &index);
        (
            linear(x.view(), w.view(), Some(b.view())),
            linear(xt.view(), wt.view(), None),
            matmul(x.view(), w.t()),
            conv2d(img.view(), k3.view(), Some(cb.view()), (1, 1), (1, 1), (1, 1)),
            conv2d(img.view(), k1.view(), None, (1, 1), (0, 0), (1, 1)),
            conv_transpose2d(img.view(), kt.view(), None, (2, 2), (0, 0)),
            wino.conv2d(img.view(), Some(cb.view()), (1, 1)),
            wino.conv2d(big.view(), None, (1, 1)),
            sm,
        )
    };
    let one = in_pool(1, run);
    for threads in [2, 3] {
        let many = in_pool(threads, run);
        assert!(one == many, "{} results differ between 1 and {threads} threads", T::DTYPE);
    }
}

#[test]
fn products_do_not_depend_on_the_thread_count() {
    check_thread_independence::<f32>();
    check_thread_independence::<f64>();
}
