//! `beit-seg bench --backend tch`: throughput of the fast path on BEiT-B + UPerNet at 640
//! (MMSegmentation's `beit-base_upernet_8xb2-160k_ade20k-640x640` model, spec §1) with random
//! weights, per precision:
//!
//! * **crops/s**: one 640x640 crop (one window), `inference` + argmax;
//! * **images/s**: one 640x854 image (the ADE20K 683x512 example after resizing), slide
//!   inference with crop 640 / stride 426 (two windows, run as one batch);
//! * for fp16/bf16, the 640x854 logits against the fp32 model with the same weights: max |Δ|
//!   and the fraction of pixels with the same argmax.
//!
//! When a Python with MMSegmentation is available (`--python`, `$BEIT_SEG_PYTHON`, or the
//! project venv `~/.cache/beit-seg/venv-*/bin/python`), the same invocation also times
//! MMSegmentation's own model in PyTorch eager mode: the same config dict, BN for SyncBN, random
//! init, `model.inference` on the same two input sizes with the same thread count, fp32 (TF32
//! off on CUDA), and prints the throughput ratio tch / PyTorch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::{check_device, device_name, to_f64_array, Ctx, FastSegmentor, Precision, Recorder, Result};
use crate::config::SegmentorConfig;

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub device: Device,
    pub precisions: Vec<Precision>,
    /// libtorch intra-op threads (also given to the PyTorch run); `None`: libtorch's default.
    pub threads: Option<i32>,
    pub warmup: usize,
    pub iters: usize,
    /// The slide-inference image (H, W).
    pub image: (usize, usize),
    /// Python for the PyTorch eager comparison; `None`: `$BEIT_SEG_PYTHON` or the project venv.
    pub python: Option<PathBuf>,
    /// Run the PyTorch eager comparison when a Python with mmseg is found.
    pub pytorch: bool,
    pub seed: i64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            device: Device::Cpu,
            precisions: vec![Precision::Fp32],
            threads: None,
            warmup: 1,
            iters: 3,
            image: (640, 854),
            python: None,
            pytorch: true,
            seed: 0,
        }
    }
}

/// Timings of one precision.
#[derive(Debug, Clone)]
pub struct PrecisionTiming {
    pub precision: Precision,
    /// Seconds per 640x640 crop.
    pub crop_s: f64,
    /// Seconds per slide-inference image.
    pub image_s: f64,
    /// Against fp32 on the slide image: (max |Δ logit|, max |fp32 logit|, argmax agreement).
    pub vs_fp32: Option<(f64, f64, f64)>,
}

/// PyTorch eager timings (fp32).
#[derive(Debug, Clone)]
pub struct PyTorchTiming {
    pub crop_s: f64,
    pub image_s: f64,
    pub versions: String,
}

/// The outcome of [`bench`].
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub device: String,
    pub threads: i32,
    pub warmup: usize,
    pub iters: usize,
    pub image: (usize, usize),
    pub timings: Vec<PrecisionTiming>,
    /// `Err(why)` when the comparison was not run.
    pub pytorch: std::result::Result<PyTorchTiming, String>,
}

