//! The ndarray reference as a [`Backend`]: float32 and float64 (the float64 twin fixtures run
//! through exactly the same code).

use std::any::Any;

use ndarray::{Array3, Array4, ArrayD, Ix4, IxDyn};

use super::{Backend, BackendError, Model, OutTensor, Outputs, StageClock, StageTimes};
use crate::array::AnyArray;
use crate::config::SegmentorConfig;
use crate::float::Dtype;
use crate::reference::segmentor::EncoderDecoder;
use crate::reference::{Recorded, Recorder};
use crate::weights::{StateDict, WeightStore};
use crate::Float;

/// The ndarray reference (`--backend ref`).
pub struct RefBackend;

impl Backend for RefBackend {
    fn name(&self) -> &'static str {
        "ref"
    }
    fn describe(&self) -> String {
        "ref (ndarray reference)".into()
    }
    fn load(&self, cfg: &SegmentorConfig, weights: StateDict, dtype: Dtype) -> Result<Box<dyn Model>, BackendError> {
        Ok(match dtype {
            Dtype::F32 => Box::new(RefModel(EncoderDecoder::<f32>::load(cfg, WeightStore::from_arrays(weights))?)),
            Dtype::F64 => Box::new(RefModel(EncoderDecoder::<f64>::load(cfg, WeightStore::from_arrays(weights))?)),
        })
    }
}

/// A reference model in `T`.
pub struct RefModel<T: Float>(pub EncoderDecoder<T>);

impl<T: Float> RefModel<T> {
    fn input(inputs: &AnyArray) -> Result<Array4<T>, BackendError> {
        let x = inputs.to_float::<T>().ok_or_else(|| {
            BackendError::Input(format!("inputs: expected a float array, got {}", inputs.dtype_name()))
        })?;
        x.into_dimensionality::<Ix4>().map_err(|_| {
            BackendError::Input(format!(
                "inputs: expected an NCHW array (4 dimensions), got shape {:?}",
                inputs.shape()
            ))
        })
    }
}

impl<T: Float> Model for RefModel<T> {
    fn describe(&self) -> String {
        format!("ref (ndarray reference, {})", T::DTYPE)
    }

    fn run(&self, inputs: &AnyArray, wanted: &[String]) -> Result<Outputs, BackendError> {
        let x = Self::input(inputs)?;
        let mut rec = Recorder::<T>::only(wanted.iter().cloned());
        self.0.forward(&x, &mut rec)?;
        Ok(rec
            .into_values()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Recorded::Float(a) => OutTensor::Float(a.mapv(|x| x.to_f64_exact())),
                    Recorded::Int(a) => OutTensor::Label(a),
                };
                (k, v)
            })
            .collect())
    }

    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        // No copy when T is f32 (the arrays are moved through `Any`), a conversion otherwise.
        let x = match (Box::new(input) as Box<dyn Any>).downcast::<Array4<T>>() {
            Ok(x) => *x,
            Err(any) => any.downcast::<Array4<f32>>().expect("the input").mapv(|v| T::from_f64_lossy(v as f64)),
        };
        let out = self.0.forward(&x, &mut Recorder::none())?;
        Ok(match (Box::new(out.seg_logits) as Box<dyn Any>).downcast::<Array4<f32>>() {
            Ok(y) => *y,
            Err(any) => any.downcast::<Array4<T>>().expect("the logits").mapv(|v| v.to_f64_exact() as f32),
        })
    }

    fn labels(&self, input: Array4<f32>) -> Result<Array3<i64>, BackendError> {
        let x = Self::input(&AnyArray::F32(input.into_dyn()))?;
        Ok(self.0.forward(&x, &mut Recorder::none())?.pred)
    }

    fn decode_head_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, BackendError> {
        let x = Self::input(&AnyArray::F32(input.into_dyn()))?;
        let y = self.0.decode_head_forward(&x, &mut Recorder::none())?;
        Ok(match (Box::new(y) as Box<dyn Any>).downcast::<Array4<f32>>() {
            Ok(y) => *y,
            Err(any) => any.downcast::<Array4<T>>().expect("the logits").mapv(|v| v.to_f64_exact() as f32),
        })
    }

    fn profile(&self, inputs: &AnyArray) -> Result<StageTimes, BackendError> {
        let x = Self::input(inputs)?;
        let mut clock = StageClock::start();
        self.0.encode_decode_timed(&x, &mut Recorder::none(), &mut |stage| clock.lap(stage))?;
        Ok(clock.times)
    }
}

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
