//! Where the fast path's parameters come from: a state dict in MMSegmentation names (through the
//! reference's strict [`WeightStore`], so every missing, wrong-shape or unexpected key is
//! reported exactly as the reference reports it), or random values for benchmarks.

use ndarray::ArrayD;
use tch::{Device, Kind, Tensor};

use super::Result;
use crate::array::AnyArray;
use crate::weights::WeightStore;
use crate::Float;

/// A source of named parameters, handed out as tensors on the model's device.
pub trait Source {
    /// The float tensor `key` of exactly `shape`, converted to `kind`. A missing or wrong-shape
    /// key is recorded (and zeros returned) so that construction goes on and [`Source::finish`]
    /// reports every problem at once.
    fn get(&mut self, key: &str, shape: &[usize], kind: Kind) -> Result<Tensor>;
    /// An optional integer buffer (`relative_position_index`), host-side.
    fn get_int_opt(&mut self, key: &str) -> Option<ArrayD<i64>>;
    /// Records a problem found while building.
    fn problem(&mut self, msg: String);
    /// Ends construction: one error listing every problem and unused key.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Parameters from a state dict, held as `T` on the host until they are handed out.
pub struct StoreSource<T: Float> {
    store: WeightStore<T>,
    device: Device,
}

impl<T: Float + tch::kind::Element> StoreSource<T> {
    pub fn new(arrays: Vec<(String, AnyArray)>, device: Device) -> Self {
        StoreSource { store: WeightStore::from_arrays(arrays), device }
    }
}

impl<T: Float + tch::kind::Element> Source for StoreSource<T> {
    fn get(&mut self, key: &str, shape: &[usize], kind: Kind) -> Result<Tensor> {
        let a = self.store.get(key, shape);
        let a = a.as_standard_layout();
        let data = a.as_slice().expect("standard layout");
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        // Move first, then convert on the device (the cast is cheaper there).
        Ok(Tensor::f_from_slice(data)?.f_reshape(&dims)?.f_to_device(self.device)?.f_to_kind(kind)?)
    }
    fn get_int_opt(&mut self, key: &str) -> Option<ArrayD<i64>> {
        self.store.get_int_opt(key)
    }
    fn problem(&mut self, msg: String) {
        self.store.problem(msg);
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(self.store.finish()?)
    }
}

/// Random parameters of plausible scale (for benchmarks): drawn in float32 from libtorch's
/// generator seeded once, then cast, so models of different precisions built from the same seed
/// hold the same (rounded) values.
///
/// * matrices and kernels: N(0, 1/fan_in), fan_in = product of all but the first dimension;
/// * 1-D `weight` (LayerNorm, BatchNorm): 1 + N(0, 0.1²); `running_var`: U(0.5, 1.5);
/// * `gamma_1`/`gamma_2` (layer scale): 0.1 + N(0, 0.02²); `cls_token`: N(0, 1);
/// * `relative_position_bias_table`: N(0, 0.1²); other vectors (biases, `running_mean`): N(0, 0.1²).
pub struct RandomSource {
    device: Device,
}

impl RandomSource {
    pub fn new(seed: i64, device: Device) -> Self {
        tch::manual_seed(seed);
        RandomSource { device }
    }
}

impl Source for RandomSource {
    fn get(&mut self, key: &str, shape: &[usize], kind: Kind) -> Result<Tensor> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let opts = (Kind::Float, self.device);
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let randn = |std: f64| -> Result<Tensor> { Ok(Tensor::f_randn(&dims, opts)?.f_mul_scalar(std)?) };
        let t = if leaf == "running_var" {
            Tensor::f_rand(&dims, opts)?.f_add_scalar(0.5)?
        } else if leaf == "cls_token" {
            randn(1.0)?
        } else if leaf == "gamma_1" || leaf == "gamma_2" {
            randn(0.02)?.f_add_scalar(0.1)?
        } else if leaf == "relative_position_bias_table" {
            randn(0.1)?
        } else if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            randn((1.0 / fan_in.max(1) as f64).sqrt())?
        } else if leaf == "weight" {
            randn(0.1)?.f_add_scalar(1.0)?
        } else {
            randn(0.1)?
        };
        Ok(t.f_to_kind(kind)?)
    }
    fn get_int_opt(&mut self, _key: &str) -> Option<ArrayD<i64>> {
        None
    }
    fn problem(&mut self, _msg: String) {}
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A state-dict source holding `f64` for float64 runs and `f32` otherwise.
pub fn store_source(arrays: Vec<(String, AnyArray)>, kind: Kind, device: Device) -> Box<dyn Source> {
    if kind == Kind::Double {
        Box::new(StoreSource::<f64>::new(arrays, device))
    } else {
        Box::new(StoreSource::<f32>::new(arrays, device))
    }
}
