//! The other engines of `bench --against`: MMSegmentation's own model in PyTorch eager mode
//! (fp32, or bf16/fp16 under `torch.autocast`), and a dynamo ONNX export of it run by ONNX
//! Runtime (fp32) and OpenVINO (fp32, and bf16/fp16 where the CPU offers them). Each runs in a
//! child Python (the project venv, [`find_python`]) from `engine_child.py`, with our random
//! weights (written once as `.safetensors`) and the same input; a child stays up and runs one
//! timed iteration per request ([`EngineChild::run_once`]), so that the bench can alternate
//! blocks of its runs with ours (ABBA rounds, see [`super::run`]): every side then sees the same
//! machine (a shared machine's speed drifts by ±20% over a minute). At the end each child
//! reports its own peak RSS.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

use crate::float::Precision;
use crate::Device;

/// The engine child's Python: the `mmcv.ops` stand-in (the one copy, fixtures/mmseg_import.py)
/// followed by the child itself.
fn child_script() -> String {
    format!("{}\n{}", include_str!("../../fixtures/mmseg_import.py"), include_str!("engine_child.py"))
}

/// An engine the bench can time beside ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// MMSegmentation eager (fp32; bf16/fp16 under `torch.autocast`, as mmengine runs it).
    Pytorch,
    /// ONNX Runtime (CPU execution provider) on the dynamo export, fp32.
    Onnxruntime,
    /// OpenVINO (CPU plugin) on the dynamo export, fp32 / bf16 / fp16 by its precision hint.
    Openvino,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Pytorch => "pytorch",
            Engine::Onnxruntime => "onnxruntime",
            Engine::Openvino => "openvino",
        }
    }

    /// Whether the engine runs `precision` on `device`; `Err(why not)` otherwise.
    pub fn offers(self, precision: Precision, device: Device) -> Result<(), String> {
        match (self, precision, device) {
            (_, Precision::Fp64, _) => Err(format!("{} is not timed in fp64 by the bench", self.name())),
            (Engine::Pytorch, _, _) => Ok(()),
            (_, _, Device::Cuda(_)) => Err(format!("{} runs on the CPU only in the bench", self.name())),
            (Engine::Onnxruntime, Precision::Fp32, _) => Ok(()),
            (Engine::Onnxruntime, p, _) => {
                Err(format!("onnxruntime's CPU provider has no {p} kernels for most of this model's operators"))
            }
            (Engine::Openvino, _, _) => Ok(()),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One engine at one precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Rival {
    pub engine: Engine,
    pub precision: Precision,
}

impl std::fmt::Display for Rival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.engine, self.precision)
    }
}

/// The Python to use: explicit, `$BEIT_SEG_PYTHON`, or the project venv under `~/.cache/beit-seg`.
pub fn find_python(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BEIT_SEG_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let mut venvs: Vec<PathBuf> = std::fs::read_dir(cache_root()?)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("venv-")))
        .map(|p| p.join("bin/python"))
        .filter(|p| p.exists())
        .collect();
    venvs.sort();
    venvs.pop()
}

/// `~/.cache/beit-seg`.
fn cache_root() -> Option<PathBuf> {
    Some(Path::new(&std::env::var_os("HOME")?).join(".cache/beit-seg"))
}

/// Where the ONNX exports are cached: `$BEIT_SEG_BENCH_CACHE` or `~/.cache/beit-seg/bench-onnx`.
pub fn export_cache() -> Option<PathBuf> {
    std::env::var_os("BEIT_SEG_BENCH_CACHE").map(PathBuf::from).or_else(|| Some(cache_root()?.join("bench-onnx")))
}

/// What every child is given.
pub struct EngineJob<'a> {
    /// The `model` dict (MMSegmentation config form; SyncBN is replaced by BN here, identical
    /// at inference and usable without a process group).
    pub model: &'a Value,
    pub size: usize,
    pub threads: usize,
    pub device: Device,
    pub python: Option<&'a Path>,
    /// Our random state dict as `.safetensors` (MMSegmentation's keys).
    pub weights: &'a Path,
    /// The seed of those weights (part of the export's cache key).
    pub seed: u64,
    /// What to time: `labels` or `head-logits` ([`super::Measure`]).
    pub measure: &'a str,
    pub cache_dir: &'a Path,
}

