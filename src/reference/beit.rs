//! BEiT backbone (`mmseg/models/backbones/beit.py`, MMSegmentation 1.2.2).
//!
//! Patch embedding (Conv2d k=s=patch, no padding: sizes that are not multiples of the patch are
//! truncated) → class token prepended (no absolute position embedding) → `num_layers` pre-norm
//! layers with relative-position-biased attention and layer scale:
//!
//! ```text
//! x = x + gamma_1 * attn(ln1(x))
//! x = x + gamma_2 * ffn(ln2(x))
//! ```
//!
//! → for each layer in `out_indices`, the patch tokens (class token dropped) as an NCHW map.
//! Module names follow `named_modules()`: `backbone.patch_embed.projection`,
//! `backbone.layers.{i}.{ln1,attn,attn.qkv,attn.proj,ln2,ffn,ffn.layers.0.0,ffn.activate,...}`,
//! `backbone.ln1` (final norm), and the tuple outputs `backbone.{k}`.

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView3, Axis};

use super::ops;
use super::{ModelError, Recorder};
use crate::config::BeitConfig;
use crate::model::names::{ffn_hidden_aliases, ffn_output_aliases, join};
use crate::model::{check_relative_position_index, relative_position_index};
use crate::weights::WeightStore;
use crate::Float;

/// `nn.LayerNorm(C, eps)` with affine parameters.
pub struct LayerNorm<T: Float> {
    pub weight: Array1<T>,
    pub bias: Array1<T>,
    pub eps: f64,
}

impl<T: Float> LayerNorm<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, c: usize, eps: f64) -> Self {
        LayerNorm { weight: ws.get1(&join(prefix, "weight"), c), bias: ws.get1(&join(prefix, "bias"), c), eps }
    }
    /// Normalises the last axis of (B, N, C) tokens.
    pub fn forward(&self, x: &Array3<T>) -> Array3<T> {
        let (b, n, c) = x.dim();
        let x2 = x.view().into_shape_with_order((b * n, c)).expect("standard layout");
        ops::layer_norm(x2, Some(self.weight.view()), Some(self.bias.view()), self.eps)
            .into_shape_with_order((b, n, c))
            .expect("same size")
    }
}

/// `nn.Linear(in, out)`: `y = x Wᵀ + b`.
pub struct Linear<T: Float> {
    pub weight: Array2<T>,
    pub bias: Option<Array1<T>>,
}

impl<T: Float> Linear<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, inp: usize, out: usize, bias: bool) -> Self {
        Linear {
            weight: ws.get2(&join(prefix, "weight"), out, inp),
            bias: bias.then(|| ws.get1(&join(prefix, "bias"), out)),
        }
    }
    /// Applies to the last axis of (B, N, in) tokens.
    pub fn forward(&self, x: &Array3<T>) -> Array3<T> {
        let (b, n, c) = x.dim();
        let x2 = x.view().into_shape_with_order((b * n, c)).expect("standard layout");
        let out = self.weight.nrows();
        ops::linear(x2, self.weight.view(), self.bias.as_ref().map(|b| b.view()))
            .into_shape_with_order((b, n, out))
            .expect("same size")
    }
}

/// `BEiTAttention`: multi-head self-attention with a learned relative-position bias per layer:
///
/// ```text
/// q, k, v = split(x Wqkvᵀ + [q_bias, 0, v_bias]) into heads       (B, nH, N, hd) each
/// out     = softmax((q · head_dim^-0.5) · kᵀ + bias) · v             bias[h, i, j] = table[index[i, j], h]
/// y       = merge_heads(out) Wprojᵀ + b_proj
/// ```
pub struct BeitAttention<T: Float> {
    /// `qkv.weight` (3C, C), rows [Q; K; V], heads contiguous inside each.
    pub qkv: Linear<T>,
    /// `qv_bias=True`: the bias is `cat(q_bias, zeros, v_bias)` and `attn.qkv` is not called as a
    /// module (F.linear), so it has no recorded output.
    pub qv_bias: bool,
    pub proj: Linear<T>,
    /// `relative_position_bias_table` gathered by the computed `relative_position_index`.
    pub bias: ops::GatheredBias<T>,
    pub num_heads: usize,
    /// `head_dim ** -0.5`.
    pub scale: T,
}