/// The `model` dict of MMSegmentation's BEiT-B UPerNet 640x640 ADE20K config (spec §1), with BN
/// for SyncBN (identical at inference), in the form `SegmentorConfig::from_value` and the
/// Python side both read.
pub fn beit_base_upernet_640_json() -> Value {
    let bn = json!({"type": "BN", "requires_grad": true});
    json!({
        "type": "EncoderDecoder",
        "backbone": {
            "type": "BEiT", "img_size": [640, 640], "patch_size": 16, "in_channels": 3, "embed_dims": 768,
            "num_layers": 12, "num_heads": 12, "mlp_ratio": 4, "out_indices": [3, 5, 7, 11], "qv_bias": true,
            "attn_drop_rate": 0.0, "drop_path_rate": 0.1, "norm_cfg": {"type": "LN", "eps": 1e-6},
            "act_cfg": {"type": "GELU"}, "norm_eval": false, "init_values": 0.1
        },
        "neck": {"type": "Feature2Pyramid", "embed_dim": 768, "rescales": [4, 2, 1, 0.5], "norm_cfg": bn},
        "decode_head": {
            "type": "UPerHead", "in_channels": [768, 768, 768, 768], "in_index": [0, 1, 2, 3],
            "pool_scales": [1, 2, 3, 6], "channels": 768, "dropout_ratio": 0.1, "num_classes": 150,
            "norm_cfg": bn, "align_corners": false
        },
        "auxiliary_head": {
            "type": "FCNHead", "in_channels": 768, "in_index": 2, "channels": 256, "num_convs": 1,
            "concat_input": false, "dropout_ratio": 0.1, "num_classes": 150, "norm_cfg": bn, "align_corners": false
        },
        "test_cfg": {"mode": "slide", "crop_size": [640, 640], "stride": [426, 426]}
    })
}

/// [`beit_base_upernet_640_json`] parsed.
pub fn beit_base_upernet_640() -> SegmentorConfig {
    SegmentorConfig::from_value(&beit_base_upernet_640_json()).expect("the built-in BEiT-B config is valid")
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Mean seconds of `iters` runs after `warmup` runs, and the last run's result.
fn time_it<T>(device: Device, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    for _ in 0..warmup {
        f()?;
    }
    sync(device);
    let t = Instant::now();
    let mut last = f()?;
    for _ in 1..iters.max(1) {
        last = f()?;
    }
    sync(device);
    Ok((t.elapsed().as_secs_f64() / iters.max(1) as f64, last))
}

/// Times the fast path (and PyTorch eager when available); prints progress to stderr.
pub fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    check_device(opts.device)?;
    if let Some(n) = opts.threads {
        tch::set_num_threads(n);
    }
    let threads = tch::get_num_threads();
    let _no_grad = tch::no_grad_guard();
    let cfg = beit_base_upernet_640();
    let (h, w) = opts.image;
    tch::manual_seed(opts.seed + 1);
    let crop = Tensor::f_randn([1, 3, 640, 640], (Kind::Float, opts.device))?;
    let image = Tensor::f_randn([1, 3, h as i64, w as i64], (Kind::Float, opts.device))?;
    let mut timings = Vec::new();
    // fp32 first when a reduced precision is compared against it.
    let mut order = opts.precisions.clone();
    if order.iter().any(|p| p.is_reduced()) && !order.contains(&Precision::Fp32) {
        order.insert(0, Precision::Fp32);
    }
    order.sort_by_key(|p| !matches!(p, Precision::Fp32));
    let mut fp32_logits: Option<Tensor> = None;
    for &p in &order {
        eprintln!("bench: {} on {} ...", p.name(), device_name(opts.device));
        let model = FastSegmentor::random(&cfg, Ctx::new(opts.device, p), opts.seed)?;
        let (crop_s, _) =
            time_it(opts.device, opts.warmup, opts.iters, || model.forward(&crop, &mut Recorder::none()))?;
        let (image_s, out) =
            time_it(opts.device, opts.warmup, opts.iters, || model.forward(&image, &mut Recorder::none()))?;
        let vs_fp32 = match (&fp32_logits, p) {
            (Some(reference), p) if p != Precision::Fp32 => Some(compare_logits(reference, &out.seg_logits)?),
            _ => None,
        };
        if p == Precision::Fp32 {
            fp32_logits = Some(out.seg_logits);
        }
        drop(model);
        if opts.precisions.contains(&p) {
            eprintln!("bench: {}: {:.3} s/crop, {:.3} s/image", p.name(), crop_s, image_s);
            timings.push(PrecisionTiming { precision: p, crop_s, image_s, vs_fp32 });
        }
    }
    let pytorch = if opts.pytorch {
        eprintln!("bench: PyTorch eager (MMSegmentation) ...");
        run_pytorch(opts, threads)
    } else {
        Err("not requested".into())
    };
    Ok(BenchReport {
        device: device_name(opts.device),
        threads,
        warmup: opts.warmup,
        iters: opts.iters,
        image: opts.image,
        timings,
        pytorch,
    })
}

