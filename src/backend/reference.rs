//! The ndarray reference as a [`Backend`]: float32 and float64 (the float64 twin fixtures run
//! through exactly the same code).

use std::any::Any;

use ndarray::{Array3, Array4, Ix4};

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
