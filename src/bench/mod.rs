//! `beit-seg bench`: one crop of BEiT + UPerNet with random weights on any backend (through
//! [`crate::backend`]), per precision: seconds (median and min over the timed iterations), the
//! time per stage (backbone, neck, decode head), GFLOP/s from the exact FLOP count of
//! [`flops`], and the process's peak RSS; with `against`, other engines ([`engines`]: MMSegmentation's
//! own model in PyTorch eager mode, ONNX Runtime and OpenVINO on its ONNX export) on the same
//! config, weights, input and thread count, in the same invocation, and the ratios. See docs/performance.md.

pub mod engines;
pub mod flops;

pub use engines::{Engine, Rival};

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
    /// Threads (rayon for ref, intra-op for tch and the other engines); `None`: all cores.
    pub threads: Option<usize>,
    /// Untimed runs before each block of timed runs.
    pub warmup: usize,
    /// Timed runs per block.
    pub iters: usize,
    /// Blocks per side when other engines run, in the order ours, A, B, B, A, ours, ... (a
    /// linear drift of the machine's speed cancels); 1 without.
    pub rounds: usize,
    /// The engines timed beside ours: each at every precision of `precisions` it offers, and
    /// at fp32 (the baseline every ratio table starts from).
    pub against: Vec<Engine>,
    /// What every side times.
    pub measure: Measure,
    pub python: Option<PathBuf>,
    pub seed: u64,
}

/// What every side of the bench times per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// The labels of the image: `inference` (the logits resized to the input) + `argmax(1)`,
    /// what `predict` and `eval` need (ours: [`backend::Model::labels`]).
    #[default]
    Labels,
    /// The decode head's logits at 1/4 resolution, `decode_head.forward(extract_feat(x))`: no
    /// final resize, no argmax (ours: [`backend::Model::decode_head_logits`]); what deployment
    /// graphs often stop at.
    HeadLogits,
}

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::Labels => "labels",
            Measure::HeadLogits => "head-logits",
        }
    }

    /// What one of our timed iterations runs.
    pub fn ours(self) -> &'static str {
        match self {
            Measure::Labels => "labels: seg_logits (final resize included) + argmax",
            Measure::HeadLogits => "head-logits: decode_head.forward(extract_feat(x)), no resize, no argmax",
        }
    }
}

/// One other engine's result, as timed in the same invocation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RivalRow {
    pub engine: Engine,
    pub precision: crate::float::Precision,
    /// What one timed iteration runs.
    pub what: String,
    /// Versions and threads, as the engine reports them.
    pub versions: String,
    pub seconds: Vec<f64>,
    pub seconds_median: Option<f64>,
    pub seconds_min: Option<f64>,
    /// The engine's child process's peak RSS (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// Ours / the engine's median seconds (ours: the row this result sits in).
    pub time_ratio: Option<f64>,
    /// Ours / the engine's peak RSS.
    pub rss_ratio: Option<f64>,
    /// Why it did not run (not offered, missing package, a failure), if it did not.
    pub note: Option<String>,
}

/// One result row (one backend x precision x config).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub backend: String,
    pub precision: crate::float::Precision,
    pub config: String,
    pub size: usize,
    pub threads: usize,
    /// What every side timed, and what one of our iterations runs ([`Measure::ours`]).
    pub measure: Measure,
    pub what: &'static str,
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
    /// Every other engine of the invocation, with ours/theirs ratios for this row.
    pub against: Vec<RivalRow>,
    /// The export the ONNX engines ran (made now, or found in the cache).
    pub export_note: Option<String>,
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
    let setup = Setup::new(opts)?;
    let mut field = Field::plan(opts, &setup)?;
    let mut rows = Vec::new();
    for (i, precision) in opts.precisions.iter().enumerate() {
        rows.push(bench_row(opts, &setup, &mut field, i, *precision)?);
    }
    field.report_into(&mut rows);
    Ok(rows)
}

