//! The libtorch fast path (feature `tch`): the same `EncoderDecoder` as [`crate::reference`], on
//! tch tensors, on the CPU or a CUDA device.
//!
//! It mirrors the reference module by module ([`beit`], [`neck`], [`heads`], [`segmentor`]), is
//! built from the same [`SegmentorConfig`](crate::config::SegmentorConfig) and the same
//! MMSegmentation weight names (through the same strict [`WeightStore`](crate::weights::WeightStore),
//! so missing, wrong-shape and unexpected keys are reported the same way), and records the same
//! module output names, so `beit-seg verify --backend tch` checks it against the very fixtures the
//! reference passes. Whole and slide inference stay on the device: the windows of an image run as
//! one batch, and the window sum, the count division and the resizes are device ops.
//!
//! Precisions ([`Precision`]):
//! * `fp32` (and `fp64` for the float64 twin fixtures): conformant. On CUDA, TF32 is off: every
//!   convolution goes through `at::_convolution` with `allow_tf32 = false` (per call, whatever the
//!   global cuDNN flag says); matmuls use PyTorch's default `highest` float32 precision (no TF32),
//!   and [`TchBackend::new`] also sets `NVIDIA_TF32_OVERRIDE=0` for the process before CUDA is first
//!   used. See `docs/fast-path.md`.
//! * `fp16` / `bf16`: weights and activations in half precision, LayerNorm and softmax in fp32
//!   (attention through `scaled_dot_product_attention`, which accumulates its softmax in fp32),
//!   logits resized, window-averaged and argmax'ed in fp32. Not conformant: [`crate::bench`] reports
//!   their logit error and prediction agreement against fp32 on the same weights.
//!
//! No library path panics on bad input: every libtorch call uses tch's fallible `f_*` form and
//! errors come back as [`ModelError`].

pub mod batch_norm;
pub mod beit;
pub mod heads;
pub mod malloc;
pub mod neck;
pub mod ops;
pub mod segmentor;
pub mod weight_source;
pub mod winograd;

use ndarray::{ArrayD, IxDyn};
use tch::{Device, Kind, Tensor};

use crate::array::AnyArray;
use crate::config::ConfigError;
use crate::weights::WeightsError;

pub use segmentor::{EncoderDecoder, SegOutput};

/// Errors of building or running the fast path.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An error raised by libtorch (shape mismatch, out of memory, unsupported kernel, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input the configured model cannot run (MMSegmentation would fail too).
    #[error("{0}")]
    Input(String),
    /// A device or precision that is not available.
    #[error("{0}")]
    Device(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub use crate::float::Precision;

/// What a [`Precision`] means to libtorch (the type is the library's, shared with the CLI and
/// the conformance rules).
impl Precision {
    /// The kind of weights and activations.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp64 => Kind::Double,
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// The kind LayerNorm, softmax and the final logits are computed in.
    pub fn wide_kind(self) -> Kind {
        match self {
            Precision::Fp64 => Kind::Double,
            _ => Kind::Float,
        }
    }

    /// Whether this precision is a half type (not claimed conformant).
    pub fn is_reduced(self) -> bool {
        matches!(self, Precision::Fp16 | Precision::Bf16)
    }
}

/// The library's [`crate::Device`] as libtorch's.
impl From<crate::Device> for Device {
    fn from(d: crate::Device) -> Device {
        match d {
            crate::Device::Cpu => Device::Cpu,
            crate::Device::Cuda(i) => Device::Cuda(i),
        }
    }
}

/// A short name of a device (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Checks that `device` can be used (for CUDA: libtorch sees that many GPUs) and, for CUDA,
/// turns TF32 off for the whole process before CUDA is initialised (see the module docs).
pub fn check_device(device: Device) -> Result<()> {
    if let Device::Cuda(i) = device {
        // cuBLAS and cuDNN read NVIDIA_TF32_OVERRIDE when they initialise; "0" disables TF32
        // whatever the framework asks for. A value set by the user is left alone.
        if std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
            std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
        }
        if std::env::var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE").is_ok_and(|v| v != "0") {
            return Err(ModelError::Device(
                "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE is set: it forces TF32 matmuls, which breaks fp32 conformance; unset it".into(),
            ));
        }
        if !tch::Cuda::is_available() {
            return Err(ModelError::Device(format!(
                "device cuda:{i} requested, but libtorch sees no CUDA device (no GPU, no driver, or a binary not linked to libtorch_cuda)"
            )));
        }
        let n = tch::Cuda::device_count();
        if i as i64 >= n {
            return Err(ModelError::Device(format!("device cuda:{i} requested, but libtorch sees {n} CUDA device(s)")));
        }
    }
    Ok(())
}

