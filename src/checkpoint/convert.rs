//! Key conversion from the BEiT checkpoint dialects to MMSegmentation's names (docs/mmseg-beit-upernet.md §6.1–6.3).
//!
//! | dialect | recognised by | output names |
//! | --- | --- | --- |
//! | `beit-official` | `blocks.N.*`, `patch_embed.proj.*` (UNILM `modeling_finetune.py`) | backbone-relative (`layers.N.*`), as `beit2mmseg.py` |
//! | `beit-pretrain-shared` | `blocks.N.*` + shared `rel_pos_bias.relative_position_bias_table` (UNILM `modeling_pretrain.py`) | backbone-relative |
//! | `unilm-ade` | `backbone.blocks.N.*`, `backbone.fpn1/fpn2` (UNILM's ADE20K fine-tunes) | full segmentor names |
//! | `hf` | `beit.encoder.layer.N.*`, `beit.embeddings.*` (transformers) | backbone-relative, or full names when the file has `fpn*`/`decode_head` weights |
//! | `mmseg` | `layers.N.*` / `backbone.layers.N.*` (already converted) | unchanged |
//!
//! Rules:
//! - Official checkpoints follow MMSegmentation's `tools/model_converters/beit2mmseg.py`
//!   (`convert_beit`) exactly: `patch_embed.proj` → `patch_embed.projection`; keys starting with
//!   `blocks`: `blocks` → `layers`, then the first of: contains `norm` → every `norm` becomes `ln`;
//!   contains `mlp.fc1` → `ffn.layers.0.0`; contains `mlp.fc2` → `ffn.layers.1`.
//! - Keys the mmseg model has no parameter for are dropped and listed with the reason:
//!   classifier/pretraining keys (`head.*`, `fc_norm.*`, `lm_head.*`, `mask_token`, the final
//!   `norm.*` unless [`ConvertOptions::final_norm`]), `pos_embed`, and every
//!   `relative_position_index` (a derived buffer that mmseg rebuilds and `resize_rel_pos_embed`
//!   drops). `beit2mmseg` copies the classifier keys through and mmseg's non-strict load ignores
//!   them; dropping them here makes the result loadable strictly.
//! - The shared table of pretraining checkpoints is copied into every layer (as UNILM's loaders
//!   do; mmseg's converter ignores it).
//! - HF: `query/key/value.weight` are concatenated (in that order) into `qkv.weight`; the query
//!   and value biases become `q_bias`/`v_bias`; a key bias must be absent or zero.
//! - With [`ConvertOptions::dst_window`], every relative-position-bias table of another size is
//!   resized with [`super::relpos`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use ndarray::Axis;

use super::relpos::resize_rel_pos_any;
use super::CheckpointError;
use crate::array::AnyArray;

/// A checkpoint naming convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// UNILM fine-tuned BEiT (`blocks.N.*`, per-block tables), the input of `beit2mmseg.py`.
    BeitOfficial,
    /// UNILM self-supervised pretraining (`blocks.N.*` with one shared
    /// `rel_pos_bias.relative_position_bias_table`).
    BeitPretrainShared,
    /// UNILM's ADE20K segmentation fine-tunes (`backbone.blocks.N.*`, `backbone.fpn1/fpn2`).
    UnilmAde,
    /// Hugging Face transformers (`beit.encoder.layer.N.*`).
    Hf,
    /// Already MMSegmentation names.
    Mmseg,
}

impl Dialect {
    pub const ALL: [Dialect; 5] =
        [Dialect::BeitOfficial, Dialect::BeitPretrainShared, Dialect::UnilmAde, Dialect::Hf, Dialect::Mmseg];

