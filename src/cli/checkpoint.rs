//! `beit-seg inspect` and `beit-seg convert` (checkpoints).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::checkpoint::{
    convert as convert_state, detect_dialect, export, read_any, write_any, ConvertOptions, Dialect, ExportOptions,
};
use crate::checkpoint::{ReadOptions, WriteOptions};

/// List the tensors of a checkpoint (.pth, .safetensors, .npz) or .npy file: key, dtype, shape,
/// and the key dialect. Nothing in a .pth is executed (restricted unpickler, like
/// torch.load(weights_only=True)).
///
/// Example: beit-seg inspect upernet_beit-base.pth | head
#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// The file to list.
    pub file: PathBuf,
}

/// Convert a BEiT checkpoint (official, pretrain with shared table, UNILM ADE20K, HF, mmseg) to
/// MMSegmentation names, resizing relative-position tables for --img-size.
///
/// Prints what was renamed, dropped and resized. DST is never overwritten without --force, and
/// is written atomically (temporary file + rename).
///
/// Examples:
///   beit-seg convert beit_base_patch16_224_pt22k_ft22k.pth beit-b.pth --img-size 640
///   beit-seg convert fixtures/tiny-whole/weights.npz hf.safetensors --to hf
#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The checkpoint to read.
    pub src: PathBuf,
    /// The file to write (.pth, .safetensors or .npz).
    pub dst: PathBuf,
    /// Source dialect: beit-official, beit-pretrain-shared, unilm-ade, hf, mmseg (default: detected).
    #[arg(long = "from")]
    pub from: Option<String>,
    /// Resize rel-pos tables for this input size (square; with --patch-size), e.g. 640.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Patch size of the model (the window is img_size / patch_size).
    #[arg(long, default_value_t = 16)]
    pub patch_size: usize,
    /// Output format (default: from DST's extension, .pth otherwise).
    #[arg(long, value_parser = ["pth", "safetensors", "npz"])]
    pub format: Option<String>,
    /// Keep the final norm as mmseg's `ln1` (for final_norm=True models).
    #[arg(long)]
    pub final_norm: bool,
    /// Export dialect: after converting to mmseg names, write `hf` (transformers
    /// BeitForSemanticSegmentation) or `beit-official` (UNILM/timm, backbone only) names.
    #[arg(long = "to", value_name = "DIALECT")]
    pub to: Option<String>,
    /// Replace DST if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `beit-seg inspect`.
pub fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let file = a.file;
    let is_npy = file.extension().is_some_and(|e| e == "npy");
    let arrays = if is_npy {
        vec![(file.display().to_string(), crate::array::read_npy(&file)?)]
    } else {
        read_any(&file, ReadOptions { widen_half: true, opaque_globals: true })?
    };
    // Keys are padded to a common width of at most 100 columns (a longer key is printed as it
    // is; a width taken from a 65,536-character key would overflow `format!`'s width).
    let w = arrays.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(3).clamp(3, 100);
    let mut total = 0usize;
    for (k, a) in &arrays {
        let n: usize = a.shape().iter().product();
        total = total.saturating_add(n);
        let pad = w.saturating_sub(k.chars().count());
        outln!("{k}{:pad$}  {:<8} {:?}", "", a.dtype_name(), a.shape())?;
    }
    outln!("{} tensors, {} elements", arrays.len(), total)?;
    if !is_npy {
        match detect_dialect(arrays.iter().map(|(k, _)| k.as_str())) {
            Ok(d) => outln!("dialect: {d}")?,
            Err(e) => outln!("dialect: not recognised ({e})")?,
        }
    }
    let bad = crate::weights::non_finite(&arrays);
    for b in &bad {
        errln!("warning: not finite: {b}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `beit-seg convert`.
pub fn convert(a: ConvertArgs) -> Result<ExitCode> {
    let to = match &a.to {
        None => None,
        Some(n) => {
            Some(Dialect::from_name(n).with_context(|| format!("unknown --to dialect `{n}` (hf, beit-official)"))?)
        }
    };
    let dialect = match &a.from {
        None => None,
        Some(n) => Some(Dialect::from_name(n).with_context(|| {
            format!("unknown dialect `{n}` (beit-official, beit-pretrain-shared, unilm-ade, hf, mmseg)")
        })?),
    };
    if a.patch_size == 0 {
        bail!("--patch-size must be positive");
    }
    let dst_window = a.img_size.map(|s| (s / a.patch_size, s / a.patch_size));
    let dst = match a.format.as_deref() {
        None => a.dst.clone(),
        Some(f) => {
            if a.dst.extension().is_some_and(|e| e != f) {
                bail!("--format {f} does not match the extension of {}", a.dst.display());
            }
            if a.dst.extension().is_none() {
                a.dst.with_extension(f)
            } else {
                a.dst.clone()
            }
        }
    };
    // Before reading anything: DST is never SRC, never a device / FIFO (not even with
    // --force), and replaces an existing file only with --force.
    crate::files::check_output(&dst, a.force, &[a.src.as_path()])
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dst.display()))?;
    if let Some(s) = a.img_size {
        let win = s / a.patch_size;
        if win == 0 {
            bail!("--img-size {s} is smaller than --patch-size {}", a.patch_size);
        }
    }
    let state = read_any(&a.src, ReadOptions { widen_half: true, opaque_globals: true })?;
    let n_in = state.len();
    let (out, report) = convert_state(state, &ConvertOptions { dialect, dst_window, final_norm: a.final_norm })
        .with_context(|| match a.img_size {
            Some(s) => format!("converting {} for --img-size {s} (window {s}/{})", a.src.display(), a.patch_size),
            None => format!("converting {}", a.src.display()),
        })?;
    let (out, report) = match to {
        None => (out, report),
        Some(to) => {
            outln!(
                "{}: dialect {}, {} tensors in, {} in mmseg names",
                a.src.display(),
                report.dialect,
                n_in,
                out.len()
            )?;
            export(out, to, &ExportOptions::default())
                .with_context(|| format!("exporting {} to {to}", a.src.display()))?
        }
    };
    outln!("{}: dialect {}, {} tensors in, {} out", a.src.display(), report.dialect, n_in, out.len())?;
    for (x, y) in &report.renamed {
        outln!("  renamed  {x} -> {y}")?;
    }
    for (k, why) in &report.dropped {
        outln!("  dropped  {k}: {why}")?;
    }
    for (k, x, y) in &report.resized {
        outln!("  resized  {k}: {x:?} -> {y:?}")?;
    }
    for n in &report.notes {
        outln!("  note: {n}")?;
    }
    write_any(&dst, &out, WriteOptions { force: a.force, ..Default::default() })?;
    outln!("wrote {}", dst.display())?;
    Ok(ExitCode::SUCCESS)
}
