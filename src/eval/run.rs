//! The evaluation loop: every image of a dataset (or of one shard) through [`predict`], one
//! results line per image, resumable; the metrics of the whole run at the end.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::results::{
    comparable_run, identity_mismatch, read_results, skipped_and_evaluated, sum_records, ImageRecord, ResultsHeader,
    RESULTS_VERSION,
};
use super::{image_areas, io_err, predict_with, EvalError, EvalSettings};
use crate::backend::Model;
use crate::data::ade20k::{self, DatasetSpec, Shard, Skipped};
use crate::data::image;
use crate::metrics::{class_names_or_default, compute_metrics, AreaTotals, Metrics};

// ------------------------------------------------------------------------------ a run

/// Options of [`evaluate`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only the first N images of the sorted listing.
    pub limit: Option<usize>,
    pub shard: Option<Shard>,
    /// Directory for `results*.jsonl` and `metrics*.json` (created).
    pub out_dir: PathBuf,
    /// Write predicted label PNGs here (`<stem>.png`; class + 1 when `reduce_zero_label`, the
    /// ADE20K annotation convention).
    pub save_pred: Option<PathBuf>,
    /// Record undecodable / too small / mismatched images as skipped instead of failing.
    pub skip_bad: bool,
    /// Called with each step of the run (the library prints nothing itself).
    pub progress: Option<ProgressFn>,
    /// Stop (as if killed) after this many newly evaluated images; for tests of resuming.
    pub stop_after: Option<usize>,
    /// Class names for the table (default: ADE20K's when there are 150 classes).
    pub class_names: Option<Vec<String>>,
    /// Replace existing files in `save_pred` (and a `metrics*.json` left by another run).
    pub force: bool,
    /// The command's input files (checkpoint, config): no output is ever written over them.
    pub inputs: Vec<PathBuf>,
}

/// What a run (or a merge) produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub totals: AreaTotals,
    pub metrics: Metrics,
    /// Images evaluated (not skipped).
    pub evaluated: usize,
    pub skipped: Vec<Skipped>,
    /// All planned images are recorded (false after `stop_after`).
    pub complete: bool,
    pub results_path: PathBuf,
    pub metrics_path: Option<PathBuf>,
    /// The JSON written to `metrics_path`.
    pub json: Value,
    /// Per-class table + summary, as printed.
    pub report: String,
}

fn shard_suffix(shard: Option<Shard>) -> String {
    shard.map(|s| format!(".shard-{}-of-{}", s.k, s.n)).unwrap_or_default()
}

/// The results file of a run in `out_dir`.
pub fn results_path(out_dir: &Path, shard: Option<Shard>) -> PathBuf {
    out_dir.join(format!("results{}.jsonl", shard_suffix(shard)))
}

/// The per-class table and the summary line of a result.
pub fn format_report(metrics: &Metrics, names: &[String]) -> String {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let table = metrics.table(&refs);
    format!(
        "per class results:\n{table}\naAcc: {:.2}  mIoU: {:.2}  mAcc: {:.2}",
        metrics.a_acc, metrics.m_iou, metrics.m_acc
    )
}

/// A step of an evaluation run, reported to [`RunOptions::progress`].
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The work list is known: `planned` images in this run (or shard), `recorded` of them
    /// already in the results file (a resumed run).
    Start { planned: usize, recorded: usize },
    /// Something worth telling (a resumed file, a dropped torn line).
    Note(String),
    /// Augmentation `done` of `total` of image `stem` is finished.
    Augmentation { stem: &'a str, done: usize, total: usize },
    /// Image `stem` is recorded (`skipped`: why it was left out).
    Image { stem: &'a str, recorded: usize, planned: usize, skipped: Option<&'a str> },
}

