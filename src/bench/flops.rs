//! The exact floating-point work of one `encode_decode` from the config: 2 FLOP per
//! multiply-add of every convolution, transposed convolution, linear layer and attention matmul
//! (the products that dominate; normalisations, activations, softmax, pooling and resizes are
//! left out, as FLOP counts usually do).

use crate::config::{HeadConfig, HeadKind, InputTransform, SegmentorConfig};

/// FLOP per stage of one forward pass of an `h x w` window (whole inference; a slide run costs
/// this per window).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageFlops {
    pub backbone: f64,
    pub neck: f64,
    pub decode_head: f64,
}

impl StageFlops {
    pub fn total(&self) -> f64 {
        self.backbone + self.neck + self.decode_head
    }
}

/// `2·cin·cout·k²·hw`: a (k x k) convolution producing `hw` output pixels.
fn conv(cin: usize, cout: usize, k: usize, hw: usize) -> f64 {
    2.0 * (cin * cout * k * k) as f64 * hw as f64
}

/// FLOP of BEiT (patch embedding + layers), Feature2Pyramid and the decode head on an
/// `h x w` input (the auxiliary heads do not run at inference).
pub fn count(cfg: &SegmentorConfig, (h, w): (usize, usize)) -> StageFlops {
    let b = &cfg.backbone;
    let p = b.patch_size.max(1);
    let (hp, wp) = (h / p, w / p);
    let c = b.embed_dims;
    let n = hp * wp + 1;
    let patch = conv(b.in_channels, c, p, hp * wp);
    let per_layer = 2.0 * n as f64 * (c * 3 * c) as f64 // qkv
        + 2.0 * 2.0 * (n * n) as f64 * c as f64 // q·kᵀ and attn·v, all heads
        + 2.0 * n as f64 * (c * c) as f64 // proj
        + 2.0 * 2.0 * n as f64 * (c * b.feedforward_channels) as f64; // fc1 + fc2
    let backbone = patch + per_layer * b.num_layers as f64;

    // Feature maps after the neck (channels, h, w), one per backbone output.
    let outs = b.out_indices.len();
    let mut maps: Vec<(usize, usize, usize)> = vec![(c, hp, wp); outs];
    let mut neck = 0.0;
    if let Some(nk) = &cfg.neck {
        let ch = nk.embed_dim;
        for (m, &r) in maps.iter_mut().zip(&nk.rescales) {
            // A 2x2 stride-2 transposed convolution: cin·cout·4 multiply-adds per input pixel.
            let up = |hh: usize, ww: usize| 2.0 * (ch * ch * 4) as f64 * (hh * ww) as f64;
            *m = if r == 4.0 {
                neck += up(hp, wp) + up(2 * hp, 2 * wp);
                (ch, 4 * hp, 4 * wp)
            } else if r == 2.0 {
                neck += up(hp, wp);
                (ch, 2 * hp, 2 * wp)
            } else if r == 1.0 {
                (ch, hp, wp)
            } else if r == 0.5 {
                (ch, hp / 2, wp / 2)
            } else {
                (ch, hp / 4, wp / 4)
            };
        }
    }
    StageFlops { backbone, neck, decode_head: head(&cfg.decode_head, &maps) }
}

/// FLOP of a decode head on the neck's maps `(channels, h, w)`.
fn head(hc: &HeadConfig, maps: &[(usize, usize, usize)]) -> f64 {
    let ch = hc.channels;
    let classes = hc.out_channels.max(1);
    match &hc.kind {
        HeadKind::Uper { pool_scales } => {
            let Some(&(c_last, h_last, w_last)) = maps.last() else { return 0.0 };
            let (_, h0, w0) = maps[0];
            let ppm: f64 = pool_scales.iter().map(|&s| conv(c_last, ch, 1, s * s)).sum();
            let bottleneck = conv(c_last + pool_scales.len() * ch, ch, 3, h_last * w_last);
            let levels = &maps[..maps.len() - 1];
            let lateral: f64 = levels.iter().map(|&(ci, hh, ww)| conv(ci, ch, 1, hh * ww)).sum();
            let fpn: f64 = levels.iter().map(|&(_, hh, ww)| conv(ch, ch, 3, hh * ww)).sum();
            let fuse = conv(maps.len() * ch, ch, 3, h0 * w0);
            ppm + bottleneck + lateral + fpn + fuse + conv(ch, classes, 1, h0 * w0)
        }
        HeadKind::Fcn { num_convs, kernel_size, concat_input, dilation: _ } => {
            // The selected map (for a multi-input transform, the size of the first one).
            let cin: usize = hc.in_channels.iter().sum();
            let first = match &hc.input_transform {
                InputTransform::Select(i) => *i,
                InputTransform::MultipleSelect(v) | InputTransform::ResizeConcat(v) => v.first().copied().unwrap_or(0),
            };
            let idx = if first < 0 { maps.len() as i64 + first } else { first };
            let Some(&(_, hh, ww)) = usize::try_from(idx).ok().and_then(|i| maps.get(i)) else { return 0.0 };
            let hw = hh * ww;
            let mut f = 0.0;
            for i in 0..*num_convs {
                f += conv(if i == 0 { cin } else { ch }, ch, *kernel_size, hw);
            }
            if *concat_input && *num_convs > 0 {
                f += conv(cin + ch, ch, *kernel_size, hw);
            }
            let last = if *num_convs == 0 { cin } else { ch };
            f + conv(last, classes, 1, hw)
        }
    }
}
