//! The checkpoint layer: `.pth` / `.safetensors` / `.npz` reading and writing, the restricted
//! unpickler's refusals, key conversion between BEiT dialects, and the rel-pos-bias resize.
//!
//! Committed inputs (tests/data/checkpoint/, made with torch 2.11.0, numpy, scipy 1.13.1):
//!
//! `torch_views.pth`:
//! ```python
//! import collections, numpy as np, torch
//! torch.manual_seed(0)
//! base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8
//! lin = torch.nn.Linear(3, 2)
//! with torch.no_grad():
//!     lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.5]])); lin.bias.copy_(torch.tensor([0.125, -0.75]))
//! sd = lin.state_dict()                      # an OrderedDict with `_metadata` (pickled via BUILD)
//! sd['t'] = base.t()                         # non-contiguous (stride (1, 6))
//! sd['sl'] = base[1:3, 2:5]                  # offset 8, stride (6, 1), shares base's storage
//! sd['step'] = base[::2, ::3]                # stride (12, 3)
//! sd['base'] = base
//! sd['half'] = torch.tensor([1.0, -2.5, 65504.0, 6e-8], dtype=torch.float16)
//! sd['bf16'] = torch.tensor([[1.0, -3.140625], [1e30, 0.0078125]], dtype=torch.bfloat16).t()
//! sd['f64'] = torch.tensor([1.0 / 3.0, -2.0], dtype=torch.float64)
//! sd['i64'] = torch.tensor(-5, dtype=torch.int64)  # 0-d
//! sd['i32'] = torch.tensor([7, -8], dtype=torch.int32)
//! sd['u8'] = torch.tensor([0, 255], dtype=torch.uint8)
//! sd['mask'] = torch.tensor([True, False, True])
//! sd['empty'] = torch.zeros(0, 3)
//! sd['param'] = torch.nn.Parameter(torch.tensor([0.5, 1.5]))
//! torch.save({'meta': {'epoch': 3, 'lr': 0.5, 'name': 'x', 'tup': (1, None, True), 'big': 2**70, 'neg': -300000},
//!             'state_dict': sd}, 'torch_views.pth')
//! ```
//!
//! `relpos_scipy.npz`: float32 tables `in_{S}_{D}` (windows S → D) and their float64 resizes
//! `out_{S}_{D}` by SciPy's `RectBivariateSpline(kx=3, ky=3, s=0)` on mmseg's grid:
//! ```python
//! from scipy.interpolate import RectBivariateSpline
//! def resize(table, sw, dw):
//!     src, dst = 2 * sw - 1, 2 * dw - 1
//!     left, right = 1.01, 1.5
//!     while right - left > 1e-6:
//!         q = (left + right) / 2.0
//!         gp = (1.0 - q ** (src // 2)) / (1.0 - q)
//!         if gp > dst // 2: right = q
//!         else: left = q
//!     dis, cur = [], 1
//!     for i in range(src // 2):
//!         dis.append(cur); cur += q ** (i + 1)
//!     x = [-d for d in reversed(dis)] + [0] + dis
//!     t = dst // 2.0
//!     dx = np.arange(-t, t + 0.1, 1.0)
//!     cols = [RectBivariateSpline(x, x, table[:-3, h].reshape(src, src).astype(np.float64), kx=3, ky=3, s=0)(dx, dx).reshape(-1)
//!             for h in range(table.shape[1])]
//!     return np.concatenate([np.stack(cols, 1), table[-3:].astype(np.float64)], 0)
//! rng = np.random.default_rng(1)
//! arrays = {}
//! for sw, dw, heads in [(14, 40, 1), (5, 7, 2), (7, 4, 2), (8, 9, 1)]:
//!     tab = (rng.standard_normal(((2 * sw - 1) ** 2 + 3, heads)) * 2).astype(np.float32)
//!     arrays[f'in_{sw}_{dw}'] = tab
//!     arrays[f'out_{sw}_{dw}'] = resize(tab, sw, dw)
//! np.savez('relpos_scipy.npz', **arrays)
//! ```
//! (For float32 tables the crate's resize was also checked to equal mmseg 1.2.2's own
//! `BEiT._geometric_sequence_interpolation` (scipy `interp2d`) bit for bit after the float32
//! cast, for 14→40 with 12 and 16 heads, 12→24, 40→14, 8→9 and 3→5.)

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use beit_seg::array::{read_npz, AnyArray};
use half::{bf16, f16};

use beit_seg::checkpoint::relpos::{geometric_ratio, solve_tridiagonal, window_of_rows};
use beit_seg::checkpoint::*;
use ndarray::{arr1, arr2, Array2, ArrayD, Ix2, IxDyn};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint").join(name)
}

/// A fresh empty directory (the `tempfile` crate; removed when dropped).
struct TmpDir(tempfile::TempDir);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

fn tmpdir(tag: &str) -> TmpDir {
    TmpDir(tempfile::Builder::new().prefix(&format!("beit-seg-ckpt-{tag}-")).tempdir().unwrap())
}

fn f32a(v: &[f32], shape: &[usize]) -> AnyArray {
    AnyArray::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn get<'a>(sd: &'a [(String, AnyArray)], k: &str) -> &'a AnyArray {
    &sd.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("missing {k}")).1
}

fn as_f32(a: &AnyArray) -> ArrayD<f32> {
    match a {
        AnyArray::F32(x) => x.clone(),
        other => panic!("expected float32, got {}", other.dtype_name()),
    }
}

/// Every dtype, a 0-d and an empty tensor, and a non-standard-layout (transposed) array.
fn sample_state() -> Vec<(String, AnyArray)> {
    let t = arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).reversed_axes().into_dyn(); // (3, 2), F-order
    vec![
        ("backbone.cls_token".into(), f32a(&[0.5, -1.25, 3.0, 1e-3], &[1, 1, 4])),
        ("transposed".into(), AnyArray::F32(t)),
        ("f64".into(), AnyArray::F64(arr1(&[1.0 / 3.0, -2.0, f64::MAX]).into_dyn())),
        ("i64".into(), AnyArray::I64(ArrayD::from_elem(IxDyn(&[]), -5i64))),
        ("i32".into(), AnyArray::I32(arr1(&[7, -8, i32::MIN]).into_dyn())),
        ("u8".into(), AnyArray::U8(arr1(&[0u8, 255]).into_dyn())),
        ("bool".into(), AnyArray::Bool(arr1(&[true, false, true]).into_dyn())),
        ("empty".into(), AnyArray::F32(ArrayD::zeros(IxDyn(&[0, 3])))),
    ]
}

fn assert_same(a: &[(String, AnyArray)], b: &[(String, AnyArray)]) {
    assert_eq!(a.iter().map(|(k, _)| k).collect::<Vec<_>>(), b.iter().map(|(k, _)| k).collect::<Vec<_>>());
    for ((k, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.dtype_name(), y.dtype_name(), "{k}");
        assert_eq!(x.shape(), y.shape(), "{k}");
        match (x, y) {
            (AnyArray::F32(p), AnyArray::F32(q)) => {
                assert!(p.iter().zip(q).all(|(u, v)| u.to_bits() == v.to_bits()), "{k}")
            }
            (AnyArray::F64(p), AnyArray::F64(q)) => {
                assert!(p.iter().zip(q).all(|(u, v)| u.to_bits() == v.to_bits()), "{k}")
            }
            (AnyArray::I64(p), AnyArray::I64(q)) => assert_eq!(p, q, "{k}"),
            (AnyArray::I32(p), AnyArray::I32(q)) => assert_eq!(p, q, "{k}"),
            (AnyArray::U8(p), AnyArray::U8(q)) => assert_eq!(p, q, "{k}"),
            (AnyArray::Bool(p), AnyArray::Bool(q)) => assert_eq!(p, q, "{k}"),
            _ => unreachable!(),
        }
    }
}

