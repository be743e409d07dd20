//! BEiT backbone on tch tensors; mirrors [`crate::reference::beit`] (same structure, weight keys
//! and recorded names: `backbone.patch_embed.projection`, `backbone.layers.{i}.{ln1,attn,
//! attn.qkv,attn.proj,ln2,ffn,ffn.layers.*,ffn.activate}`, `backbone.ln1`, `backbone.{k}`).

use tch::{Kind, Tensor};

use super::weight_source::Source;
use super::{join, ops, Ctx, ModelError, Recorder, Result};
use crate::config::BeitConfig;
use crate::model::names::{ffn_hidden_aliases, ffn_output_aliases};
use crate::model::{check_relative_position_index, relative_position_index};

/// `nn.LayerNorm(C, eps)`; parameters held in the wide kind (float32 for half precisions).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    wide: Kind,
}

impl LayerNorm {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        let wide = ctx.wide_kind();
        Ok(LayerNorm {
            weight: src.get(&join(prefix, "weight"), &[c], wide)?,
            bias: src.get(&join(prefix, "bias"), &[c], wide)?,
            eps,
            wide,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps, self.wide)
    }
}

/// `nn.Linear(in, out)`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let k = ctx.kind();
        Ok(Linear {
            weight: src.get(&join(prefix, "weight"), &[out, inp], k)?,
            bias: if bias { Some(src.get(&join(prefix, "bias"), &[out], k)?) } else { None },
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `BEiTAttention` with its per-layer relative-position bias table.
pub struct BeitAttention {
    /// `qkv.weight` (3C, C) with the bias `cat(q_bias, 0, v_bias)` when `qv_bias`.
    pub qkv: Linear,
    pub qv_bias: bool,
    pub proj: Linear,
    /// The relative-position bias, folded at load time or gathered per call.
    pub bias: RelPosBias,
    pub tokens: i64,
    pub num_heads: i64,
    pub scale: f64,
    /// Fused `scaled_dot_product_attention` (on the CPU its flash kernel, which never
    /// materialises the (nH, N, N) scores; softmax accumulated in fp32 for fp16/bf16): every
    /// precision on the CPU, fp16/bf16 on CUDA.
    fused: bool,
    wide: Kind,
}

/// Where the (1, nH, N+1, N+1) relative-position bias `table[index]` comes from. The bias of a
/// layer depends on its weights and the window only, so it is a constant of the loaded model:
/// ONNX Runtime and OpenVINO fold it when they compile the graph. Gathering it per call costs
/// libtorch ~70 ms (fp32) to ~130 ms (bf16) per layer at BEiT-B 640 on the CPU, more than the
/// layer's matmuls in bf16; folding costs its memory (12 x 12 x 1601² values at BEiT-B 640:
/// 0.74 GB in bf16, 1.5 GB in fp32), so it is folded while all layers' biases fit in
/// [`FOLD_BUDGET_BYTES`].
pub enum RelPosBias {
    /// `table[index]` computed once, (1, nH, N+1, N+1) contiguous.
    Folded(Tensor),
    /// Gathered per call from the transposed table (nH, T) with the flattened index ((N+1)²).
    Gathered { table: Tensor, index: Tensor },
}

/// The most memory the folded biases of all layers may take together (2 GiB: BEiT-B 640 in
/// any precision, BEiT-L 640 in fp16/bf16; BEiT-L 640 in fp32, 3.9 GB, gathers per call).
pub const FOLD_BUDGET_BYTES: f64 = 2.0 * 1024.0 * 1024.0 * 1024.0;

impl BeitAttention {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &BeitConfig) -> Result<Self> {
        let c = cfg.embed_dims;
        let k = ctx.kind();
        let (wh, ww) = cfg.window();
        let rows = (2 * wh - 1) * (2 * ww - 1) + 3;
        let mut qkv = Linear { weight: src.get(&join(prefix, "qkv.weight"), &[3 * c, c], k)?, bias: None };
        if cfg.qv_bias {
            let q = src.get(&join(prefix, "q_bias"), &[c], k)?;
            let v = src.get(&join(prefix, "v_bias"), &[c], k)?;
            let zeros = Tensor::f_zeros([c as i64], (k, ctx.device))?;
            qkv.bias = Some(Tensor::f_cat(&[q, zeros, v], 0)?);
        }
        let table = src.get(&join(prefix, "relative_position_bias_table"), &[rows, cfg.num_heads], k)?;
        let index = relative_position_index((wh, ww));
        let key = join(prefix, "relative_position_index");
        if let Some(problem) =
            src.get_int_opt(&key).and_then(|stored| check_relative_position_index(&key, &stored, &index))
        {
            src.problem(problem);
        }
        let tokens = index.nrows() as i64;
        let flat: Vec<i64> = index.iter().map(|&v| v as i64).collect();
        let head_dim = c / cfg.num_heads;
        let gathered = RelPosBias::Gathered {
            table: table.f_transpose(0, 1)?.f_contiguous()?,
            index: Tensor::f_from_slice(&flat)?.f_to_device(ctx.device)?,
        };
        let folded_bytes =
            (cfg.num_layers * cfg.num_heads) as f64 * (tokens * tokens) as f64 * k.elt_size_in_bytes() as f64;
        let bias = if folded_bytes <= FOLD_BUDGET_BYTES {
            RelPosBias::Folded(gathered.get(cfg.num_heads as i64, tokens)?.f_contiguous()?)
        } else {
            gathered
        };
        Ok(BeitAttention {
            qkv,
            qv_bias: cfg.qv_bias,
            proj: Linear::load(src, ctx, &join(prefix, "proj"), c, c, true)?,
            bias,
            tokens,
            num_heads: cfg.num_heads as i64,
            scale: (head_dim as f64).powf(-0.5),
            fused: ctx.precision.is_reduced() || ctx.device == tch::Device::Cpu,
            wide: ctx.wide_kind(),
        })
    }

    /// `rel_pos_bias[h, i, j] = table[index[i, j], h]`, (1, nH, N+1, N+1).
    fn relative_position_bias(&self) -> Result<Tensor> {
        self.bias.get(self.num_heads, self.tokens)
    }

    /// (B, N+1, C) → (B, N+1, C).
    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let s = x.size();
        let (b, n, c) = (s[0], s[1], s[2]);
        let nh = self.num_heads;
        let hd = c / nh;
        let qkv = self.qkv.forward(x)?; // (B, N, 3C)
        if !self.qv_bias {
            rec.put(&join(prefix, "qkv"), &qkv);
        }
        // [B, N, 3C] -> [3, B, nH, N, hd]
        let qkv = qkv.f_reshape([b, n, 3, nh, hd])?.f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_select(0, 0)?, qkv.f_select(0, 1)?, qkv.f_select(0, 2)?);
        let bias = self.relative_position_bias()?; // (1, nH, N, N)
        let out = if self.fused {
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, self.scale, false)?
        } else {
            // The explicit path of BEiTAttention.forward: q * scale, q @ kᵀ, + bias, softmax, @ v.
            let q = q.f_mul_scalar(self.scale)?;
            let attn = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_add(&bias)?;
            let attn = attn.f_softmax(-1, self.wide)?.f_to_kind(v.kind())?;
            attn.f_matmul(&v)?
        };
        // [B, nH, N, hd] -> [B, N, C]
        let out = out.f_transpose(1, 2)?.f_reshape([b, n, c])?;
        let y = self.proj.forward(&out)?;
        rec.put(&join(prefix, "proj"), &y);
        rec.put(&join(prefix, "proj_drop"), &y);
        Ok(y)
    }
}