/// (max |a - b|, max |a|, fraction of equal argmax over channels).
fn compare_logits(reference: &Tensor, other: &Tensor) -> Result<(f64, f64, f64)> {
    let a = reference.f_to_kind(Kind::Float)?;
    let b = other.f_to_kind(Kind::Float)?;
    let max_err = to_f64_array(&a.f_sub(&b)?.f_abs()?.f_max()?)?.iter().next().copied().unwrap_or(f64::NAN);
    let max_ref = to_f64_array(&a.f_abs()?.f_max()?)?.iter().next().copied().unwrap_or(f64::NAN);
    let same =
        a.f_argmax(1, false)?.f_eq_tensor(&b.f_argmax(1, false)?)?.f_to_kind(Kind::Double)?.f_mean(Kind::Double)?;
    let agree = to_f64_array(&same)?.iter().next().copied().unwrap_or(f64::NAN);
    Ok((max_err, max_ref, agree))
}

/// The Python side: MMSegmentation's model from the same config dict, timed like the Rust side.
const PYTORCH_SCRIPT: &str = r#"
import json, sys, time, types, warnings
args = json.loads(sys.argv[1])
# mmcv-lite has no compiled mmcv.ops; mmseg imports a few names from it at load time (none is
# used by BEiT + UPerNet + FCNHead), as in fixtures/generate.py.
if 'mmcv.ops' not in sys.modules:
    ops = types.ModuleType('mmcv.ops')
    def _missing(name):
        def f(*a, **k):
            raise NotImplementedError('mmcv.ops.' + name)
        return f
    for name in ('point_sample', 'sigmoid_focal_loss', 'DeformConv2d', 'ModulatedDeformConv2d',
                 'CrissCrossAttention', 'PSAMask', 'MultiScaleDeformableAttention', 'batched_nms',
                 'nms', 'roi_align', 'RoIAlign', 'DeformConv2dPack', 'ModulatedDeformConv2dPack'):
        setattr(ops, name, _missing(name))
    sys.modules['mmcv.ops'] = ops
warnings.filterwarnings('ignore')
import torch
torch.set_num_threads(args['threads'])
import mmseg
from mmseg.utils import register_all_modules
register_all_modules()
from mmengine.config import ConfigDict
from mmseg.registry import MODELS
m = args['model']
m['backbone']['img_size'] = tuple(m['backbone']['img_size'])
cfg = dict(type='EncoderDecoder', backbone=m['backbone'], neck=m['neck'], decode_head=m['decode_head'],
           auxiliary_head=m['auxiliary_head'], test_cfg=ConfigDict(m['test_cfg']))
dev = torch.device(args['device'])
if dev.type == 'cuda':
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
model = MODELS.build(cfg).eval().to(dev)
def sync():
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
def timed(h, w):
    x = torch.randn(1, 3, h, w, device=dev)
    metas = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])]
    with torch.no_grad():
        for _ in range(args['warmup']):
            model.inference(x, metas).argmax(1)
        sync()
        t = time.perf_counter()
        for _ in range(args['iters']):
            model.inference(x, metas).argmax(1)
        sync()
    return (time.perf_counter() - t) / args['iters']
crop = timed(640, 640)
image = timed(args['image'][0], args['image'][1])
print('BENCH_JSON ' + json.dumps(dict(crop_s=crop, image_s=image, torch=torch.__version__,
      mmseg=mmseg.__version__, threads=torch.get_num_threads())))
"#;

/// The Python to use: explicit, `$BEIT_SEG_PYTHON`, or the project venv under `~/.cache/beit-seg`.
pub fn find_python(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BEIT_SEG_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let cache = Path::new(&home).join(".cache/beit-seg");
    let mut venvs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("venv-")))
        .map(|p| p.join("bin/python"))
        .filter(|p| p.exists())
        .collect();
    venvs.sort();
    venvs.pop()
}

