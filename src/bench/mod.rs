//! `beit-seg bench`: one crop of BEiT + UPerNet with random weights on any backend (through
//! [`crate::backend`]), per precision: seconds (median and min over the timed iterations), the
//! time per stage (backbone, neck, decode head), GFLOP/s from the exact FLOP count of
//! [`flops`], and the process's peak RSS; with `against_pytorch`, MMSegmentation's own model in
//! PyTorch eager mode ([`pytorch`]) on the same config, input and thread count, in the same
//! invocation, and the ratios. See docs/performance.md.

pub mod flops;
pub mod pytorch;

/// A progress line on stderr that never panics (a failed write to stderr is dropped).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array4;
use serde_json::Value;

use crate::array::AnyArray;
use crate::backend::{self, BackendError, BackendKind, BackendSpec, StageTimes};
use crate::config::{ConfigError, SegmentorConfig};
use crate::float::Dtype;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("bench: {0}")]
    Setup(String),
}

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backend: BackendKind,
    /// `cpu`, `cuda`, `cuda:N` (tch only).
    pub device: crate::Device,
    /// `fp32`, `fp64` (ref, tch), `fp16`, `bf16` (tch).
    pub precisions: Vec<crate::float::Precision>,
    /// A name for reports (`base`, `large`).
    pub config_name: String,
    /// The MMSegmentation `model` dict (a preset); `img_size` and the slide crop are set to `size`.
    pub model: Value,
    /// The crop: a `1 x 3 x size x size` input.
    pub size: usize,
    /// Threads (rayon for ref, intra-op for tch and PyTorch); `None`: all cores.
    pub threads: Option<usize>,
    /// Untimed runs before each block of timed runs.
    pub warmup: usize,
    /// Timed runs per block.
    pub iters: usize,
    /// Blocks per side with `against_pytorch`, in the order ours, PyTorch, PyTorch, ours, ...
    /// (a linear drift of the machine's speed cancels); 1 without.
    pub rounds: usize,
    pub against_pytorch: bool,
    pub python: Option<PathBuf>,
    pub seed: u64,
}

/// One result row (one backend x precision x config).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub backend: String,
    pub precision: crate::float::Precision,
    pub config: String,
    pub size: usize,
    pub threads: usize,
    pub seconds: Vec<f64>,
    pub seconds_median: f64,
    pub seconds_min: f64,
    /// Seconds per stage of one extra profiled run (when the backend can profile).
    pub stages: Option<StageTimes>,
    pub flops: flops::StageFlops,
    /// Total FLOP / median seconds, in units of 10⁹.
    pub gflops_per_s: f64,
    /// This process's peak RSS while loading and running this row (VmHWM, reset per row).
    pub peak_rss_bytes: u64,
    pub pytorch_seconds: Option<Vec<f64>>,
    pub pytorch_seconds_median: Option<f64>,
    pub pytorch_seconds_min: Option<f64>,
    pub pytorch_peak_rss_bytes: Option<u64>,
    /// Ours / PyTorch's median seconds.
    pub time_ratio: Option<f64>,
    /// Ours / PyTorch's peak RSS.
    pub rss_ratio: Option<f64>,
    /// Versions of the PyTorch run, or why it did not run.
    pub pytorch_note: Option<String>,
}

/// The median (mean of the middle two for an even count) of a non-empty list.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The bench input, `x[0, c, y, x] = ((7c + 3y + x) mod 17)/17 - 0.5` (the Python side computes
/// the same values).
pub fn bench_input(size: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, size, size), |(_, c, y, x)| (((c * 7 + y * 3 + x) % 17) as f64 / 17.0 - 0.5) as f32)
}

