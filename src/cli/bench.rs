//! `beit-seg bench`: the CLI side of [`crate::bench`] (argument parsing, printing, `--json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use crate::backend::BackendKind;
use crate::bench::{self, BenchOptions};

/// Time a backend on one crop of BEiT-B/L + UPerNet with random weights, optionally against
/// other engines in the same invocation: MMSegmentation's own model in PyTorch eager mode, and
/// its ONNX export in ONNX Runtime and OpenVINO (same weights, input and threads).
///
/// Example: beit-seg bench --backend tch --precision fp32,bf16 --against pytorch,onnxruntime,openvino
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The implementation to time.
    #[arg(long, value_enum, default_value = "ref")]
    pub backend: BackendKind,
    /// BEiT-B (`base`, beit-base-640) or BEiT-L (`large`, beit-large-640) + UPerNet.
    #[arg(long, default_value = "base", value_parser = ["base", "large"])]
    pub config: String,
    /// Crop size: the input is 1 x 3 x SIZE x SIZE.
    #[arg(long, default_value_t = 640)]
    pub size: usize,
    /// Precisions, comma-separated: fp32, fp64 (ref, tch); fp16, bf16 (tch).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32")]
    pub precision: Vec<crate::float::Precision>,
    /// Device for tch: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: crate::Device,
    /// Threads for our backend and for PyTorch (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed runs first (in every round, on each side).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs per round (median and min over all rounds are reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// With --against: alternate the blocks of runs of ours and the other engines this many
    /// times (ours, A, B, B, A, ours, ...), each block after its own warm-up, so that a drift of
    /// the machine's speed falls on every side.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Other engines to time, comma-separated: pytorch (MMSegmentation eager; bf16/fp16 under
    /// torch.autocast), onnxruntime (fp32), openvino (fp32, bf16, fp16), each at fp32 and at
    /// every --precision it offers, on a dynamo ONNX export of MMSegmentation's model made once
    /// and cached under ~/.cache/beit-seg/bench-onnx. Each runs in a child Python (the project
    /// venv) with this process's environment and glibc's default malloc settings; `--backend
    /// tch` sets its own (docs/performance.md, "Allocation"; `GLIBC_TUNABLES` gives them to all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub against: Vec<crate::bench::Engine>,
    /// What every side times: `labels` (the logits resized to the input + argmax, what
    /// predict/eval need) or `head-logits` (the decode head's 1/4-resolution logits, no final
    /// resize, no argmax).
    #[arg(long, value_enum, default_value = "labels")]
    pub measure: crate::bench::Measure,
    /// Same as `--against pytorch`.
    #[arg(long)]
    pub against_pytorch: bool,
    /// The Python with MMSegmentation, ONNX Runtime and OpenVINO (default: $BEIT_SEG_PYTHON or
    /// the project venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the result rows as a JSON list here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace an existing --json file (never a device or FIFO).
    #[arg(long)]
    pub force: bool,
}

/// `beit-seg bench`.
pub fn run_bench_cli(a: BenchArgs) -> Result<ExitCode> {
    let preset_name = match a.config.as_str() {
        "base" => "beit-base-640",
        "large" => "beit-large-640",
        o => bail!("--config: unknown config {o} (base or large)"),
    };
    let Some(model) = crate::config::presets::model_dict(preset_name) else {
        bail!("no built-in preset {preset_name}")
    };
    if a.threads == Some(0) {
        bail!("--threads 0: give at least 1 thread (or leave it out for all cores)");
    }
    if a.iters == 0 {
        bail!("--iters 0: at least one timed run is needed");
    }
    if a.rounds == 0 {
        bail!("--rounds 0: at least one round is needed");
    }
    if let Some(p) = &a.json {
        crate::files::check_output(p, a.force, &[])
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    let opts = BenchOptions {
        backend: a.backend,
        device: a.device,
        precisions: a.precision,
        config_name: a.config,
        model,
        size: a.size,
        threads: a.threads,
        warmup: a.warmup,
        iters: a.iters,
        rounds: a.rounds,
        against: engines(&a.against, a.against_pytorch),
        measure: a.measure,
        python: a.python,
        seed: a.seed,
    };
    let rows = bench::run(&opts)?;
    out!("{}", bench::to_text(&rows))?;
    if let Some(p) = &a.json {
        super::write_report(p, &serde_json::to_string_pretty(&rows)?, a.force, &[])?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--against` plus `--against-pytorch`, each engine once, in a fixed order.
fn engines(against: &[crate::bench::Engine], pytorch: bool) -> Vec<crate::bench::Engine> {
    let mut v = against.to_vec();
    if pytorch {
        v.push(crate::bench::Engine::Pytorch);
    }
    v.sort();
    v.dedup();
    v
}
