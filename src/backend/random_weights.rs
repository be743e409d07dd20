//! Random weights for benchmarks: [`random_state_dict`] draws every float parameter a config's
//! model asks for from a seeded `SplitMix64`, by the per-parameter rules of [`random_draw`],
//! so that every backend gets the same weights for the same seed.

use ndarray::{ArrayD, IxDyn};

use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::reference::segmentor::EncoderDecoder;
use crate::weights::StateDict;

/// SplitMix64: a small, seeded generator for benchmark weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A pair of independent standard normals (Box–Muller, both branches).
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        (r * c, r * s)
    }
}

/// How the values of one benchmark parameter are drawn: `offset + scale · N(0, 1)`, or
/// `offset + U(0, 1)` when `uniform`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub offset: f64,
    pub scale: f64,
    pub uniform: bool,
}

/// The distribution of parameter `key` of `shape` (benchmark weights of plausible scale):
/// matrices and kernels N(0, 1/fan_in); 1-D `weight` (LayerNorm, BatchNorm) 1 + N(0, 0.1²);
/// `running_var` U(0.5, 1.5); `gamma_1`/`gamma_2` 0.1 + N(0, 0.02²); `cls_token` N(0, 1); other
/// vectors N(0, 0.1²).
pub fn random_draw(key: &str, shape: &[usize]) -> Draw {
    let normal = |offset, scale| Draw { offset, scale, uniform: false };
    match key.rsplit('.').next().unwrap_or(key) {
        "running_var" => Draw { offset: 0.5, scale: 1.0, uniform: true },
        "cls_token" => normal(0.0, 1.0),
        "gamma_1" | "gamma_2" => normal(0.1, 0.02),
        "relative_position_bias_table" => normal(0.0, 0.1),
        _ if shape.len() >= 2 => normal(0.0, 1.0 / (shape[1..].iter().product::<usize>().max(1) as f64).sqrt()),
        "weight" => normal(1.0, 0.1),
        _ => normal(0.0, 0.1),
    }
}

/// A random float32 state dict for `cfg` (see [`random_draw`]), the same for every backend.
pub fn random_state_dict(cfg: &SegmentorConfig, seed: u64) -> StateDict {
    let mut g = SplitMix64(seed);
    EncoderDecoder::<f32>::parameter_shapes(cfg)
        .into_iter()
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            let d = random_draw(&key, &shape);
            let mut v: Vec<f32> = Vec::with_capacity(n);
            while v.len() < n {
                if d.uniform {
                    v.push((d.offset + g.uniform()) as f32);
                } else {
                    let (a, b) = g.normal_pair();
                    v.push((d.offset + d.scale * a) as f32);
                    if v.len() < n {
                        v.push((d.offset + d.scale * b) as f32);
                    }
                }
            }
            let a = ArrayD::from_shape_vec(IxDyn(&shape), v).expect("n elements");
            (key, AnyArray::F32(a))
        })
        .collect()
}
