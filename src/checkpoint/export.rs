//! Export from MMSegmentation names to another dialect: the inverse of [`super::convert()`].
//!
//! Input: an mmseg state dict, backbone-relative (`layers.N.*`, `patch_embed.*`, `cls_token`,
//! final norm `ln1.*`) or full segmentor names (`backbone.*`, `neck.*`, `decode_head.*`,
//! `auxiliary_head.*`). Output, per target:
//!
//! - [`Dialect::BeitOfficial`] (UNILM `modeling_finetune.py` / timm names, backbone only):
//!   `patch_embed.proj.*`, `cls_token`, `blocks.N.{norm1,norm2}.*`, `blocks.N.attn.{qkv.weight,
//!   q_bias, v_bias, relative_position_bias_table, proj.*}`, `blocks.N.mlp.{fc1,fc2}.*`,
//!   `blocks.N.gamma_{1,2}`, final norm `norm.*`. Neck and head keys are dropped (listed in the
//!   report). The inverse of `beit2mmseg.py`.
//! - [`Dialect::Hf`] (transformers `BeitForSemanticSegmentation`, the names `from_pretrained`
//!   accepts; transformers 5 renames some of them on load, see docs/checkpoints.md):
//!   `beit.embeddings.{cls_token, patch_embeddings.projection.*}`,
//!   `beit.encoder.layer.N.{layernorm_before, layernorm_after}.*`,
//!   `...attention.attention.{query.weight, query.bias, key.weight, value.weight, value.bias}`
//!   (`qkv.weight` split into three equal row blocks; HF's key projection has no bias),
//!   `...attention.attention.relative_position_bias.relative_position_bias_table`,
//!   `...attention.output.dense.*`, `...intermediate.dense.*`, `...output.dense.*`,
//!   `...lambda_{1,2}`, final norm `beit.layernorm.*`; with full names also `fpn1.*` / `fpn2.*`
//!   (mmseg `neck.upsample_4x` / `upsample_2x`), `decode_head.*` / `auxiliary_head.*` with
//!   `conv_seg` → `classifier` (everything else in the heads keeps its name).
//!
//! A key the exporter does not know is an error (nothing is dropped silently).

use ndarray::{Axis, Slice};

use super::convert::{ConversionReport, Dialect};
use super::CheckpointError;
use crate::array::AnyArray;

/// Export settings.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Leave out the neck and heads (always the case for [`Dialect::BeitOfficial`]).
    pub backbone_only: bool,
}

fn eerr(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Convert { msg: msg.into() }
}

/// The `i`-th of `n` equal blocks of rows of a float matrix (`torch.chunk(w, n, dim=0)[i]`).
fn row_block(a: &AnyArray, n: usize, i: usize, what: &str) -> Result<AnyArray, CheckpointError> {
    let rows = a.shape().first().copied().unwrap_or(0);
    if a.shape().len() != 2 || rows % n != 0 {
        return Err(eerr(format!("`{what}` has shape {:?}, expected ({n}·C, C)", a.shape())));
    }
    let r = rows / n;
    let s = Slice::from(i * r..(i + 1) * r);
    Ok(match a {
        AnyArray::F32(x) => AnyArray::F32(x.slice_axis(Axis(0), s).to_owned()),
        AnyArray::F64(x) => AnyArray::F64(x.slice_axis(Axis(0), s).to_owned()),
        other => return Err(eerr(format!("`{what}` is {}, expected a float tensor", other.dtype_name()))),
    })
}