impl<T: Float> BeitAttention<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &BeitConfig) -> Self {
        let c = cfg.embed_dims;
        let (wh, ww) = cfg.window();
        let rows = (2 * wh - 1) * (2 * ww - 1) + 3;
        let mut qkv = Linear { weight: ws.get2(&join(prefix, "qkv.weight"), 3 * c, c), bias: None };
        if cfg.qv_bias {
            let q = ws.get1(&join(prefix, "q_bias"), c);
            let v = ws.get1(&join(prefix, "v_bias"), c);
            let mut b = Array1::zeros(3 * c);
            b.slice_mut(s![..c]).assign(&q);
            b.slice_mut(s![2 * c..]).assign(&v);
            qkv.bias = Some(b);
        }
        let table = ws.get2(&join(prefix, "relative_position_bias_table"), rows, cfg.num_heads);
        let index = relative_position_index((wh, ww));
        let key = join(prefix, "relative_position_index");
        if let Some(problem) =
            ws.get_int_opt(&key).and_then(|stored| check_relative_position_index(&key, &stored, &index))
        {
            ws.problem(problem);
        }
        let head_dim = c / cfg.num_heads;
        BeitAttention {
            qkv,
            qv_bias: cfg.qv_bias,
            proj: Linear::load(ws, &join(prefix, "proj"), c, c, true),
            bias: ops::GatheredBias::new(table.view(), index),
            num_heads: cfg.num_heads,
            scale: T::from_f64_lossy((head_dim as f64).powf(-0.5)),
        }
    }

    /// (B, N+1, C) → (B, N+1, C).
    pub fn forward(&self, x: &Array3<T>, prefix: &str, rec: &mut Recorder<T>) -> Array3<T> {
        let (b, n, c) = x.dim();
        let nh = self.num_heads;
        let qkv = self.qkv.forward(x); // (B, N, 3C)
        if !self.qv_bias {
            rec.put(&join(prefix, "qkv"), &qkv);
        }
        // qkv.reshape(B, N, 3, nH, hd).permute(2, 0, 3, 1, 4): (3, B, nH, N, hd), as views.
        let qkv = qkv.into_shape_with_order((b, n, 3, nh, c / nh)).expect("standard layout");
        let qkv = qkv.view().permuted_axes([2, 0, 3, 1, 4]);
        let q = &qkv.index_axis(Axis(0), 0) * self.scale; // q * scale, rounded first as in PyTorch
        let (k, v) = (qkv.index_axis(Axis(0), 1), qkv.index_axis(Axis(0), 2));
        let out = ops::attention(q.view(), k, v, &self.bias); // (B, nH, N, hd)
                                                              // transpose(1, 2).reshape(B, N, C)
        let out = out.permuted_axes([0, 2, 1, 3]).as_standard_layout().into_owned();
        let out = out.into_shape_with_order((b, n, c)).expect("standard layout");
        let y = self.proj.forward(&out);
        rec.put(&join(prefix, "proj"), &y);
        rec.put(&join(prefix, "proj_drop"), &y);
        y
    }
}

/// mmcv `FFN` with `num_fcs` linears: `layers.{i}` = Sequential(Linear, GELU, Dropout) for
/// i < num_fcs-1, then `layers.{num_fcs-1}` = Linear; no residual (`add_identity=False`).
pub struct Ffn<T: Float> {
    pub fcs: Vec<Linear<T>>,
}