/// The entries sorted by key (for formats that do not keep the order).
fn by_key(sd: &[(String, AnyArray)]) -> Vec<(String, AnyArray)> {
    let mut v = sd.to_vec();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn no_temp_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_every_format() {
    let dir = tmpdir("rt");
    let sd = sample_state();
    for name in ["a.pth", "a.safetensors", "a.npz"] {
        let p = dir.join(name);
        write_any(&p, &sd, WriteOptions::default()).unwrap();
        let back = read_any(&p, ReadOptions::default()).unwrap();
        if name.ends_with(".safetensors") {
            // The safetensors crate stores tensors by dtype alignment, then name.
            assert_same(&by_key(&sd), &by_key(&back));
        } else {
            assert_same(&sd, &back);
        }
    }
    // Told apart by content, not extension.
    std::fs::copy(dir.join("a.safetensors"), dir.join("st.bin")).unwrap();
    std::fs::copy(dir.join("a.pth"), dir.join("pth.dat")).unwrap();
    std::fs::copy(dir.join("a.npz"), dir.join("npz.bin")).unwrap();
    assert_eq!(file_kind(&dir.join("st.bin")).unwrap(), FileKind::Safetensors);
    assert_eq!(file_kind(&dir.join("pth.dat")).unwrap(), FileKind::Pth);
    assert_eq!(file_kind(&dir.join("npz.bin")).unwrap(), FileKind::Npz);
    assert_same(&by_key(&sd), &by_key(&read_any(&dir.join("st.bin"), ReadOptions::default()).unwrap()));
    // The .pth is mmengine's layout: {"state_dict": OrderedDict, "meta": {}}.
    let v = load_pth(&dir.join("a.pth"), ReadOptions::default()).unwrap();
    assert!(matches!(v.get("meta"), Some(Value::Dict(d)) if d.is_empty()));
    assert!(matches!(v.get("state_dict"), Some(Value::Dict(d)) if d.len() == sd.len()));
    // The .npz is what weights::read_npz reads.
    assert_same(&sd, &read_npz(&dir.join("a.npz")).unwrap());
    no_temp_files(&dir);
}

#[test]
fn half_storage_round_trip() {
    let dir = tmpdir("half");
    // Exactly representable values come back exactly; others are rounded to nearest even.
    let exact = [1.0f32, -2.5, 65504.0, 2f32.powi(-24), 0.0, -0.0, f32::INFINITY];
    let rounding = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 1e6, 3.0 * 2f32.powi(-26), 1e-9];
    // float16: ties to even (1 + 2^-11 -> 1.0; 1 + 3*2^-11 -> 1 + 2^-9); overflow -> inf;
    // 3*2^-26 -> 2^-24 (nearest subnormal); 1e-9 -> 0.
    let want_f16 = [1.0f32, 1.0 + 2f32.powi(-9), f32::INFINITY, 2f32.powi(-24), 0.0];
    // bfloat16 keeps 8 significant bits.
    // (values checked against torch: `x.bfloat16().float()`, 1e-9 -> 0x1.12p-30)
    let want_bf16 = [1.0f32, 1.0, 999424.0, 3.0 * 2f32.powi(-26), 1.0703125 * 2f32.powi(-30)];
    let mut all: Vec<f32> = exact.to_vec();
    all.extend_from_slice(&rounding);
    let sd =
        vec![("x".to_string(), f32a(&all, &[all.len()])), ("n".to_string(), AnyArray::I64(arr1(&[3i64]).into_dyn()))];
    for (store, want) in [(StoreDtype::F16, want_f16), (StoreDtype::BF16, want_bf16)] {
        for ext in ["pth", "safetensors"] {
            let p = dir.join(format!("h-{store:?}.{ext}"));
            write_any(&p, &sd, WriteOptions { force: false, float_dtype: store }).unwrap();
            // Without widening: an error that says how to widen.
            let e = read_any(&p, ReadOptions::default()).unwrap_err();
            assert!(matches!(e, CheckpointError::HalfNotWidened { .. }), "{e}");
            assert!(e.to_string().contains("widen_half"), "{e}");
            let back = read_any(&p, ReadOptions { widen_half: true, ..Default::default() }).unwrap();
            let x = as_f32(get(&back, "x"));
            let got: Vec<f32> = x.iter().copied().collect();
            let mut expect: Vec<f32> = exact.to_vec();
            if store == StoreDtype::BF16 {
                expect[2] = 65536.0; // 65504 has 11 significant bits
                expect[3] = 2f32.powi(-24); // a normal number in bfloat16
            }
            expect.extend_from_slice(&want);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                expect.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{store:?} {ext}: {got:?}"
            );
            assert!(matches!(get(&back, "n"), AnyArray::I64(_)), "integers are stored as they are");
        }
    }
    // npz has no bfloat16 and our npz reader no float16: refused.
    let e =
        write_npz(&dir.join("h.npz"), &sd, WriteOptions { force: false, float_dtype: StoreDtype::F16 }).unwrap_err();
    assert!(e.to_string().contains(".npz"), "{e}");
    assert!(!dir.join("h.npz").exists());
    no_temp_files(&dir);
}

#[test]
fn half_conversions_are_exact_inverses_on_every_f16() {
    for h in 0..=u16::MAX {
        let f = f16_to_f32(h);
        if f.is_nan() {
            assert!(f16_to_f32(f32_to_f16(f)).is_nan());
        } else {
            assert_eq!(f32_to_f16(f), h, "{h:#06x}");
        }
        let b = bf16_to_f32(h);
        if !b.is_nan() {
            assert_eq!(f32_to_bf16(b), h, "{h:#06x}");
        }
    }
}