fn run_pytorch(opts: &BenchOptions, threads: i32) -> std::result::Result<PyTorchTiming, String> {
    let python = find_python(opts.python.as_deref())
        .ok_or("no Python with MMSegmentation found (set --python or BEIT_SEG_PYTHON)")?;
    let device = match opts.device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        d => return Err(format!("device {d:?} is not supported by the PyTorch comparison")),
    };
    let args = json!({
        "model": beit_base_upernet_640_json(), "threads": threads, "device": device,
        "warmup": opts.warmup, "iters": opts.iters.max(1), "image": [opts.image.0, opts.image.1],
    });
    let out = Command::new(&python)
        .arg("-c")
        .arg(PYTORCH_SCRIPT)
        .arg(args.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("BENCH_JSON "));
    match (out.status.success(), line) {
        (true, Some(line)) => {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("unreadable PyTorch result: {e}"))?;
            let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or(format!("PyTorch result lacks `{k}`"));
            let s = |k: &str| {
                v.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).unwrap_or_default()
            };
            Ok(PyTorchTiming {
                crop_s: f("crop_s")?,
                image_s: f("image_s")?,
                versions: format!("torch {}, mmseg {}, threads {}", s("torch"), s("mmseg"), s("threads")),
            })
        }
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            Err(format!(
                "{} failed ({}): {}",
                python.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }
}

impl BenchReport {
    /// A plain-text table (what the CLI prints and gpu-check.sh stores).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str("model: BEiT-B + UPerNet (MMSegmentation beit-base_upernet 640x640: C=768, 12 layers, 12 heads, UPerHead 768, 150 classes), random weights\n");
        s.push_str(&format!(
            "device: {}, threads: {}, warmup {}, timed iterations {}; crop = 1x3x640x640 (1 window); image = 1x3x{}x{} (slide 640/426, {} windows in one batch)\n",
            self.device,
            self.threads,
            self.warmup,
            self.iters,
            self.image.0,
            self.image.1,
            windows(self.image)
        ));
        s.push_str("precision   s/crop   crops/s    s/image  images/s   vs fp32 (640x854 logits)\n");
        for t in &self.timings {
            let cmp = match t.vs_fp32 {
                Some((e, m, a)) => format!("max|Δ| {e:.3e} (max|logit| {m:.3}), argmax agreement {:.4}%", 100.0 * a),
                None if t.precision == Precision::Fp32 => "(reference, TF32 off)".into(),
                None => "-".into(),
            };
            s.push_str(&format!(
                "{:<9} {:>8.3} {:>8.3} {:>10.3} {:>9.3}   {}\n",
                t.precision.name(),
                t.crop_s,
                1.0 / t.crop_s,
                t.image_s,
                1.0 / t.image_s,
                cmp
            ));
        }
        match &self.pytorch {
            Ok(p) => {
                s.push_str(&format!(
                    "pytorch   {:>8.3} {:>8.3} {:>10.3} {:>9.3}   MMSegmentation eager fp32 ({})\n",
                    p.crop_s,
                    1.0 / p.crop_s,
                    p.image_s,
                    1.0 / p.image_s,
                    p.versions
                ));
                if let Some(t) = self.timings.iter().find(|t| t.precision == Precision::Fp32) {
                    s.push_str(&format!(
                        "ratio tch fp32 / PyTorch eager fp32 (throughput): crops {:.2}x, images {:.2}x\n",
                        p.crop_s / t.crop_s,
                        p.image_s / t.image_s
                    ));
                }
            }
            Err(e) => s.push_str(&format!("pytorch: not run ({e})\n")),
        }
        s
    }
}

/// Number of slide windows for an image with crop 640 / stride 426.
fn windows((h, w): (usize, usize)) -> usize {
    let g = |n: usize| (n + 426).saturating_sub(641) / 426 + 1;
    g(h) * g(w)
}