impl EngineJob<'_> {
    /// The JSON argument of the child for `engine` (`export` for the export child).
    fn args(&self, engine: &str, precision: Precision) -> Value {
        let mut model = self.model.clone();
        sync_bn_to_bn(&mut model);
        json!({
            "engine": engine, "precision": precision.to_string(), "model": model,
            "threads": self.threads, "device": self.device.to_string(), "size": self.size,
            "weights": self.weights, "seed": self.seed, "cache_dir": self.cache_dir,
            "measure": self.measure,
        })
    }

    /// Makes (or finds) the ONNX export the ONNX engines run: the note says which.
    pub fn export(&self) -> Result<String, String> {
        let mut child = EngineChild::spawn(self, "export", Precision::Fp32)?;
        let line = child.expect("EXPORTED ")?;
        let _ = child.child.wait();
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("unreadable EXPORTED line: {e}"))?;
        Ok(v.get("note").and_then(Value::as_str).unwrap_or_default().to_string())
    }
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

/// A running child: one engine's model built and waiting for `run` requests.
pub struct EngineChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: std::fs::File,
    python: PathBuf,
    /// `torch X, mmseg Y, threads N` (or the engine's version).
    pub versions: String,
    /// What one timed iteration runs.
    pub what: String,
}

impl EngineChild {
    /// Starts the child for `rival` and waits until its model is built; `Err(why)` when it
    /// cannot (no Python, a missing package, a failure while building).
    pub fn start(job: &EngineJob, rival: Rival) -> Result<Self, String> {
        let mut me = Self::spawn(job, rival.engine.name(), rival.precision)?;
        let ready = me.expect("READY ")?;
        let v: Value = serde_json::from_str(&ready).map_err(|e| format!("unreadable READY line: {e}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        me.versions = s("versions");
        me.what = s("what");
        Ok(me)
    }

    fn spawn(job: &EngineJob, engine: &str, precision: Precision) -> Result<Self, String> {
        let python =
            find_python(job.python).ok_or("no Python with MMSegmentation found (set --python or BEIT_SEG_PYTHON)")?;
        let stderr = tempfile::tempfile().map_err(|e| format!("cannot create a file for the child's stderr: {e}"))?;
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(child_script())
            .arg(job.args(engine, precision).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().map_err(|e| format!("cannot share the stderr file: {e}"))?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the child's pipes are missing".into());
        };
        Ok(EngineChild {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
            python,
            versions: String::new(),
            what: String::new(),
        })
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

    /// One timed iteration: its seconds.
    pub fn run_once(&mut self) -> Result<f64, String> {
        writeln!(self.stdin, "run").and_then(|_| self.stdin.flush()).map_err(|_| self.failure())?;
        let t = self.expect("TIME ")?;
        t.trim().parse::<f64>().map_err(|e| format!("unreadable time {t:?}: {e}"))
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

impl Drop for EngineChild {
    fn drop(&mut self) {
        // Ends a child left running by an error on our side (after `finish` it has exited).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_offer_what_they_have() {
        assert!(Engine::Pytorch.offers(Precision::Bf16, Device::Cpu).is_ok());
        assert!(Engine::Onnxruntime.offers(Precision::Bf16, Device::Cpu).is_err());
        assert!(Engine::Openvino.offers(Precision::Fp16, Device::Cpu).is_ok());
        assert!(Engine::Openvino.offers(Precision::Fp32, Device::Cuda(0)).is_err());
        assert!(Engine::Pytorch.offers(Precision::Fp64, Device::Cpu).is_err());
    }

    #[test]
    fn the_child_script_carries_the_one_mmcv_ops_stand_in() {
        let s = child_script();
        assert!(s.contains("def import_mmseg():"));
        assert!(s.contains("import_mmseg()"));
    }
}