    /// The dialect's name: `beit-official`, `beit-pretrain-shared`, `unilm-ade`, `hf`, `mmseg`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::BeitOfficial => "beit-official",
            Dialect::BeitPretrainShared => "beit-pretrain-shared",
            Dialect::UnilmAde => "unilm-ade",
            Dialect::Hf => "hf",
            Dialect::Mmseg => "mmseg",
        }
    }

    /// Parses a name given by [`Dialect::name`].
    pub fn from_name(s: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Conversion settings.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Use this dialect instead of detecting it.
    pub dialect: Option<Dialect>,
    /// Resize every relative-position-bias table to this (square) patch window, e.g. `(40, 40)`
    /// for 640×640 crops with 16×16 patches. `None`: keep the tables as they are.
    pub dst_window: Option<(usize, usize)>,
    /// Keep the final norm (`norm.*`, HF `beit.layernorm.*`) as mmseg's `ln1.*`, for a BEiT
    /// built with `final_norm=True`. Default: dropped (the configs use `final_norm=False`).
    pub final_norm: bool,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConversionReport {
    pub dialect: Dialect,
    /// `(source key, new key)` for every key whose name changed (a source key used for several
    /// outputs, e.g. a shared table, appears once per output).
    pub renamed: Vec<(String, String)>,
    /// `(source key, reason)` for every key left out.
    pub dropped: Vec<(String, String)>,
    /// `(new key, old shape, new shape)` for every resized table.
    pub resized: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub notes: Vec<String>,
}

fn cerr(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Convert { msg: msg.into() }
}

/// `blocks.N.` / `backbone.blocks.N.` / `beit.encoder.layer.N.` layer index of `key`.
fn layer_index(key: &str, prefix: &str) -> Option<usize> {
    layer_split(key, prefix).map(|(i, _)| i)
}

/// `(N, rest)` for `key = prefix + "N." + rest`.
fn layer_split<'k>(key: &'k str, prefix: &str) -> Option<(usize, &'k str)> {
    let rest = key.strip_prefix(prefix)?;
    let (n, rest) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((n.parse().ok()?, rest))
}

/// Detects the dialect of a state dict from its keys.
pub fn detect_dialect<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Dialect, CheckpointError> {
    let keys: Vec<&str> = keys.into_iter().collect();
    let any = |f: &dyn Fn(&str) -> bool| keys.iter().any(|k| f(k));
    if any(&|k| k.starts_with("beit.encoder.") || k.starts_with("beit.embeddings.")) {
        return Ok(Dialect::Hf);
    }
    if any(&|k| k.starts_with("backbone.blocks.") || k.starts_with("backbone.fpn1.") || k.starts_with("backbone.fpn2."))
    {
        return Ok(Dialect::UnilmAde);
    }
    if any(&|k| layer_index(k, "blocks.").is_some() || k.starts_with("patch_embed.proj.")) {
        let shared = any(&|k| k == "rel_pos_bias.relative_position_bias_table");
        let per_block = any(&|k| k.starts_with("blocks.") && k.ends_with(".attn.relative_position_bias_table"));
        return Ok(if shared && !per_block { Dialect::BeitPretrainShared } else { Dialect::BeitOfficial });
    }
    if any(&|k| {
        layer_index(k, "layers.").is_some()
            || layer_index(k, "backbone.layers.").is_some()
            || k.starts_with("patch_embed.projection.")
            || k.starts_with("backbone.patch_embed.projection.")
    }) {
        return Ok(Dialect::Mmseg);
    }
    let shown: Vec<&str> = keys.iter().take(8).copied().collect();
    Err(cerr(format!(
        "cannot tell the checkpoint dialect (none of blocks.N.*, backbone.blocks.N.*, beit.encoder.layer.N.*, layers.N.*); first keys: {}",
        if shown.is_empty() { "(none)".to_string() } else { shown.join(", ") }
    )))
}

/// `beit2mmseg.convert_beit`'s renaming of one (backbone-relative) key.
///
/// MMSegmentation 1.2.2's converter has a bug: the `patch_embed` test is a separate `if` before
/// the `blocks` if/else, so a patch-embed key is stored twice, as `patch_embed.projection.*` and,
/// through the `else` branch, unchanged as `patch_embed.proj.*` (mmseg ignores the latter on its
/// non-strict load; 0.x used `elif`). This function, like 0.x, emits it once.
pub fn beit2mmseg_key(k: &str) -> String {
    if k.starts_with("patch_embed") {
        return k.replace("patch_embed.proj", "patch_embed.projection");
    }
    if k.starts_with("blocks") {
        let nk = k.replace("blocks", "layers");
        return if nk.contains("norm") {
            nk.replace("norm", "ln")
        } else if nk.contains("mlp.fc1") {
            nk.replace("mlp.fc1", "ffn.layers.0.0")
        } else if nk.contains("mlp.fc2") {
            nk.replace("mlp.fc2", "ffn.layers.1")
        } else {
            nk
        };
    }
    k.to_string()
}

