//! Property tests (proptest) of the checkpoint layer: the relative-position-bias resize, the
//! `.pth` / `.safetensors` / `.npz` writers and readers, and the key converter.
//!
//! Every property is stated against something independent of the code under test: a
//! polynomial the spline must reproduce, a symmetry it must keep, the bit patterns written, the
//! exact float16/bfloat16 rounding, a hand-written inverse of the converter's renaming. Shapes
//! are small and case counts chosen so that the whole file runs in a few seconds in release.
//!
//! Bulk data (table bodies, tensor contents) is drawn from a seeded generator whose seed is
//! part of the case, so a failure is reproducible from the printed counterexample; shapes,
//! windows and options shrink as usual.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use ndarray::{Array2, ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use beit_seg::array::AnyArray;
use beit_seg::checkpoint::relpos::{geometric_ratio, source_grid, table_rows, target_grid, EXTRA_ROWS};
use beit_seg::checkpoint::{
    convert, detect_dialect, export, read_any, resize_rel_pos_table, write_any, write_npz, write_pth,
    write_safetensors, CheckpointError, ConvertOptions, Dialect, ExportOptions, ReadOptions, StoreDtype, WriteOptions,
};
use half::{bf16, f16};

// ------------------------------------------------------------------------------- helpers

mod common;
use common::Rng;

