//! The `BEiT` backbone config and its LayerNorm / GELU sub-configs.

use serde_json::Value;

use super::{err, ConfigError, Dict};

/// LayerNorm config (`norm_cfg=dict(type='LN', eps=...)`); mmcv's default eps is 1e-5.
#[derive(Debug, Clone, PartialEq)]
pub struct LnConfig {
    pub eps: f64,
}

pub(crate) fn ln_cfg(v: Option<&Value>, path: &str) -> Result<LnConfig, ConfigError> {
    let Some(v) = v else { return Ok(LnConfig { eps: 1e-5 }) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("LN") | Some("LayerNorm") => {}
        other => return err(d.key("type"), format!("only LN is supported, got {other:?}")),
    }
    let eps = d.f64("eps", 1e-5)?;
    if !(eps.is_finite() && eps > 0.0) {
        return err(
            d.key("eps"),
            format!("must be a finite number > 0, got {eps} (LayerNorm divides by sqrt(var + eps))"),
        );
    }
    d.ignore(&["requires_grad"]);
    if let Some(v) = d.raw("elementwise_affine") {
        if v != &Value::Bool(true) {
            return err(d.key("elementwise_affine"), "only elementwise_affine=True is supported");
        }
    }
    d.finish()?;
    Ok(LnConfig { eps })
}

/// `act_cfg=dict(type='GELU')`: exact erf GELU; `approximate='tanh'` is rejected.
pub(crate) fn gelu_cfg(v: Option<&Value>, path: &str) -> Result<(), ConfigError> {
    let Some(v) = v else { return Ok(()) };
    let mut d = Dict::new(v, path)?;
    match d.str("type")? {
        Some("GELU") => {}
        other => return err(d.key("type"), format!("only GELU is supported, got {other:?}")),
    }
    match d.str("approximate")? {
        None | Some("none") => {}
        Some(o) => return err(d.key("approximate"), format!("only the exact (erf) GELU is supported, got {o:?}")),
    }
    d.finish()
}

/// `BEiT` backbone kwargs (`mmseg/models/backbones/beit.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct BeitConfig {
    /// `img_size`: fixes the relative-position window `img_size // patch_size`.
    pub img_size: (usize, usize),
    pub patch_size: usize,
    pub in_channels: usize,
    pub embed_dims: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// `mlp_ratio * embed_dims` (mmseg does no rounding; it must be an integer).
    pub feedforward_channels: usize,
    /// Layers whose output is a feature map (mmseg tests `i in out_indices`, so duplicates and
    /// order do not matter, and negative entries other than a bare `-1` never match).
    pub out_indices: Vec<i64>,
    pub qv_bias: bool,
    pub norm: LnConfig,
    pub patch_norm: bool,
    pub final_norm: bool,
    pub num_fcs: usize,
}

impl BeitConfig {
    pub fn from_value(v: &Value, path: &str) -> Result<Self, ConfigError> {
        let mut d = Dict::new(v, path)?;
        match d.str("type")? {
            Some("BEiT") | None => {}
            Some(o) => return err(d.key("type"), format!("only BEiT is supported, got {o:?}")),
        }
        let img_size = d.pair("img_size", Some((224, 224)))?;
        let patch_size = d.usize("patch_size", Some(16))?;
        let in_channels = d.usize("in_channels", Some(3))?;
        let embed_dims = d.usize("embed_dims", Some(768))?;
        let num_layers = d.usize("num_layers", Some(12))?;
        let num_heads = d.usize("num_heads", Some(12))?;
        let mlp_ratio = d.f64("mlp_ratio", 4.0)?;
        let ff = mlp_ratio * embed_dims as f64;
        if ff.fract() != 0.0 || ff <= 0.0 {
            return err(d.key("mlp_ratio"), format!("mlp_ratio * embed_dims = {ff} is not a positive integer (MMSegmentation passes it unrounded to nn.Linear)"));
        }
        let out_indices = match d.raw("out_indices") {
            None => vec![num_layers as i64 - 1],
            Some(Value::Number(n)) => {
                let i = n.as_i64().ok_or(()).or_else(|_| err(d.key("out_indices"), "expected an integer"))?;
                vec![if i == -1 { num_layers as i64 - 1 } else { i }]
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .ok_or(())
                        .or_else(|_| err(format!("{path}.out_indices"), format!("expected integers, got {x}")))
                })
                .collect::<Result<_, _>>()?,
            Some(o) => return err(d.key("out_indices"), format!("expected an int or a list, got {o}")),
        };
        let qv_bias = d.bool("qv_bias", true)?;
        let norm = ln_cfg(d.raw("norm_cfg"), &d.key("norm_cfg"))?;
        gelu_cfg(d.raw("act_cfg"), &d.key("act_cfg"))?;
        let patch_norm = d.bool("patch_norm", false)?;
        let final_norm = d.bool("final_norm", false)?;
        let num_fcs = d.usize("num_fcs", Some(2))?;
        if num_fcs < 2 {
            return err(d.key("num_fcs"), format!("must be >= 2 (mmcv FFN), got {num_fcs}"));
        }
        // Training-only or initialisation-only: no effect on inference with loaded weights.
        d.ignore(&["attn_drop_rate", "drop_path_rate", "norm_eval", "pretrained", "init_values", "init_cfg"]);
        d.finish()?;
        if embed_dims == 0 || num_heads == 0 || embed_dims % num_heads != 0 {
            return err(
                format!("{path}.num_heads"),
                format!("embed_dims {embed_dims} is not divisible by num_heads {num_heads}"),
            );
        }
        if in_channels == 0 {
            return err(format!("{path}.in_channels"), "must be at least 1");
        }
        if num_layers == 0 {
            return err(format!("{path}.num_layers"), "must be at least 1");
        }
        if patch_size == 0 || img_size.0 < patch_size || img_size.1 < patch_size {
            return err(
                format!("{path}.img_size"),
                format!("img_size {img_size:?} is smaller than patch_size {patch_size}"),
            );
        }
        Ok(BeitConfig {
            img_size,
            patch_size,
            in_channels,
            embed_dims,
            num_layers,
            num_heads,
            feedforward_channels: ff as usize,
            out_indices,
            qv_bias,
            norm,
            patch_norm,
            final_norm,
            num_fcs,
        })
    }

    /// The relative-position window (patch grid of `img_size`).
    /// Checks that an input of `cin` channels and `h`×`w` pixels fits this backbone: the
    /// channel count, and a patch grid equal to the relative-position window (fixed by
    /// `img_size`; MMSegmentation fails on other grids too). The message says why.
    pub fn check_input(&self, cin: usize, h: usize, w: usize) -> Result<(), String> {
        if cin != self.in_channels {
            return Err(format!("input has {cin} channels, the backbone expects {}", self.in_channels));
        }
        let p = self.patch_size;
        let grid = (h / p, w / p);
        let win = self.window();
        if grid != win {
            return Err(format!(
                "input {h}x{w} gives a {}x{} patch grid, but BEiT's relative-position window is fixed by img_size {:?} to {}x{} \
                 (MMSegmentation fails on this input too: use slide inference with crop_size = img_size)",
                grid.0, grid.1, self.img_size, win.0, win.1
            ));
        }
        Ok(())
    }

    pub fn window(&self) -> (usize, usize) {
        (self.img_size.0 / self.patch_size, self.img_size.1 / self.patch_size)
    }

    /// Number of feature maps the backbone returns.
    pub fn num_outputs(&self) -> usize {
        (0..self.num_layers).filter(|i| self.out_indices.contains(&(*i as i64))).count()
    }
}
