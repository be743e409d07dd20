//! `beit-seg`: the command line. Parsing and printing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use beit_seg::checkpoint::{
    convert, detect_dialect, export, read_any, write_any, ConvertOptions, Dialect, ExportOptions, ReadOptions,
    WriteOptions,
};
use beit_seg::cli_eval::{run_eval, run_merge, run_predict, EvalArgs, MergeArgs, PredictArgs};
use beit_seg::conformance::case::{discover, glob_match};
use beit_seg::conformance::report::{case_line, case_table, to_json, to_junit, CaseStatus, Summary};
use beit_seg::conformance::{run_case_dir, Backend, ReferenceBackend, VerifyOptions};

#[derive(Parser)]
#[command(
    name = "beit-seg",
    version,
    about = "Numerical reference and conformance suite for MMSegmentation's BEiT + UPerNet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run fixture cases (beit-fixture/1) on an implementation and compare every expected tensor.
    ///
    /// Each DIR is a case directory (with case.json) or a directory searched recursively for
    /// cases. Prints a table per case and closes with `N passed, N failed, N skipped`; exits
    /// non-zero if any case fails or cannot be loaded.
    Verify {
        /// Case directories, or directories containing cases.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The implementation under test: `ref` (the ndarray reference) or `tch` (libtorch fast
        /// path; builds with `--features tch`).
        #[arg(long, default_value = "ref")]
        backend: String,
        /// Device of the `tch` backend: cpu, cuda, cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Precision of the `tch` backend for float32 cases: fp32 (conformant, TF32 off), fp16,
        /// bf16 (reported, not conformant). float64 cases run in float64 with fp32.
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Only run cases whose name matches this glob (`*`, `?`); may be repeated.
        #[arg(long)]
        filter: Vec<String>,
        /// Write the full report as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write a JUnit XML report to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Run float64 cases in float32 with the fp32 tolerance (reported as such).
        #[arg(long)]
        as_f32: bool,
        /// Do not fail a case for expected tensors the backend does not produce (still listed).
        #[arg(long)]
        allow_uncovered: bool,
        /// Print only failing rows of each table.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Evaluate a checkpoint on an ADE20K-layout dataset (mIoU as MMSegmentation computes it);
    /// resumable and shardable.
    Eval(EvalArgs),
    /// Segment images: a label PNG, a colour mask and an overlay per image.
    Predict(PredictArgs),
    /// Combine the results files of `eval --shard K/N` runs into the totals of one run.
    Merge(MergeArgs),
    /// List the tensors of a checkpoint (.pth, .safetensors, .npz) or .npy file: key, dtype, shape.
    /// Nothing in a .pth is executed (restricted unpickler, like torch.load(weights_only=True)).
    Inspect { file: PathBuf },
    /// Convert a BEiT checkpoint (official, pretrain with shared table, UNILM ADE20K, HF, mmseg)
    /// to MMSegmentation names, resizing relative-position tables for --img-size.
    ///
    /// Prints what was renamed, dropped and resized. DST is never overwritten without --force,
    /// and is written atomically (temporary file + rename).
    Convert {
        src: PathBuf,
        dst: PathBuf,
        /// Source dialect: beit-official, beit-pretrain-shared, unilm-ade, hf, mmseg (default: detected).
        #[arg(long = "from")]
        from: Option<String>,
        /// Resize rel-pos tables for this input size (square; with --patch-size), e.g. 640.
        #[arg(long)]
        img_size: Option<usize>,
        #[arg(long, default_value_t = 16)]
        patch_size: usize,
        /// Output format (default: from DST's extension, .pth otherwise).
        #[arg(long)]
        format: Option<String>,
        /// Keep the final norm as mmseg's `ln1` (for final_norm=True models).
        #[arg(long)]
        final_norm: bool,
        /// Export dialect: after converting to mmseg names, write hf (transformers
        /// BeitForSemanticSegmentation) or beit-official (UNILM/timm, backbone only) names.
        #[arg(long = "to")]
        to: Option<String>,
        /// Replace DST if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Time the libtorch fast path on BEiT-B + UPerNet at 640 with random weights: crops/s
    /// (640x640) and images/s (640x854, slide, 2 windows) per precision, fp16/bf16 compared
    /// with fp32; plus MMSegmentation's PyTorch eager model when a Python with mmseg is found.
    Bench {
        /// Only `tch`.
        #[arg(long, default_value = "tch")]
        backend: String,
        /// cpu, cuda, cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Comma-separated precisions: fp32,fp16,bf16.
        #[arg(long, default_value = "fp32", value_delimiter = ',')]
        precision: Vec<String>,
        /// Intra-op threads (libtorch and the PyTorch run); default: libtorch's.
        #[arg(long)]
        threads: Option<i32>,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Python with MMSegmentation for the eager comparison (default: $BEIT_SEG_PYTHON or
        /// the project venv under ~/.cache/beit-seg).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Skip the PyTorch eager comparison.
        #[arg(long)]
        no_pytorch: bool,
        /// Also write the report to FILE.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn backend_by_name(name: &str, device: &str, precision: &str) -> Result<Box<dyn Backend>> {
    match name {
        "ref" | "reference" => Ok(Box::new(ReferenceBackend)),
        #[cfg(feature = "tch")]
        "tch" => Ok(Box::new(beit_seg::fast::TchBackend::from_names(device, precision)?)),
        #[cfg(not(feature = "tch"))]
        "tch" => {
            let _ = (device, precision);
            bail!("backend `tch` is not available in this build (rebuild with `--features tch`)")
        }
        other => bail!("unknown backend `{other}` (available: ref, tch)"),
    }
}

#[cfg(feature = "tch")]
#[allow(clippy::too_many_arguments)]
fn bench_cmd(
    backend: String,
    device: String,
    precision: Vec<String>,
    threads: Option<i32>,
    warmup: usize,
    iters: usize,
    python: Option<PathBuf>,
    no_pytorch: bool,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    use beit_seg::fast::bench::{bench, BenchOptions};
    use beit_seg::fast::{parse_device, Precision};
    if backend != "tch" {
        bail!("bench: only --backend tch is supported");
    }
    let precisions = precision.iter().map(|p| Precision::parse(p)).collect::<Result<Vec<_>, _>>()?;
    let opts = BenchOptions {
        device: parse_device(&device)?,
        precisions,
        threads,
        warmup,
        iters,
        python,
        pytorch: !no_pytorch,
        ..Default::default()
    };
    let report = bench(&opts)?;
    let text = report.to_text();
    print!("{text}");
    if let Some(p) = out {
        write_new_or_replace(&p, &text)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "tch"))]
#[allow(clippy::too_many_arguments)]
fn bench_cmd(
    _backend: String,
    _device: String,
    _precision: Vec<String>,
    _threads: Option<i32>,
    _warmup: usize,
    _iters: usize,
    _python: Option<PathBuf>,
    _no_pytorch: bool,
    _out: Option<PathBuf>,
) -> Result<ExitCode> {
    bail!("bench needs the libtorch backend: rebuild with `--features tch`")
}

fn write_new_or_replace(path: &PathBuf, text: &str) -> Result<()> {
    // Reports are outputs the user asked for by name; written atomically so a crash never leaves
    // half a file.
    beit_seg::fsutil::replace_file_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn verify(
    dirs: Vec<PathBuf>,
    backend: String,
    device: String,
    precision: String,
    filter: Vec<String>,
    json: Option<PathBuf>,
    junit: Option<PathBuf>,
    opts: VerifyOptions,
    quiet: bool,
) -> Result<ExitCode> {
    let backend = backend_by_name(&backend, &device, &precision)?;
    let mut cases = discover(&dirs)?;
    if !filter.is_empty() {
        cases.retain(|d| {
            let name = d.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            filter.iter().any(|f| glob_match(f, &name))
        });
    }
    if cases.is_empty() {
        bail!("no fixture cases (directories with a case.json) found under {:?}", dirs);
    }
    let mut reports = Vec::new();
    for dir in &cases {
        let r = run_case_dir(dir, backend.as_ref(), &opts);
        println!("{}", case_line(&r));
        let table = case_table(&r, quiet);
        print!("{table}");
        reports.push(r);
    }
    let s = Summary::of(&reports);
    println!();
    println!(
        "coverage: {}/{} expected tensors produced ({:.1}%) by backend `{}`",
        s.covered,
        s.tensors,
        s.coverage_percent(),
        backend.name()
    );
    for r in reports.iter().filter(|r| r.status == CaseStatus::Fail) {
        let first = r.first_failure().map(|t| format!(" (first failing tensor: {})", t.name)).unwrap_or_default();
        println!("failed: {}{first}", r.name);
    }
    if let Some(p) = json {
        write_new_or_replace(&p, &to_json(&reports))?;
    }
    if let Some(p) = junit {
        write_new_or_replace(&p, &to_junit(&reports))?;
    }
    println!("{}", s.closing_line());
    Ok(if s.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn inspect(file: PathBuf) -> Result<ExitCode> {
    let is_npy = file.extension().is_some_and(|e| e == "npy");
    let arrays = if is_npy {
        vec![(file.display().to_string(), beit_seg::array::read_npy(&file)?)]
    } else {
        let opts = ReadOptions { widen_half: true, opaque_globals: true };
        read_any(&file, opts).with_context(|| format!("reading {}", file.display()))?
    };
    let w = arrays.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    let mut total = 0usize;
    for (k, a) in &arrays {
        let n: usize = a.shape().iter().product();
        total += n;
        println!("{k:<w$}  {:<8} {:?}", a.dtype_name(), a.shape());
    }
    println!("{} tensors, {} elements", arrays.len(), total);
    if !is_npy {
        match detect_dialect(arrays.iter().map(|(k, _)| k.as_str())) {
            Ok(d) => println!("dialect: {d}"),
            Err(e) => println!("dialect: not recognised ({e})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn convert_cmd(
    src: PathBuf,
    dst: PathBuf,
    from: Option<String>,
    img_size: Option<usize>,
    patch_size: usize,
    format: Option<String>,
    final_norm: bool,
    to: Option<String>,
    force: bool,
) -> Result<ExitCode> {
    let to = match to {
        None => None,
        Some(n) => {
            Some(Dialect::from_name(&n).with_context(|| format!("unknown --to dialect `{n}` (hf, beit-official)"))?)
        }
    };
    let dialect = match from {
        None => None,
        Some(n) => Some(Dialect::from_name(&n).with_context(|| {
            format!("unknown dialect `{n}` (beit-official, beit-pretrain-shared, unilm-ade, hf, mmseg)")
        })?),
    };
    if patch_size == 0 {
        bail!("--patch-size must be positive");
    }
    let dst_window = img_size.map(|s| (s / patch_size, s / patch_size));
    let dst = match format.as_deref() {
        None => dst,
        Some(f @ ("pth" | "safetensors" | "npz")) => {
            if dst.extension().is_some_and(|e| e != f) {
                bail!("--format {f} does not match the extension of {}", dst.display());
            }
            if dst.extension().is_none() {
                dst.with_extension(f)
            } else {
                dst
            }
        }
        Some(f) => bail!("unknown --format `{f}` (pth, safetensors, npz)"),
    };
    if dst.exists() && !force {
        bail!("{} exists; pass --force to replace it", dst.display());
    }
    let opts = ReadOptions { widen_half: true, opaque_globals: true };
    // Checkpoint errors name the file already (src/checkpoint/mod.rs): no path context here.
    let state = read_any(&src, opts)?;
    let n_in = state.len();
    let (out, report) = convert(state, &ConvertOptions { dialect, dst_window, final_norm })
        .with_context(|| format!("converting {}", src.display()))?;
    let (out, report) = match to {
        None => (out, report),
        Some(to) => {
            println!(
                "{}: dialect {}, {} tensors in, {} in mmseg names",
                src.display(),
                report.dialect,
                n_in,
                out.len()
            );
            export(out, to, &ExportOptions::default())
                .with_context(|| format!("exporting {} to {to}", src.display()))?
        }
    };
    println!("{}: dialect {}, {} tensors in, {} out", src.display(), report.dialect, n_in, out.len());
    for (a, b) in &report.renamed {
        println!("  renamed  {a} -> {b}");
    }
    for (k, why) in &report.dropped {
        println!("  dropped  {k}: {why}");
    }
    for (k, a, b) in &report.resized {
        println!("  resized  {k}: {a:?} -> {b:?}");
    }
    for n in &report.notes {
        println!("  note: {n}");
    }
    write_any(&dst, &out, WriteOptions { force, ..Default::default() })?;
    println!("wrote {}", dst.display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Verify { dirs, backend, device, precision, filter, json, junit, as_f32, allow_uncovered, quiet } => {
            verify(
                dirs,
                backend,
                device,
                precision,
                filter,
                json,
                junit,
                VerifyOptions { as_f32, allow_uncovered },
                quiet,
            )
        }
        Command::Bench { backend, device, precision, threads, warmup, iters, python, no_pytorch, out } => {
            bench_cmd(backend, device, precision, threads, warmup, iters, python, no_pytorch, out)
        }
        Command::Inspect { file } => inspect(file),
        Command::Eval(a) => run_eval(a),
        Command::Predict(a) => run_predict(a),
        Command::Merge(a) => run_merge(a),
        Command::Convert { src, dst, from, img_size, patch_size, format, final_norm, to, force } => {
            convert_cmd(src, dst, from, img_size, patch_size, format, final_norm, to, force)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
