//! candle-transformers' BEiT (`candle_transformers::models::beit`, the one Rust BEiT on
//! crates.io) as a peer of MMSegmentation's BEiT: its weights loaded from MMSegmentation's
//! state dict, its feature maps computed, and (in `tests/`) checked against MMSegmentation's own
//! tensors through beit-seg's in-memory candidate API, in this crate's `cargo test`.
//!
//! candle's model is an ImageNet classifier with a fixed geometry: 384x384 input (a 24x24
//! window, 2212-row relative-position tables, 577 tokens), 3 channels, patch 16, an MLP of
//! 4x the width, LayerNorm eps 1e-6, a full `qkv` bias and a 1000-class head. What it takes
//! from a config is `(depth, embed_dim, num_heads)`, and what it returns besides the logits is
//! `get_intermediate_layers`: the outputs of chosen blocks, class token dropped, as NCHW maps,
//! which is MMSegmentation's `backbone.{k}`.
//!
//! * [`to_candle_names`]: MMSegmentation's backbone keys to candle's (`layers.{i}.ln1` →
//!   `blocks.{i}.norm1`, `q_bias`/`v_bias` → one `qkv.bias` with a zero key third,
//!   `gamma_1` → `ls1.gamma`, `ffn.layers.0.0` → `mlp.fc1`, ...), plus the unused classifier
//!   candle always builds.
//! * [`feature_maps`]: builds the model from those tensors and runs `get_intermediate_layers`,
//!   with candle's own `Mlp` ([`Gelu::Tanh`], as published) or the one-line fix
//!   ([`Gelu::Erf`], `beit_erf`: candle's file with `.gelu_erf()`).

#[rustfmt::skip]
pub mod beit_erf;

use std::collections::HashMap;

use candle::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// candle's fixed input size (`IMG_SIZE` in `beit.rs`), height and width.
pub const IMG_SIZE: usize = 384;
/// candle's patch size (`PATCH_SIZE`).
pub const PATCH_SIZE: usize = 16;
/// candle's input channels (`PatchEmbed::new(.., 3, ..)`).
pub const IN_CHANNELS: usize = 3;
/// candle's MLP width over the embedding width (`dim * 4`).
pub const MLP_RATIO: usize = 4;
/// candle's LayerNorm eps (every `layer_norm(.., 1e-6, ..)`).
pub const LN_EPS: f64 = 1e-6;
/// candle's classifier width (`NUM_CLASSES`), built whether or not it is used.
pub const NUM_CLASSES: usize = 1000;

/// What candle's `BeitVisionTransformer::new` takes from a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of blocks (MMSegmentation `num_layers`).
    pub depth: usize,
    /// Token width (`embed_dims`).
    pub embed_dim: usize,
    /// Attention heads (`num_heads`).
    pub num_heads: usize,
}

/// Which MLP activation the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// candle-transformers as published: `.gelu()`, the tanh approximation.
    Tanh,
    /// The fix: `.gelu_erf()`, exact GELU as MMSegmentation's `nn.GELU()` (module `beit_erf`).
    Erf,
}