#[test]
fn writes_are_atomic_and_never_clobber_without_force() {
    let dir = tmpdir("force");
    let sd = sample_state();
    for name in ["x.pth", "x.safetensors", "x.npz"] {
        let p = dir.join(name);
        std::fs::write(&p, b"precious").unwrap();
        let e = write_any(&p, &sd, WriteOptions::default()).unwrap_err();
        assert!(matches!(e, CheckpointError::Exists { .. }), "{e}");
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        write_any(&p, &sd, WriteOptions { force: true, ..Default::default() }).unwrap();
        assert_same(&by_key(&sd), &by_key(&read_any(&p, ReadOptions::default()).unwrap()));
    }
    // Duplicate keys are refused before anything is written.
    let dup = vec![("a".to_string(), f32a(&[1.0], &[1])), ("a".to_string(), f32a(&[2.0], &[1]))];
    assert!(write_pth(&dir.join("dup.pth"), &dup, WriteOptions::default()).unwrap_err().to_string().contains("`a`"));
    assert!(!dir.join("dup.pth").exists());
    // A missing directory is an I/O error naming the path.
    let e = write_pth(&dir.join("no/such/dir/x.pth"), &sd, WriteOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
    no_temp_files(&dir);
}

// ---------------------------------------------------------------------------------------------
// A file written by torch

#[test]
fn reads_torch_written_views_dtypes_and_meta() {
    let path = data("torch_views.pth");
    let sd = read_state_dict_with(&path, ReadOptions { widen_half: true, ..Default::default() }).unwrap();
    let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "weight", "bias", "t", "sl", "step", "base", "half", "bf16", "f64", "i64", "i32", "u8", "mask", "empty",
            "param"
        ]
    );
    let base = Array2::from_shape_fn((4, 6), |(i, j)| (6 * i + j) as f32 / 8.0);
    let f = |k: &str| as_f32(get(&sd, k));
    assert_eq!(f("weight"), arr2(&[[1.0f32, -2.0, 0.5], [0.25, 3.0, -1.5]]).into_dyn());
    assert_eq!(f("bias"), arr1(&[0.125f32, -0.75]).into_dyn());
    assert_eq!(f("base"), base.clone().into_dyn());
    assert_eq!(f("t"), base.t().to_owned().into_dyn());
    assert_eq!(f("sl"), base.slice(ndarray::s![1..3, 2..5]).to_owned().into_dyn());
    assert_eq!(f("step"), base.slice(ndarray::s![..;2, ..;3]).to_owned().into_dyn());
    assert_eq!(f("half"), arr1(&[1.0f32, -2.5, 65504.0, 2f32.powi(-24)]).into_dyn());
    assert_eq!(f("bf16"), arr2(&[[1.0f32, 1.578125 * 2f32.powi(99)], [-3.140625, 0.0078125]]).into_dyn());
    assert!(matches!(get(&sd, "f64"), AnyArray::F64(a) if *a == arr1(&[1.0 / 3.0, -2.0]).into_dyn()));
    assert!(matches!(get(&sd, "i64"), AnyArray::I64(a) if a.ndim() == 0 && a[[]] == -5));
    assert!(matches!(get(&sd, "i32"), AnyArray::I32(a) if *a == arr1(&[7, -8]).into_dyn()));
    assert!(matches!(get(&sd, "u8"), AnyArray::U8(a) if *a == arr1(&[0u8, 255]).into_dyn()));
    assert!(matches!(get(&sd, "mask"), AnyArray::Bool(a) if *a == arr1(&[true, false, true]).into_dyn()));
    assert_eq!(get(&sd, "empty").shape(), &[0, 3]);
    assert_eq!(f("param"), arr1(&[0.5f32, 1.5]).into_dyn());

    // The tree: meta next to the state dict.
    let v = load_pth(&path, ReadOptions { widen_half: true, ..Default::default() }).unwrap();
    let meta = v.get("meta").unwrap();
    assert!(matches!(meta.get("epoch"), Some(Value::Int(3))));
    assert!(matches!(meta.get("lr"), Some(Value::Float(x)) if *x == 0.5));
    assert!(matches!(meta.get("name"), Some(Value::Str(s)) if s == "x"));
    assert!(matches!(meta.get("neg"), Some(Value::Int(-300000))));
    match meta.get("tup") {
        Some(Value::Tuple(t)) => assert!(matches!(t.as_slice(), [Value::Int(1), Value::None, Value::Bool(true)])),
        other => panic!("{other:?}"),
    }
    // 2**70, little-endian two's complement
    assert!(matches!(meta.get("big"), Some(Value::BigInt(b)) if b.as_slice() == [0, 0, 0, 0, 0, 0, 0, 0, 0x40]));

    // Without widening, the float16 tensor is an error naming it.
    let e = read_state_dict(&path).unwrap_err();
    assert!(e.to_string().contains("state_dict.half") && e.to_string().contains("float16"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Hand-built archives

/// A torch-style zip: `archive/data.pkl` plus `archive/data/<key>` entries.
fn torch_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    for (k, b) in storages {
        z.start_file(format!("archive/data/{k}"), o).unwrap();
        z.write_all(b).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// Pickle of `{'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', numel), offset, size, stride, False, OrderedDict())}`.
fn tensor_pickle(numel: u32, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'X', 1, 0, 0, 0, b'w'];
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ");
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"tQK");
    p.push(offset);
    p.push(b'(');
    for &s in size {
        p.extend_from_slice(&[b'K', s]);
    }
    p.push(b't');
    p.push(b'(');
    for &s in stride {
        p.extend_from_slice(&[b'K', s]);
    }
    p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRs.");
    p
}

#[test]
fn hand_built_archive_reads() {
    let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    // A (2, 2) view at offset 1 with strides (1, 2): [[2, 4], [3, 5]].
    let z = torch_zip(&tensor_pickle(6, 1, &[2, 2], &[1, 2]), &[("0", &bytes)]);
    let v = load_pth_bytes(&z, Path::new("mem.pth"), ReadOptions::default()).unwrap();
    let sd = state_dict_of(v, Path::new("mem.pth")).unwrap();
    assert_eq!(as_f32(get(&sd, "w")), arr2(&[[2.0f32, 4.0], [3.0, 5.0]]).into_dyn());
}

#[test]
fn forbidden_globals_are_refused_and_never_run() {
    let tmp = tmpdir("pwned");
    let marker = tmp.join("pwned");
    let cmd = format!("touch {}", marker.display());
    // os.system(cmd) via GLOBAL + REDUCE.
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"cos\nsystem\n");
    p.push(b'X');
    p.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    p.extend_from_slice(cmd.as_bytes());
    p.extend_from_slice(&[0x85, b'R', b'.']);
    let z = torch_zip(&p, &[]);
    let e = load_pth_bytes(&z, Path::new("evil.pth"), ReadOptions::default()).unwrap_err();
    assert!(matches!(&e, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system"), "{e}");
    assert!(e.to_string().contains("os.system") && e.to_string().contains("evil.pth"), "{e}");
    // Even with opaque globals the call is only recorded, not made.
    let v =
        load_pth_bytes(&z, Path::new("evil.pth"), ReadOptions { opaque_globals: true, ..Default::default() }).unwrap();
    assert!(matches!(v, Value::Forbidden(ref n) if n == "os.system"), "{v:?}");
    assert!(!marker.exists(), "the command ran");

    // builtins.eval and posix.system through STACK_GLOBAL (protocol 4).
    for (m, n) in [("builtins", "eval"), ("posix", "system"), ("torch", "load"), ("collections", "defaultdict")] {
        let mut p = vec![0x80, 4, 0x8c, m.len() as u8];
        p.extend_from_slice(m.as_bytes());
        p.push(0x8c);
        p.push(n.len() as u8);
        p.extend_from_slice(n.as_bytes());
        p.extend_from_slice(&[0x93, 0x8c, 1, b'1', 0x85, b'R', b'.']);
        let e = load_pth_bytes(&torch_zip(&p, &[]), Path::new("evil.pth"), ReadOptions::default()).unwrap_err();
        assert!(matches!(&e, CheckpointError::ForbiddenGlobal { global, .. } if *global == format!("{m}.{n}")), "{e}");
    }
    assert!(!marker.exists());
}

#[test]
fn corrupt_truncated_and_oversized_files_are_errors() {
    let dir = tmpdir("bad");
    let good = dir.join("good.pth");
    write_pth(&good, &sample_state(), WriteOptions::default()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // Every truncation is an error, never a panic.
    for cut in (0..bytes.len()).step_by(7) {
        assert!(load_pth_bytes(&bytes[..cut], Path::new("cut.pth"), ReadOptions::default()).is_err(), "cut at {cut}");
    }
    // Not a zip / legacy format.
    let e = load_pth_bytes(b"\x80\x02\x8a\x0alol", Path::new("old.pth"), ReadOptions::default()).unwrap_err();
    assert!(matches!(e, CheckpointError::LegacyFormat { .. }) && e.to_string().contains("legacy"), "{e}");
    let e = load_pth_bytes(b"hello world", Path::new("txt.pth"), ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a checkpoint of a known type"), "{e}");
    // A zip without data.pkl.
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file("foo.txt", zip::write::SimpleFileOptions::default()).unwrap();
    z.write_all(b"x").unwrap();
    let z = z.finish().unwrap().into_inner();
    assert!(load_pth_bytes(&z, Path::new("z.pth"), ReadOptions::default())
        .unwrap_err()
        .to_string()
        .contains("data.pkl"));

    let four: Vec<u8> = 1.5f32.to_le_bytes().to_vec();
    // A storage claiming 2^30 elements backed by 4 bytes: refused before allocating.
    let e = load_pth_bytes(
        &torch_zip(&tensor_pickle(1 << 30, 0, &[1], &[1]), &[("0", &four)]),
        Path::new("big.pth"),
        ReadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Storage { key, .. } if key == "0") && e.to_string().contains("4 bytes"),
        "{e}"
    );
    // A missing storage entry.
    let e =
        load_pth_bytes(&torch_zip(&tensor_pickle(1, 0, &[1], &[1]), &[]), Path::new("m.pth"), ReadOptions::default())
            .unwrap_err();
    assert!(e.to_string().contains("missing archive entry"), "{e}");
    // A view reaching past its storage.
    let e = load_pth_bytes(
        &torch_zip(&tensor_pickle(1, 0, &[2], &[1]), &[("0", &four)]),
        Path::new("v.pth"),
        ReadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Tensor { key, .. } if key == "w") && e.to_string().contains("past the end"),
        "{e}"
    );
    let e = load_pth_bytes(
        &torch_zip(&tensor_pickle(1, 1, &[1], &[1]), &[("0", &four)]),
        Path::new("v.pth"),
        ReadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    // Broken pickles.
    for (pkl, what) in [
        (&b"\x80\x02}q\x00(X\x01\x00\x00\x00a"[..], "truncated"),
        (b"\x80\x02h\x05.", "memo"),
        (b"\x80\x02.", "underflow"),
        (b"\x80\x02\xff.", "opcode"),
        (b"\x80\x02X\xff\xff\xff\x7fab.", "past the end"),
        (b"\x80\x02K\x01K\x02R.", "cannot call"),
    ] {
        let e = load_pth_bytes(&torch_zip(pkl, &[]), Path::new("p.pth"), ReadOptions::default()).unwrap_err();
        assert!(matches!(e, CheckpointError::Pickle { .. }) && e.to_string().contains(what), "{what}: {e}");
    }
    // A list containing itself: an error, not a stack overflow.
    let e = load_pth_bytes(&torch_zip(b"\x80\x02]q\x00h\x00a.", &[]), Path::new("c.pth"), ReadOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("nested"), "{e}");

    // safetensors: header length past the end, offsets out of range, size mismatch, bad JSON.
    let st = |header: &str, data: &[u8]| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        let p = dir.join("t.safetensors");
        std::fs::write(&p, b).unwrap();
        read_safetensors(&p, ReadOptions::default())
    };
    assert!(st(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &four).is_ok());
    for (h, what) in [
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "do not cover"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, "different number of bytes"),
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#, "overflows"),
        (r#"{"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}"#, "I16"),
        (r#"{"a":{"dtype":"F32","shape":[1]}}"#, "data_offsets"),
        (r#"{"a":"#, "JSON"),
    ] {
        let e = st(h, &four).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
    let p = dir.join("huge.safetensors");
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&p, b).unwrap();
    assert!(read_safetensors(&p, ReadOptions::default()).unwrap_err().to_string().contains("header length"));
}

#[test]
fn state_dict_lookup() {
    let dir = tmpdir("sd");
    // Our own writer nests under state_dict; meta is left out.
    let p = dir.join("a.pth");
    write_pth(&p, &[("x".into(), f32a(&[1.0], &[1]))], WriteOptions::default()).unwrap();
    let sd = read_state_dict(&p).unwrap();
    assert_eq!(sd.len(), 1);
    // A checkpoint holding no dict of tensors: an error listing the keys.
    let z = torch_zip(b"\x80\x02}(X\x05\x00\x00\x00epochK\x03u.", &[]);
    let v = load_pth_bytes(&z, Path::new("e.pth"), ReadOptions::default()).unwrap();
    let e = state_dict_of(v, Path::new("e.pth")).unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Fuzz: random input never panics

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), start in 0usize..4) {
        // Raw bytes, optionally behind a zip or pickle magic.
        let mut b = match start {
            0 => Vec::new(),
            1 => b"PK\x03\x04".to_vec(),
            2 => vec![0x80, 2],
            _ => 40u64.to_le_bytes().to_vec(),
        };
        b.extend_from_slice(&bytes);
        let _ = load_pth_bytes(&b, Path::new("fuzz.pth"), ReadOptions::default());
        // As a pickle inside a valid torch archive (storages of every dtype available).
        let z = torch_zip(&b, &[("0", &bytes), ("1", &[0u8; 64])]);
        let _ = load_pth_bytes(&z, Path::new("fuzz.pth"), ReadOptions { widen_half: true, opaque_globals: start == 3 });
        let mut f = tempfile::Builder::new().suffix(".safetensors").tempfile().unwrap();
        f.write_all(&b).unwrap();
        let p = f.path().to_path_buf();
        let _ = read_safetensors(&p, ReadOptions::default());
        let _ = read_any(&p, ReadOptions::default());
    }

    #[test]
    fn mutated_checkpoints_never_panic(pos in any::<proptest::sample::Index>(), val in any::<u8>(), pos2 in any::<proptest::sample::Index>(), cut in any::<proptest::sample::Index>()) {
        let good = good_pth_bytes();
        let mut b = good.clone();
        let i = pos.index(b.len());
        b[i] = val;
        let j = pos2.index(b.len());
        b[j] = b[j].wrapping_add(1);
        let _ = load_pth_bytes(&b, Path::new("m.pth"), ReadOptions::default());
        let k = cut.index(b.len());
        let _ = load_pth_bytes(&b[..k], Path::new("m.pth"), ReadOptions::default());
        // And the pickle alone mutated inside an intact archive.
        let pkl = pickle_of_sample();
        let mut q = pkl.clone();
        let i = pos.index(q.len());
        q[i] = val;
        let _ = load_pth_bytes(&torch_zip(&q, &[]), Path::new("m.pth"), ReadOptions::default());
    }
}

fn good_pth_bytes() -> Vec<u8> {
    use std::sync::OnceLock;
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| std::fs::read(data("torch_views.pth")).unwrap()).clone()
}

fn pickle_of_sample() -> Vec<u8> {
    let bytes = good_pth_bytes();
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut f = z.by_name("torch_views/data.pkl").unwrap();
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
    v
}

// ---------------------------------------------------------------------------------------------
// Key conversion

fn t(shape: &[usize]) -> AnyArray {
    let n: usize = shape.iter().product();
    AnyArray::F32(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32 * 0.5 - 1.0).collect()).unwrap())
}