/// `(N, rest)` for `layers.N.rest`.
fn layer_of(k: &str) -> Option<(usize, &str)> {
    let (n, rest) = k.strip_prefix("layers.")?.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// Official (UNILM) name of a backbone-relative mmseg key; `None` if it is not a backbone key.
fn official_name(k: &str) -> Option<String> {
    if k == "cls_token" {
        return Some(k.into());
    }
    if let Some(r) = k.strip_prefix("patch_embed.projection.") {
        return Some(format!("patch_embed.proj.{r}"));
    }
    if let Some(r) = k.strip_prefix("ln1.") {
        return Some(format!("norm.{r}"));
    }
    let (i, rest) = layer_of(k)?;
    let renames =
        [("ln1.", "norm1."), ("ln2.", "norm2."), ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2.")];
    let renamed = renames.iter().find_map(|(f, t)| rest.strip_prefix(f).map(|r| format!("{t}{r}")));
    let rest = match renamed {
        Some(r) => r,
        None => match rest {
            r @ ("gamma_1"
            | "gamma_2"
            | "attn.qkv.weight"
            | "attn.q_bias"
            | "attn.v_bias"
            | "attn.relative_position_bias_table"
            | "attn.proj.weight"
            | "attn.proj.bias") => r.to_string(),
            _ => return None,
        },
    };
    Some(format!("blocks.{i}.{rest}"))
}

/// HF names of a backbone-relative mmseg key (several for `qkv.weight`, split into query, key,
/// value); `None` if it is not a backbone key.
fn hf_backbone(k: &str, a: &AnyArray) -> Result<Option<Vec<(String, AnyArray)>>, CheckpointError> {
    let one = |n: String| Ok(Some(vec![(n, a.clone())]));
    if k == "cls_token" {
        return one("beit.embeddings.cls_token".into());
    }
    if let Some(r) = k.strip_prefix("patch_embed.projection.") {
        return one(format!("beit.embeddings.patch_embeddings.projection.{r}"));
    }
    if let Some(r) = k.strip_prefix("ln1.") {
        return one(format!("beit.layernorm.{r}"));
    }
    let Some((i, rest)) = layer_of(k) else { return Ok(None) };
    let l = format!("beit.encoder.layer.{i}.");
    let att = format!("{l}attention.attention.");
    let name = match rest {
        "attn.qkv.weight" => {
            let mut out = Vec::with_capacity(3);
            for (j, p) in ["query", "key", "value"].iter().enumerate() {
                out.push((format!("{att}{p}.weight"), row_block(a, 3, j, k)?));
            }
            return Ok(Some(out));
        }
        "attn.q_bias" => format!("{att}query.bias"),
        "attn.v_bias" => format!("{att}value.bias"),
        "attn.relative_position_bias_table" => format!("{att}relative_position_bias.relative_position_bias_table"),
        "gamma_1" => format!("{l}lambda_1"),
        "gamma_2" => format!("{l}lambda_2"),
        _ => {
            let renames = [
                ("ln1.", "layernorm_before."),
                ("ln2.", "layernorm_after."),
                ("attn.proj.", "attention.output.dense."),
                ("ffn.layers.0.0.", "intermediate.dense."),
                ("ffn.layers.1.", "output.dense."),
            ];
            match renames.iter().find_map(|(f, t)| rest.strip_prefix(f).map(|r| format!("{l}{t}{r}"))) {
                Some(n) => n,
                None => return Ok(None),
            }
        }
    };
    one(name)
}

/// HF name of a full-segmentor neck or head key; `None` if it is neither.
fn hf_head(k: &str) -> Option<String> {
    if let Some(r) = k.strip_prefix("neck.upsample_4x.") {
        return Some(format!("fpn1.{r}"));
    }
    if let Some(r) = k.strip_prefix("neck.upsample_2x.") {
        return Some(format!("fpn2.{r}"));
    }
    for head in ["decode_head.", "auxiliary_head."] {
        if let Some(r) = k.strip_prefix(head) {
            return Some(match r.strip_prefix("conv_seg.") {
                Some(p) => format!("{head}classifier.{p}"),
                None => k.to_string(),
            });
        }
    }
    None
}

/// Exports an mmseg state dict to dialect `to` ([`Dialect::Hf`] or [`Dialect::BeitOfficial`];
/// [`Dialect::Mmseg`] returns it unchanged). The report lists every rename and drop; its
/// `dialect` is `to`.
pub fn export(
    state: Vec<(String, AnyArray)>,
    to: Dialect,
    opts: &ExportOptions,
) -> Result<(Vec<(String, AnyArray)>, ConversionReport), CheckpointError> {
    let mut report = ConversionReport {
        dialect: to,
        renamed: Vec::new(),
        dropped: Vec::new(),
        resized: Vec::new(),
        notes: Vec::new(),
    };
    if !matches!(to, Dialect::Hf | Dialect::BeitOfficial | Dialect::Mmseg) {
        return Err(eerr(format!("export to `{to}` is not supported (only hf, beit-official, mmseg)")));
    }
    let full = state.iter().any(|(k, _)| k.starts_with("backbone."));
    let mut out = Vec::with_capacity(state.len() + 16);
    for (k, a) in state {
        if to == Dialect::Mmseg {
            out.push((k, a));
            continue;
        }
        let inner = if full { k.strip_prefix("backbone.") } else { Some(k.as_str()) };
        let news: Vec<(String, AnyArray)> = match inner {
            Some(b) => {
                let got = match to {
                    Dialect::BeitOfficial => official_name(b).map(|n| vec![(n, a.clone())]),
                    _ => hf_backbone(b, &a)?,
                };
                got.ok_or_else(|| eerr(format!("`{k}` is not a parameter of MMSegmentation's BEiT; cannot export it")))?
            }
            None if to == Dialect::BeitOfficial || opts.backbone_only => {
                report.dropped.push((k.clone(), "neck / head weight: the export is backbone-only".into()));
                continue;
            }
            None => match hf_head(&k) {
                Some(n) => vec![(n, a)],
                None => return Err(eerr(format!("`{k}` is not a BEiT/UPerNet parameter this exporter knows"))),
            },
        };
        for (n, t) in news {
            if n != k {
                report.renamed.push((k.clone(), n.clone()));
            }
            out.push((n, t));
        }
    }
    if to == Dialect::Hf && out.iter().any(|(k, _)| k.ends_with("attention.attention.key.weight")) {
        report.notes.push("qkv.weight of every layer split into query/key/value weights (equal row blocks)".into());
    }
    Ok((out, report))
}

#[cfg(test)]
#[path = "tests/export.rs"]
mod tests;