/// Why a backbone-relative UNILM key is dropped, or `None` to keep it.
fn unilm_drop_reason(k: &str, final_norm: bool) -> Option<&'static str> {
    if k.contains("relative_position_index") {
        return Some("derived buffer: MMSegmentation's BEiT builds its own relative_position_index");
    }
    if k.starts_with("head.") {
        return Some("classification head: not part of MMSegmentation's BEiT");
    }
    if k.starts_with("fc_norm.") {
        return Some("classifier's mean-pooling norm: not part of MMSegmentation's BEiT");
    }
    if k.starts_with("lm_head.") {
        return Some("masked-image-modelling head (pretraining only)");
    }
    if k == "mask_token" {
        return Some("mask token (pretraining only)");
    }
    if k.starts_with("norm.") && !final_norm {
        return Some("final norm: unused with final_norm=False (MMSegmentation's BEiT default)");
    }
    if k == "pos_embed" {
        return Some("absolute position embedding: MMSegmentation's BEiT has none (relative position bias only)");
    }
    None
}

struct Out {
    tensors: Vec<(String, AnyArray)>,
    report: ConversionReport,
}

impl Out {
    fn keep(&mut self, from: &str, to: String, a: AnyArray) {
        if from != to {
            self.report.renamed.push((from.to_string(), to.clone()));
        }
        self.tensors.push((to, a));
    }
    fn drop(&mut self, from: &str, why: impl Into<String>) {
        self.report.dropped.push((from.to_string(), why.into()));
    }
}

/// Converts a state dict to MMSegmentation names (module docs). Returns the converted tensors in
/// source order and a report of every rename, drop and resize.
pub fn convert(
    state: Vec<(String, AnyArray)>,
    opts: &ConvertOptions,
) -> Result<(Vec<(String, AnyArray)>, ConversionReport), CheckpointError> {
    let mut notes = Vec::new();
    let mut state = state;
    {
        let mut seen = BTreeSet::new();
        for (k, _) in &state {
            if !seen.insert(k.as_str()) {
                return Err(cerr(format!("key `{k}` appears twice")));
            }
        }
    }
    if !state.is_empty() && state.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in state.iter_mut() {
            *k = k["module.".len()..].to_string();
        }
        notes.push("stripped the `module.` prefix (a DistributedDataParallel state dict) from every key".to_string());
    }
    let dialect = match opts.dialect {
        Some(d) => d,
        None => detect_dialect(state.iter().map(|(k, _)| k.as_str()))?,
    };
    let mut out = Out {
        tensors: Vec::with_capacity(state.len()),
        report: ConversionReport { dialect, renamed: Vec::new(), dropped: Vec::new(), resized: Vec::new(), notes },
    };
    match dialect {
        Dialect::BeitOfficial | Dialect::BeitPretrainShared => convert_unilm(state, opts, &mut out, "")?,
        Dialect::UnilmAde => convert_unilm(state, opts, &mut out, "backbone.")?,
        Dialect::Hf => convert_hf(state, opts, &mut out)?,
        Dialect::Mmseg => {
            for (k, a) in state {
                if k.contains("relative_position_index") {
                    out.drop(&k, "derived buffer: MMSegmentation's BEiT builds its own relative_position_index");
                } else {
                    out.keep(&k.clone(), k, a);
                }
            }
        }
    }
    // The new names must be unique.
    let mut seen = BTreeSet::new();
    for (k, _) in &out.tensors {
        if !seen.insert(k.as_str()) {
            return Err(cerr(format!("two source keys map to `{k}`")));
        }
    }
    drop(seen);
    if let Some(w) = opts.dst_window {
        for (k, a) in out.tensors.iter_mut() {
            if k.ends_with("relative_position_bias_table") {
                let from = a.shape().to_vec();
                if let Some(new) = resize_rel_pos_any(a, w).map_err(|e| cerr(format!("`{k}`: {e}")))? {
                    out.report.resized.push((k.clone(), from, new.shape().to_vec()));
                    *a = new;
                }
            }
        }
    }
    Ok((out.tensors, out.report))
}