/// This process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`), 0 where
/// unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux: `5` into `/proc/self/clear_refs`); false when
/// the kernel does not allow it (the peak then covers the whole process so far).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The model dict with `img_size` and the slide crop set to `size`.
fn sized_model(model: &Value, size: usize) -> Value {
    let mut m = model.clone();
    if let Some(obj) = m.as_object_mut() {
        obj.remove("data_preprocessor");
        if let Some(b) = obj.get_mut("backbone").and_then(Value::as_object_mut) {
            b.insert("img_size".into(), serde_json::json!([size, size]));
        }
        if let Some(t) = obj.get_mut("test_cfg").and_then(Value::as_object_mut) {
            if t.contains_key("crop_size") {
                t.insert("crop_size".into(), serde_json::json!([size, size]));
            }
        }
    }
    m
}

/// Runs the benchmark: one row per precision. Progress goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>, BenchError> {
    let model_json = sized_model(&opts.model, opts.size);
    let cfg = SegmentorConfig::from_value(&model_json)?;
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| BenchError::Setup(format!("cannot start {threads} threads: {e}")))?;
    #[cfg(feature = "tch")]
    if opts.backend == BackendKind::Tch {
        tch::set_num_threads(threads as i32);
    }
    let work = flops::count(&cfg, (opts.size, opts.size));
    let input = bench_input(opts.size);
    // MMSegmentation in a child process that stays up: its blocks of runs alternate with ours.
    let mut torch: Option<Result<pytorch::PyTorchChild, String>> = opts.against_pytorch.then(|| {
        note!("bench: starting PyTorch eager (MMSegmentation), fp32 ...");
        pytorch::PyTorchChild::start(&pytorch::PyTorchJob {
            model: &model_json,
            size: opts.size,
            threads,
            device: opts.device,
            python: opts.python.as_deref(),
        })
    });
    let rounds = if matches!(torch, Some(Ok(_))) { opts.rounds.max(1) } else { 1 };
    let mut rows = Vec::new();
    for precision in &opts.precisions {
        let spec = BackendSpec { kind: opts.backend, device: opts.device, precision: *precision };
        let be = backend::open(&spec)?;
        let dtype = if *precision == crate::float::Precision::Fp64 { Dtype::F64 } else { Dtype::F32 };
        note!(
            "bench: {} {precision}, {} {}x{}, {threads} threads{} ...",
            be.name(),
            opts.config_name,
            opts.size,
            opts.size,
            if rounds > 1 { format!(", {rounds} rounds alternating with PyTorch") } else { String::new() }
        );
        reset_peak_rss();
        let mut torch_secs: Vec<f64> = Vec::new();
        let (seconds, stages) = pool.install(|| -> Result<_, BenchError> {
            let model = be.load(&cfg, backend::random_state_dict(&cfg, opts.seed), dtype)?;
            let mut seconds = Vec::new();
            for r in 0..rounds {
                // ABBA order: ours first in even rounds, PyTorch first in odd ones.
                for ours in if r % 2 == 0 { [true, false] } else { [false, true] } {
                    if ours {
                        for _ in 0..opts.warmup {
                            model.seg_logits(input.clone())?;
                        }
                        for _ in 0..opts.iters.max(1) {
                            let x = input.clone();
                            let t = Instant::now();
                            model.seg_logits(x)?;
                            seconds.push(t.elapsed().as_secs_f64());
                        }
                    } else if torch.is_some() {
                        for _ in 0..opts.warmup {
                            torch_step(&mut torch);
                        }
                        for _ in 0..opts.iters.max(1) {
                            if let Some(t) = torch_step(&mut torch) {
                                torch_secs.push(t);
                            }
                        }
                    }
                }
            }
            let stages = model.profile(&AnyArray::F32(input.clone().into_dyn())).ok();
            Ok((seconds, stages))
        })?;
        let peak = peak_rss_bytes();
        let med = median(&seconds);
        note!("bench: {} {precision}: median {med:.3} s", be.name());
        let (pt_med, pt_min) = if torch_secs.is_empty() {
            (None, None)
        } else {
            (Some(median(&torch_secs)), Some(torch_secs.iter().copied().fold(f64::INFINITY, f64::min)))
        };
        rows.push(BenchRow {
            backend: be.name().to_string(),
            precision: *precision,
            config: opts.config_name.clone(),
            size: opts.size,
            threads,
            seconds_min: seconds.iter().copied().fold(f64::INFINITY, f64::min),
            seconds_median: med,
            seconds,
            stages,
            flops: work,
            gflops_per_s: work.total() / med / 1e9,
            peak_rss_bytes: peak,
            time_ratio: pt_med.map(|p| med / p),
            pytorch_seconds_median: pt_med,
            pytorch_seconds_min: pt_min,
            pytorch_seconds: (!torch_secs.is_empty()).then_some(torch_secs),
            pytorch_peak_rss_bytes: None,
            rss_ratio: None,
            pytorch_note: None,
        });
    }
    // The child's peak RSS and versions (or why it did not run) for every row.
    let (note, torch_peak) = match torch.take() {
        None => (None, None),
        Some(Err(e)) => (Some(format!("not run: {e}")), None),
        Some(Ok(child)) => {
            let versions = child.versions.clone();
            match child.finish() {
                Ok(peak) => (Some(versions), Some(peak)),
                Err(e) => (Some(format!("{versions}; ended badly: {e}")), None),
            }
        }
    };
    for row in &mut rows {
        row.pytorch_note = note.clone();
        if row.pytorch_seconds.is_some() {
            row.pytorch_peak_rss_bytes = torch_peak;
            row.rss_ratio = torch_peak.filter(|&p| p > 0).map(|p| row.peak_rss_bytes as f64 / p as f64);
        }
    }
    Ok(rows)
}

