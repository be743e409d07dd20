//! The PyTorch side of `bench --against-pytorch`: MMSegmentation's own model, built in a child
//! Python (the project venv) from the same config dict, random init, timed with the same thread
//! count on the same input, reporting every iteration's seconds and its own peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Timings of MMSegmentation eager (fp32) in the child process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PyTorchRun {
    /// Seconds of each timed iteration.
    pub seconds: Vec<f64>,
    /// The child's peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`).
    pub peak_rss_bytes: u64,
    /// `torch X, mmseg Y, threads N`.
    pub versions: String,
}

/// The Python side: the model dict → `MODELS.build`, `model.inference` on the input of
/// [`super::bench_input`] (the same formula in numpy, so the same values), `argmax(1)`.
const PYTORCH_SCRIPT: &str = r#"
import json, resource, sys, time, types, warnings
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
import numpy as np
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
           auxiliary_head=m.get('auxiliary_head'), test_cfg=ConfigDict(m.get('test_cfg') or dict(mode='whole')))
dev = torch.device(args['device'])
if dev.type == 'cuda':
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
model = MODELS.build(cfg).eval().to(dev)
def sync():
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)
s = args['size']
c, y, x = np.meshgrid(np.arange(3), np.arange(s), np.arange(s), indexing='ij')
img = torch.from_numpy((((c * 7 + y * 3 + x) % 17) / 17.0 - 0.5).astype(np.float32))[None].to(dev)
metas = [dict(ori_shape=(s, s), img_shape=(s, s), pad_shape=(s, s), padding_size=[0, 0, 0, 0])]
secs = []
with torch.no_grad():
    for _ in range(args['warmup']):
        model.inference(img, metas).argmax(1)
    for _ in range(args['iters']):
        sync()
        t = time.perf_counter()
        model.inference(img, metas).argmax(1)
        sync()
        secs.append(time.perf_counter() - t)
print('BENCH_JSON ' + json.dumps(dict(seconds=secs, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      torch=torch.__version__, mmseg=mmseg.__version__, threads=torch.get_num_threads())))
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

/// What the child is asked to do.
pub struct PyTorchJob<'a> {
    /// The `model` dict (MMSegmentation config form; SyncBN is replaced by BN here, identical
    /// at inference and usable without a process group).
    pub model: &'a Value,
    pub size: usize,
    pub threads: usize,
    pub device: &'a str,
    pub warmup: usize,
    pub iters: usize,
    pub python: Option<&'a Path>,
}

/// `"SyncBN"` → `"BN"` everywhere in a config value.
fn sync_bn_to_bn(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("SyncBN") {
                map.insert("type".into(), Value::String("BN".into()));
            }
            map.values_mut().for_each(sync_bn_to_bn);
        }
        Value::Array(a) => a.iter_mut().for_each(sync_bn_to_bn),
        _ => {}
    }
}

/// Runs the child; `Err(why)` when it could not run (no Python, no mmseg, a failure).
pub fn run(job: &PyTorchJob) -> Result<PyTorchRun, String> {
    let python =
        find_python(job.python).ok_or("no Python with MMSegmentation found (set --python or BEIT_SEG_PYTHON)")?;
    let mut model = job.model.clone();
    sync_bn_to_bn(&mut model);
    let args = json!({
        "model": model, "threads": job.threads, "device": job.device, "size": job.size,
        "warmup": job.warmup, "iters": job.iters.max(1),
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
            let seconds: Vec<f64> = v
                .get("seconds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .filter(|s: &Vec<f64>| !s.is_empty())
                .ok_or("PyTorch result lacks `seconds`")?;
            let s = |k: &str| {
                v.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).unwrap_or_default()
            };
            Ok(PyTorchRun {
                seconds,
                peak_rss_bytes: v.get("peak_rss_bytes").and_then(Value::as_u64).unwrap_or(0),
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