impl<T: Float> Ffn<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &BeitConfig) -> Self {
        let (c, f) = (cfg.embed_dims, cfg.feedforward_channels);
        let mut fcs = Vec::new();
        let mut inp = c;
        for i in 0..cfg.num_fcs - 1 {
            fcs.push(Linear::load(ws, &join(prefix, &format!("layers.{i}.0")), inp, f, true));
            inp = f;
        }
        fcs.push(Linear::load(ws, &join(prefix, &format!("layers.{}", cfg.num_fcs - 1)), f, c, true));
        Ffn { fcs }
    }

    pub fn forward(&self, x: &Array3<T>, prefix: &str, rec: &mut Recorder<T>) -> Array3<T> {
        let last = self.fcs.len() - 1;
        let mut h = x.clone();
        for (i, fc) in self.fcs[..last].iter().enumerate() {
            h = fc.forward(&h);
            rec.put(&join(prefix, &format!("layers.{i}.0")), &h);
            ops::gelu_inplace(&mut h);
            for name in ffn_hidden_aliases(i) {
                rec.put(&join(prefix, &name), &h);
            }
        }
        let y = self.fcs[last].forward(&h);
        for name in ffn_output_aliases(last) {
            rec.put(&join(prefix, &name), &y);
        }
        y
    }
}

/// `BEiTTransformerEncoderLayer`.
pub struct BeitLayer<T: Float> {
    pub ln1: LayerNorm<T>,
    pub attn: BeitAttention<T>,
    pub ln2: LayerNorm<T>,
    pub ffn: Ffn<T>,
    pub gamma_1: Array1<T>,
    pub gamma_2: Array1<T>,
}

impl<T: Float> BeitLayer<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &BeitConfig) -> Self {
        let c = cfg.embed_dims;
        BeitLayer {
            gamma_1: ws.get1(&join(prefix, "gamma_1"), c),
            gamma_2: ws.get1(&join(prefix, "gamma_2"), c),
            ln1: LayerNorm::load(ws, &join(prefix, "ln1"), c, cfg.norm.eps),
            attn: BeitAttention::load(ws, &join(prefix, "attn"), cfg),
            ln2: LayerNorm::load(ws, &join(prefix, "ln2"), c, cfg.norm.eps),
            ffn: Ffn::load(ws, &join(prefix, "ffn"), cfg),
        }
    }

    pub fn forward(&self, x: &Array3<T>, prefix: &str, rec: &mut Recorder<T>) -> Array3<T> {
        let h = self.ln1.forward(x);
        rec.put(&join(prefix, "ln1"), &h);
        let a = self.attn.forward(&h, &join(prefix, "attn"), rec);
        rec.put(&join(prefix, "attn"), &a);
        let mut x = x.clone();
        let a = a * &self.gamma_1; // gamma_1 * attn(...) rounded first, as in PyTorch
        x += &a;
        let h = self.ln2.forward(&x);
        rec.put(&join(prefix, "ln2"), &h);
        let f = self.ffn.forward(&h, &join(prefix, "ffn"), rec);
        rec.put(&join(prefix, "ffn"), &f);
        let f = f * &self.gamma_2;
        // DropPath is called twice per layer; its last recorded output is gamma_2 * ffn(...).
        rec.put(&join(prefix, "drop_path"), &f);
        x += &f;
        rec.put(prefix, &x);
        x
    }
}

/// `PatchEmbed(conv_type='Conv2d', kernel_size=stride=patch, padding=0)` (+ LN if `patch_norm`).
pub struct PatchEmbed<T: Float> {
    pub weight: Array4<T>,
    pub bias: Array1<T>,
    pub norm: Option<LayerNorm<T>>,
    pub patch: usize,
}