/// UNILM dialects. `prefix` is `""` (backbone-relative keys) or `"backbone."` (ADE20K fine-tunes,
/// whose other keys are the neck's `backbone.fpn*` and mmseg-named heads).
fn convert_unilm(
    state: Vec<(String, AnyArray)>,
    opts: &ConvertOptions,
    out: &mut Out,
    prefix: &str,
) -> Result<(), CheckpointError> {
    let layout = UnilmLayout::of(&state, prefix);
    let mut saw_patch_embed = false;
    let mut unknown = Vec::new();
    for (k, a) in state {
        let Some(inner) = k.strip_prefix(prefix) else {
            // unilm-ade: heads are already mmseg-named.
            if !(k.starts_with("decode_head.") || k.starts_with("auxiliary_head.")) {
                unknown.push(k.clone());
            }
            out.keep(&k.clone(), k, a);
            continue;
        };
        if let Some(neck) = unilm_neck_key(inner).filter(|_| !prefix.is_empty()) {
            out.keep(&k, neck, a);
        } else if k == layout.shared_key {
            layout.copy_shared_table(out, &k, a);
        } else if let Some(why) = unilm_drop_reason(inner, opts.final_norm) {
            out.drop(&k, why);
        } else if opts.final_norm && inner.starts_with("norm.") {
            out.keep(&k, format!("{prefix}ln1.{}", &inner["norm.".len()..]), a);
        } else {
            saw_patch_embed |= inner.starts_with("patch_embed");
            let known = inner.starts_with("patch_embed") || inner.starts_with("blocks") || inner == "cls_token";
            if !known {
                unknown.push(k.clone());
            }
            out.keep(&k, format!("{prefix}{}", beit2mmseg_key(inner)), a);
        }
    }
    if saw_patch_embed {
        out.report.notes.push(
            "patch-embed weights emitted once; MMSegmentation 1.2.2's beit2mmseg also emits them unchanged as `patch_embed.proj.*` (harmless bug)"
                .to_string(),
        );
    }
    if !unknown.is_empty() {
        out.report
            .notes
            .push(format!("kept unchanged (not BEiT parameters this converter knows): {}", unknown.join(", ")));
    }
    Ok(())
}

/// UNILM's ADE20K neck (`fpn1.*`, `fpn2.*`, after the `backbone.` prefix) → mmseg's neck name.
fn unilm_neck_key(inner: &str) -> Option<String> {
    if let Some(rest) = inner.strip_prefix("fpn1.") {
        return Some(format!("neck.upsample_4x.{rest}"));
    }
    inner.strip_prefix("fpn2.").map(|rest| format!("neck.upsample_2x.{rest}"))
}

/// What [`convert_unilm`] needs to know of the whole state dict before renaming key by key:
/// where a shared relative-position table would go.
struct UnilmLayout<'p> {
    prefix: &'p str,
    /// The block indices `N` of `{prefix}blocks.N.*`.
    layers: BTreeSet<usize>,
    /// `{prefix}rel_pos_bias.relative_position_bias_table` (pretraining checkpoints).
    shared_key: String,
    /// Whether the blocks have their own tables.
    per_block: bool,
}

impl<'p> UnilmLayout<'p> {
    /// The layout of `state` under `prefix`.
    fn of(state: &[(String, AnyArray)], prefix: &'p str) -> Self {
        let blocks = format!("{prefix}blocks.");
        UnilmLayout {
            prefix,
            layers: state.iter().filter_map(|(k, _)| layer_index(k, &blocks)).collect(),
            shared_key: format!("{prefix}rel_pos_bias.relative_position_bias_table"),
            per_block: state
                .iter()
                .any(|(k, _)| k.starts_with(&blocks) && k.ends_with(".attn.relative_position_bias_table")),
        }
    }