fn keys(sd: &[(String, AnyArray)]) -> Vec<&str> {
    sd.iter().map(|(k, _)| k.as_str()).collect()
}

/// A UNILM block (`blocks.{i}` under `prefix`) with C = 4, 2 heads, window 3 (table 28 rows).
fn unilm_block(prefix: &str, i: usize, table: bool) -> Vec<(String, AnyArray)> {
    let mut v = vec![
        (format!("{prefix}blocks.{i}.gamma_1"), t(&[4])),
        (format!("{prefix}blocks.{i}.gamma_2"), t(&[4])),
        (format!("{prefix}blocks.{i}.norm1.weight"), t(&[4])),
        (format!("{prefix}blocks.{i}.norm1.bias"), t(&[4])),
        (format!("{prefix}blocks.{i}.attn.q_bias"), t(&[4])),
        (format!("{prefix}blocks.{i}.attn.v_bias"), t(&[4])),
        (format!("{prefix}blocks.{i}.attn.qkv.weight"), t(&[12, 4])),
    ];
    if table {
        v.push((format!("{prefix}blocks.{i}.attn.relative_position_bias_table"), t(&[28, 2])));
        v.push((
            format!("{prefix}blocks.{i}.attn.relative_position_index"),
            AnyArray::I64(ArrayD::zeros(IxDyn(&[10, 10]))),
        ));
    }
    v.extend([
        (format!("{prefix}blocks.{i}.attn.proj.weight"), t(&[4, 4])),
        (format!("{prefix}blocks.{i}.attn.proj.bias"), t(&[4])),
        (format!("{prefix}blocks.{i}.norm2.weight"), t(&[4])),
        (format!("{prefix}blocks.{i}.norm2.bias"), t(&[4])),
        (format!("{prefix}blocks.{i}.mlp.fc1.weight"), t(&[16, 4])),
        (format!("{prefix}blocks.{i}.mlp.fc1.bias"), t(&[16])),
        (format!("{prefix}blocks.{i}.mlp.fc2.weight"), t(&[4, 16])),
        (format!("{prefix}blocks.{i}.mlp.fc2.bias"), t(&[4])),
    ]);
    v
}

const MMSEG_LAYER: [&str; 17] = [
    "gamma_1",
    "gamma_2",
    "ln1.weight",
    "ln1.bias",
    "attn.q_bias",
    "attn.v_bias",
    "attn.qkv.weight",
    "attn.relative_position_bias_table",
    "attn.proj.weight",
    "attn.proj.bias",
    "ln2.weight",
    "ln2.bias",
    "ffn.layers.0.0.weight",
    "ffn.layers.0.0.bias",
    "ffn.layers.1.weight",
    "ffn.layers.1.bias",
    "",
];

fn mmseg_layer_keys(prefix: &str, i: usize) -> Vec<String> {
    MMSEG_LAYER.iter().filter(|s| !s.is_empty()).map(|s| format!("{prefix}layers.{i}.{s}")).collect()
}

#[test]
fn official_checkpoint_follows_beit2mmseg() {
    let mut sd = vec![
        ("cls_token".to_string(), t(&[1, 1, 4])),
        ("patch_embed.proj.weight".into(), t(&[4, 3, 16, 16])),
        ("patch_embed.proj.bias".into(), t(&[4])),
    ];
    sd.extend(unilm_block("", 0, true));
    sd.extend(unilm_block("", 1, true));
    sd.extend([
        ("fc_norm.weight".into(), t(&[4])),
        ("fc_norm.bias".into(), t(&[4])),
        ("head.weight".into(), t(&[10, 4])),
        ("head.bias".into(), t(&[10])),
    ]);
    let (out, rep) = convert(sd.clone(), &ConvertOptions::default()).unwrap();
    assert_eq!(rep.dialect, Dialect::BeitOfficial);
    let mut want =
        vec!["cls_token".to_string(), "patch_embed.projection.weight".into(), "patch_embed.projection.bias".into()];
    want.extend(mmseg_layer_keys("", 0));
    want.extend(mmseg_layer_keys("", 1));
    assert_eq!(keys(&out), want.iter().map(String::as_str).collect::<Vec<_>>());
    // Values are moved, not changed.
    assert_same(
        &out[..3],
        &sd[..3].iter().enumerate().map(|(i, (_, a))| (want[i].clone(), a.clone())).collect::<Vec<_>>(),
    );
    let dropped: Vec<&str> = rep.dropped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        dropped,
        [
            "blocks.0.attn.relative_position_index",
            "blocks.1.attn.relative_position_index",
            "fc_norm.weight",
            "fc_norm.bias",
            "head.weight",
            "head.bias"
        ]
    );
    assert!(rep.renamed.contains(&("blocks.1.mlp.fc2.bias".into(), "layers.1.ffn.layers.1.bias".into())));
    assert!(rep.notes.iter().any(|n| n.contains("emitted once")));
    // The mmseg rule is literal: every `norm` becomes `ln` only in block keys.
    assert_eq!(beit_seg::checkpoint::convert::beit2mmseg_key("blocks.3.norm1.weight"), "layers.3.ln1.weight");
    assert_eq!(beit_seg::checkpoint::convert::beit2mmseg_key("blocks.3.mlp.fc1.bias"), "layers.3.ffn.layers.0.0.bias");
    assert_eq!(beit_seg::checkpoint::convert::beit2mmseg_key("norm.weight"), "norm.weight");

    // Resizing every table to window 4 (7x7+3 = 52 rows).
    let (out, rep) = convert(sd, &ConvertOptions { dst_window: Some((4, 4)), ..Default::default() }).unwrap();
    assert_eq!(rep.resized.len(), 2);
    assert_eq!(rep.resized[0], ("layers.0.attn.relative_position_bias_table".to_string(), vec![28, 2], vec![52, 2]));
    assert_eq!(get(&out, "layers.1.attn.relative_position_bias_table").shape(), &[52, 2]);
}