/// Tensor constructors on the shared generator.
impl Rng {
    /// A float32 from a mix of regimes: raw bit patterns (NaNs with payloads, infinities,
    /// subnormals), ordinary values, values around float16's range and its subnormals.
    fn f32_any(&mut self) -> f32 {
        match self.below(4) {
            0 => f32::from_bits(self.next_u64() as u32),
            1 => self.uniform(-1.0, 1.0) as f32,
            2 => self.uniform(-7.0e4, 7.0e4) as f32,
            _ => (self.uniform(-1.0, 1.0) * 2f64.powi(-14)) as f32,
        }
    }
    fn f64_any(&mut self) -> f64 {
        match self.below(4) {
            0 => f64::from_bits(self.next_u64()),
            1 => self.uniform(-1.0, 1.0),
            2 => self.uniform(-7.0e4, 7.0e4),
            _ => self.uniform(-1.0, 1.0) * 2f64.powi(-14),
        }
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `cases` cases; failures persisted to `proptest-regressions/properties_checkpoint.txt`
/// (relative to the package root, where cargo runs integration tests).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties_checkpoint.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// A fresh empty directory (the `tempfile` crate; removed when dropped).
struct TmpDir(tempfile::TempDir);

impl TmpDir {
    fn new(tag: &str) -> Self {
        TmpDir(tempfile::Builder::new().prefix(&format!("beit-seg-pckpt-{tag}-")).tempdir().unwrap())
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    /// The names of the directory's entries, sorted.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Same dtype, same shape, same elements bit for bit (logical row-major order).
fn bit_equal(a: &AnyArray, b: &AnyArray) -> bool {
    if a.dtype_name() != b.dtype_name() || a.shape() != b.shape() {
        return false;
    }
    match (a, b) {
        (AnyArray::F32(p), AnyArray::F32(q)) => p.iter().zip(q.iter()).all(|(u, v)| u.to_bits() == v.to_bits()),
        (AnyArray::F64(p), AnyArray::F64(q)) => p.iter().zip(q.iter()).all(|(u, v)| u.to_bits() == v.to_bits()),
        (AnyArray::I64(p), AnyArray::I64(q)) => p.iter().eq(q.iter()),
        (AnyArray::I32(p), AnyArray::I32(q)) => p.iter().eq(q.iter()),
        (AnyArray::U8(p), AnyArray::U8(q)) => p.iter().eq(q.iter()),
        (AnyArray::Bool(p), AnyArray::Bool(q)) => p.iter().eq(q.iter()),
        _ => false,
    }
}

fn describe(a: &AnyArray) -> String {
    let n: usize = a.shape().iter().product();
    let head: Vec<String> = match a {
        AnyArray::F32(x) => x.iter().take(6).map(|v| format!("{v:e}({:#010x})", v.to_bits())).collect(),
        AnyArray::F64(x) => x.iter().take(6).map(|v| format!("{v:e}")).collect(),
        AnyArray::I64(x) => x.iter().take(6).map(|v| v.to_string()).collect(),
        AnyArray::I32(x) => x.iter().take(6).map(|v| v.to_string()).collect(),
        AnyArray::U8(x) => x.iter().take(6).map(|v| v.to_string()).collect(),
        AnyArray::Bool(x) => x.iter().take(6).map(|v| v.to_string()).collect(),
    };
    format!(
        "{} {:?} ({n} elements) [{}{}]",
        a.dtype_name(),
        a.shape(),
        head.join(", "),
        if n > 6 { ", ..." } else { "" }
    )
}

/// The entries sorted by key (for formats that do not keep the order).
fn by_key(sd: &[(String, AnyArray)]) -> Vec<(String, AnyArray)> {
    let mut v = sd.to_vec();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// [`assert_same_dict`], ignoring the order for `.safetensors` (the safetensors crate stores
/// tensors by dtype alignment, then name).
fn same_in_format(
    ext: &str,
    what: &str,
    got: &[(String, AnyArray)],
    want: &[(String, AnyArray)],
) -> Result<(), TestCaseError> {
    if ext == "safetensors" {
        assert_same_dict(what, &by_key(got), &by_key(want))
    } else {
        assert_same_dict(what, got, want)
    }
}

/// Two state dicts are equal: the same keys in the same order, tensors bit-equal.
fn assert_same_dict(what: &str, got: &[(String, AnyArray)], want: &[(String, AnyArray)]) -> Result<(), TestCaseError> {
    let gk: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    let wk: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    prop_assert_eq!(&gk, &wk, "{}: keys differ", what);
    for ((k, g), (_, w)) in got.iter().zip(want) {
        prop_assert!(bit_equal(g, w), "{}: `{}` is {}, want {}", what, k, describe(g), describe(w));
    }
    Ok(())
}

// ------------------------------------------------------------------------------- rel-pos resize

/// `(src window, dst window)`: square windows 4..=16 → 4..=24.
fn windows() -> impl Strategy<Value = (usize, usize)> {
    (4usize..=16, 4usize..=24)
}

fn cubic(c: &[f64; 4], v: f64) -> f64 {
    ((c[3] * v + c[2]) * v + c[1]) * v + c[0]
}

/// A `(side² + 3, heads)` table whose body at row `r * side + c`, head `h` is `body(h, r, c)`
/// and whose three extra rows are random.
fn table_with_body(side: usize, heads: usize, seed: u64, body: impl Fn(usize, usize, usize) -> f64) -> Array2<f64> {
    let mut rng = Rng::new(seed);
    let mut t = Array2::<f64>::zeros((side * side + EXTRA_ROWS, heads));
    for h in 0..heads {
        for r in 0..side {
            for c in 0..side {
                t[[r * side + c, h]] = body(h, r, c);
            }
        }
        for e in 0..EXTRA_ROWS {
            t[[side * side + e, h]] = rng.uniform(-3.0, 3.0);
        }
    }
    t
}

fn random_table(side: usize, heads: usize, seed: u64) -> Array2<f64> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let body = Array2::from_shape_simple_fn((heads, side * side), || rng.uniform(-2.0, 2.0));
    table_with_body(side, heads, seed, |h, r, c| body[[h, r * side + c]])
}

/// Shape `((2d-1)² + 3, heads)` and the three class-token rows kept verbatim at the end.
fn check_shape_and_extra_rows(out: &Array2<f64>, table: &Array2<f64>, dst_w: usize) -> Result<(), TestCaseError> {
    let (src_rows, heads) = table.dim();
    let dst = 2 * dst_w - 1;
    prop_assert_eq!(out.dim(), (dst * dst + 3, heads), "output shape");
    prop_assert_eq!(out.nrows(), table_rows((dst_w, dst_w)));
    for h in 0..heads {
        for e in 0..3 {
            let (g, w) = (out[[dst * dst + e, h]], table[[src_rows - 3 + e, h]]);
            prop_assert!(g.to_bits() == w.to_bits(), "extra row {} head {}: got {:e}, want {:e}", e, h, g, w);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn relpos_resize_to_the_same_window_is_the_identity(n in 2usize..=16, heads in 1usize..=3, seed in any::<u64>()) {
        let side = 2 * n - 1;
        let table = random_table(side, heads, seed);
        let out = resize_rel_pos_table(&table, (n, n), (n, n)).unwrap();
        prop_assert_eq!(out.dim(), table.dim());
        prop_assert!(out.iter().zip(table.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "n -> n changed the table");
    }

    #[test]
    fn relpos_resize_has_the_destination_shape_and_keeps_the_cls_rows_verbatim(
        (src_w, dst_w) in windows(),
        heads in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let table = random_table(2 * src_w - 1, heads, seed);
        let out = resize_rel_pos_table(&table, (src_w, src_w), (dst_w, dst_w)).unwrap();
        check_shape_and_extra_rows(&out, &table, dst_w)?;
        prop_assert!(out.iter().all(|v| v.is_finite()), "non-finite output");
    }

    #[test]
    fn relpos_resize_reproduces_separable_cubics_inside_the_source_range(
        (src_w, dst_w) in windows().prop_filter("a resize, not the identity", |(s, d)| s != d),
        heads in 1usize..=3,
        product in any::<bool>(),
        coefs in proptest::collection::vec(proptest::array::uniform4(-1.0f64..1.0), 6),
        seed in any::<u64>(),
    ) {
        // Body f(dy, dx) = p(dy)·q(dx) or p(dy) + q(dx), sampled on mmseg's geometric grid:
        // a not-a-knot bicubic spline reproduces it exactly wherever it interpolates.
        let (src, dst) = (2 * src_w - 1, 2 * dst_w - 1);
        let x = source_grid(src, geometric_ratio(src, dst));
        let t = target_grid(dst);
        prop_assert_eq!(x.len(), src);
        prop_assert_eq!(t.len(), dst);
        let f = |h: usize, dy: f64, dx: f64| {
            let (p, q) = (&coefs[2 * h], &coefs[2 * h + 1]);
            if product { cubic(p, dy) * cubic(q, dx) } else { cubic(p, dy) + cubic(q, dx) }
        };
        let table = table_with_body(src, heads, seed, |h, r, c| f(h, x[r], x[c]));
        let out = resize_rel_pos_table(&table, (src_w, src_w), (dst_w, dst_w)).unwrap();
        check_shape_and_extra_rows(&out, &table, dst_w)?;
        let (lo, hi) = (x[0], x[src - 1]);
        let scale = table.iter().take(src * src * heads).fold(1.0f64, |m, v| m.max(v.abs()));
        let mut checked = 0;
        for h in 0..heads {
            for r in 0..dst {
                for c in 0..dst {
                    if t[r] < lo || t[r] > hi || t[c] < lo || t[c] > hi {
                        continue; // clamped to the boundary value outside the data (FITPACK)
                    }
                    let (got, want) = (out[[r * dst + c, h]], f(h, t[r], t[c]));
                    prop_assert!(
                        (got - want).abs() <= 1e-9 * scale,
                        "head {} at (dy, dx) = ({}, {}): got {:e}, want {:e} (diff {:e}, scale {:e}; grid ±{})",
                        h, t[r], t[c], got, want, (got - want).abs(), scale, hi
                    );
                    checked += 1;
                }
            }
        }
        prop_assert!(checked >= heads, "offset (0, 0) is always inside the source range");
    }

    #[test]
    fn relpos_resize_keeps_central_and_horizontal_mirror_symmetry(
        (src_w, dst_w) in windows(),
        heads in 1usize..=3,
        central in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Symmetrised random bodies: z(dy, dx) = z(-dy, -dx) (central) or z(dy, -dx) (mirror).
        let src = 2 * src_w - 1;
        let raw = random_table(src, heads, seed);
        let mirror = |r: usize, c: usize| if central { (src - 1 - r, src - 1 - c) } else { (r, src - 1 - c) };
        let table = table_with_body(src, heads, seed, |h, r, c| {
            let (r2, c2) = mirror(r, c);
            (raw[[r * src + c, h]] + raw[[r2 * src + c2, h]]) / 2.0
        });
        for h in 0..heads {
            for r in 0..src {
                for c in 0..src {
                    let (r2, c2) = mirror(r, c);
                    prop_assert_eq!(table[[r * src + c, h]], table[[r2 * src + c2, h]], "input not symmetric");
                }
            }
        }
        let out = resize_rel_pos_table(&table, (src_w, src_w), (dst_w, dst_w)).unwrap();
        check_shape_and_extra_rows(&out, &table, dst_w)?;
        let dst = 2 * dst_w - 1;
        let scale = table.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for h in 0..heads {
            for r in 0..dst {
                for c in 0..dst {
                    let (r2, c2) = if central { (dst - 1 - r, dst - 1 - c) } else { (r, dst - 1 - c) };
                    let (a, b) = (out[[r * dst + c, h]], out[[r2 * dst + c2, h]]);
                    prop_assert!(
                        (a - b).abs() <= 1e-12 * scale,
                        "head {}: out[{}, {}] = {:e} but its mirror out[{}, {}] = {:e} (central = {})",
                        h, r, c, a, r2, c2, b, central
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------- writers / readers

/// One tensor of a random state dict: dtype index (float32, float64, int64, int32, uint8, bool), shape (rank 0..=4, dims
/// 0..=3, so 0-d and empty tensors occur), and whether it is held in Fortran (transposed)
/// layout.
#[derive(Debug, Clone)]
struct TensorSpec {
    dtype: usize,
    shape: Vec<usize>,
    fortran: bool,
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    (0usize..6, proptest::collection::vec(0usize..=3, 0..=4), any::<bool>())
        .prop_map(|(dtype, shape, fortran)| TensorSpec { dtype, shape, fortran })
}

fn make_tensor(spec: &TensorSpec, rng: &mut Rng) -> AnyArray {
    let n: usize = spec.shape.iter().product();
    let shape = &spec.shape;
    fn arr<T>(shape: &[usize], fortran: bool, v: Vec<T>) -> ArrayD<T> {
        if fortran && shape.len() >= 2 {
            // Memory order reversed: logical element (i, j, ...) sits at a transposed offset.
            let rev: Vec<usize> = shape.iter().rev().copied().collect();
            ArrayD::from_shape_vec(IxDyn(&rev), v).unwrap().reversed_axes()
        } else {
            ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
        }
    }
    let f = spec.fortran;
    match spec.dtype {
        0 => AnyArray::F32(arr(shape, f, (0..n).map(|_| rng.f32_any()).collect())),
        1 => AnyArray::F64(arr(shape, f, (0..n).map(|_| rng.f64_any()).collect())),
        2 => AnyArray::I64(arr(shape, f, (0..n).map(|_| rng.next_u64() as i64).collect())),
        3 => AnyArray::I32(arr(shape, f, (0..n).map(|_| rng.next_u64() as i32).collect())),
        4 => AnyArray::U8(arr(shape, f, (0..n).map(|_| rng.next_u64() as u8).collect())),
        _ => AnyArray::Bool(arr(shape, f, (0..n).map(|_| rng.next_u64() & 1 == 1).collect())),
    }
}

/// Key names: dotted segments from a safe alphabet (`backbone.layers.3.attn.qkv.weight`-like).
fn key_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,5}(\\.[a-z0-9_]{1,5}){0,3}"
}

/// A random state dict of up to 6 tensors, in random order.
fn state_dict() -> impl Strategy<Value = Vec<(String, AnyArray)>> {
    (proptest::collection::btree_set(key_name(), 0..=6), proptest::collection::vec(tensor_spec(), 6), any::<u64>())
        .prop_map(|(keys, specs, seed)| {
            let mut rng = Rng::new(seed);
            let mut sd: Vec<(String, AnyArray)> =
                keys.into_iter().zip(&specs).map(|(k, s)| (k, make_tensor(s, &mut rng))).collect();
            rng.shuffle(&mut sd);
            sd
        })
}

/// What a float16 / bfloat16 store and a widened read must give: floats rounded once (float64
/// through float32, as torch's `.half()`), integers as they are.
fn half_rounded(sd: &[(String, AnyArray)], store: StoreDtype) -> Vec<(String, AnyArray)> {
    let round = |v: f32| match store {
        StoreDtype::F16 => f16_to_f32(f32_to_f16(v)),
        StoreDtype::BF16 => bf16_to_f32(f32_to_bf16(v)),
        StoreDtype::Native => v,
    };
    sd.iter()
        .map(|(k, a)| {
            let b = match a {
                AnyArray::F32(x) => AnyArray::F32(x.mapv(round)),
                AnyArray::F64(x) => AnyArray::F32(x.mapv(|v| round(v as f32))),
                other => other.clone(),
            };
            (k.clone(), b)
        })
        .collect()
}

const FORMATS: [&str; 3] = ["pth", "safetensors", "npz"];

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn write_then_read_is_bit_exact_in_every_format(sd in state_dict()) {
        let dir = TmpDir::new("rt");
        for ext in FORMATS {
            let p = dir.join(&format!("sd.{ext}"));
            write_any(&p, &sd, WriteOptions::default()).unwrap();
            let back = read_any(&p, ReadOptions::default()).unwrap();
            same_in_format(ext, &format!(".{ext}"), &back, &sd)?;
            // The format-specific writer writes the same bytes as write_any.
            let q = dir.join(&format!("direct.{ext}"));
            match ext {
                "pth" => write_pth(&q, &sd, WriteOptions::default()).unwrap(),
                "safetensors" => write_safetensors(&q, &sd, WriteOptions::default()).unwrap(),
                _ => write_npz(&q, &sd, WriteOptions::default()).unwrap(),
            }
            prop_assert!(std::fs::read(&p).unwrap() == std::fs::read(&q).unwrap(), ".{}: write_any and the direct writer differ", ext);
            std::fs::remove_file(&q).unwrap();
        }
        // Exactly the three files: no temporary file is left behind.
        prop_assert_eq!(dir.entries(), vec!["sd.npz".to_string(), "sd.pth".into(), "sd.safetensors".into()]);
    }

    #[test]
    fn half_storage_round_trips_to_the_exact_f16_and_bf16_rounding(sd in state_dict(), bf16 in any::<bool>()) {
        let store = if bf16 { StoreDtype::BF16 } else { StoreDtype::F16 };
        let want = half_rounded(&sd, store);
        let has_float = sd.iter().any(|(_, a)| a.is_float());
        let dir = TmpDir::new("half");
        for ext in ["pth", "safetensors"] {
            let p = dir.join(&format!("h.{ext}"));
            write_any(&p, &sd, WriteOptions { force: false, float_dtype: store }).unwrap();
            let back = read_any(&p, ReadOptions { widen_half: true, ..Default::default() }).unwrap();
            same_in_format(ext, &format!("{store:?} .{ext}"), &back, &want)?;
            // Without widening: refused exactly when some tensor is stored in half precision.
            match read_any(&p, ReadOptions::default()) {
                Err(CheckpointError::HalfNotWidened { .. }) => prop_assert!(has_float, ".{}: HalfNotWidened without a float tensor", ext),
                Err(e) => prop_assert!(false, ".{}: unexpected error {}", ext, e),
                Ok(plain) => {
                    prop_assert!(!has_float, ".{}: half tensors read without widen_half", ext);
                    same_in_format(ext, &format!("{store:?} .{ext} (no floats)"), &plain, &sd)?;
                }
            }
        }
        // .npz refuses half storage of floats and writes nothing.
        let q = dir.join("h.npz");
        let r = write_npz(&q, &sd, WriteOptions { force: false, float_dtype: store });
        prop_assert_eq!(r.is_err(), has_float, "npz with {:?} storage: {:?}", store, r.err().map(|e| e.to_string()));
        prop_assert_eq!(q.exists(), !has_float);
        let mut want_files = vec!["h.pth".to_string(), "h.safetensors".into()];
        if !has_float {
            want_files.insert(0, "h.npz".into());
        }
        prop_assert_eq!(dir.entries(), want_files);
    }
}

#[test]
fn writers_refuse_to_overwrite_without_force_and_leave_no_temporary_files() {
    let dir = TmpDir::new("force");
    let mut rng = Rng::new(7);
    let first: Vec<(String, AnyArray)> = vec![
        ("a.b".into(), make_tensor(&TensorSpec { dtype: 0, shape: vec![2, 3], fortran: false }, &mut rng)),
        ("c".into(), make_tensor(&TensorSpec { dtype: 2, shape: vec![], fortran: false }, &mut rng)),
    ];
    let second: Vec<(String, AnyArray)> =
        vec![("z".into(), make_tensor(&TensorSpec { dtype: 1, shape: vec![3, 2], fortran: true }, &mut rng))];
    for ext in FORMATS {
        let p = dir.join(&format!("x.{ext}"));
        write_any(&p, &first, WriteOptions::default()).unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = write_any(&p, &second, WriteOptions::default()).unwrap_err();
        assert!(matches!(e, CheckpointError::Exists { .. }), ".{ext}: {e}");
        assert_eq!(std::fs::read(&p).unwrap(), before, ".{ext}: the refused write changed the file");
        // A failing write (duplicate keys) changes nothing either.
        let dup = vec![first[0].clone(), first[0].clone()];
        assert!(write_any(&p, &dup, WriteOptions { force: true, ..Default::default() }).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        write_any(&p, &second, WriteOptions { force: true, ..Default::default() }).unwrap();
        let back = read_any(&p, ReadOptions::default()).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].0 == "z" && bit_equal(&back[0].1, &second[0].1), ".{ext}: forced write not in place");
    }
    assert_eq!(dir.entries(), ["x.npz", "x.pth", "x.safetensors"]);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn read_any_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        magic in 0usize..5,
        ext in 0usize..4,
    ) {
        let mut b = match magic {
            0 => Vec::new(),
            1 => b"PK\x03\x04".to_vec(),
            2 => b"PK\x05\x06".to_vec(),
            3 => vec![0x80, 2],
            _ => (bytes.len() as u64).to_le_bytes().to_vec(),
        };
        b.extend_from_slice(&bytes);
        let dir = TmpDir::new("fuzz");
        let p = dir.join(&format!("f.{}", ["pth", "safetensors", "npz", "bin"][ext]));
        std::fs::write(&p, &b).unwrap();
        let _ = read_any(&p, ReadOptions::default());
        let _ = read_any(&p, ReadOptions { widen_half: true, opaque_globals: true });
    }

    #[test]
    fn read_any_never_panics_on_mutated_or_truncated_checkpoints(
        sd in state_dict(),
        format in 0usize..3,
        half in any::<bool>(),
        pos in any::<proptest::sample::Index>(),
        val in any::<u8>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let dir = TmpDir::new("mut");
        let ext = FORMATS[format];
        let good = dir.join(&format!("good.{ext}"));
        let store = if half && ext != "npz" { StoreDtype::F16 } else { StoreDtype::Native };
        write_any(&good, &sd, WriteOptions { force: false, float_dtype: store }).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let opts = ReadOptions { widen_half: true, ..Default::default() };
        // One byte replaced.
        let mut m = bytes.clone();
        let i = pos.index(m.len());
        m[i] = val;
        let p = dir.join(&format!("m.{ext}"));
        std::fs::write(&p, &m).unwrap();
        let _ = read_any(&p, opts);
        let _ = read_any(&p, ReadOptions::default());
        // Truncated (to anything shorter than the file).
        let k = cut.index(bytes.len());
        std::fs::write(&p, &bytes[..k]).unwrap();
        prop_assert!(read_any(&p, opts).is_err() || k == bytes.len(), "a truncated .{} ({} of {} bytes) read without error", ext, k, bytes.len());
    }
}

// ------------------------------------------------------------------------------- converter

/// A random BEiT backbone: depth, heads, head width, window (table of `(2w-1)² + 3` rows),
/// patch size, whether it has a final norm (mmseg's top-level `ln1`), and the seed of its
/// tensors and key order.
#[derive(Debug, Clone)]
struct Backbone {
    depth: usize,
    heads: usize,
    head_dim: usize,
    window: usize,
    patch: usize,
    final_norm: bool,
    seed: u64,
}

fn backbone() -> impl Strategy<Value = Backbone> {
    (1usize..=4, 1usize..=3, 1usize..=4, 2usize..=4, 1usize..=3, any::<bool>(), any::<u64>()).prop_map(
        |(depth, heads, head_dim, window, patch, final_norm, seed)| Backbone {
            depth,
            heads,
            head_dim,
            window,
            patch,
            final_norm,
            seed,
        },
    )
}

/// Random float tensor (float32 or float64, any bit pattern), distinct from every other one.
fn rand_float(rng: &mut Rng, shape: &[usize]) -> AnyArray {
    let dtype = if rng.below(4) == 0 { 1 } else { 0 };
    make_tensor(&TensorSpec { dtype, shape: shape.to_vec(), fortran: false }, rng)
}

/// The backbone's state dict in MMSegmentation names, under `prefix` (`""` or `"backbone."`).
fn mmseg_backbone(b: &Backbone, prefix: &str, rng: &mut Rng) -> Vec<(String, AnyArray)> {
    let c = b.heads * b.head_dim;
    let rows = table_rows((b.window, b.window));
    let mut sd = vec![
        (format!("{prefix}cls_token"), rand_float(rng, &[1, 1, c])),
        (format!("{prefix}patch_embed.projection.weight"), rand_float(rng, &[c, 3, b.patch, b.patch])),
        (format!("{prefix}patch_embed.projection.bias"), rand_float(rng, &[c])),
    ];
    for i in 0..b.depth {
        let l = format!("{prefix}layers.{i}.");
        let shapes: [(&str, Vec<usize>); 16] = [
            ("gamma_1", vec![c]),
            ("gamma_2", vec![c]),
            ("ln1.weight", vec![c]),
            ("ln1.bias", vec![c]),
            ("attn.q_bias", vec![c]),
            ("attn.v_bias", vec![c]),
            ("attn.qkv.weight", vec![3 * c, c]),
            ("attn.relative_position_bias_table", vec![rows, b.heads]),
            ("attn.proj.weight", vec![c, c]),
            ("attn.proj.bias", vec![c]),
            ("ln2.weight", vec![c]),
            ("ln2.bias", vec![c]),
            ("ffn.layers.0.0.weight", vec![4 * c, c]),
            ("ffn.layers.0.0.bias", vec![4 * c]),
            ("ffn.layers.1.weight", vec![c, 4 * c]),
            ("ffn.layers.1.bias", vec![c]),
        ];
        for (name, shape) in shapes {
            sd.push((format!("{l}{name}"), rand_float(rng, &shape)));
        }
    }
    if b.final_norm {
        sd.push((format!("{prefix}ln1.weight"), rand_float(rng, &[c])));
        sd.push((format!("{prefix}ln1.bias"), rand_float(rng, &[c])));
    }
    sd
}

/// The UPerNet segmentor's non-backbone keys (mmseg names): the BEiT multi-level neck and a
/// random selection of decode/auxiliary head keys.
fn mmseg_neck_and_heads(b: &Backbone, rng: &mut Rng) -> Vec<(String, AnyArray)> {
    let c = b.heads * b.head_dim;
    let mut sd = vec![
        ("neck.upsample_4x.0.weight".to_string(), rand_float(rng, &[c, c, 2, 2])),
        ("neck.upsample_4x.0.bias".into(), rand_float(rng, &[c])),
        ("neck.upsample_4x.1.weight".into(), rand_float(rng, &[c])),
        ("neck.upsample_4x.1.bias".into(), rand_float(rng, &[c])),
        ("neck.upsample_4x.1.running_mean".into(), rand_float(rng, &[c])),
        ("neck.upsample_4x.1.running_var".into(), rand_float(rng, &[c])),
        (
            "neck.upsample_4x.1.num_batches_tracked".into(),
            AnyArray::I64(ArrayD::from_elem(IxDyn(&[]), rng.next_u64() as i64)),
        ),
        ("neck.upsample_4x.3.weight".into(), rand_float(rng, &[c, c, 2, 2])),
        ("neck.upsample_4x.3.bias".into(), rand_float(rng, &[c])),
        ("neck.upsample_2x.0.weight".into(), rand_float(rng, &[c, c, 2, 2])),
        ("neck.upsample_2x.0.bias".into(), rand_float(rng, &[c])),
    ];
    let heads = [
        "decode_head.conv_seg.weight",
        "decode_head.conv_seg.bias",
        "decode_head.psp_modules.0.1.conv.weight",
        "decode_head.psp_modules.0.1.bn.running_mean",
        "decode_head.bottleneck.bn.weight",
        "decode_head.lateral_convs.0.conv.weight",
        "decode_head.fpn_convs.2.bn.running_var",
        "decode_head.fpn_bottleneck.conv.weight",
        "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.convs.0.bn.bias",
        "auxiliary_head.conv_seg.weight",
    ];
    for k in heads {
        if rng.below(3) != 0 {
            sd.push((k.to_string(), rand_float(rng, &[c, 2])));
        }
    }
    if rng.below(2) == 0 {
        sd.push((
            "decode_head.bottleneck.bn.num_batches_tracked".into(),
            AnyArray::I64(ArrayD::from_elem(IxDyn(&[]), 0)),
        ));
    }
    sd
}

/// mmseg → official BEiT (UNILM `modeling_finetune.py`) name of a backbone-relative key: the
/// inverse of `beit2mmseg.py` written out by hand.
fn official_key(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("patch_embed.projection.") {
        return format!("patch_embed.proj.{rest}");
    }
    if let Some(rest) = k.strip_prefix("ln1.") {
        return format!("norm.{rest}"); // the final norm
    }
    if let Some(rest) = k.strip_prefix("layers.") {
        let (n, rest) = rest.split_once('.').unwrap();
        let renames =
            [("ln1.", "norm1."), ("ln2.", "norm2."), ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2.")];
        let rest = renames
            .iter()
            .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
            .unwrap_or_else(|| rest.to_string());
        return format!("blocks.{n}.{rest}");
    }
    k.to_string()
}

/// mmseg → UNILM ADE20K fine-tune name of a full segmentor key.
fn unilm_ade_key(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("backbone.") {
        return format!("backbone.{}", official_key(rest));
    }
    for i in ["0", "1", "3"] {
        if let Some(rest) = k.strip_prefix(&format!("neck.upsample_4x.{i}.")) {
            return format!("backbone.fpn1.{i}.{rest}");
        }
    }
    if let Some(rest) = k.strip_prefix("neck.upsample_2x.0.") {
        return format!("backbone.fpn2.0.{rest}");
    }
    k.to_string()
}

fn renamed(sd: &[(String, AnyArray)], f: impl Fn(&str) -> String) -> Vec<(String, AnyArray)> {
    sd.iter().map(|(k, a)| (f(k), a.clone())).collect()
}

/// An mmseg-named state dict in random order: the backbone alone or the full segmentor.
fn mmseg_dict(b: &Backbone, full: bool) -> Vec<(String, AnyArray)> {
    let mut rng = Rng::new(b.seed);
    let mut sd = mmseg_backbone(b, if full { "backbone." } else { "" }, &mut rng);
    if full {
        sd.extend(mmseg_neck_and_heads(b, &mut rng));
    }
    rng.shuffle(&mut sd);
    sd
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn official_backbone_converts_back_to_the_mmseg_dict_it_came_from(b in backbone()) {
        let mmseg = mmseg_dict(&b, false);
        let official = renamed(&mmseg, official_key);
        prop_assert_eq!(detect_dialect(official.iter().map(|(k, _)| k.as_str())).unwrap(), Dialect::BeitOfficial);
        let (out, rep) = convert(official, &ConvertOptions { final_norm: b.final_norm, ..Default::default() }).unwrap();
        prop_assert_eq!(rep.dialect, Dialect::BeitOfficial);
        prop_assert!(rep.dropped.is_empty(), "dropped {:?}", rep.dropped);
        assert_same_dict("official -> mmseg", &out, &mmseg)?;
    }

    #[test]
    fn unilm_ade_segmentor_converts_back_to_the_mmseg_dict_it_came_from(b in backbone()) {
        let mmseg = mmseg_dict(&b, true);
        let unilm = renamed(&mmseg, unilm_ade_key);
        prop_assert_eq!(detect_dialect(unilm.iter().map(|(k, _)| k.as_str())).unwrap(), Dialect::UnilmAde);
        let (out, rep) = convert(unilm, &ConvertOptions { final_norm: b.final_norm, ..Default::default() }).unwrap();
        prop_assert_eq!(rep.dialect, Dialect::UnilmAde);
        prop_assert!(rep.dropped.is_empty(), "dropped {:?}", rep.dropped);
        assert_same_dict("unilm-ade -> mmseg", &out, &mmseg)?;
    }

    #[test]
    fn converting_an_mmseg_dict_is_the_identity(b in backbone(), full in any::<bool>(), ddp in any::<bool>()) {
        let mmseg = mmseg_dict(&b, full);
        // A DistributedDataParallel `module.` prefix on every key is stripped.
        let input = if ddp { renamed(&mmseg, |k| format!("module.{k}")) } else { mmseg.clone() };
        let (out, rep) = convert(input, &ConvertOptions::default()).unwrap();
        prop_assert_eq!(rep.dialect, Dialect::Mmseg);
        prop_assert!(rep.renamed.is_empty() && rep.dropped.is_empty(), "renamed {:?}, dropped {:?}", rep.renamed, rep.dropped);
        assert_same_dict("mmseg -> mmseg", &out, &mmseg)?;
    }
}

/// A checkpoint in one of the UNILM dialects or mmseg's, with the keys those files carry that
/// the converter drops (classifier, pretraining heads, `pos_embed`, index buffers, final norm)
/// drawn at random.
#[derive(Debug, Clone)]
struct Messy {
    b: Backbone,
    /// 0: beit-official, 1: beit-pretrain-shared, 2: unilm-ade, 3: mmseg (backbone), 4: mmseg (full).
    dialect: usize,
    /// Which optional extra keys are present.
    extras: u16,
    /// `ConvertOptions::final_norm`.
    keep_norm: bool,
    /// Every key under `module.`.
    ddp: bool,
}

fn messy() -> impl Strategy<Value = Messy> {
    (backbone(), 0usize..5, any::<u16>(), any::<bool>(), any::<bool>())
        .prop_map(|(b, dialect, extras, keep_norm, ddp)| Messy { b, dialect, extras, keep_norm, ddp })
}

impl Messy {
    fn expected_dialect(&self) -> Dialect {
        [Dialect::BeitOfficial, Dialect::BeitPretrainShared, Dialect::UnilmAde, Dialect::Mmseg, Dialect::Mmseg]
            [self.dialect]
    }

    fn build(&self) -> Vec<(String, AnyArray)> {
        let b = &self.b;
        let c = b.heads * b.head_dim;
        let mut rng = Rng::new(b.seed ^ 0xabcd);
        let has = |bit: u32| self.extras & (1 << bit) != 0;
        let index = |rng: &mut Rng| {
            let n = b.window * b.window + 1;
            AnyArray::I64(ArrayD::from_shape_simple_fn(IxDyn(&[n, n]), || rng.below(1000) as i64))
        };
        let full = matches!(self.dialect, 2 | 4);
        let mut sd = mmseg_backbone(b, if full { "backbone." } else { "" }, &mut rng);
        if full {
            sd.extend(mmseg_neck_and_heads(b, &mut rng));
        }
        let mut sd = match self.dialect {
            0 | 1 => renamed(&sd, official_key),
            2 => renamed(&sd, unilm_ade_key),
            _ => sd,
        };
        let bb = if full { "backbone." } else { "" };
        let blocks = if self.dialect <= 2 { "blocks" } else { "layers" };
        if self.dialect == 1 {
            // Pretraining: one shared table instead of per-block ones.
            sd.retain(|(k, _)| !k.ends_with(".attn.relative_position_bias_table"));
            sd.push((
                "rel_pos_bias.relative_position_bias_table".into(),
                rand_float(&mut rng, &[table_rows((b.window, b.window)), b.heads]),
            ));
            if has(0) {
                sd.push(("rel_pos_bias.relative_position_index".into(), index(&mut rng)));
            }
        } else if has(0) {
            for i in 0..b.depth {
                if rng.below(2) == 0 {
                    sd.push((format!("{bb}{blocks}.{i}.attn.relative_position_index"), index(&mut rng)));
                }
            }
        }
        if self.dialect <= 2 {
            let extra: [(u32, &str, Vec<usize>); 9] = [
                (1, "head.weight", vec![10, c]),
                (1, "head.bias", vec![10]),
                (2, "fc_norm.weight", vec![c]),
                (2, "fc_norm.bias", vec![c]),
                (3, "pos_embed", vec![1, 5, c]),
                (4, "mask_token", vec![1, 1, c]),
                (5, "lm_head.weight", vec![16, c]),
                (5, "lm_head.bias", vec![16]),
                (6, "norm.weight", vec![c]),
            ];
            for (bit, k, shape) in extra {
                let k = format!("{bb}{k}");
                if has(bit) && !sd.iter().any(|(n, _)| *n == k) {
                    sd.push((k, rand_float(&mut rng, &shape)));
                }
            }
        }
        rng.shuffle(&mut sd);
        if self.ddp {
            sd = renamed(&sd, |k| format!("module.{k}"));
        }
        sd
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn convert_never_invents_tensors_and_accounts_for_every_key(m in messy()) {
        let input = m.build();
        let (out, rep) = convert(input.clone(), &ConvertOptions { final_norm: m.keep_norm, ..Default::default() }).unwrap();
        prop_assert_eq!(rep.dialect, m.expected_dialect());
        // Keys as the report names them (a DDP `module.` prefix stripped).
        let src: HashMap<String, &AnyArray> = input.iter().map(|(k, a)| (k.strip_prefix(if m.ddp { "module." } else { "" }).unwrap().to_string(), a)).collect();
        prop_assert_eq!(src.len(), input.len());
        let from_of: HashMap<&str, &str> = rep.renamed.iter().map(|(f, t)| (t.as_str(), f.as_str())).collect();
        let mut seen = BTreeSet::new();
        let mut used: HashMap<&str, usize> = HashMap::new();
        for (k, a) in &out {
            prop_assert!(seen.insert(k.as_str()), "`{}` appears twice in the output", k);
            // Every output tensor is its source tensor (the one the report names), bit for bit.
            let from = from_of.get(k.as_str()).copied().unwrap_or(k.as_str());
            let Some(orig) = src.get(from) else {
                return Err(TestCaseError::fail(format!("output `{k}` comes from `{from}`, which is not an input key")));
            };
            prop_assert!(bit_equal(a, orig), "output `{}` is {}, its source `{}` is {}", k, describe(a), from, describe(orig));
            prop_assert!(src.iter().any(|(_, t)| bit_equal(a, t)));
            *used.entry(from).or_default() += 1;
        }
        // Every input key is used or dropped, never both; only the shared table is used twice.
        let dropped: Vec<&str> = rep.dropped.iter().map(|(k, _)| k.as_str()).collect();
        for k in src.keys() {
            let n_used = used.get(k.as_str()).copied().unwrap_or(0);
            let n_dropped = dropped.iter().filter(|d| **d == k.as_str()).count();
            prop_assert!(n_used + n_dropped >= 1, "`{}` neither converted nor reported dropped", k);
            prop_assert!(n_used == 0 || n_dropped == 0, "`{}` both converted and dropped", k);
            prop_assert!(n_dropped <= 1, "`{}` dropped {} times", k, n_dropped);
            let want_uses = if k == "rel_pos_bias.relative_position_bias_table" { m.b.depth } else { 1 };
            prop_assert!(n_used == 0 || n_used == want_uses, "`{}` used {} times, want {}", k, n_used, want_uses);
        }
        // Only keys the converter is meant to drop are dropped.
        for d in &dropped {
            let inner = d.strip_prefix("backbone.").unwrap_or(d);
            let droppable = inner.contains("relative_position_index")
                || ["head.", "fc_norm.", "lm_head."].iter().any(|p| inner.starts_with(p))
                || inner == "pos_embed"
                || inner == "mask_token"
                || (inner.starts_with("norm.") && !m.keep_norm);
            prop_assert!(droppable, "`{}` dropped: {:?}", d, rep.dropped);
        }
        // Every layer has a table.
        let prefix = if matches!(m.dialect, 2 | 4) { "backbone." } else { "" };
        for i in 0..m.b.depth {
            let k = format!("{prefix}layers.{i}.attn.relative_position_bias_table");
            prop_assert!(seen.contains(k.as_str()), "no `{}` in the output", k);
        }
    }
}

/// IEEE half / bfloat16 conversions as the writers and readers use them (the `half` crate).
fn f16_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}
fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}
fn bf16_to_f32(h: u16) -> f32 {
    bf16::from_bits(h).to_f32()
}
fn f32_to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

// ------------------------------------------------------------------------------------ export

/// An mmseg dict with the variations the exporter must carry: q/v biases on or off, final norm
/// (from [`Backbone`]), auxiliary head present or absent, full or backbone-relative names.
fn export_source(b: &Backbone, full: bool, qv_bias: bool, aux: bool) -> Vec<(String, AnyArray)> {
    mmseg_dict(b, full)
        .into_iter()
        .filter(|(k, _)| qv_bias || !(k.ends_with("attn.q_bias") || k.ends_with("attn.v_bias")))
        .filter(|(k, _)| aux || !k.starts_with("auxiliary_head."))
        .collect()
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn export_then_import_is_the_identity(
        b in backbone(), full in any::<bool>(), qv_bias in any::<bool>(), aux in any::<bool>(), hf in any::<bool>(),
    ) {
        let src = export_source(&b, full, qv_bias, aux);
        let to = if hf { Dialect::Hf } else { Dialect::BeitOfficial };
        let (exported, rep) = export(src.clone(), to, &ExportOptions::default()).unwrap();
        prop_assert_eq!(rep.dialect, to);
        // The exported names are the target dialect's, and the importer recognises them.
        let detected = detect_dialect(exported.iter().map(|(k, _)| k.as_str())).unwrap();
        prop_assert_eq!(detected, to);
        let opts = ConvertOptions { dialect: Some(to), final_norm: b.final_norm, ..Default::default() };
        let (back, _) = convert(exported, &opts).unwrap();
        // beit-official is backbone-only: the neck and heads are dropped, and the backbone comes
        // back under backbone-relative names.
        let want: Vec<(String, AnyArray)> = if to == Dialect::BeitOfficial {
            prop_assert_eq!(rep.dropped.len(), src.iter().filter(|(k, _)| full && !k.starts_with("backbone.")).count());
            src.iter()
                .filter(|(k, _)| !full || k.starts_with("backbone."))
                .map(|(k, a)| (k.strip_prefix("backbone.").unwrap_or(k).to_string(), a.clone()))
                .collect()
        } else {
            prop_assert!(rep.dropped.is_empty(), "dropped {:?}", rep.dropped);
            src.clone()
        };
        assert_same_dict(&format!("mmseg -> {to} -> mmseg"), &back, &want)?;
    }
}