/// MMSegmentation's BEiT state dict (the `backbone.` keys; others are ignored) as candle's
/// BEiT names it, in `dtype`. The rules, in order:
///
/// | MMSegmentation | candle |
/// |---|---|
/// | `backbone.patch_embed.projection.*` | `patch_embed.proj.*` |
/// | `backbone.cls_token` | `cls_token` |
/// | `backbone.layers.{i}.ln1.*` / `ln2.*` | `blocks.{i}.norm1.*` / `norm2.*` |
/// | `….attn.qkv.weight`, `….attn.proj.*`, `….attn.relative_position_bias_table` | same under `blocks.{i}.attn` |
/// | `….attn.q_bias`, `….attn.v_bias` | `blocks.{i}.attn.qkv.bias` = `[q_bias, 0, v_bias]` (zeros without them) |
/// | `….attn.relative_position_index` | dropped (candle builds it from its window) |
/// | `….gamma_1` / `gamma_2` | `blocks.{i}.ls1.gamma` / `ls2.gamma` |
/// | `….ffn.layers.0.0.*` / `ffn.layers.1.*` | `blocks.{i}.mlp.fc1.*` / `mlp.fc2.*` |
/// | (none) | `norm.*` = 1 / 0 and `head.*` = 0: candle's classifier, unused by the feature maps |
///
/// Any other backbone key (a patch norm, a final norm) is an error naming it: candle has no
/// such module.
pub fn to_candle_names(
    mmseg: impl IntoIterator<Item = (String, Tensor)>,
    g: &Geometry,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, String> {
    let err = |e: candle::Error| e.to_string();
    let mut out = HashMap::new();
    let mut qv: HashMap<usize, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, t) in mmseg {
        let Some(k) = key.strip_prefix("backbone.") else { continue };
        let t = t.to_dtype(dtype).map_err(err)?;
        let name = if let Some(rest) = k.strip_prefix("patch_embed.projection.") {
            format!("patch_embed.proj.{rest}")
        } else if k == "cls_token" {
            k.to_string()
        } else if let Some(rest) = k.strip_prefix("layers.") {
            let (i, leaf) = rest.split_once('.').ok_or_else(|| format!("unexpected key `{key}`"))?;
            let i: usize = i.parse().map_err(|_| format!("unexpected key `{key}`"))?;
            let mapped = match leaf {
                "attn.q_bias" => {
                    qv.entry(i).or_default().0 = Some(t);
                    continue;
                }
                "attn.v_bias" => {
                    qv.entry(i).or_default().1 = Some(t);
                    continue;
                }
                "attn.relative_position_index" => continue,
                "gamma_1" => "ls1.gamma".to_string(),
                "gamma_2" => "ls2.gamma".to_string(),
                l => {
                    let renames = [
                        ("ln1.", "norm1."),
                        ("ln2.", "norm2."),
                        ("ffn.layers.0.0.", "mlp.fc1."),
                        ("ffn.layers.1.", "mlp.fc2."),
                        ("attn.qkv.weight", "attn.qkv.weight"),
                        ("attn.proj.", "attn.proj."),
                        ("attn.relative_position_bias_table", "attn.relative_position_bias_table"),
                    ];
                    let (from, to) = renames
                        .iter()
                        .find(|(from, _)| l.starts_with(from))
                        .ok_or_else(|| format!("`{key}`: candle's BEiT has no such weight"))?;
                    format!("{to}{}", &l[from.len()..])
                }
            };
            format!("blocks.{i}.{mapped}")
        } else {
            return Err(format!("`{key}`: candle's BEiT has no such weight"));
        };
        out.insert(name, t);
    }
    let c = g.embed_dim;
    let zeros = |n: usize| Tensor::zeros(n, dtype, device).map_err(err);
    for i in 0..g.depth {
        let (q, v) = qv.remove(&i).unwrap_or_default();
        // MMSegmentation's k bias is a zero constant; candle's qkv Linear has one full bias.
        let bias = Tensor::cat(&[q.map_or_else(|| zeros(c), Ok)?, zeros(c)?, v.map_or_else(|| zeros(c), Ok)?], 0)
            .map_err(err)?;
        out.insert(format!("blocks.{i}.attn.qkv.bias"), bias);
    }
    out.insert("norm.weight".into(), Tensor::ones(c, dtype, device).map_err(err)?);
    out.insert("norm.bias".into(), zeros(c)?);
    out.insert("head.weight".into(), Tensor::zeros((NUM_CLASSES, c), dtype, device).map_err(err)?);
    out.insert("head.bias".into(), zeros(NUM_CLASSES)?);
    Ok(out)
}

/// Builds candle's BEiT from `weights` (candle's names, [`to_candle_names`]) and returns the
/// outputs of blocks `out_indices` as NCHW maps (`get_intermediate_layers(x, out_indices,
/// reshape = true, return_class_token = false, norm = false)`), MMSegmentation's
/// `backbone.{k}`. `x` is NCHW, 384x384, 3 channels.
pub fn feature_maps(
    weights: HashMap<String, Tensor>,
    g: &Geometry,
    gelu: Gelu,
    x: &Tensor,
    out_indices: &[usize],
) -> candle::Result<Vec<Tensor>> {
    let vb = VarBuilder::from_tensors(weights, x.dtype(), x.device());
    let stacked = match gelu {
        Gelu::Tanh => {
            candle_transformers::models::beit::BeitVisionTransformer::new(vb, g.depth, g.embed_dim, g.num_heads)?
                .get_intermediate_layers(x, out_indices, true, false, false)?
        }
        Gelu::Erf => beit_erf::BeitVisionTransformer::new(vb, g.depth, g.embed_dim, g.num_heads)?
            .get_intermediate_layers(x, out_indices, true, false, false)?,
    };
    (0..out_indices.len()).map(|k| stacked.get(k)).collect()
}