#[test]
fn pretrain_shared_table_is_copied_into_every_layer() {
    let mut sd = vec![("cls_token".to_string(), t(&[1, 1, 4])), ("mask_token".into(), t(&[1, 1, 4]))];
    sd.extend(unilm_block("", 0, false));
    sd.extend(unilm_block("", 1, false));
    let shared = AnyArray::F32(ArrayD::from_shape_fn(IxDyn(&[28, 2]), |i| (i[0] * 2 + i[1]) as f32));
    sd.push(("rel_pos_bias.relative_position_bias_table".into(), shared.clone()));
    sd.push(("rel_pos_bias.relative_position_index".into(), AnyArray::I64(ArrayD::zeros(IxDyn(&[10, 10])))));
    sd.extend([
        ("norm.weight".into(), t(&[4])),
        ("norm.bias".into(), t(&[4])),
        ("lm_head.weight".into(), t(&[16, 4])),
        ("lm_head.bias".into(), t(&[16])),
    ]);
    assert_eq!(detect_dialect(sd.iter().map(|(k, _)| k.as_str())).unwrap(), Dialect::BeitPretrainShared);
    let (out, rep) = convert(sd.clone(), &ConvertOptions::default()).unwrap();
    assert_eq!(rep.dialect, Dialect::BeitPretrainShared);
    for i in 0..2 {
        assert_same(
            &[("x".into(), get(&out, &format!("layers.{i}.attn.relative_position_bias_table")).clone())],
            &[("x".into(), shared.clone())],
        );
    }
    let dropped: Vec<&str> = rep.dropped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        dropped,
        [
            "mask_token",
            "rel_pos_bias.relative_position_index",
            "norm.weight",
            "norm.bias",
            "lm_head.weight",
            "lm_head.bias"
        ]
    );
    // final_norm keeps the norm as mmseg's `ln1`.
    let (out, _) = convert(sd, &ConvertOptions { final_norm: true, ..Default::default() }).unwrap();
    assert!(keys(&out).contains(&"ln1.weight") && keys(&out).contains(&"ln1.bias"));
}

#[test]
fn unilm_ade_gets_full_segmentor_names() {
    let mut sd = vec![
        ("backbone.cls_token".to_string(), t(&[1, 1, 4])),
        ("backbone.patch_embed.proj.weight".into(), t(&[4, 3, 16, 16])),
    ];
    sd.extend(unilm_block("backbone.", 0, true));
    for k in [
        "backbone.fpn1.0.weight",
        "backbone.fpn1.1.running_var",
        "backbone.fpn1.3.bias",
        "backbone.fpn2.0.weight",
        "decode_head.conv_seg.weight",
        "auxiliary_head.convs.0.bn.weight",
    ] {
        sd.push((k.into(), t(&[4])));
    }
    sd.push(("backbone.fpn1.1.num_batches_tracked".into(), AnyArray::I64(ArrayD::zeros(IxDyn(&[])))));
    let (out, rep) = convert(sd, &ConvertOptions::default()).unwrap();
    assert_eq!(rep.dialect, Dialect::UnilmAde);
    let mut want = vec!["backbone.cls_token".to_string(), "backbone.patch_embed.projection.weight".into()];
    want.extend(mmseg_layer_keys("backbone.", 0));
    want.extend(
        [
            "neck.upsample_4x.0.weight",
            "neck.upsample_4x.1.running_var",
            "neck.upsample_4x.3.bias",
            "neck.upsample_2x.0.weight",
            "decode_head.conv_seg.weight",
            "auxiliary_head.convs.0.bn.weight",
            "neck.upsample_4x.1.num_batches_tracked",
        ]
        .map(String::from),
    );
    assert_eq!(keys(&out), want.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rep.dropped.len(), 1);
}

fn hf_layer(i: usize, key_bias: Option<f32>) -> Vec<(String, AnyArray)> {
    let l = format!("beit.encoder.layer.{i}.");
    let w = |seed: f32| AnyArray::F32(ArrayD::from_shape_fn(IxDyn(&[4, 4]), |ix| seed + (ix[0] * 4 + ix[1]) as f32));
    let mut v = vec![
        (format!("{l}lambda_1"), t(&[4])),
        (format!("{l}lambda_2"), t(&[4])),
        (format!("{l}attention.attention.query.weight"), w(100.0)),
        (format!("{l}attention.attention.query.bias"), t(&[4])),
        (format!("{l}attention.attention.key.weight"), w(200.0)),
        (format!("{l}attention.attention.value.weight"), w(300.0)),
        (format!("{l}attention.attention.value.bias"), t(&[4])),
        (format!("{l}attention.attention.relative_position_bias.relative_position_bias_table"), t(&[28, 2])),
        (
            format!("{l}attention.attention.relative_position_bias.relative_position_index"),
            AnyArray::I64(ArrayD::zeros(IxDyn(&[10, 10]))),
        ),
        (format!("{l}attention.output.dense.weight"), t(&[4, 4])),
        (format!("{l}attention.output.dense.bias"), t(&[4])),
        (format!("{l}layernorm_before.weight"), t(&[4])),
        (format!("{l}layernorm_before.bias"), t(&[4])),
        (format!("{l}intermediate.dense.weight"), t(&[16, 4])),
        (format!("{l}intermediate.dense.bias"), t(&[16])),
        (format!("{l}output.dense.weight"), t(&[4, 16])),
        (format!("{l}output.dense.bias"), t(&[4])),
        (format!("{l}layernorm_after.weight"), t(&[4])),
        (format!("{l}layernorm_after.bias"), t(&[4])),
    ];
    if let Some(b) = key_bias {
        v.push((format!("{l}attention.attention.key.bias"), f32a(&[0.0, 0.0, b, 0.0], &[4])));
    }
    v
}

#[test]
fn hf_checkpoint_to_mmseg() {
    let mut sd = vec![
        ("beit.embeddings.cls_token".to_string(), t(&[1, 1, 4])),
        ("beit.embeddings.patch_embeddings.projection.weight".into(), t(&[4, 3, 16, 16])),
        ("beit.embeddings.patch_embeddings.projection.bias".into(), t(&[4])),
    ];
    sd.extend(hf_layer(0, Some(0.0)));
    sd.extend(hf_layer(1, None));
    sd.extend([
        ("beit.pooler.layernorm.weight".into(), t(&[4])),
        ("classifier.weight".into(), t(&[10, 4])),
        ("classifier.bias".into(), t(&[10])),
    ]);
    let (out, rep) = convert(sd.clone(), &ConvertOptions::default()).unwrap();
    assert_eq!(rep.dialect, Dialect::Hf);
    let mut got: Vec<&str> = keys(&out);
    got.sort_unstable();
    let mut want =
        vec!["cls_token".to_string(), "patch_embed.projection.weight".into(), "patch_embed.projection.bias".into()];
    want.extend(mmseg_layer_keys("", 0));
    want.extend(mmseg_layer_keys("", 1));
    want.sort_unstable();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    // qkv.weight = [query; key; value] along rows.
    let qkv = as_f32(get(&out, "layers.1.attn.qkv.weight")).into_dimensionality::<Ix2>().unwrap();
    assert_eq!(qkv.dim(), (12, 4));
    assert_eq!((qkv[[0, 0]], qkv[[4, 1]], qkv[[11, 3]]), (100.0, 201.0, 315.0));
    assert_same(
        &[("b".into(), get(&out, "layers.0.attn.q_bias").clone())],
        &[("b".into(), get(&sd, "beit.encoder.layer.0.attention.attention.query.bias").clone())],
    );
    let dropped: Vec<&str> = rep.dropped.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "beit.encoder.layer.0.attention.attention.key.bias",
        "beit.pooler.layernorm.weight",
        "classifier.weight",
        "beit.encoder.layer.1.attention.attention.relative_position_bias.relative_position_index",
    ] {
        assert!(dropped.contains(&k), "{k} not dropped: {dropped:?}");
    }
    // A non-zero key bias cannot be represented: an error naming it.
    let mut bad = sd.clone();
    bad.extend(hf_layer(2, Some(0.25)));
    let e = convert(bad, &ConvertOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("beit.encoder.layer.2.attention.attention.key.bias")
            && e.to_string().contains("non-zero"),
        "{e}"
    );
    // A missing key weight: an error naming it.
    let missing: Vec<_> =
        sd.iter().filter(|(k, _)| k != "beit.encoder.layer.1.attention.attention.key.weight").cloned().collect();
    let e = convert(missing, &ConvertOptions::default()).unwrap_err();
    assert!(e.to_string().contains("layer.1.attention.attention.key.weight"), "{e}");

    // Segmentation checkpoints get full names; the classifier becomes conv_seg.
    let mut seg = sd[..3].to_vec();
    seg.extend(hf_layer(0, None));
    seg.extend([
        ("fpn1.0.weight".into(), t(&[4])),
        ("fpn2.0.bias".into(), t(&[4])),
        ("decode_head.classifier.weight".into(), t(&[4])),
        ("auxiliary_head.classifier.bias".into(), t(&[4])),
        ("decode_head.bottleneck.conv.weight".into(), t(&[4])),
    ]);
    let (out, _) = convert(seg, &ConvertOptions::default()).unwrap();
    for k in [
        "backbone.cls_token",
        "backbone.layers.0.attn.qkv.weight",
        "neck.upsample_4x.0.weight",
        "neck.upsample_2x.0.bias",
        "decode_head.conv_seg.weight",
        "auxiliary_head.conv_seg.bias",
        "decode_head.bottleneck.conv.weight",
    ] {
        assert!(keys(&out).contains(&k), "{k} missing: {:?}", keys(&out));
    }

    // The shared table of a masked-image-modelling checkpoint goes into every layer.
    let mut mim: Vec<_> = sd.iter().filter(|(k, _)| !k.contains("relative_position_bias.")).cloned().collect();
    mim.push(("beit.encoder.relative_position_bias.relative_position_bias_table".into(), t(&[28, 2])));
    let (out, _) = convert(mim, &ConvertOptions::default()).unwrap();
    assert!(
        keys(&out).contains(&"layers.0.attn.relative_position_bias_table")
            && keys(&out).contains(&"layers.1.attn.relative_position_bias_table")
    );
}