    /// The shared table `k`: copied into every layer, or dropped when the blocks have their own
    /// tables or there are no blocks.
    fn copy_shared_table(&self, out: &mut Out, k: &str, a: AnyArray) {
        if self.per_block {
            out.drop(k, "shared table next to per-block tables: the per-block tables are used");
            return;
        }
        if self.layers.is_empty() {
            out.drop(k, "shared relative position bias table, but no blocks to copy it into");
            return;
        }
        for &i in &self.layers {
            let to = format!("{}layers.{i}.attn.relative_position_bias_table", self.prefix);
            out.report.renamed.push((k.to_string(), to.clone()));
            out.tensors.push((to, a.clone()));
        }
        out.report.notes.push(format!(
            "copied the shared `{k}` into each of the {} layers (as UNILM's loaders do; beit2mmseg ignores it)",
            self.layers.len()
        ));
    }
}

/// Concatenates arrays of the same dtype along axis 0.
fn concat0(parts: &[&AnyArray], what: &str) -> Result<AnyArray, CheckpointError> {
    macro_rules! cat {
        ($variant:ident) => {{
            let mut views = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    AnyArray::$variant(a) => views.push(a.view()),
                    other => return Err(cerr(format!("{what}: mixed dtypes ({})", other.dtype_name()))),
                }
            }
            AnyArray::$variant(ndarray::concatenate(Axis(0), &views).map_err(|e| cerr(format!("{what}: {e}")))?)
        }};
    }
    let first = parts.first().ok_or_else(|| cerr(format!("{what}: nothing to concatenate")))?;
    if first.shape().is_empty() {
        return Err(cerr(format!("{what}: cannot concatenate scalars")));
    }
    Ok(match first {
        AnyArray::F32(_) => cat!(F32),
        AnyArray::F64(_) => cat!(F64),
        AnyArray::I64(_) => cat!(I64),
        AnyArray::I32(_) => cat!(I32),
        AnyArray::U8(_) => cat!(U8),
        AnyArray::Bool(_) => cat!(Bool),
    })
}

/// Hugging Face transformers' BEiT layer keys (after `beit.encoder.layer.{i}.`) → MMSegmentation's
/// (after `layers.{i}.`). An entry ending in `.` renames that module's `weight` and `bias`.
const HF_LAYER_RENAMES: &[(&str, &str)] = &[
    ("layernorm_before.", "ln1."),
    ("layernorm_after.", "ln2."),
    ("attention.attention.query.bias", "attn.q_bias"),
    ("attention.attention.value.bias", "attn.v_bias"),
    ("attention.attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "ffn.layers.0.0."),
    ("output.dense.", "ffn.layers.1."),
    ("lambda_1", "gamma_1"),
    ("lambda_2", "gamma_2"),
];

/// HF backbone keys outside the layers → MMSegmentation's (under `backbone.` for a segmentor);
/// an entry ending in `.` renames `weight` and `bias`.
const HF_BACKBONE_RENAMES: &[(&str, &str)] = &[
    ("beit.embeddings.cls_token", "cls_token"),
    ("beit.embeddings.patch_embeddings.projection.", "patch_embed.projection."),
];

/// HF segmentor prefixes → MMSegmentation's (any suffix), first match wins.
const HF_HEAD_PREFIXES: &[(&str, &str)] = &[
    ("fpn1.", "neck.upsample_4x."),
    ("fpn2.", "neck.upsample_2x."),
    ("decode_head.classifier.", "decode_head.conv_seg."),
    ("auxiliary_head.classifier.", "auxiliary_head.conv_seg."),
    ("decode_head.", "decode_head."),
    ("auxiliary_head.", "auxiliary_head."),
];

/// HF keys MMSegmentation's model has no parameter for, by exact name or (ending in `.`) prefix.
const HF_DROPS: &[(&str, DropReason)] = &[
    ("beit.embeddings.mask_token", DropReason::MaskToken),
    ("beit.embeddings.position_embeddings", DropReason::AbsolutePosition),
    ("beit.encoder.relative_position_bias.relative_position_index", DropReason::DerivedIndex),
    ("beit.pooler.", DropReason::Pooler),
    ("classifier.", DropReason::Classifier),
    ("lm_head.", DropReason::LmHead),
];

/// Why a source key is left out of the converted state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    ZeroKeyBias,
    DerivedIndex,
    MaskToken,
    AbsolutePosition,
    SharedTableWithoutLayers,
    UnusedFinalNorm,
    Pooler,
    Classifier,
    LmHead,
}

