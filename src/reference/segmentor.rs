//! `EncoderDecoder` (`mmseg/models/segmentors/encoder_decoder.py`): backbone → neck → decode
//! head, with whole-image or sliding-window inference.
//!
//! * `encode_decode(img)`: logits of the decode head, bilinearly resized (`align_corners` of the
//!   decode head) to the image size.
//! * whole: `seg_logits = encode_decode(inputs)`.
//! * slide: windows of `crop` every `stride`, `h_grids = max(H - crop_h + stride_h - 1, 0) //
//!   stride_h + 1`, the last window shifted back to end at the border; raw logits summed in
//!   row-major window order and divided by the per-pixel window count.
//! * `pred = seg_logits.argmax(dim=1)` (first index on ties).
//!
//! Recorded names: every module output (whole mode), `seg_logits` and `pred`. Auxiliary heads
//! are not part of inference; they run on the whole input only when one of their outputs is
//! wanted (as the fixture generator calls them once on `extract_feat(inputs)`).

use ndarray::{s, Array3, Array4};

use super::beit::Beit;
use super::heads::DecodeHead;
use super::neck::Feature2Pyramid;
use super::ops;
use super::{ModelError, Recorder};
use crate::config::{SegmentorConfig, TestMode};
use crate::model::heads::check_neck_inputs;
use crate::model::{is_one_whole_window, slide_windows, Stage};
use crate::weights::WeightStore;
use crate::Float;

/// The segmentor.
pub struct EncoderDecoder<T: Float> {
    pub cfg: SegmentorConfig,
    pub backbone: Beit<T>,
    pub neck: Option<Feature2Pyramid<T>>,
    pub decode_head: DecodeHead<T>,
    pub auxiliary_heads: Vec<DecodeHead<T>>,
}

/// What one run returns.
pub struct SegOutput<T: Float> {
    /// (B, classes, H, W) logits at input resolution.
    pub seg_logits: Array4<T>,
    /// (B, H, W) argmax labels.
    pub pred: Array3<i64>,
}

impl<T: Float> EncoderDecoder<T> {
    /// Builds the model from a state dict in MMSegmentation naming. Every missing, wrong-shape or
    /// unexpected key is reported in one error.
    pub fn load(cfg: &SegmentorConfig, mut ws: WeightStore<T>) -> Result<Self, ModelError> {
        let m = Self::load_partial(cfg, &mut ws);
        ws.finish()?;
        Ok(m)
    }

    /// The float parameters (key, shape) this config needs, in construction order (what a
    /// state dict must hold, besides the derived `relative_position_index` buffers and BN
    /// counters).
    pub fn parameter_shapes(cfg: &SegmentorConfig) -> Vec<(String, Vec<usize>)> {
        let mut ws = WeightStore::<T>::from_arrays(Vec::new());
        let _ = Self::load_partial(cfg, &mut ws);
        ws.requests().to_vec()
    }

    fn load_partial(cfg: &SegmentorConfig, ws: &mut WeightStore<T>) -> Self {
        EncoderDecoder {
            backbone: Beit::load(ws, "backbone", &cfg.backbone),
            neck: cfg.neck.as_ref().map(|n| Feature2Pyramid::load(ws, "neck", n)),
            decode_head: DecodeHead::load(ws, "decode_head", &cfg.decode_head),
            auxiliary_heads: cfg
                .auxiliary_heads
                .iter()
                .enumerate()
                .map(|(k, h)| DecodeHead::load(ws, &cfg.aux_prefix(k), h))
                .collect(),
            cfg: cfg.clone(),
        }
    }

    /// `extract_feat`: backbone (+ neck) maps.
    pub fn extract_feat(&self, img: &Array4<T>, rec: &mut Recorder<T>) -> Result<Vec<Array4<T>>, ModelError> {
        self.extract_feat_timed(img, rec, &mut |_| {})
    }