impl RelPosBias {
    /// `rel_pos_bias[h, i, j] = table[index[i, j], h]`, (1, nH, N+1, N+1). Gathered: one gather
    /// along the transposed table's rows (MMSegmentation gathers (N+1)², nH and permutes, a
    /// second copy of the bias; the values are the same).
    fn get(&self, heads: i64, n: i64) -> Result<Tensor> {
        match self {
            RelPosBias::Folded(b) => Ok(b.shallow_clone()),
            RelPosBias::Gathered { table, index } => Ok(table.f_index_select(1, index)?.f_view([1, heads, n, n])?),
        }
    }
}

/// mmcv `FFN`: `layers.{i}` = (Linear, GELU, Dropout) for i < num_fcs-1, then a Linear.
pub struct Ffn {
    pub fcs: Vec<Linear>,
}

impl Ffn {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &BeitConfig) -> Result<Self> {
        let (c, f) = (cfg.embed_dims, cfg.feedforward_channels);
        let mut fcs = Vec::new();
        let mut inp = c;
        for i in 0..cfg.num_fcs - 1 {
            fcs.push(Linear::load(src, ctx, &join(prefix, &format!("layers.{i}.0")), inp, f, true)?);
            inp = f;
        }
        fcs.push(Linear::load(src, ctx, &join(prefix, &format!("layers.{}", cfg.num_fcs - 1)), f, c, true)?);
        Ok(Ffn { fcs })
    }

    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let last = self.fcs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, fc) in self.fcs[..last].iter().enumerate() {
            h = fc.forward(&h)?;
            rec.put(&join(prefix, &format!("layers.{i}.0")), &h);
            h = ops::gelu(&h)?;
            for name in ffn_hidden_aliases(i) {
                rec.put(&join(prefix, &name), &h);
            }
        }
        let y = self.fcs[last].forward(&h)?;
        for name in ffn_output_aliases(last) {
            rec.put(&join(prefix, &name), &y);
        }
        Ok(y)
    }
}