impl DropReason {
    fn text(self) -> &'static str {
        match self {
            DropReason::ZeroKeyBias => "zero key bias: MMSegmentation's BEiT has no key bias (it is identically zero)",
            DropReason::DerivedIndex => "derived buffer: MMSegmentation's BEiT builds its own relative_position_index",
            DropReason::MaskToken => "mask token (pretraining only)",
            DropReason::AbsolutePosition => {
                "absolute position embedding: MMSegmentation's BEiT has none (relative position bias only)"
            }
            DropReason::SharedTableWithoutLayers => {
                "shared relative position bias table, but no layers to copy it into"
            }
            DropReason::UnusedFinalNorm => "final norm: unused with final_norm=False (MMSegmentation's BEiT default)",
            DropReason::Pooler => "classifier's mean-pooling norm: not part of MMSegmentation's BEiT",
            DropReason::Classifier => "classification head: not part of MMSegmentation's BEiT",
            DropReason::LmHead => "masked-image-modelling head (pretraining only)",
        }
    }
}

/// `key` renamed by a table of (from, to) entries (an entry ending in `.` takes `weight`/`bias`).
fn rename_by(table: &[(&str, &str)], key: &str) -> Option<String> {
    table.iter().find_map(|&(from, to)| match from.strip_suffix('.') {
        Some(_) => key.strip_prefix(from).filter(|p| *p == "weight" || *p == "bias").map(|p| format!("{to}{p}")),
        None => (key == from).then(|| to.to_string()),
    })
}

/// What becomes of one HF key.
enum HfFate {
    Rename(String),
    Drop(DropReason),
    /// One of a layer's query/key/value weights: the layer's `qkv.weight` is their concat.
    Qkv(usize),
    /// The key bias of a layer: dropped if zero, an error otherwise.
    KeyBias,
    /// The shared relative position bias table: copied into every layer.
    SharedTable,
    Unknown,
}

/// The fate of `key` (`bb`: `backbone.` for a segmentor, empty for a backbone).
fn hf_fate(key: &str, bb: &str, final_norm: bool) -> HfFate {
    if let Some((i, rest)) = layer_split(key, HF_LAYER) {
        return match rest {
            "attention.attention.query.weight"
            | "attention.attention.key.weight"
            | "attention.attention.value.weight" => HfFate::Qkv(i),
            "attention.attention.key.bias" => HfFate::KeyBias,
            "attention.attention.relative_position_bias.relative_position_index" => {
                HfFate::Drop(DropReason::DerivedIndex)
            }
            _ => rename_by(HF_LAYER_RENAMES, rest)
                .map_or(HfFate::Unknown, |to| HfFate::Rename(format!("{bb}layers.{i}.{to}"))),
        };
    }
    if key == "beit.encoder.relative_position_bias.relative_position_bias_table" {
        return HfFate::SharedTable;
    }
    if let Some(leaf) = ["beit.layernorm.", "layernorm."].iter().find_map(|p| key.strip_prefix(p)) {
        if leaf == "weight" || leaf == "bias" {
            return if final_norm {
                HfFate::Rename(format!("{bb}ln1.{leaf}"))
            } else {
                HfFate::Drop(DropReason::UnusedFinalNorm)
            };
        }
    }
    if let Some(to) = rename_by(HF_BACKBONE_RENAMES, key) {
        return HfFate::Rename(format!("{bb}{to}"));
    }
    let matches = |from: &str| if from.ends_with('.') { key.starts_with(from) } else { key == from };
    if let Some(&(_, why)) = HF_DROPS.iter().find(|(from, _)| matches(from)) {
        return HfFate::Drop(why);
    }
    match HF_HEAD_PREFIXES.iter().find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}"))) {
        Some(to) => HfFate::Rename(to),
        None => HfFate::Unknown,
    }
}

const HF_LAYER: &str = "beit.encoder.layer.";

