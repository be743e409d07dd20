//! Where the fast path's parameters come from: a state dict in MMSegmentation names, through the
//! one strict loader both backends share ([`WeightStore`], so every missing, wrong-shape or
//! unexpected key is reported exactly as the reference reports it), handed out as tensors.

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

/// A state-dict source holding `f64` for float64 runs and `f32` otherwise.
pub fn store_source(arrays: Vec<(String, AnyArray)>, kind: Kind, device: Device) -> Box<dyn Source> {
    if kind == Kind::Double {
        Box::new(StoreSource::<f64>::new(arrays, device))
    } else {
        Box::new(StoreSource::<f32>::new(arrays, device))
    }
}