/// Where and in what precision a model runs.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub device: Device,
    pub precision: Precision,
}

impl Ctx {
    pub fn new(device: Device, precision: Precision) -> Self {
        Ctx { device, precision }
    }
    pub fn kind(&self) -> Kind {
        self.precision.kind()
    }
    pub fn wide_kind(&self) -> Kind {
        self.precision.wide_kind()
    }
    /// The kind the decode heads' convolutions compute in. fp16 on a CPU without AMX-FP16:
    /// float32, on fp16-rounded weights and inputs, the output rounded to fp16 — the arithmetic
    /// of fp16 matrix units, which multiply fp16 values exactly and accumulate in fp32 (oneDNN's
    /// own fp16 convolutions on AVX512-FP16 ran at ~60–120 GFLOP/s here, below its fp32 ones, and
    /// the fp32 path has the Winograd 3x3 kernels). Otherwise the model's kind.
    pub fn conv_kind(&self) -> Kind {
        if self.device == Device::Cpu && self.precision == Precision::Fp16 && !cpu_has_amx_fp16() {
            Kind::Float
        } else {
            self.kind()
        }
    }
    /// Whether feature maps and convolution weights are held channels-last (NHWC strides in
    /// NCHW shape): half-precision convolutions on the CPU, where oneDNN runs channels-last
    /// convolutions on the AMX/AVX-512 half-precision units without reordering inputs and
    /// weights on every call (an NCHW bf16 3x3 convolution at 160² takes ~1.7x as long). The
    /// values are the same.
    pub fn channels_last(&self) -> bool {
        self.device == Device::Cpu && self.precision.is_reduced() && self.conv_kind() == self.kind()
    }
    /// A convolution weight in the layout [`Ctx::channels_last`] asks for.
    pub fn conv_weight(&self, w: Tensor) -> Result<Tensor> {
        if self.channels_last() {
            ops::to_channels_last(&w)
        } else {
            Ok(w)
        }
    }
}

/// Whether this CPU has AMX-FP16 (`amx_fp16` in /proc/cpuinfo; false where unknown).
pub fn cpu_has_amx_fp16() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "amx_fp16")))
            .unwrap_or(false)
    })
}

/// The fast path's recorder of named module outputs (see [`crate::model::Recorder`]). Recorded
/// tensors are shallow clones (no copy): the model code never modifies a tensor in place after
/// it may have been recorded.
pub type Recorder = crate::model::Recorder<Tensor>;

impl crate::model::Recorder<Tensor> {
    /// Records `t` under `name` when wanted (a shallow clone).
    pub fn put(&mut self, name: &str, t: &Tensor) {
        self.record(name, || t.shallow_clone());
    }
}

pub(crate) use crate::model::join;

/// A host copy of `t` as an array of `T`, converted to `T`'s kind on the device first.
fn to_host_array<T: tch::kind::Element + Copy + Default>(t: &Tensor) -> Result<ArrayD<T>> {
    let t = t.f_to_device(Device::Cpu)?.f_to_kind(T::KIND)?.f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n = t.numel();
    let mut v = vec![T::default(); n];
    t.f_copy_data(&mut v, n)?;
    ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| ModelError::Input(format!("tensor to array: {e}")))
}

/// A host copy of a tensor as an f64 array (exact for every float kind used here).
pub fn to_f64_array(t: &Tensor) -> Result<ArrayD<f64>> {
    to_host_array(t)
}

/// A host copy of a float tensor as an f32 array (converted on the device first).
pub fn to_f32_array(t: &Tensor) -> Result<ArrayD<f32>> {
    to_host_array(t)
}

/// A host copy of an integer tensor as an i64 array.
pub fn to_i64_array(t: &Tensor) -> Result<ArrayD<i64>> {
    to_host_array(t)
}

/// A float array (f32 or f64) as a tensor of `kind` on `device`. The values pass through host
/// slices (tch links ndarray 0.16, this crate 0.17).
pub fn from_any_array(a: &AnyArray, kind: Kind, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let t = match a {
        AnyArray::F32(x) => Tensor::f_from_slice(x.as_standard_layout().as_slice().expect("standard layout"))?,
        AnyArray::F64(x) => Tensor::f_from_slice(x.as_standard_layout().as_slice().expect("standard layout"))?,
        other => return Err(ModelError::Input(format!("expected a float array, got {}", other.dtype_name()))),
    };
    Ok(t.f_reshape(&shape)?.f_to_device(device)?.f_to_kind(kind)?)
}