impl<T: Float> PatchEmbed<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &BeitConfig) -> Self {
        let (c, p) = (cfg.embed_dims, cfg.patch_size);
        PatchEmbed {
            weight: ws.get4(&join(prefix, "projection.weight"), [c, cfg.in_channels, p, p]),
            bias: ws.get1(&join(prefix, "projection.bias"), c),
            norm: cfg.patch_norm.then(|| LayerNorm::load(ws, &join(prefix, "norm"), c, cfg.norm.eps)),
            patch: p,
        }
    }

    /// (B, Cin, H, W) → tokens (B, Hp·Wp, C) and the grid (Hp, Wp).
    pub fn forward(&self, x: &Array4<T>, prefix: &str, rec: &mut Recorder<T>) -> (Array3<T>, (usize, usize)) {
        let y =
            ops::conv2d(x.view(), self.weight.view(), Some(self.bias.view()), (self.patch, self.patch), (0, 0), (1, 1));
        rec.put(&join(prefix, "projection"), &y);
        let (b, c, hp, wp) = y.dim();
        // flatten(2).transpose(1, 2): token t = row t / Wp, column t % Wp.
        let tokens = y
            .into_shape_with_order((b, c, hp * wp))
            .expect("standard layout")
            .permuted_axes([0, 2, 1])
            .as_standard_layout()
            .into_owned();
        let tokens = match &self.norm {
            Some(ln) => {
                let t = ln.forward(&tokens);
                rec.put(&join(prefix, "norm"), &t);
                t
            }
            None => tokens,
        };
        rec.put(&join(prefix, "0"), &tokens);
        (tokens, (hp, wp))
    }
}

/// The BEiT backbone.
pub struct Beit<T: Float> {
    pub cfg: BeitConfig,
    pub patch_embed: PatchEmbed<T>,
    /// `cls_token` (1, 1, C), stored as (C,).
    pub cls_token: Array1<T>,
    pub layers: Vec<BeitLayer<T>>,
    /// The final norm `ln1` (`final_norm=True`), applied after the last layer.
    pub ln1: Option<LayerNorm<T>>,
}

impl<T: Float> Beit<T> {
    pub fn load(ws: &mut WeightStore<T>, prefix: &str, cfg: &BeitConfig) -> Self {
        let c = cfg.embed_dims;
        let cls = ws.get(&join(prefix, "cls_token"), &[1, 1, c]).into_shape_with_order(c).expect("shape checked");
        Beit {
            patch_embed: PatchEmbed::load(ws, &join(prefix, "patch_embed"), cfg),
            cls_token: cls,
            layers: (0..cfg.num_layers)
                .map(|i| BeitLayer::load(ws, &join(prefix, &format!("layers.{i}")), cfg))
                .collect(),
            ln1: cfg.final_norm.then(|| LayerNorm::load(ws, &join(prefix, "ln1"), c, cfg.norm.eps)),
            cfg: cfg.clone(),
        }
    }

    /// (B, Cin, H, W) normalised images → the `out_indices` feature maps (B, C, Hp, Wp).
    pub fn forward(&self, img: &Array4<T>, prefix: &str, rec: &mut Recorder<T>) -> Result<Vec<Array4<T>>, ModelError> {
        let (b, cin, h, w) = img.dim();
        self.cfg.check_input(cin, h, w).map_err(ModelError::Input)?;
        let (tokens, (hp, wp)) = self.patch_embed.forward(img, &join(prefix, "patch_embed"), rec);
        let c = self.cfg.embed_dims;
        let n = hp * wp;
        let mut x = Array3::<T>::zeros((b, n + 1, c));
        for bi in 0..b {
            x.slice_mut(s![bi, 0, ..]).assign(&self.cls_token);
        }
        x.slice_mut(s![.., 1.., ..]).assign(&tokens);
        let mut outs = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &join(prefix, &format!("layers.{i}")), rec);
            if i + 1 == self.layers.len() {
                if let Some(ln) = &self.ln1 {
                    x = ln.forward(&x);
                    rec.put(&join(prefix, "ln1"), &x);
                }
            }
            if self.cfg.out_indices.contains(&(i as i64)) {
                outs.push(tokens_to_map(x.view(), hp, wp));
            }
        }
        for (k, o) in outs.iter().enumerate() {
            rec.put(&join(prefix, &k.to_string()), o);
        }
        Ok(outs)
    }
}

/// `x[:, 1:].reshape(B, Hp, Wp, C).permute(0, 3, 1, 2)`: patch tokens to an NCHW map.
pub fn tokens_to_map<T: Float>(x: ArrayView3<T>, hp: usize, wp: usize) -> Array4<T> {
    let (b, _, c) = x.dim();
    let t = x.slice(s![.., 1.., ..]).to_owned();
    t.into_shape_with_order((b, hp, wp, c))
        .expect("standard layout")
        .permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned()
}
