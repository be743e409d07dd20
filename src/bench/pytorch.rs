//! The PyTorch side of `bench --against-pytorch`: MMSegmentation's own model, built in a child
//! Python (the project venv) from the same config dict, random init, timed with the same thread
//! count on the same input. The child stays up and runs one timed iteration per request
//! ([`PyTorchChild::run_once`]), so that the bench can alternate blocks of its runs with ours
//! (ABBA rounds, see [`super::run`]): both sides then see the same machine (a shared machine's
//! speed drifts by ±20% over a minute). At the end it reports its own peak RSS.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
def once():
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        model.inference(img, metas).argmax(1)
    sync()
    return time.perf_counter() - t
# The protocol: READY once built; `run` -> `TIME <seconds>`; `quit` -> `DONE <json>`.
print('READY ' + json.dumps(dict(torch=torch.__version__, mmseg=mmseg.__version__,
      threads=torch.get_num_threads())), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == 'run':
        print('TIME %r' % once(), flush=True)
    elif cmd == 'quit':
        break
print('DONE ' + json.dumps(dict(peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)),
      flush=True)
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
    pub device: crate::Device,
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

/// The running child: MMSegmentation's model built and waiting for `run` requests.
pub struct PyTorchChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: std::fs::File,
    python: PathBuf,
    /// `torch X, mmseg Y, threads N`.
    pub versions: String,
}

impl PyTorchChild {
    /// Starts the child and waits until its model is built; `Err(why)` when it cannot (no
    /// Python, no MMSegmentation, a failure while building).
    pub fn start(job: &PyTorchJob) -> Result<Self, String> {
        let python =
            find_python(job.python).ok_or("no Python with MMSegmentation found (set --python or BEIT_SEG_PYTHON)")?;
        let mut model = job.model.clone();
        sync_bn_to_bn(&mut model);
        let args =
            json!({ "model": model, "threads": job.threads, "device": job.device.to_string(), "size": job.size });
        let stderr = tempfile::tempfile().map_err(|e| format!("cannot create a file for the child's stderr: {e}"))?;
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(PYTORCH_SCRIPT)
            .arg(args.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().map_err(|e| format!("cannot share the stderr file: {e}"))?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the child's pipes are missing".into());
        };
        let mut me =
            PyTorchChild { child, stdin, stdout: BufReader::new(stdout), stderr, python, versions: String::new() };
        let ready = me.expect("READY ")?;
        let v: Value = serde_json::from_str(&ready).map_err(|e| format!("unreadable READY line: {e}"))?;
        let s = |k: &str| v.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()));
        me.versions = format!(
            "torch {}, mmseg {}, threads {}",
            s("torch").unwrap_or_default(),
            s("mmseg").unwrap_or_default(),
            s("threads").unwrap_or_default()
        );
        Ok(me)
    }

    /// Reads lines until one starts with `prefix` (returns the rest); an error with the tail of
    /// the child's stderr when it ends first.
    fn expect(&mut self, prefix: &str) -> Result<String, String> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return Err(self.failure()),
                Ok(_) => {
                    if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
            }
        }
    }

    /// `<python> failed (<status>): <last lines of stderr>`.
    fn failure(&mut self) -> String {
        let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        let mut err = String::new();
        let _ = self.stderr.rewind();
        let _ = self.stderr.read_to_string(&mut err);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        format!(
            "{} failed ({status}): {}",
            self.python.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    /// One timed `model.inference(...).argmax(1)`: its seconds.
    pub fn run_once(&mut self) -> Result<f64, String> {
        writeln!(self.stdin, "run").and_then(|_| self.stdin.flush()).map_err(|_| self.failure())?;
        let t = self.expect("TIME ")?;
        t.trim().parse::<f64>().map_err(|e| format!("unreadable PyTorch time {t:?}: {e}"))
    }

    /// Ends the child: its peak RSS in bytes.
    pub fn finish(mut self) -> Result<u64, String> {
        writeln!(self.stdin, "quit").and_then(|_| self.stdin.flush()).map_err(|_| self.failure())?;
        let done = self.expect("DONE ")?;
        let _ = self.child.wait();
        let v: Value = serde_json::from_str(&done).map_err(|e| format!("unreadable DONE line: {e}"))?;
        Ok(v.get("peak_rss_bytes").and_then(Value::as_u64).unwrap_or(0))
    }
}

impl Drop for PyTorchChild {
    fn drop(&mut self) {
        // Ends a child left running by an error on our side (after `finish` it has exited).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