    fn extract_feat_timed(
        &self,
        img: &Array4<T>,
        rec: &mut Recorder<T>,
        lap: &mut dyn FnMut(Stage),
    ) -> Result<Vec<Array4<T>>, ModelError> {
        let feats = self.backbone.forward(img, "backbone", rec)?;
        lap(Stage::Backbone);
        Ok(match &self.neck {
            Some(neck) => {
                check_neck_inputs(&self.cfg.backbone.out_indices, feats.len()).map_err(ModelError::Input)?;
                let maps = neck.forward(&feats, "neck", rec);
                lap(Stage::Neck);
                maps
            }
            None => {
                lap(Stage::Neck);
                feats
            }
        })
    }

    /// `decode_head.forward(extract_feat(img))`: the decode head's logits at its own
    /// resolution (1/4 of the image for UPerHead on Feature2Pyramid), before `encode_decode`'s
    /// resize.
    pub fn decode_head_forward(&self, img: &Array4<T>, rec: &mut Recorder<T>) -> Result<Array4<T>, ModelError> {
        let feats = self.extract_feat(img, rec)?;
        self.decode_head.forward(&feats, "decode_head", rec)
    }

    /// `encode_decode`: decode-head logits resized to the image size.
    pub fn encode_decode(&self, img: &Array4<T>, rec: &mut Recorder<T>) -> Result<Array4<T>, ModelError> {
        self.encode_decode_timed(img, rec, &mut |_| {})
    }

    /// [`Self::encode_decode`], calling `lap(stage)` as each [`Stage`] ends.
    pub fn encode_decode_timed(
        &self,
        img: &Array4<T>,
        rec: &mut Recorder<T>,
        lap: &mut dyn FnMut(Stage),
    ) -> Result<Array4<T>, ModelError> {
        let feats = self.extract_feat_timed(img, rec, lap)?;
        let logits = self.decode_head.forward(&feats, "decode_head", rec)?;
        lap(Stage::DecodeHead);
        let (_, _, h, w) = img.dim();
        let out = ops::resize(logits.view(), (h, w), self.cfg.align_corners());
        lap(Stage::Resize);
        for (k, head) in self.auxiliary_heads.iter().enumerate() {
            let p = self.cfg.aux_prefix(k);
            if rec.wants_prefix(&p) {
                head.forward(&feats, &p, rec)?;
            }
        }
        Ok(out)
    }

    /// Slide inference over `crop`-sized windows every `stride`.
    pub fn slide_inference(
        &self,
        img: &Array4<T>,
        crop: (usize, usize),
        stride: (usize, usize),
    ) -> Result<Array4<T>, ModelError> {
        let (b, _, h, w) = img.dim();
        let classes = self.cfg.decode_head.out_channels;
        let windows = slide_windows((h, w), crop, stride);
        if is_one_whole_window(&windows, (h, w)) {
            return self.encode_decode(img, &mut Recorder::none());
        }
        let mut preds = Array4::<T>::zeros((b, classes, h, w));
        let mut count = ndarray::Array2::<usize>::zeros((h, w));
        for win in windows {
            let (y1, y2, x1, x2) = (win.y1, win.y2, win.x1, win.x2);
            let crop_img = img.slice(s![.., .., y1..y2, x1..x2]).to_owned();
            let logit = self.encode_decode(&crop_img, &mut Recorder::none())?;
            let mut dst = preds.slice_mut(s![.., .., y1..y2, x1..x2]);
            dst += &logit;
            count.slice_mut(s![y1..y2, x1..x2]).mapv_inplace(|c| c + 1);
        }
        for ((_, _, y, x), v) in preds.indexed_iter_mut() {
            // Every pixel is covered at least once by construction of the grid.
            *v /= T::from_usize(count[[y, x]]).expect("small count");
        }
        Ok(preds)
    }

    /// `inference` + argmax: the segmentor's result on a batch of normalised images.
    pub fn forward(&self, img: &Array4<T>, rec: &mut Recorder<T>) -> Result<SegOutput<T>, ModelError> {
        let seg_logits = match self.cfg.test {
            TestMode::Whole => self.encode_decode(img, rec)?,
            TestMode::Slide { crop, stride } => self.slide_inference(img, crop, stride)?,
        };
        rec.put("seg_logits", &seg_logits);
        let pred = ops::argmax_channels(seg_logits.view());
        rec.put_int("pred", &pred);
        Ok(SegOutput { seg_logits, pred })
    }
}
