//! The `eval`, `predict` and `merge` subcommands: argument structs (clap) and their entry
//! points. The work is in [`crate::eval`]; see docs/evaluation.md.
//!
//! The model comes from a checkpoint (`.pth`, `.safetensors`, `.npz`; any key dialect the
//! converter knows) and a config: a JSON file holding MMSegmentation's `model` dict (the schema
//! of a fixture case's `model`, with `data_preprocessor` and `test_cfg`), or an object with
//! `model` and optionally `dataset` (as a `pipeline` fixture's `case.json`: layout, suffixes,
//! `test_pipeline`, `classes`, `aug`), or a built-in preset matching the real configs
//! (`beit-base-640`, `beit-large-640`, docs/mmseg-beit-upernet.md §1).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::backend::{self, BackendSpec, Model};
use crate::config::SegmentorConfig;
use crate::data::ade20k::{DatasetSpec, Shard};
use crate::data::image;
use crate::eval::{self, DatasetSection, EvalSettings, MsFlip, RunOptions, TestPipeline};
use crate::float::Dtype;
use crate::weights::load_state_dict;

use super::progress::Progress;

/// Shows evaluation events on `bar`.
fn eval_progress(bar: &Progress) -> eval::ProgressFn {
    let bar = bar.clone();
    eval::ProgressFn(std::sync::Arc::new(move |e: &eval::Event<'_>| match e {
        eval::Event::Start { planned, recorded } => bar.set(*recorded as u64, *planned as u64, "starting"),
        eval::Event::Note(m) => bar.note(&format!("eval: {m}")),
        eval::Event::Augmentation { stem, done, total } => bar.inner(*done as u64, *total as u64, stem),
        eval::Event::Image { stem, recorded, planned, skipped } => {
            let msg = match skipped {
                Some(why) => format!("{stem} skipped: {why}"),
                None => stem.to_string(),
            };
            bar.set(*recorded as u64, *planned as u64, &msg);
        }
    }))
}

/// Where the model comes from (shared by `eval` and `predict`).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint (.pth, .safetensors or .npz; MMSegmentation, official BEiT, UNILM or HF key
    /// names). Nothing in a .pth is executed.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// JSON with MMSegmentation's model dict (as a fixture case's `model`), or an object with
    /// `model` and optionally `dataset` (e.g. a pipeline fixture's case.json).
    #[arg(long, value_name = "FILE.json", required_unless_present = "preset", conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in config matching MMSegmentation's: beit-base-640 or beit-large-640 (UPerNet,
    /// ADE20K, 150 classes, slide 640/426).
    #[arg(long, value_parser = crate::config::presets::NAMES)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub backend: super::BackendArgs,
    /// Test-time augmentation: `ms-flip` (MMSegmentation 0.x multi-scale + flip, 12 passes).
    #[arg(long, value_parser = ["none", "ms-flip"])]
    pub aug: Option<String>,
}