/// What every row shares: the sized config, threads, the FLOP count and the input.
struct Setup {
    model_json: Value,
    cfg: SegmentorConfig,
    threads: usize,
    pool: rayon::ThreadPool,
    work: flops::StageFlops,
    input: Array4<f32>,
}

impl Setup {
    fn new(opts: &BenchOptions) -> Result<Self, BenchError> {
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
        Ok(Setup { input: bench_input(opts.size), model_json, cfg, threads, pool, work })
    }
}

/// One other engine at one precision: its child while it runs, then its timings.
struct Entrant {
    rival: Rival,
    /// The row (index into the precisions) whose rounds time it.
    row: usize,
    child: Option<engines::EngineChild>,
    result: RivalRow,
}

/// The other engines of the invocation, with the files they share (our weights as
/// `.safetensors`, the ONNX export).
struct Field {
    entrants: Vec<Entrant>,
    /// Holds the weights file until the end.
    _weights_dir: Option<tempfile::TempDir>,
    weights: PathBuf,
    cache_dir: PathBuf,
    export_note: Option<String>,
}

impl Field {
    /// Each engine at fp32 and at every precision of ours it offers; an entrant is timed in the
    /// row of its precision (an fp32 baseline without an fp32 row: in the first row).
    fn plan(opts: &BenchOptions, setup: &Setup) -> Result<Self, BenchError> {
        let entrants = plan_entrants(&opts.against, &opts.precisions, opts.device)
            .into_iter()
            .map(|(rival, row, note)| {
                let mut result = empty_rival_row(rival);
                result.note = note;
                Entrant { rival, row, child: None, result }
            })
            .collect();
        let mut field = Field {
            entrants,
            _weights_dir: None,
            weights: PathBuf::new(),
            cache_dir: engines::export_cache().unwrap_or_else(std::env::temp_dir),
            export_note: None,
        };
        if field.entrants.iter().any(|e| e.result.note.is_none()) {
            field.write_weights(opts, setup)?;
            field.export(opts, setup);
        }
        Ok(field)
    }