/// `BEiTTransformerEncoderLayer`: pre-norm, layer scale.
pub struct BeitLayer {
    pub ln1: LayerNorm,
    pub attn: BeitAttention,
    pub ln2: LayerNorm,
    pub ffn: Ffn,
    pub gamma_1: Tensor,
    pub gamma_2: Tensor,
}

impl BeitLayer {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &BeitConfig) -> Result<Self> {
        let c = cfg.embed_dims;
        Ok(BeitLayer {
            gamma_1: src.get(&join(prefix, "gamma_1"), &[c], ctx.kind())?,
            gamma_2: src.get(&join(prefix, "gamma_2"), &[c], ctx.kind())?,
            ln1: LayerNorm::load(src, ctx, &join(prefix, "ln1"), c, cfg.norm.eps)?,
            attn: BeitAttention::load(src, ctx, &join(prefix, "attn"), cfg)?,
            ln2: LayerNorm::load(src, ctx, &join(prefix, "ln2"), c, cfg.norm.eps)?,
            ffn: Ffn::load(src, ctx, &join(prefix, "ffn"), cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        rec.put(&join(prefix, "ln1"), &h);
        let a = self.attn.forward(&h, &join(prefix, "attn"), rec)?;
        rec.put(&join(prefix, "attn"), &a);
        let x = x.f_add(&a.f_mul(&self.gamma_1)?)?; // gamma_1 * attn(...) rounded first
        let h = self.ln2.forward(&x)?;
        rec.put(&join(prefix, "ln2"), &h);
        let f = self.ffn.forward(&h, &join(prefix, "ffn"), rec)?;
        rec.put(&join(prefix, "ffn"), &f);
        let f = f.f_mul(&self.gamma_2)?;
        rec.put(&join(prefix, "drop_path"), &f);
        let x = x.f_add(&f)?;
        rec.put(prefix, &x);
        Ok(x)
    }
}

/// `PatchEmbed(kernel_size = stride = patch, padding = 0)` (+ LN if `patch_norm`).
pub struct PatchEmbed {
    pub weight: Tensor,
    pub bias: Tensor,
    pub norm: Option<LayerNorm>,
    pub patch: i64,
}

impl PatchEmbed {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &BeitConfig) -> Result<Self> {
        let (c, p) = (cfg.embed_dims, cfg.patch_size);
        Ok(PatchEmbed {
            weight: src.get(&join(prefix, "projection.weight"), &[c, cfg.in_channels, p, p], ctx.kind())?,
            bias: src.get(&join(prefix, "projection.bias"), &[c], ctx.kind())?,
            norm: if cfg.patch_norm {
                Some(LayerNorm::load(src, ctx, &join(prefix, "norm"), c, cfg.norm.eps)?)
            } else {
                None
            },
            patch: p as i64,
        })
    }

    /// (B, Cin, H, W) → tokens (B, Hp·Wp, C) and the grid (Hp, Wp).
    pub fn forward(&self, x: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<(Tensor, (i64, i64))> {
        let y = ops::conv2d(x, &self.weight, Some(&self.bias), self.patch, 0, 1)?;
        rec.put(&join(prefix, "projection"), &y);
        let (hp, wp) = ops::hw(&y);
        // flatten(2).transpose(1, 2): [B, C, Hp, Wp] -> [B, Hp·Wp, C]
        let mut tokens = y.f_flatten(2, -1)?.f_transpose(1, 2)?;
        if let Some(ln) = &self.norm {
            tokens = ln.forward(&tokens)?;
            rec.put(&join(prefix, "norm"), &tokens);
        }
        rec.put(&join(prefix, "0"), &tokens);
        Ok((tokens, (hp, wp)))
    }
}

/// The BEiT backbone.
pub struct Beit {
    pub cfg: BeitConfig,
    pub patch_embed: PatchEmbed,
    /// `cls_token` (1, 1, C).
    pub cls_token: Tensor,
    pub layers: Vec<BeitLayer>,
    /// The final norm `ln1` (`final_norm=True`).
    pub ln1: Option<LayerNorm>,
    /// Output maps channels-last ([`Ctx::channels_last`](super::Ctx::channels_last)).
    channels_last: bool,
}

impl Beit {
    pub fn load(src: &mut dyn Source, ctx: &Ctx, prefix: &str, cfg: &BeitConfig) -> Result<Self> {
        let c = cfg.embed_dims;
        Ok(Beit {
            cls_token: src.get(&join(prefix, "cls_token"), &[1, 1, c], ctx.kind())?,
            patch_embed: PatchEmbed::load(src, ctx, &join(prefix, "patch_embed"), cfg)?,
            layers: (0..cfg.num_layers)
                .map(|i| BeitLayer::load(src, ctx, &join(prefix, &format!("layers.{i}")), cfg))
                .collect::<Result<_>>()?,
            ln1: if cfg.final_norm {
                Some(LayerNorm::load(src, ctx, &join(prefix, "ln1"), c, cfg.norm.eps)?)
            } else {
                None
            },
            cfg: cfg.clone(),
            channels_last: ctx.channels_last(),
        })
    }

    /// (B, Cin, H, W) normalised images → the `out_indices` feature maps (B, C, Hp, Wp).
    pub fn forward(&self, img: &Tensor, prefix: &str, rec: &mut Recorder) -> Result<Vec<Tensor>> {
        let s = img.size();
        let (b, cin, h, w) = (s[0], s[1] as usize, s[2] as usize, s[3] as usize);
        self.cfg.check_input(cin, h, w).map_err(ModelError::Input)?;
        let (tokens, (hp, wp)) = self.patch_embed.forward(img, &join(prefix, "patch_embed"), rec)?;
        let c = self.cfg.embed_dims as i64;
        // cls token prepended: [B, N, C] -> [B, N+1, C]
        let cls = self.cls_token.f_expand([b, 1, c], false)?;
        let mut x = Tensor::f_cat(&[cls, tokens], 1)?;
        let mut outs = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &join(prefix, &format!("layers.{i}")), rec)?;
            if i + 1 == self.layers.len() {
                if let Some(ln) = &self.ln1 {
                    x = ln.forward(&x)?;
                    rec.put(&join(prefix, "ln1"), &x);
                }
            }
            if self.cfg.out_indices.contains(&(i as i64)) {
                outs.push(tokens_to_map(&x, hp, wp, self.channels_last)?);
            }
        }
        for (k, o) in outs.iter().enumerate() {
            rec.put(&join(prefix, &k.to_string()), o);
        }
        Ok(outs)
    }
}