#[test]
fn dialect_detection_and_mmseg_passthrough() {
    let d = |ks: &[&str]| detect_dialect(ks.iter().copied());
    assert_eq!(d(&["beit.embeddings.cls_token"]).unwrap(), Dialect::Hf);
    assert_eq!(d(&["backbone.blocks.0.norm1.weight"]).unwrap(), Dialect::UnilmAde);
    assert_eq!(
        d(&["blocks.0.norm1.weight", "blocks.0.attn.relative_position_bias_table"]).unwrap(),
        Dialect::BeitOfficial
    );
    assert_eq!(
        d(&["blocks.0.norm1.weight", "rel_pos_bias.relative_position_bias_table"]).unwrap(),
        Dialect::BeitPretrainShared
    );
    assert_eq!(d(&["backbone.layers.0.ln1.weight", "decode_head.conv_seg.weight"]).unwrap(), Dialect::Mmseg);
    assert_eq!(d(&["layers.0.ln1.weight"]).unwrap(), Dialect::Mmseg);
    let e = d(&["foo.bar", "baz"]).unwrap_err();
    assert!(e.to_string().contains("foo.bar"), "{e}");
    for x in Dialect::ALL {
        assert_eq!(Dialect::from_name(x.name()), Some(x));
    }

    // Already mmseg: names kept, the derived index dropped; `module.` prefixes stripped.
    let sd = vec![
        ("module.backbone.layers.0.attn.relative_position_bias_table".to_string(), t(&[28, 2])),
        (
            "module.backbone.layers.0.attn.relative_position_index".into(),
            AnyArray::I64(ArrayD::zeros(IxDyn(&[10, 10]))),
        ),
        ("module.decode_head.conv_seg.bias".into(), t(&[3])),
    ];
    let (out, rep) = convert(sd, &ConvertOptions::default()).unwrap();
    assert_eq!(rep.dialect, Dialect::Mmseg);
    assert_eq!(keys(&out), ["backbone.layers.0.attn.relative_position_bias_table", "decode_head.conv_seg.bias"]);
    assert!(rep.renamed.is_empty() && rep.dropped.len() == 1 && rep.notes[0].contains("module."));
}

// ---------------------------------------------------------------------------------------------
// Relative position bias resize

fn npz_map() -> Vec<(String, AnyArray)> {
    read_npz(&data("relpos_scipy.npz")).unwrap()
}

#[test]
fn relpos_resize_matches_scipy() {
    let m = npz_map();
    for (s, d) in [(14usize, 40usize), (5, 7), (7, 4), (8, 9)] {
        let input = as_f32(get(&m, &format!("in_{s}_{d}"))).into_dimensionality::<Ix2>().unwrap();
        let want = match get(&m, &format!("out_{s}_{d}")) {
            AnyArray::F64(a) => a.clone().into_dimensionality::<Ix2>().unwrap(),
            _ => panic!(),
        };
        // float64 path: agrees with FITPACK to rounding.
        let got64 = resize_rel_pos_table(&input.mapv(|v| v as f64), (s, s), (d, d)).unwrap();
        assert_eq!(got64.dim(), want.dim());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err64 = got64.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err64 <= 1e-12 * scale, "{s}->{d}: float64 max error {err64:e}");
        // float32 path: the float64 result rounded once (relative error <= 2^-24, 1e-5 asked).
        let got32 = resize_rel_pos_table(&input, (s, s), (d, d)).unwrap();
        for (a, b) in got32.iter().zip(&want) {
            assert!(((*a as f64) - b).abs() <= 1e-6 * b.abs().max(1e-3), "{s}->{d}: {a} vs {b}");
        }
        // The three class-token rows are copied verbatim to the end.
        let (ri, rd) = (input.nrows(), got32.nrows());
        for k in 1..=3 {
            assert_eq!(got32.row(rd - k), input.row(ri - k));
        }
    }
}

#[test]
fn relpos_identity_errors_and_helpers() {
    let table = Array2::from_shape_fn((27 * 27 + 3, 3), |(r, c)| (r as f32).sin() + c as f32);
    // n -> n is the identity (mmseg skips equal sizes).
    assert_eq!(resize_rel_pos_table(&table, (14, 14), (14, 14)).unwrap(), table);
    // Non-square windows, a wrong row count, a too-small source.
    assert!(resize_rel_pos_table(&table, (14, 14), (40, 30)).unwrap_err().to_string().contains("square"));
    assert!(resize_rel_pos_table(&table, (13, 13), (40, 40)).unwrap_err().to_string().contains("rows"));
    let tiny = Array2::<f32>::zeros((12, 1));
    assert!(resize_rel_pos_table(&tiny, (2, 2), (4, 4)).unwrap_err().to_string().contains("at least 4"));
    // The spec's value of q for 27 -> 79.
    assert_eq!(geometric_ratio(27, 79), 1.1685036277771); // spec: 1.1685036277770999 (same f64)
    assert_eq!(window_of_rows(732), Some((14, 14)));
    assert_eq!(window_of_rows(6244), Some((40, 40)));
    assert_eq!(window_of_rows(733), None);
    // A constant table stays constant (the spline reproduces cubics).
    let c = Array2::from_elem((27 * 27 + 3, 2), 0.75f64);
    let r = resize_rel_pos_table(&c, (14, 14), (40, 40)).unwrap();
    assert!(r.iter().all(|v| (v - 0.75).abs() < 1e-13));
    // AnyArray helper: infers the source window, None when already sized.
    let a = AnyArray::F32(table.clone().into_dyn());
    assert!(resize_rel_pos_any(&a, (14, 14)).unwrap().is_none());
    assert_eq!(resize_rel_pos_any(&a, (40, 40)).unwrap().unwrap().shape(), &[6244, 3]);
    assert!(resize_rel_pos_any(&AnyArray::I64(ArrayD::zeros(IxDyn(&[732, 1]))), (40, 40)).is_err());
}

#[test]
fn tridiagonal_solver_needs_pivoting() {
    // A system whose first pivot is zero: solvable only with row interchanges.
    let n = 6;
    let dl0: Vec<f64> = (0..n - 1).map(|i| 1.0 + i as f64).collect();
    let mut d0: Vec<f64> = (0..n).map(|i| 0.5 * i as f64).collect();
    d0[0] = 0.0;
    let du0: Vec<f64> = (0..n - 1).map(|i| 2.0 - 0.3 * i as f64).collect();
    let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).cos()).collect();
    let b: Vec<f64> = (0..n)
        .map(|i| {
            d0[i] * x[i]
                + if i > 0 { dl0[i - 1] * x[i - 1] } else { 0.0 }
                + if i + 1 < n { du0[i] * x[i + 1] } else { 0.0 }
        })
        .collect();
    let (mut dl, mut d, mut du, mut sol) = (dl0, d0, du0, b);
    solve_tridiagonal(&mut dl, &mut d, &mut du, &mut sol).unwrap();
    for (a, e) in sol.iter().zip(&x) {
        assert!((a - e).abs() < 1e-12, "{a} vs {e}");
    }
    let mut z = vec![0.0; 2];
    assert!(solve_tridiagonal(&mut [0.0], &mut [0.0, 0.0], &mut [0.0], &mut z).is_err());
}

// ---------------------------------------------------------------------------------------------
// The bundled checkpoint fixtures (fixtures/ckpt-*, fixtures/relpos-*; made by
// fixtures/gen_checkpoint.py from MMSegmentation 1.2.2's converter and resize)