/// `beit-seg eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset root in ADE20K layout (ADEChallengeData2016: images/validation/*.jpg,
    /// annotations/validation/*.png).
    #[arg(long, value_name = "DIR")]
    pub data_root: PathBuf,
    /// Image directory below the root (default: the config's `dataset.img_dir`, else images/validation).
    #[arg(long)]
    pub img_dir: Option<String>,
    /// Annotation directory below the root (default: annotations/validation).
    #[arg(long)]
    pub ann_dir: Option<String>,
    /// Image file suffix (default: .jpg).
    #[arg(long)]
    pub img_suffix: Option<String>,
    /// Annotation file suffix (default: .png).
    #[arg(long)]
    pub seg_map_suffix: Option<String>,
    /// Only the first N images (sorted by file name).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Evaluate only images i with i % N == K (0-based); combine the shards with `beit-seg merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Output directory: results[.shard-K-of-N].jsonl (per image, appended as it goes; a rerun
    /// resumes) and metrics[.shard-K-of-N].json.
    #[arg(long, value_name = "DIR", default_value = "eval-out")]
    pub out: PathBuf,
    /// Also write each prediction as a label PNG <DIR>/<stem>.png (class + 1 with
    /// reduce_zero_label, the ADE20K annotation convention).
    #[arg(long, value_name = "DIR")]
    pub save_pred: Option<PathBuf>,
    /// Skip (and list) images that cannot be evaluated: missing or unreadable files, label maps
    /// that are not 8-bit single-channel, size mismatches, images too small for the crop.
    #[arg(long)]
    pub skip_bad: bool,
    /// Replace existing --save-pred files, and a metrics file in --out that no run of this
    /// results file wrote (never a device, FIFO or an input).
    #[arg(long)]
    pub force: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `beit-seg predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// Images (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory: <stem>.png (labels), <stem>_color.png (palette), <stem>_overlay.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Opacity of the colour mask in the overlay.
    #[arg(long, default_value_t = 0.5)]
    pub opacity: f32,
    /// Skip (and list) images that cannot be segmented (unreadable, too small for the crop)
    /// instead of stopping at the first; the exit status is 3 when any was skipped.
    #[arg(long)]
    pub skip_bad: bool,
    /// Replace existing output PNGs (never a device, FIFO or an input image).
    #[arg(long)]
    pub force: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `beit-seg merge`.
#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// Results files of the shards of one run (results.shard-K-of-N.jsonl).
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// The merged result JSON (same format as an unsharded run's metrics.json).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists (never a device, FIFO or one of the results files).
    #[arg(long)]
    pub force: bool,
}

/// A model config with its optional dataset section.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub model_json: Value,
    pub model: SegmentorConfig,
    pub dataset: Option<Value>,
    pub source: String,
}

/// Reads `--config` or builds `--preset`.
pub fn load_config(config: Option<&Path>, preset_name: Option<&str>) -> Result<LoadedConfig> {
    let (v, source) = match (config, preset_name) {
        (Some(p), _) => {
            let text = crate::files::read_regular_to_string(p, crate::files::MAX_TEXT_BYTES)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
            (v, p.display().to_string())
        }
        (None, Some(n)) => (
            crate::config::presets::model_dict(n).with_context(|| format!("unknown preset `{n}`"))?,
            format!("preset {n}"),
        ),
        (None, None) => bail!("give --config FILE.json or --preset NAME"),
    };
    let (model_json, dataset) = match v.get("model") {
        Some(m) => (m.clone(), v.get("dataset").cloned()),
        None => (v, None),
    };
    let model = SegmentorConfig::from_value(&model_json).with_context(|| format!("model config from {source}"))?;
    Ok(LoadedConfig { model_json, model, dataset, source })
}

/// Builds the network: the checkpoint (any dialect, converted on load) on the chosen backend.
pub fn build_model(spec: &BackendSpec, cfg: &SegmentorConfig, checkpoint: &Path) -> Result<Box<dyn Model>> {
    build_model_with_id(spec, cfg, checkpoint).map(|(m, _)| m)
}

/// [`build_model`], also returning the content identity of the weights
/// ([`crate::weights::content_sha256`] of the loaded state dict: hashed every time, about 1 s
/// per GB; no cache).
pub fn build_model_with_id(
    spec: &BackendSpec,
    cfg: &SegmentorConfig,
    checkpoint: &Path,
) -> Result<(Box<dyn Model>, String)> {
    let backend = backend::open(spec)?;
    let weights = load_state_dict(checkpoint, cfg, None)?;
    let id = crate::weights::content_sha256(&weights);
    let model = backend
        .load(cfg, weights, Dtype::F32)
        .with_context(|| format!("building the model from {}", checkpoint.display()))?;
    Ok((model, id))
}

/// The config's `dataset` section (an empty one when there is none).
fn dataset_section(cfg: &LoadedConfig) -> Result<DatasetSection> {
    match &cfg.dataset {
        Some(ds) => DatasetSection::from_value(ds).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.source)),
        None => Ok(DatasetSection::default()),
    }
}

/// The evaluation settings of a config (+ `--aug`).
pub fn settings_for(cfg: &LoadedConfig, aug: Option<&str>) -> Result<EvalSettings> {
    let section = dataset_section(cfg)?;
    // ADE20K's reduce_zero_label when there is no dataset section at all.
    let reduce = if cfg.dataset.is_none() { true } else { section.reduce_zero_label };
    let pipeline = match section.test_pipeline {
        Some(tp) => tp,
        None => TestPipeline { reduce_zero_label: reduce, ..TestPipeline::ade20k() },
    };
    let aug = match aug {
        None | Some("none") => None,
        Some("ms-flip") => Some(match section.aug {
            Some(a) => a,
            None => {
                // The 0.x recipe, scaled to this model: base scale of the Resize, min_size = crop.
                let base = match pipeline.resize {
                    eval::ResizeSpec::KeepRatio { scale } => scale,
                    eval::ResizeSpec::Exact { .. } => {
                        bail!("--aug ms-flip needs a keep-ratio Resize in the test pipeline")
                    }
                };
                let min_size = match cfg.model.test {
                    crate::config::TestMode::Slide { crop, .. } => Some(crop.0.min(crop.1)),
                    crate::config::TestMode::Whole => None,
                };
                MsFlip { img_scale: base, min_size, ..MsFlip::ade20k() }
            }
        }),
        Some(other) => bail!("unknown --aug `{other}` (none, ms-flip)"),
    };
    EvalSettings::new(&cfg.model, &cfg.model_json, pipeline, aug).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.source))
}

/// The `dataset.classes` of a config, if any (checked by [`check_class_names`]).
pub fn class_names(cfg: &LoadedConfig) -> Option<Vec<String>> {
    let list = cfg.dataset.as_ref()?.get("classes")?.as_array()?;
    list.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// Refuses a `dataset.classes` that is not a list of one name per class of the model.
pub fn check_class_names(cfg: &LoadedConfig) -> Result<()> {
    let Some(v) = cfg.dataset.as_ref().and_then(|d| d.get("classes")).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let n = cfg.model.decode_head.num_classes;
    match v.as_array() {
        Some(a) if a.iter().all(Value::is_string) => {
            if a.len() != n {
                bail!(
                    "{}: dataset.classes has {} names, but the model has {n} classes (model.decode_head.num_classes)",
                    cfg.source,
                    a.len()
                );
            }
            Ok(())
        }
        _ => bail!("{}: dataset.classes: expected a list of {n} class names (strings), got {v}", cfg.source),
    }
}

/// `beit-seg eval`.
pub fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    if args.limit == Some(0) {
        bail!("--limit 0: no image would be evaluated (give at least 1, or leave --limit out for all)");
    }
    let cfg = load_config(args.model.config.as_deref(), args.model.preset.as_deref())?;
    check_class_names(&cfg)?;
    let settings = settings_for(&cfg, args.model.aug.as_deref())?;
    let section = dataset_section(&cfg)?;
    let def = DatasetSpec::ade20k_val(&args.data_root);
    let spec = DatasetSpec {
        root: args.data_root.clone(),
        img_dir: args.img_dir.clone().or(section.img_dir).unwrap_or(def.img_dir),
        ann_dir: args.ann_dir.clone().or(section.ann_dir).unwrap_or(def.ann_dir),
        img_suffix: args.img_suffix.clone().or(section.img_suffix).unwrap_or(def.img_suffix),
        seg_map_suffix: args.seg_map_suffix.clone().or(section.seg_map_suffix).unwrap_or(def.seg_map_suffix),
    };
    if let Some(w) = image::jpeg_decoder_warning() {
        errln!("{w}");
    }
    let (model, weights_id) = build_model_with_id(&args.model.backend.spec(), &cfg.model, &args.model.checkpoint)?;
    let identity = json!({
        "model": cfg.model_json,
        // By content: the SHA-256 of the loaded tensors (the name is only shown in messages).
        "checkpoint": {
            "name": args.model.checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()),
            "sha256": weights_id,
        },
        "backend": model.describe(),
        "jpeg_decoder": image::jpeg_decoder_name(),
    });
    let bar = Progress::new("images", 0, args.quiet);
    let opts = RunOptions {
        limit: args.limit,
        shard: args.shard,
        out_dir: args.out.clone(),
        save_pred: args.save_pred.clone(),
        skip_bad: args.skip_bad,
        progress: Some(eval_progress(&bar)),
        stop_after: None,
        class_names: class_names(&cfg),
        force: args.force,
        inputs: std::iter::once(args.model.checkpoint.clone()).chain(args.model.config.clone()).collect(),
    };
    if !args.quiet {
        let aug = if settings.aug.is_some() { "ms+flip (MMSegmentation 0.x, 12 passes)" } else { "single scale" };
        errln!(
            "eval: {} on {} ({aug}); backend {}; results in {}",
            cfg.source,
            spec.root.display(),
            model.describe(),
            args.out.display()
        );
    }
    let out = eval::evaluate(&settings, model.as_ref(), &spec, identity, &opts);
    bar.finish();
    let out = out?;
    outln!("{}", out.report)?;
    outln!("images evaluated: {}, skipped: {}", out.evaluated, out.skipped.len())?;
    for s in &out.skipped {
        outln!("  skipped {}: {}", s.stem, s.reason)?;
    }
    if let Some(s) = args.shard {
        outln!("shard {s}: partial result; combine all shards with `beit-seg merge {}/results.shard-*-of-{}.jsonl --out FILE`", args.out.display(), s.n)?;
    }
    outln!("results: {}", out.results_path.display())?;
    if let Some(p) = &out.metrics_path {
        outln!("metrics: {}", p.display())?;
    }
    if let Some(w) = image::jpeg_decoder_warning() {
        errln!("{w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `beit-seg predict`.
pub fn run_predict(args: PredictArgs) -> Result<ExitCode> {
    if !(args.opacity.is_finite() && (0.0..=1.0).contains(&args.opacity)) {
        bail!("--opacity {}: must be a number from 0 to 1", args.opacity);
    }
    let cfg = load_config(args.model.config.as_deref(), args.model.preset.as_deref())?;
    check_class_names(&cfg)?;
    let settings = settings_for(&cfg, args.model.aug.as_deref())?;
    // Every output is planned and checked before the model is loaded: two inputs never write
    // the same file, no output is an input, none replaces a file without --force.
    let mut planned: std::collections::HashMap<PathBuf, &Path> = std::collections::HashMap::new();
    for img in &args.images {
        for f in output_files(&args.out, img) {
            if let Some(other) = planned.insert(f.clone(), img) {
                if other == img.as_path() || crate::files::same_file(other, img) {
                    bail!("{} is given twice", img.display());
                }
                bail!(
                    "{} and {} would both be written to {}: rename one of them, or segment them into different --out directories",
                    other.display(),
                    img.display(),
                    f.display()
                );
            }
        }
    }
    let inputs: Vec<&Path> = args
        .images
        .iter()
        .map(PathBuf::as_path)
        .chain([args.model.checkpoint.as_path()])
        .chain(args.model.config.as_deref())
        .collect();
    for f in planned.keys() {
        crate::files::check_output(f, args.force, &inputs)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", f.display()))?;
    }
    let any_jpeg = args.images.iter().any(|p| {
        let mut head = [0u8; 16];
        crate::files::open_regular(p).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).is_ok()
            && image::sniff(&head) == Some(image::Format::Jpeg)
    });
    if any_jpeg {
        if let Some(w) = image::jpeg_decoder_warning() {
            errln!("{w}");
        }
    }
    let model = build_model(&args.model.backend.spec(), &cfg.model, &args.model.checkpoint)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let palette = image::palette(settings.num_classes);
    let names = crate::metrics::class_names_or_default(class_names(&cfg).as_deref(), settings.num_classes);
    let bar = Progress::new("images", args.images.len() as u64, args.quiet);
    let mut skipped = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        bar.set(i as u64, args.images.len() as u64, &path.display().to_string());
        match predict_one(&args, &settings, model.as_ref(), path, &palette, &names, &bar, &inputs) {
            Ok(line) => outln!("{line}")?,
            Err(e) if args.skip_bad && is_bad_input(&e) => {
                bar.note(&format!("skipped {}: {e:#}", path.display()));
                skipped.push((path.clone(), format!("{e:#}")));
            }
            Err(e) => {
                bar.finish();
                return Err(e);
            }
        }
    }
    bar.finish();
    for (p, why) in &skipped {
        errln!("skipped {}: {why}", p.display());
    }
    Ok(if skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    e.downcast_ref::<eval::EvalError>().is_some_and(|e| e.is_bad_input())
        || e.downcast_ref::<image::ImageError>().is_some()
}

/// The three PNGs `predict` writes for `img`: `<stem>.png`, `<stem>_color.png`,
/// `<stem>_overlay.png` in `out`.
fn output_files(out: &Path, img: &Path) -> [PathBuf; 3] {
    let stem = img.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    [out.join(format!("{stem}.png")), out.join(format!("{stem}_color.png")), out.join(format!("{stem}_overlay.png"))]
}

/// Segments one image and writes its three PNGs; returns the summary line.
#[allow(clippy::too_many_arguments)]
fn predict_one(
    args: &PredictArgs,
    settings: &EvalSettings,
    model: &dyn Model,
    path: &Path,
    palette: &[[u8; 3]],
    names: &[String],
    bar: &Progress,
    inputs: &[&Path],
) -> Result<String> {
    let img = image::read_bgr(path)?;
    let progress = |done: usize, total: usize| bar.inner(done as u64, total as u64, "augmentations");
    let p = eval::predict_with(settings, model, img.view(), &path.display().to_string(), &progress)?;
    let labels = image::labels_to_png_values(p.pred.view(), settings.pipeline.reduce_zero_label);
    let color = image::colorize(p.pred.view(), palette);
    let over = image::overlay(img.view(), color.view(), args.opacity);
    let files = output_files(&args.out, path);
    image::write_label_png_to(&files[0], labels.view(), args.force, inputs)?;
    image::write_rgb_png_to(&files[1], color.view(), args.force, inputs)?;
    image::write_rgb_png_to(&files[2], over.view(), args.force, inputs)?;
    let (h, w) = p.pred.dim();
    let mut counts = vec![0usize; settings.num_classes];
    p.pred.iter().for_each(|&c| counts[c as usize] += 1);
    let mut top: Vec<(usize, usize)> = counts.into_iter().enumerate().filter(|(_, n)| *n > 0).collect();
    top.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let summary: Vec<String> = top
        .iter()
        .take(5)
        .map(|(c, n)| {
            format!("{} {:.1}%", names.get(*c).map(String::as_str).unwrap_or("?"), 100.0 * *n as f64 / (h * w) as f64)
        })
        .collect();
    Ok(format!("{}: {h}x{w}: {} -> {}", path.display(), summary.join(", "), files[0].display()))
}

/// `beit-seg merge`.
pub fn run_merge(args: MergeArgs) -> Result<ExitCode> {
    let out = eval::merge_with(&args.results, &args.out, None, args.force)?;
    outln!("{}", out.report)?;
    outln!("images evaluated: {}, skipped: {}", out.evaluated, out.skipped.len())?;
    outln!("merged {} files -> {}", args.results.len(), args.out.display())?;
    Ok(ExitCode::SUCCESS)
}