/// `x[:, 1:].reshape(B, Hp, Wp, C).permute(0, 3, 1, 2).contiguous()`; channels-last: the same
/// values with NHWC strides, the permuted tokens as they lie (no copy).
pub fn tokens_to_map(x: &Tensor, hp: i64, wp: i64, channels_last: bool) -> Result<Tensor> {
    let s = x.size();
    let (b, n, c) = (s[0], s[1], s[2]);
    let map = x.f_narrow(1, 1, n - 1)?.f_contiguous()?.f_reshape([b, hp, wp, c])?.f_permute([0, 3, 1, 2])?;
    Ok(if channels_last { map } else { map.f_contiguous()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gathered bias is `bias[0, h, i, j] = table[index[i, j], h]` (the table stored
    /// transposed, (nH, T)); the folded one is that tensor.
    #[test]
    fn the_relative_position_bias_is_the_table_at_the_index() {
        let (heads, rows, n) = (3i64, 7i64, 4i64);
        let table: Vec<f32> = (0..rows * heads).map(|v| v as f32 * 0.5 - 3.0).collect(); // (T, nH)
        let index: Vec<i64> = (0..n * n).map(|k| (k * 5 + 3) % rows).collect();
        let t = Tensor::from_slice(&table).reshape([rows, heads]);
        let gathered =
            RelPosBias::Gathered { table: t.transpose(0, 1).contiguous(), index: Tensor::from_slice(&index) };
        let b = gathered.get(heads, n).unwrap();
        assert_eq!(b.size(), vec![1, heads, n, n]);
        for h in 0..heads {
            for ij in 0..n * n {
                let want = table[(index[ij as usize] * heads + h) as usize] as f64;
                assert_eq!(b.double_value(&[0, h, ij / n, ij % n]), want);
            }
        }
        let folded = RelPosBias::Folded(b.contiguous());
        assert!(folded.get(heads, n).unwrap().equal(&b));
    }
}