mod fixture_cases {
    use std::path::{Path, PathBuf};

    use beit_seg::array::{read_npz, AnyArray};
    use beit_seg::backend::reference::RefBackend;
    use beit_seg::checkpoint::{write_npz, WriteOptions};
    use beit_seg::conformance::case::{discover, Case};
    use beit_seg::conformance::compare::Status;
    use beit_seg::conformance::kinds::checkpoint::{
        compare_conversion, compare_tensor, convert_source, converter_options,
    };
    use beit_seg::conformance::report::CaseStatus;
    use beit_seg::conformance::{run_case, run_case_dir, Target, VerifyOptions};
    const REF: Target<'static> = Target::Backend(&RefBackend);

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }

    fn case(name: &str) -> Case {
        Case::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn copy_case(name: &str) -> super::TmpDir {
        let dst = super::tmpdir(name);
        let src = fixtures().join(name);
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        }
        dst
    }

    #[test]
    fn every_bundled_checkpoint_case_passes() {
        let dirs = discover(&[fixtures()]).unwrap();
        let ours: Vec<&PathBuf> = dirs
            .iter()
            .filter(|d| {
                d.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("ckpt-") || n.to_string_lossy().starts_with("relpos-")
                })
            })
            .collect();
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        let mut failures = Vec::new();
        for d in &ours {
            let r = run_case_dir(d, &REF, &VerifyOptions::default());
            *kinds.entry(r.kind.clone()).or_default() += 1;
            if r.status != CaseStatus::Pass || r.covered() != r.tensors.len() || r.tensors.is_empty() {
                let bad: Vec<String> = r
                    .tensors
                    .iter()
                    .filter(|t| t.status != Status::Pass)
                    .map(|t| format!("  {} {:?} {}", t.name, t.status, t.note.clone().unwrap_or_default()))
                    .collect();
                failures.push(format!(
                    "{}: {:?} {}\n{}",
                    r.name,
                    r.status,
                    r.message.clone().unwrap_or_default(),
                    bad.join("\n")
                ));
            }
        }
        assert!(failures.is_empty(), "failing checkpoint cases:\n{}", failures.join("\n"));
        assert!(kinds.get("converter").copied().unwrap_or(0) >= 7, "converter cases missing: {kinds:?}");
        assert!(kinds.get("relpos_resize").copied().unwrap_or(0) >= 4, "relpos_resize cases missing: {kinds:?}");
        assert!(
            kinds.get("segmentor").copied().unwrap_or(0) >= 1,
            "the unilm-ade segmentor case is missing: {kinds:?}"
        );
    }

    #[test]
    fn converter_case_fails_when_one_name_is_wrong() {
        let c = case("ckpt-official");
        let (produced, report) = convert_source(&c).unwrap();
        let expected = read_npz(&c.file_field("expected").unwrap()).unwrap();
        let tol = |k: &str| c.tolerance_for(k);
        let ok = compare_conversion(&produced, &report, &expected, tol);
        assert!(ok.iter().all(|t| t.status == Status::Pass), "the bundled case itself must pass");
        assert_eq!(ok.len(), expected.len());

        // The expected file names one key differently (as if the converter had to map fc1 to
        // `mlp.fc1`): that key is not covered, and the produced name is unexpected.
        let renamed: Vec<(String, AnyArray)> = expected
            .iter()
            .map(|(k, a)| {
                (
                    if k == "layers.1.ffn.layers.0.0.weight" {
                        "layers.1.mlp.fc1.weight".to_string()
                    } else {
                        k.clone()
                    },
                    a.clone(),
                )
            })
            .collect();
        let r = compare_conversion(&produced, &report, &renamed, tol);
        let not_ok: Vec<(&str, Status)> =
            r.iter().filter(|t| t.status != Status::Pass).map(|t| (t.name.as_str(), t.status)).collect();
        assert_eq!(
            not_ok,
            [
                ("layers.1.mlp.fc1.weight", Status::NotCovered),
                ("unexpected:layers.1.ffn.layers.0.0.weight", Status::Fail)
            ]
        );

        // A converter that produced a wrong name: the same two findings, the other way round.
        let mut wrong = produced.clone();
        for (k, _) in wrong.iter_mut() {
            if k == "layers.0.ln2.bias" {
                *k = "layers.0.norm2.bias".into();
            }
        }
        let r = compare_conversion(&wrong, &report, &expected, tol);
        let not_ok: Vec<(&str, Status)> =
            r.iter().filter(|t| t.status != Status::Pass).map(|t| (t.name.as_str(), t.status)).collect();
        assert_eq!(
            not_ok,
            [("layers.0.ln2.bias", Status::NotCovered), ("unexpected:layers.0.norm2.bias", Status::Fail)]
        );

        // One value off by one ulp fails (the rename cases are exact).
        let mut moved = produced.clone();
        for (k, a) in moved.iter_mut() {
            if k == "cls_token" {
                if let AnyArray::F32(x) = a {
                    let v = x.iter_mut().next().unwrap();
                    *v = f32::from_bits(v.to_bits() + 1);
                }
            }
        }
        let r = compare_conversion(&moved, &report, &expected, tol);
        assert_eq!(
            r.iter().filter(|t| t.status == Status::Fail).map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["cls_token"]
        );

        // Derived index buffers and dropped keys are never "unexpected".
        let mut extra = produced.clone();
        extra.push((
            "layers.0.attn.relative_position_index".into(),
            AnyArray::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[17, 17]))),
        ));
        assert!(compare_conversion(&extra, &report, &expected, tol).iter().all(|t| t.status == Status::Pass));

        // End to end: the renamed expected file written into a copy of the case fails verify.
        let dir = copy_case("ckpt-official");
        write_npz(&dir.join("expected.npz"), &renamed, WriteOptions { force: true, ..Default::default() }).unwrap();
        let rep = run_case_dir(&dir, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Fail);
        assert!(rep
            .tensors
            .iter()
            .any(|t| t.name == "unexpected:layers.1.ffn.layers.0.0.weight" && t.status == Status::Fail));
        // --allow-uncovered does not hide the unexpected key.
        let rep = run_case_dir(&dir, &REF, &VerifyOptions { allow_uncovered: true, ..Default::default() });
        assert_eq!(rep.status, CaseStatus::Fail);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn converter_case_errors_name_the_file() {
        // A missing source.
        let dir = copy_case("ckpt-hf");
        std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();
        let rep = run_case_dir(&dir, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Error);
        assert!(rep.message.as_deref().unwrap_or("").contains("pytorch_model.bin"), "{:?}", rep.message);
        // A truncated expected file.
        let dir2 = copy_case("ckpt-hf");
        let p = dir2.join("expected.npz");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let rep = run_case_dir(&dir2, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Error);
        assert!(rep.message.as_deref().unwrap_or("").contains("expected.npz"), "{:?}", rep.message);
        for d in [dir, dir2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn converter_options_and_hints() {
        let mut c = case("ckpt-official-img640");
        let o = converter_options(&c).unwrap();
        assert_eq!(o.dst_window, Some((40, 40)));
        assert_eq!(o.dialect.map(|d| d.name()), Some("beit-official"));
        c.manifest["options"]["patch_size"] = serde_json::json!(8);
        assert_eq!(converter_options(&c).unwrap().dst_window, Some((80, 80)));
        c.manifest["options"]["patch_size"] = serde_json::json!([16, 32]);
        assert_eq!(converter_options(&c).unwrap().dst_window, Some((40, 20)));
        c.manifest["options"]["crop"] = serde_json::json!(true);
        let e = converter_options(&c).unwrap_err().to_string();
        assert!(e.contains("options.crop") && e.contains("case.json"), "{e}");
        let mut c = case("ckpt-official");
        c.manifest["dialect"] = serde_json::json!("timm");
        let e = converter_options(&c).unwrap_err().to_string();
        assert!(e.contains("timm") && e.contains("case.json"), "{e}");
        // Without its hint the official case is detected and still passes.
        let mut c = case("ckpt-official");
        c.manifest.as_object_mut().unwrap().remove("dialect");
        let rep = run_case(&c, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Pass, "{:?}", rep.message);
        // A wrong hint is a failure, not a silent pass.
        let mut c = case("ckpt-unilm-ade");
        c.manifest["dialect"] = serde_json::json!("hf");
        let rep = run_case(&c, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Fail);
        // The segmentor case converts its UNILM-ADE weights with or without the hint.
        let mut c = case("ckpt-unilm-ade-segmentor");
        assert_eq!(c.manifest["weights_dialect"], "unilm-ade");
        c.manifest.as_object_mut().unwrap().remove("weights_dialect");
        let rep = run_case(&c, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Pass, "{:?}", rep.message);
    }

    #[test]
    fn safetensors_from_memory_equals_from_file() {
        let p = fixtures().join("ckpt-hf-seg/model.safetensors");
        let from_file = beit_seg::checkpoint::read_safetensors(&p, Default::default()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let from_mem = beit_seg::checkpoint::read_safetensors_bytes(&bytes, &p, Default::default()).unwrap();
        super::assert_same(&from_file, &from_mem);
        assert!(
            from_file.iter().any(|(k, a)| k.ends_with("num_batches_tracked") && a.shape().is_empty()),
            "0-d tensors read as 0-d"
        );
        let e = beit_seg::checkpoint::read_safetensors_bytes(
            &bytes[..bytes.len() - 1],
            Path::new("cut.safetensors"),
            Default::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cut.safetensors"), "{e}");
    }

    #[test]
    fn relpos_case_fails_when_the_table_moves() {
        let c = case("relpos-24to32-1h");
        let rep = run_case(&c, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Pass, "{:?}", rep.message);
        let want = c.read_output(&c.outputs[0].1).unwrap();
        let AnyArray::F32(w) = &want else { panic!("float32 table expected") };
        // The largest interpolated value, moved by 1e-4 relative, breaks rtol 1e-5; by 1e-7 (about
        // one float32 ulp) it does not.
        let body = w.shape()[0] - 3;
        let (at, v) = w.indexed_iter().filter(|(i, _)| i[0] < body).fold((None, 0.0f32), |m, (i, &x)| {
            if x.abs() > m.1.abs() {
                (Some(i), x)
            } else {
                m
            }
        });
        assert!(v.abs() > 0.1, "{v}");
        let at = at.unwrap();
        for (rel, fails) in [(1e-4f32, true), (1e-7, false)] {
            let mut moved = w.clone();
            moved[&at] = v * (1.0 + rel);
            let r = compare_tensor("table", &AnyArray::F32(moved), &want, c.tolerance_for("table"));
            assert_eq!(r.status == Status::Fail, fails, "rel {rel}: {:?}", r.note);
        }
        // A wrong destination window is a shape mismatch.
        let mut c2 = c.clone();
        c2.manifest["dst_window"] = serde_json::json!([31, 31]);
        let rep = run_case(&c2, &REF, &VerifyOptions::default());
        assert_eq!(rep.status, CaseStatus::Fail);
        // Non-square windows are refused with an error (as MMSegmentation).
        let mut c3 = c.clone();
        c3.manifest["dst_window"] = serde_json::json!([32, 30]);
        let rep = run_case(&c3, &REF, &VerifyOptions::default());
        assert!(
            rep.status == CaseStatus::Error && rep.message.as_deref().unwrap_or("").contains("square"),
            "{:?}",
            rep.message
        );
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

// ---------------------------------------------------------------------------------------------
// Bad input: one test per kind, each asserting the message (the file named exactly once, also
// through anyhow's `{:#}` chain, which would repeat an error's `source()`) and that nothing panics.

mod bad_input {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
    }

    /// The message of `e` as the CLI prints it (`anyhow`, `{:#}`), checked to name `name` once
    /// and to contain every one of `want`.
    fn check_message(e: CheckpointError, name: &str, want: &[&str]) -> String {
        let msg = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(msg.matches(name).count(), 1, "`{name}` should appear exactly once in: {msg}");
        for w in want {
            assert!(msg.contains(w), "missing `{w}` in: {msg}");
        }
        msg
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn truncated_pth_and_npz_are_not_a_zip_archive() {
        let dir = tempfile::tempdir().unwrap();
        let pth = std::fs::read(fixture("ckpt-official/beit_tiny_patch16_64_ft.pth")).unwrap();
        let p = write(&dir, "cut.pth", &pth[..pth.len() / 2]);
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "cut.pth", &["not a zip archive (no end-of-central-directory record)", "truncated"]);
        let npz = std::fs::read(fixture("ckpt-official/expected.npz")).unwrap();
        let p = write(&dir, "cut.npz", &npz[..npz.len() / 2]);
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "cut.npz", &["not a zip archive (no end-of-central-directory record)"]);
    }

    #[test]
    fn a_file_of_another_type_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "notes.pth", b"just some text, not a checkpoint\n");
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "notes.pth", &["not a checkpoint of a known type", "6a 75 73 74"]);
    }

    #[test]
    fn a_corrupted_tensor_in_a_real_pth_is_a_crc_error_naming_the_entry() {
        let path = fixture("ckpt-official/beit_tiny_patch16_64_ft.pth");
        let mut bytes = std::fs::read(&path).unwrap();
        // Find the largest storage entry and flip a byte in the middle of its data.
        let (entry, start, size) = {
            let mut z = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
            let mut best = (String::new(), 0u64, 0u64);
            for i in 0..z.len() {
                let f = z.by_index(i).unwrap();
                if f.name().contains("/data/") && f.size() > best.2 {
                    best = (f.name().to_string(), f.data_start(), f.size());
                }
            }
            best
        };
        assert!(size > 16, "no storage found");
        let at = (start + size / 2) as usize;
        bytes[at] ^= 0x40;
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "flipped.pth", &bytes);
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "flipped.pth", &[&format!("entry `{entry}`"), "corrupted", "CRC-32"]);
        // The same in an (uncompressed, as `np.savez`) .npz.
        let q = dir.path().join("ok.npz");
        write_npz(&q, &sample_state(), WriteOptions::default()).unwrap();
        let mut npz = std::fs::read(&q).unwrap();
        let (entry, start, size) = {
            let mut z = zip::ZipArchive::new(Cursor::new(&npz)).unwrap();
            let f = z.by_index(0).unwrap();
            (f.name().to_string(), f.data_start(), f.compressed_size())
        };
        npz[(start + size - 2) as usize] ^= 0x01;
        let p = write(&dir, "flipped.npz", &npz);
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "flipped.npz", &[&format!("entry `{entry}`"), "corrupted", "CRC-32"]);
    }

    #[test]
    fn a_forbidden_global_is_named_and_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut pkl = b"\x80\x02cposix\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01".to_vec();
        pkl.extend_from_slice(&[0x85, b'R', b'.']);
        let p = write(&dir, "evil.pth", &torch_zip(&pkl, &[]));
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "evil.pth", &["global `posix.system` is not allowed", "nothing was executed"]);
    }

    #[test]
    fn a_missing_file_says_so_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.pth");
        for e in [read_any(&p, ReadOptions::default()).unwrap_err(), read_state_dict(&p).unwrap_err()] {
            let msg = check_message(e, "absent.pth", &["No such file or directory"]);
            assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
        }
        let e = CheckpointError::from(read_npz(&dir.path().join("absent.npz")).unwrap_err());
        let msg = check_message(e, "absent.npz", &["No such file or directory"]);
        assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
    }

    #[test]
    fn an_empty_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["empty.pth", "empty.bin"] {
            let p = write(&dir, name, b"");
            let e = read_any(&p, ReadOptions::default()).unwrap_err();
            check_message(e, name, &["the file is empty (0 bytes)"]);
        }
        let p = write(&dir, "empty.safetensors", b"");
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "empty.safetensors", &["shorter than its 8-byte header length"]);
        let p = write(&dir, "empty.npz", b"");
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "empty.npz", &["not a zip archive"]);
    }

    #[test]
    fn an_unsupported_dtype_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        // A float16 `.npy` inside an `.npz`: numpy's `<f2`, which the array reader refuses.
        let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let pad = (64 - (10 + header.len() + 1) % 64) % 64;
        npy.extend_from_slice(&((header.len() + pad + 1) as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend(std::iter::repeat_n(b' ', pad));
        npy.push(b'\n');
        npy.extend_from_slice(&[0, 0x3c, 0, 0x40]);
        let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
        z.start_file("half.npy", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(&npy).unwrap();
        let p = write(&dir, "half.npz", &z.finish().unwrap().into_inner());
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "half.npz", &["entry `half`", "dtype <f2", "not supported"]);
        // An int16 torch storage.
        let pkl = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nShortStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89)tRs.";
        let p = write(&dir, "short.pth", &torch_zip(pkl, &[("0", &[1, 0, 2, 0])]));
        let e = read_any(&p, ReadOptions::default()).unwrap_err();
        check_message(e, "short.pth", &["tensor `w`", "dtype int16 is not supported"]);
    }

    /// Regression (cargo-fuzz `npy_reader`, oom-e234da02): a `.npy` header declaring a 4 GiB
    /// header length in a 17-byte input used to abort on allocation inside npyz.
    #[test]
    fn an_npy_header_length_past_the_end_is_an_error_not_an_allocation() {
        let input = include_bytes!("data/checkpoint/fuzz/npy-oom-header-length.bin");
        let e = beit_seg::array::parse_npy(input, Path::new("oom.npy"), None).unwrap_err();
        let msg = check_message(e.into(), "oom.npy", &["header length 4294910077 runs past the end"]);
        assert!(msg.contains("(17 bytes)"), "{msg}");
    }
}