    /// Our random state dict as `.safetensors`, so that every engine runs the same weights.
    fn write_weights(&mut self, opts: &BenchOptions, setup: &Setup) -> Result<(), BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(format!("cannot make a temporary folder: {e}")))?;
        self.weights = dir.path().join("bench-weights.safetensors");
        let sd = backend::random_state_dict(&setup.cfg, opts.seed);
        crate::checkpoint::write_safetensors(&self.weights, &sd, crate::checkpoint::WriteOptions::default())
            .map_err(|e| BenchError::Setup(format!("cannot write the bench weights: {e}")))?;
        self._weights_dir = Some(dir);
        Ok(())
    }

    /// Makes (or finds) the ONNX export when an ONNX engine will run; a failure ends those
    /// entrants with the reason.
    fn export(&mut self, opts: &BenchOptions, setup: &Setup) {
        let onnx = |e: &Entrant| e.rival.engine != Engine::Pytorch && e.result.note.is_none();
        if !self.entrants.iter().any(onnx) {
            return;
        }
        note!("bench: ONNX export of MMSegmentation's model (once; cached under {}) ...", self.cache_dir.display());
        match self.job(opts, setup).export() {
            Ok(n) => self.export_note = Some(n),
            Err(why) => {
                for e in self.entrants.iter_mut().filter(|e| onnx(e)) {
                    e.result.note = Some(format!("not run: the ONNX export failed: {why}"));
                }
            }
        }
    }

    fn job<'a>(&'a self, opts: &'a BenchOptions, setup: &'a Setup) -> engines::EngineJob<'a> {
        engines::EngineJob {
            model: &setup.model_json,
            size: opts.size,
            threads: setup.threads,
            device: opts.device,
            python: opts.python.as_deref(),
            weights: &self.weights,
            seed: opts.seed,
            measure: opts.measure.name(),
            cache_dir: &self.cache_dir,
        }
    }

    /// Starts the children timed in `row`; returns their indices (those that started).
    fn start_row(&mut self, opts: &BenchOptions, setup: &Setup, row: usize) -> Vec<usize> {
        let mut started = Vec::new();
        for i in 0..self.entrants.len() {
            let e = &self.entrants[i];
            if e.row != row || e.result.note.is_some() {
                continue;
            }
            note!("bench: starting {} ...", e.rival);
            let child = engines::EngineChild::start(&self.job(opts, setup), e.rival);
            let e = &mut self.entrants[i];
            match child {
                Ok(c) => {
                    e.result.versions = c.versions.clone();
                    e.result.what = c.what.clone();
                    e.child = Some(c);
                    started.push(i);
                }
                Err(why) => e.result.note = Some(format!("not run: {why}")),
            }
        }
        started
    }

    /// One timed (or warm-up) iteration of entrant `i`; a failure ends it (kept as the note).
    fn step(&mut self, i: usize, timed: bool) {
        let e = &mut self.entrants[i];
        let Some(child) = e.child.as_mut() else { return };
        match child.run_once() {
            Ok(t) if timed => e.result.seconds.push(t),
            Ok(_) => {}
            Err(why) => {
                e.result.note = Some(format!("ended: {why}"));
                e.child = None;
            }
        }
    }

    /// Ends the children of `row`: their peak RSS.
    fn finish_row(&mut self, row: usize) {
        for e in self.entrants.iter_mut().filter(|e| e.row == row) {
            if let Some(child) = e.child.take() {
                match child.finish() {
                    Ok(peak) => e.result.peak_rss_bytes = Some(peak),
                    Err(why) => e.result.note = Some(format!("ended badly: {why}")),
                }
            }
            let s = &e.result.seconds;
            if !s.is_empty() {
                e.result.seconds_median = Some(median(s));
                e.result.seconds_min = Some(s.iter().copied().fold(f64::INFINITY, f64::min));
            }
        }
    }

    /// Every row gets every entrant's result with its own ratios.
    fn report_into(&self, rows: &mut [BenchRow]) {
        for row in rows.iter_mut() {
            row.export_note = self.export_note.clone();
            row.against = self
                .entrants
                .iter()
                .map(|e| {
                    let mut r = e.result.clone();
                    r.time_ratio = r.seconds_median.filter(|&m| m > 0.0).map(|m| row.seconds_median / m);
                    r.rss_ratio = r.peak_rss_bytes.filter(|&p| p > 0).map(|p| row.peak_rss_bytes as f64 / p as f64);
                    r
                })
                .collect();
        }
    }
}

/// Which engine runs at which precision in which row: each engine at fp32 (the baseline) and at
/// every precision of ours but fp64, timed in the row of that precision (an fp32 baseline
/// without an fp32 row: in the first row); with why not where the engine does not offer it.
pub fn plan_entrants(
    against: &[Engine],
    precisions: &[crate::float::Precision],
    device: crate::Device,
) -> Vec<(Rival, usize, Option<String>)> {
    let mut wanted: Vec<crate::float::Precision> = precisions.to_vec();
    wanted.push(crate::float::Precision::Fp32);
    let mut plan: Vec<(Rival, usize, Option<String>)> = Vec::new();
    for engine in against {
        for p in wanted.iter().filter(|p| **p != crate::float::Precision::Fp64) {
            let rival = Rival { engine: *engine, precision: *p };
            if plan.iter().any(|(r, _, _)| *r == rival) {
                continue;
            }
            let row = precisions.iter().position(|q| q == p).unwrap_or(0);
            plan.push((rival, row, engine.offers(*p, device).err().map(|why| format!("not run: {why}"))));
        }
    }
    plan
}