/// The progress callback of a run.
#[derive(Clone)]
pub struct ProgressFn(pub std::sync::Arc<dyn Fn(&Event<'_>) + Send + Sync>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

fn report(opts: &RunOptions, e: Event<'_>) {
    if let Some(p) = &opts.progress {
        (p.0)(&e);
    }
}

/// Builds the final JSON (the fixture format's `metrics` plus run information).
pub(super) fn result_json(
    metrics: &Metrics,
    header: &ResultsHeader,
    evaluated: usize,
    skipped: &[Skipped],
    names: &[String],
    partial: Option<&str>,
) -> Value {
    json!({
        "format": "beit-seg-eval/1",
        "metrics": metrics,
        "classes": names,
        "images_evaluated": evaluated,
        "images_skipped": skipped,
        "num_images": header.num_images,
        "partial": partial,
        "run": header.run,
    })
}

/// Evaluates (the shard of) a dataset, resuming from an existing results file (see the module
/// docs). `run_identity` is recorded in the header and must match on resume; it should hold
/// everything that determines the numbers (model config, checkpoint, settings, decoder...).
pub fn evaluate(
    settings: &EvalSettings,
    model: &dyn Model,
    spec: &DatasetSpec,
    run_identity: Value,
    opts: &RunOptions,
) -> Result<Outcome, EvalError> {
    let listing = ade20k::list(spec, opts.skip_bad)?;
    let total = listing.samples.len() + listing.skipped.len();
    let num_images = opts.limit.map_or(total, |l| l.min(total));
    let in_run = |i: usize| i < num_images && opts.shard.is_none_or(|s| s.contains(i));
    let names = class_names_or_default(opts.class_names.as_deref(), settings.num_classes);
    let ids = run_ids(settings, &run_identity, &listing, num_images, opts, &names, spec);
    let header = ResultsHeader {
        beit_seg_results: RESULTS_VERSION,
        run: json!({"identity": run_identity, "settings": settings, "dataset": dataset_identity(spec, &listing, num_images),
                    "limit": opts.limit, "skip_bad": opts.skip_bad, "classes": names}),
        ids,
        num_images,
        num_classes: settings.num_classes,
        shard: opts.shard,
    };
    let (mut results, mut records) = ResultsFile::open(&header, opts, &in_run)?;
    sum_records(&records, settings.num_classes).map_err(|msg| results.err(msg))?;
    let done: std::collections::BTreeSet<usize> = records.iter().map(|r| r.index).collect();
    let mut work: Vec<(usize, Work)> = listing.samples.iter().map(|s| (s.index, Work::Image(s))).collect();
    work.extend(listing.skipped.iter().map(|s| (s.index, Work::Missing(s))));
    work.sort_by_key(|(i, _)| *i);
    work.retain(|(i, _)| in_run(*i) && !done.contains(i));
    let planned = (0..num_images).filter(|&i| in_run(i)).count();
    check_save_pred(&work, opts)?;
    report(opts, Event::Start { planned, recorded: records.len() });
    let mut stopped = false;
    for (new_images, (index, w)) in work.iter().enumerate() {
        if opts.stop_after.is_some_and(|k| new_images >= k) {
            stopped = true;
            break;
        }
        let rec = eval_work(settings, model, *index, w, opts)?;
        results.append(&rec)?;
        records.push(rec);
        let last = records.last().expect("just pushed");
        report(
            opts,
            Event::Image { stem: &last.stem, recorded: records.len(), planned, skipped: last.skipped.as_deref() },
        );
    }
    let complete = !stopped && records.len() == planned;
    finish(results, &records, &header, &names, complete, opts)
}

/// One entry of the work list: an image of the listing, or one the listing skipped.
enum Work<'a> {
    Image(&'a ade20k::Sample),
    Missing(&'a Skipped),
}

/// The data identified by its layout and listing (not its root path, so shards may run on
/// machines that mount it elsewhere): an FNV-1a 64 hash of the first `num_images` stems.
fn dataset_identity(spec: &DatasetSpec, listing: &ade20k::Listing, num_images: usize) -> Value {
    let mut stems_hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut all: Vec<(usize, &str)> = listing.samples.iter().map(|s| (s.index, s.stem.as_str())).collect();
    all.extend(listing.skipped.iter().map(|s| (s.index, s.stem.as_str())));
    all.sort();
    for (_, stem) in all.iter().take(num_images) {
        for b in stem.bytes().chain([b'\n']) {
            stems_hash = (stems_hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    json!({
        "img_dir": spec.img_dir, "ann_dir": spec.ann_dir, "img_suffix": spec.img_suffix, "seg_map_suffix": spec.seg_map_suffix,
        "listed": all.len(), "stems_fnv1a64": format!("{stems_hash:016x}"),
    })
}

/// Existing prediction PNGs are refused (without `--force`) before any image is evaluated.
fn check_save_pred(work: &[(usize, Work)], opts: &RunOptions) -> Result<(), EvalError> {
    let (Some(dir), false) = (&opts.save_pred, opts.force) else { return Ok(()) };
    for (_, w) in work {
        if let Work::Image(s) = w {
            let p = dir.join(format!("{}.png", s.stem));
            if std::fs::symlink_metadata(&p).is_ok() {
                return Err(EvalError::Results {
                    path: p,
                    msg: "already exists (pass --force to replace the --save-pred files)".into(),
                });
            }
        }
    }
    Ok(())
}

/// The record of one work item: the image's areas, or why it was skipped.
fn eval_work(
    settings: &EvalSettings,
    model: &dyn Model,
    index: usize,
    w: &Work,
    opts: &RunOptions,
) -> Result<ImageRecord, EvalError> {
    let t0 = Instant::now();
    let s = match w {
        Work::Missing(s) => {
            return Ok(ImageRecord { index, stem: s.stem.clone(), skipped: Some(s.reason.clone()), ..empty_record() })
        }
        Work::Image(s) => s,
    };
    match eval_one(settings, model, s, opts) {
        Ok((shape, a)) => Ok(ImageRecord {
            index,
            stem: s.stem.clone(),
            shape: Some(shape),
            intersect: Some(a.intersect),
            union: Some(a.union),
            pred_label: Some(a.pred_label),
            label: Some(a.label),
            seconds: Some(t0.elapsed().as_secs_f64()),
            ..empty_record()
        }),
        Err(e) if opts.skip_bad && e.is_bad_input() => {
            Ok(ImageRecord { index, stem: s.stem.clone(), skipped: Some(e.to_string()), ..empty_record() })
        }
        Err(e) => Err(e),
    }
}

/// The metrics of the recorded images; `metrics*.json` written when the run is complete.
fn finish(
    results: ResultsFile,
    records: &[ImageRecord],
    header: &ResultsHeader,
    names: &[String],
    complete: bool,
    opts: &RunOptions,
) -> Result<Outcome, EvalError> {
    let ResultsFile { file, path: rpath, metrics_path } = results;
    drop(file);
    let totals =
        sum_records(records, header.num_classes).map_err(|msg| EvalError::Results { path: rpath.clone(), msg })?;
    let metrics = compute_metrics(&totals);
    let (skipped, evaluated) = skipped_and_evaluated(records);
    let partial = match (complete, opts.shard) {
        (false, _) => Some("incomplete run".to_string()),
        (true, Some(s)) => Some(format!("shard {s} only; combine the shards with `beit-seg merge`")),
        (true, None) => None,
    };
    let json = as_written(result_json(&metrics, header, evaluated, &skipped, names, partial.as_deref()));
    let metrics_path = if complete {
        let inputs: Vec<&Path> = opts.inputs.iter().map(PathBuf::as_path).collect();
        let text = serde_json::to_string_pretty(&json).expect("serializable");
        crate::files::write_output_bytes(&metrics_path, true, &inputs, text.as_bytes())
            .map_err(io_err(&metrics_path))?;
        Some(metrics_path)
    } else {
        None
    };
    let report = format_report(&metrics, names);
    Ok(Outcome { totals, metrics, evaluated, skipped, complete, results_path: rpath, metrics_path, json, report })
}

/// A run's results file, open for appending and locked (one writer per file).
struct ResultsFile {
    file: std::fs::File,
    path: PathBuf,
    /// Where the metrics of a complete run go.
    metrics_path: PathBuf,
}

impl ResultsFile {
    /// Opens (creating) the results file of `opts.out_dir` / `opts.shard` and locks it. A new
    /// file gets `header`; an existing one must be from this very run (same identity and
    /// settings, only indices `in_run`) and its records come back, a torn last line cut off.
    fn open(
        header: &ResultsHeader,
        opts: &RunOptions,
        in_run: &dyn Fn(usize) -> bool,
    ) -> Result<(Self, Vec<ImageRecord>), EvalError> {
        std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
        let path = results_path(&opts.out_dir, opts.shard);
        let metrics_path = opts.out_dir.join(format!("metrics{}.json", shard_suffix(opts.shard)));
        let file = Self::check_and_open(&path, &metrics_path, opts)?;
        let mut rf = ResultsFile { file, path, metrics_path };
        // One writer per results file: a second eval on the same --out (and shard) stops here.
        if !crate::files::try_lock(&rf.file, true).map_err(io_err(&rf.path))? {
            return Err(rf.err(
                "another eval is writing this file (it is locked); wait for it to finish, or use another --out".into(),
            ));
        }
        if rf.file.metadata().map_err(io_err(&rf.path))?.len() == 0 {
            let header_line = serde_json::to_string(header).expect("serializable");
            writeln!(rf.file, "{header_line}").map_err(io_err(&rf.path))?;
            rf.file.sync_data().map_err(io_err(&rf.path))?;
            return Ok((rf, Vec::new()));
        }
        let records = rf.resume(header, opts, in_run)?;
        Ok((rf, records))
    }

    /// The results file is this run's own (read back on resume), but never a device, a FIFO
    /// or one of the command's inputs; a metrics file that no run of this results file wrote is
    /// kept unless `--force` (checked before the results file is created).
    fn check_and_open(path: &Path, metrics_path: &Path, opts: &RunOptions) -> Result<std::fs::File, EvalError> {
        let err = |msg: String| EvalError::Results { path: path.to_path_buf(), msg };
        let inputs: Vec<&Path> = opts.inputs.iter().map(PathBuf::as_path).collect();
        match std::fs::metadata(path) {
            Ok(md) if !md.is_file() => {
                return Err(err(format!("is {}, not a regular file", crate::files::kind_of(&md))))
            }
            _ => {}
        }
        if let Some(i) = inputs.iter().find(|i| crate::files::same_file(path, i)) {
            return Err(err(format!("is also an input of this command ({})", i.display())));
        }
        let resumable = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        crate::files::check_output(metrics_path, resumable || opts.force, &inputs)
            .map_err(|e| EvalError::Results { path: metrics_path.to_path_buf(), msg: e.to_string() })?;
        let mut o = OpenOptions::new();
        o.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(libc::O_NONBLOCK);
        }
        o.open(path).map_err(io_err(path))
    }

    /// The records of an existing file of this run.
    fn resume(
        &mut self,
        header: &ResultsHeader,
        opts: &RunOptions,
        in_run: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<ImageRecord>, EvalError> {
        let (old, records, torn) = read_results(&self.path)?;
        if let Some(why) = identity_mismatch(&old, "the file", header, "this run") {
            return Err(self.err(format!(
                "this results file is from another run ({why}); remove it or choose another --out directory"
            )));
        }
        // Both sides through the same print and parse, so that float printing cannot differ.
        let same = comparable_run(&old.run) == comparable_run(&as_written(header.run.clone()))
            && old.num_images == header.num_images
            && old.num_classes == header.num_classes
            && old.shard == header.shard;
        if !same {
            return Err(self.err(
                "this results file is from a run with different settings (model, checkpoint, data, limit, shard or options); \
                 remove it or choose another --out directory"
                    .into(),
            ));
        }
        if let Some(len) = torn {
            self.file.set_len(len).map_err(io_err(&self.path))?;
            let note = format!("{}: dropped an incomplete last line (interrupted write)", self.path.display());
            report(opts, Event::Note(note));
        }
        if let Some(r) = records.iter().find(|r| !in_run(r.index)) {
            return Err(self.err(format!("image index {} ({}) does not belong to this run", r.index, r.stem)));
        }
        if !records.is_empty() {
            let note = format!("resuming from {} ({} images already recorded)", self.path.display(), records.len());
            report(opts, Event::Note(note));
        }
        Ok(records)
    }

    /// Appends one record line (flushed).
    fn append(&mut self, rec: &ImageRecord) -> Result<(), EvalError> {
        let line = serde_json::to_string(rec).expect("serializable");
        self.file.write_all(format!("{line}\n").as_bytes()).map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))
    }

    fn err(&self, msg: String) -> EvalError {
        EvalError::Results { path: self.path.clone(), msg }
    }
}

/// The content identities of a run ([`ResultsHeader::ids`]).
fn run_ids(
    settings: &EvalSettings,
    run_identity: &Value,
    listing: &ade20k::Listing,
    num_images: usize,
    opts: &RunOptions,
    names: &[String],
    spec: &DatasetSpec,
) -> std::collections::BTreeMap<String, String> {
    use crate::weights::sha256_hex;
    let text = |v: &Value| serde_json::to_string(v).expect("serializable");
    let checkpoint = run_identity
        .pointer("/checkpoint/sha256")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| sha256_hex(text(run_identity).as_bytes()));
    let config = sha256_hex(text(run_identity.get("model").unwrap_or(run_identity)).as_bytes());
    // The data: every image of the run by relative name, with the sizes of its image and
    // annotation files (not the root path, so shards may run where the data is mounted
    // elsewhere; a changed file of another size is a different data set).
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len().to_string()).unwrap_or_else(|_| "-".into());
    let mut rows: Vec<(usize, String)> = listing
        .samples
        .iter()
        .map(|s| (s.index, format!("{}\t{}\t{}", s.stem, size(&s.img_path), size(&s.ann_path))))
        .collect();
    rows.extend(listing.skipped.iter().map(|s| (s.index, format!("{}\t{}\tmissing", s.stem, size(&s.path)))));
    rows.sort();
    let mut data = format!("{}\t{}\t{}\t{}\n", spec.img_dir, spec.ann_dir, spec.img_suffix, spec.seg_map_suffix);
    for (_, r) in rows.iter().take(num_images) {
        data.push_str(r);
        data.push('\n');
    }
    let pipeline = text(&json!({"settings": settings, "classes": names}));
    let options = text(&json!({
        "limit": opts.limit, "skip_bad": opts.skip_bad,
        "backend": run_identity.get("backend"), "jpeg_decoder": run_identity.get("jpeg_decoder"),
    }));
    [
        ("checkpoint", checkpoint),
        ("config", config),
        ("data", sha256_hex(data.as_bytes())),
        ("pipeline", sha256_hex(pipeline.as_bytes())),
        ("options", sha256_hex(options.as_bytes())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The JSON as it will read back from the file (numbers parsed from their text).
pub(super) fn as_written(v: Value) -> Value {
    serde_json::from_str(&serde_json::to_string(&v).expect("serializable")).expect("round trip")
}

fn empty_record() -> ImageRecord {
    ImageRecord {
        index: 0,
        stem: String::new(),
        skipped: None,
        shape: None,
        intersect: None,
        union: None,
        pred_label: None,
        label: None,
        seconds: None,
    }
}

/// Decodes, predicts and scores one sample.
fn eval_one(
    settings: &EvalSettings,
    model: &dyn Model,
    s: &ade20k::Sample,
    opts: &RunOptions,
) -> Result<([usize; 2], AreaTotals), EvalError> {
    let img = image::read_bgr(&s.img_path)?;
    let label = image::read_label(&s.ann_path)?;
    let (h, w, _) = img.dim();
    let (lh, lw) = label.dim();
    if (lh, lw) != (h, w) {
        return Err(EvalError::LabelShape { img: s.img_path.clone(), ann: s.ann_path.clone(), h, w, lh, lw });
    }
    let progress = |done: usize, total: usize| report(opts, Event::Augmentation { stem: &s.stem, done, total });
    let p = predict_with(settings, model, img.view(), &s.img_path.display().to_string(), &progress)?;
    if let Some(dir) = &opts.save_pred {
        let vals = image::labels_to_png_values(p.pred.view(), settings.pipeline.reduce_zero_label);
        let mut inputs: Vec<&Path> = opts.inputs.iter().map(PathBuf::as_path).collect();
        inputs.extend([s.img_path.as_path(), s.ann_path.as_path()]);
        image::write_label_png_to(&dir.join(format!("{}.png", s.stem)), vals.view(), opts.force, &inputs)?;
    }
    Ok(([h, w], image_areas(&p.pred, &label, settings.pipeline.reduce_zero_label, settings.num_classes)))
}