/// One timed PyTorch iteration, if the child is running; a failure ends it (kept as the note).
fn torch_step(torch: &mut Option<Result<pytorch::PyTorchChild, String>>) -> Option<f64> {
    let child = torch.as_mut()?.as_mut().ok()?;
    match child.run_once() {
        Ok(t) => Some(t),
        Err(e) => {
            *torch = Some(Err(e));
            None
        }
    }
}

/// Bytes in GB (10⁹), for tables.
fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// The human-readable table of [`run`]'s rows.
pub fn to_text(rows: &[BenchRow]) -> String {
    let mut s = String::new();
    for r in rows {
        s.push_str(&format!(
            "{} {} {} {}x{}, {} threads: median {:.3} s, min {:.3} s over {} iterations; {:.1} GFLOP/s ({:.3} TFLOP); peak RSS {:.2} GB\n",
            r.backend,
            r.precision,
            r.config,
            r.size,
            r.size,
            r.threads,
            r.seconds_median,
            r.seconds_min,
            r.seconds.len(),
            r.gflops_per_s,
            r.flops.total() / 1e12,
            gb(r.peak_rss_bytes)
        ));
        if let Some(st) = &r.stages {
            let g = |f: f64, t: f64| if t > 0.0 { f / t / 1e9 } else { f64::NAN };
            s.push_str(&format!(
                "  stages: backbone {:.3} s ({:.0} GFLOP/s), neck {:.3} s ({:.0} GFLOP/s), decode head {:.3} s ({:.0} GFLOP/s), resize {:.3} s\n",
                st.backbone,
                g(r.flops.backbone, st.backbone),
                st.neck,
                g(r.flops.neck, st.neck),
                st.decode_head,
                g(r.flops.decode_head, st.decode_head),
                st.resize
            ));
        }
        match (r.pytorch_seconds_median, r.pytorch_seconds_min, r.pytorch_peak_rss_bytes, r.time_ratio) {
            (Some(med), Some(min), Some(rss), Some(ratio)) => s.push_str(&format!(
                "  pytorch eager fp32: median {med:.3} s, min {min:.3} s, peak RSS {:.2} GB ({}); time ratio ours/PyTorch {ratio:.3}x, RSS ratio {}\n",
                gb(rss),
                r.pytorch_note.as_deref().unwrap_or(""),
                r.rss_ratio.map_or("-".into(), |x| format!("{x:.3}x"))
            )),
            _ => {
                if let Some(n) = &r.pytorch_note {
                    s.push_str(&format!("  pytorch: {n}\n"));
                }
            }
        }
    }
    s
}