/// Layer `i`'s `qkv.weight` = concat(query, key, value weights) along rows, taken out of `state`
/// by name (`index`: key → position); returns it with the three source names.
fn hf_qkv(
    i: usize,
    state: &mut [Option<(String, AnyArray)>],
    index: &HashMap<String, usize>,
) -> Result<(Vec<String>, AnyArray), CheckpointError> {
    let names: Vec<String> =
        ["query", "key", "value"].iter().map(|p| format!("{HF_LAYER}{i}.attention.attention.{p}.weight")).collect();
    let missing = |n: &str| cerr(format!("layer {i}: `{n}` is missing (needed for qkv.weight)"));
    let positions =
        names.iter().map(|n| index.get(n).copied().ok_or_else(|| missing(n))).collect::<Result<Vec<_>, _>>()?;
    let parts: Vec<&AnyArray> = positions
        .iter()
        .map(|&j| state[j].as_ref().map(|(_, a)| a).ok_or_else(|| missing(&names[0])))
        .collect::<Result<_, _>>()?;
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
    if shapes.iter().any(|s| s.len() != 2 || *s != shapes[0]) {
        return Err(cerr(format!(
            "layer {i}: query/key/value weights have shapes {shapes:?}, expected three equal (C, C)"
        )));
    }
    let qkv = concat0(&parts, &format!("layer {i} qkv.weight"))?;
    for j in positions {
        state[j] = None;
    }
    Ok((names, qkv))
}

/// Hugging Face transformers' BEiT names → mmseg, by the tables above.
fn convert_hf(state: Vec<(String, AnyArray)>, opts: &ConvertOptions, out: &mut Out) -> Result<(), CheckpointError> {
    let full =
        state.iter().any(|(k, _)| k.starts_with("fpn1.") || k.starts_with("fpn2.") || k.starts_with("decode_head."));
    let bb = if full { "backbone." } else { "" };
    if full {
        out.report.notes.push(
            "the checkpoint has neck/head weights: writing full segmentor names (`backbone.*`, `neck.*`, heads)"
                .to_string(),
        );
    }
    let layers: BTreeSet<usize> = state.iter().filter_map(|(k, _)| layer_index(k, HF_LAYER)).collect();
    let index: HashMap<String, usize> = state.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
    let mut state: Vec<Option<(String, AnyArray)>> = state.into_iter().map(Some).collect();
    let (mut unknown, mut qkv_renames) = (Vec::new(), Vec::new());
    for pos in 0..state.len() {
        let fate = match &state[pos] {
            Some((k, _)) => hf_fate(k, bb, opts.final_norm),
            None => continue, // a query/key/value weight already in its layer's qkv
        };
        if let HfFate::Qkv(i) = fate {
            let (names, qkv) = hf_qkv(i, &mut state, &index)?;
            let to = format!("{bb}layers.{i}.attn.qkv.weight");
            qkv_renames.extend(names.into_iter().map(|n| (n, to.clone())));
            out.tensors.push((to, qkv));
            continue;
        }
        let (k, a) = state[pos].take().expect("present");
        match fate {
            HfFate::Rename(to) => out.keep(&k, to, a),
            HfFate::Drop(why) => out.drop(&k, why.text()),
            HfFate::KeyBias => {
                let max = a.to_f64().iter().fold(0.0f64, |m, v| m.max(v.abs()));
                if max != 0.0 || max.is_nan() {
                    return Err(cerr(format!(
                        "`{k}` is non-zero (max |b| = {max}): MMSegmentation's BEiT has no key bias"
                    )));
                }
                out.drop(&k, DropReason::ZeroKeyBias.text());
            }
            HfFate::SharedTable if layers.is_empty() => out.drop(&k, DropReason::SharedTableWithoutLayers.text()),
            HfFate::SharedTable => {
                out.report.notes.push(format!("copied the shared `{k}` into each of the {} layers", layers.len()));
                for &i in &layers {
                    out.keep(&k, format!("{bb}layers.{i}.attn.relative_position_bias_table"), a.clone());
                }
            }
            HfFate::Qkv(_) => unreachable!("handled above"),
            HfFate::Unknown => {
                unknown.push(k.clone());
                out.keep(&k, k.clone(), a);
            }
        }
    }
    out.report.renamed.extend(qkv_renames);
    if !layers.is_empty() {
        out.report
            .notes
            .push("qkv.weight of every layer = concat(query.weight, key.weight, value.weight) along rows".to_string());
    }
    if !unknown.is_empty() {
        out.report
            .notes
            .push(format!("kept unchanged (not BEiT parameters this converter knows): {}", unknown.join(", ")));
    }
    Ok(())
}