fn empty_rival_row(rival: Rival) -> RivalRow {
    RivalRow {
        engine: rival.engine,
        precision: rival.precision,
        what: String::new(),
        versions: String::new(),
        seconds: Vec::new(),
        seconds_median: None,
        seconds_min: None,
        peak_rss_bytes: None,
        time_ratio: None,
        rss_ratio: None,
        note: None,
    }
}

/// The row of `precision`: our model loaded, then `rounds` of blocks in the order ours, the
/// entrants of this row, the same reversed, ... (each block after its own warm-up), then one
/// profiled run of ours.
fn bench_row(
    opts: &BenchOptions,
    setup: &Setup,
    field: &mut Field,
    row: usize,
    precision: crate::float::Precision,
) -> Result<BenchRow, BenchError> {
    let spec = BackendSpec { kind: opts.backend, device: opts.device, precision };
    let be = backend::open(&spec)?;
    let dtype = if precision == crate::float::Precision::Fp64 { Dtype::F64 } else { Dtype::F32 };
    let entrants = field.start_row(opts, setup, row);
    let rounds = if entrants.is_empty() { 1 } else { opts.rounds.max(1) };
    note!(
        "bench: {} {precision}, {} {}x{}, {} threads{} ...",
        be.name(),
        opts.config_name,
        opts.size,
        opts.size,
        setup.threads,
        if rounds > 1 {
            format!(", {rounds} rounds alternating with {} other engine(s)", entrants.len())
        } else {
            String::new()
        }
    );
    reset_peak_rss();
    // Sides: None = ours, Some(i) = entrant i.
    let mut sides: Vec<Option<usize>> = vec![None];
    sides.extend(entrants.iter().map(|&i| Some(i)));
    let (seconds, stages) = setup.pool.install(|| -> Result<_, BenchError> {
        let model = be.load(&setup.cfg, backend::random_state_dict(&setup.cfg, opts.seed), dtype)?;
        let mut seconds = Vec::new();
        for r in 0..rounds {
            let order: Vec<Option<usize>> =
                if r % 2 == 0 { sides.clone() } else { sides.iter().rev().copied().collect() };
            for side in order {
                match side {
                    None => seconds.extend(time_ours(&*model, &setup.input, opts)?),
                    Some(i) => {
                        (0..opts.warmup).for_each(|_| field.step(i, false));
                        (0..opts.iters.max(1)).for_each(|_| field.step(i, true));
                    }
                }
            }
        }
        let stages = model.profile(&AnyArray::F32(setup.input.clone().into_dyn())).ok();
        Ok((seconds, stages))
    })?;
    let peak = peak_rss_bytes();
    field.finish_row(row);
    let med = median(&seconds);
    note!("bench: {} {precision}: median {med:.3} s", be.name());
    Ok(BenchRow {
        backend: be.name().to_string(),
        precision,
        config: opts.config_name.clone(),
        size: opts.size,
        threads: setup.threads,
        measure: opts.measure,
        what: opts.measure.ours(),
        seconds_min: seconds.iter().copied().fold(f64::INFINITY, f64::min),
        seconds_median: med,
        seconds,
        stages,
        flops: setup.work,
        gflops_per_s: setup.work.total() / med / 1e9,
        peak_rss_bytes: peak,
        against: Vec::new(),
        export_note: None,
    })
}

/// One block of ours: `warmup` untimed runs, then `iters` timed ones (seconds each) of what
/// `opts.measure` says.
fn time_ours(model: &dyn backend::Model, input: &Array4<f32>, opts: &BenchOptions) -> Result<Vec<f64>, BenchError> {
    let once = |x: Array4<f32>| -> Result<(), BenchError> {
        match opts.measure {
            Measure::Labels => drop(std::hint::black_box(model.labels(x)?)),
            Measure::HeadLogits => drop(std::hint::black_box(model.decode_head_logits(x)?)),
        }
        Ok(())
    };
    for _ in 0..opts.warmup {
        once(input.clone())?;
    }
    let mut seconds = Vec::new();
    for _ in 0..opts.iters.max(1) {
        let x = input.clone();
        let t = Instant::now();
        once(x)?;
        seconds.push(t.elapsed().as_secs_f64());
    }
    Ok(seconds)
}

/// Bytes in GB (10⁹), for tables.
fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// One line for another engine's result in a row: its times and ours/theirs.
fn rival_text(a: &RivalRow) -> String {
    match (a.seconds_median, a.seconds_min, &a.note) {
        (Some(med), Some(min), None) => format!(
            "  vs {} {}: median {med:.3} s, min {min:.3} s, peak RSS {}; ours/theirs: time {}, RSS {} [{}; {}]\n",
            a.engine,
            a.precision,
            a.peak_rss_bytes.map_or("-".into(), |b| format!("{:.2} GB", gb(b))),
            a.time_ratio.map_or("-".into(), |x| format!("{x:.3}x")),
            a.rss_ratio.map_or("-".into(), |x| format!("{x:.3}x")),
            a.what,
            a.versions
        ),
        (_, _, Some(n)) => format!("  vs {} {}: {n}\n", a.engine, a.precision),
        _ => format!("  vs {} {}: no timings\n", a.engine, a.precision),
    }
}

/// The human-readable table of [`run`]'s rows.
pub fn to_text(rows: &[BenchRow]) -> String {
    let mut s = String::new();
    for r in rows {
        s.push_str(&format!(
            "{} {} {} {}x{}, {} threads, {}: median {:.3} s, min {:.3} s over {} iterations; {:.1} GFLOP/s ({:.3} TFLOP); peak RSS {:.2} GB\n",
            r.backend,
            r.precision,
            r.config,
            r.size,
            r.size,
            r.threads,
            r.measure.name(),
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
        let baseline = |a: &RivalRow| a.engine == Engine::Pytorch && a.precision == crate::float::Precision::Fp32;
        for a in r.against.iter().filter(|a| a.precision == r.precision || baseline(a)) {
            s.push_str(&rival_text(a));
        }
    }
    if let Some(n) = rows.first().and_then(|r| r.export_note.as_ref()) {
        s.push_str(&format!("ONNX engines: {n}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::Precision::{Bf16, Fp16, Fp32, Fp64};

    #[test]
    fn every_engine_runs_at_fp32_and_at_each_precision_it_offers_in_that_precisions_row() {
        let plan =
            plan_entrants(&[Engine::Pytorch, Engine::Onnxruntime, Engine::Openvino], &[Bf16, Fp16], crate::Device::Cpu);
        let got: Vec<(String, usize, bool)> =
            plan.iter().map(|(r, row, why)| (r.to_string(), *row, why.is_none())).collect();
        let want = [
            ("pytorch bf16", 0, true),
            ("pytorch fp16", 1, true),
            ("pytorch fp32", 0, true),
            ("onnxruntime bf16", 0, false),
            ("onnxruntime fp16", 1, false),
            ("onnxruntime fp32", 0, true),
            ("openvino bf16", 0, true),
            ("openvino fp16", 1, true),
            ("openvino fp32", 0, true),
        ];
        let want: Vec<(String, usize, bool)> = want.iter().map(|(n, r, ok)| (n.to_string(), *r, *ok)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn fp64_rows_have_no_other_engine_but_the_fp32_baseline() {
        let plan = plan_entrants(&[Engine::Pytorch], &[Fp32, Fp64], crate::Device::Cpu);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].0.precision, plan[0].1), (Fp32, 0));
    }

    #[test]
    fn the_onnx_engines_do_not_claim_a_gpu() {
        let plan = plan_entrants(&[Engine::Openvino], &[Fp32], crate::Device::Cuda(0));
        assert!(plan[0].2.as_deref().is_some_and(|n| n.contains("CPU only")), "{plan:?}");
    }
}
