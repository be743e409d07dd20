//! `EncoderDecoder` on tch tensors; mirrors [`crate::reference::segmentor`].
//!
//! Whole inference: `encode_decode(img)`. Slide inference: every window of the batch is cut on
//! the device and run as **one** batch (all windows have the same size: `crop`, or the image
//! size on an axis where the image is smaller than the crop); the window logits are then summed
//! into the output in row-major window order, as MMSegmentation does, and divided by the
//! per-pixel window count, all on the device. For fp16/bf16 the decode-head logits are widened
//! to fp32 before the final resize, the window average and the argmax.

use tch::{Kind, Tensor};

use super::beit::Beit;
use super::heads::DecodeHead;
use super::neck::Feature2Pyramid;
use super::weight_source::{store_source, Source};
use super::{ops, Ctx, ModelError, Recorder, Result};
use crate::array::AnyArray;
use crate::config::{SegmentorConfig, TestMode};
use crate::model::heads::check_neck_inputs;
use crate::model::{is_one_whole_window, slide_windows, Stage};

/// The segmentor on one device, in one precision.
pub struct EncoderDecoder {
    pub cfg: SegmentorConfig,
    pub ctx: Ctx,
    pub backbone: Beit,
    pub neck: Option<Feature2Pyramid>,
    pub decode_head: DecodeHead,
    pub auxiliary_heads: Vec<DecodeHead>,
}

/// What one run returns (on the model's device).
pub struct SegOutput {
    /// (B, classes, H, W) logits at input resolution (fp32 for half precisions).
    pub seg_logits: Tensor,
    /// (B, H, W) int64 argmax labels (first index on ties).
    pub pred: Tensor,
}

impl EncoderDecoder {
    /// Builds the model from a state dict in MMSegmentation naming; every missing, wrong-shape or
    /// unexpected key is reported in one error (the reference's `WeightStore` rules).
    pub fn load(cfg: &SegmentorConfig, weights: Vec<(String, AnyArray)>, ctx: Ctx) -> Result<Self> {
        let src = store_source(weights, ctx.kind(), ctx.device);
        Self::build(cfg, ctx, src)
    }

    fn build(cfg: &SegmentorConfig, ctx: Ctx, mut src: Box<dyn Source>) -> Result<Self> {
        let _no_grad = tch::no_grad_guard();
        let s = src.as_mut();
        let model = EncoderDecoder {
            backbone: Beit::load(s, &ctx, "backbone", &cfg.backbone)?,
            neck: match &cfg.neck {
                Some(n) => Some(Feature2Pyramid::load(s, &ctx, "neck", n)?),
                None => None,
            },
            decode_head: DecodeHead::load(s, &ctx, "decode_head", &cfg.decode_head)?,
            auxiliary_heads: cfg
                .auxiliary_heads
                .iter()
                .enumerate()
                .map(|(k, h)| DecodeHead::load(s, &ctx, &cfg.aux_prefix(k), h))
                .collect::<Result<_>>()?,
            cfg: cfg.clone(),
            ctx,
        };
        src.finish()?;
        Ok(model)
    }

    /// `extract_feat`: backbone (+ neck) maps.
    pub fn extract_feat(&self, img: &Tensor, rec: &mut Recorder) -> Result<Vec<Tensor>> {
        self.extract_feat_timed(img, rec, &mut |_| {})
    }

    fn extract_feat_timed(&self, img: &Tensor, rec: &mut Recorder, lap: &mut dyn FnMut(Stage)) -> Result<Vec<Tensor>> {
        let feats = self.backbone.forward(img, "backbone", rec)?;
        lap(Stage::Backbone);
        let maps = match &self.neck {
            Some(neck) => {
                check_neck_inputs(&self.cfg.backbone.out_indices, feats.len()).map_err(ModelError::Input)?;
                neck.forward(&feats, "neck", rec)?
            }
            None => feats,
        };
        lap(Stage::Neck);
        Ok(maps)
    }

    /// `decode_head.forward(extract_feat(img))`: the decode head's logits at its own resolution
    /// (1/4 of the image for UPerHead on Feature2Pyramid), in the model's kind, before
    /// `encode_decode`'s resize.
    pub fn decode_head_forward(&self, img: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let img = img.f_to_device(self.ctx.device)?.f_to_kind(self.ctx.kind())?;
        let feats = self.extract_feat(&img, rec)?;
        self.decode_head.forward(&feats, "decode_head", rec)
    }

    /// `encode_decode`: decode-head logits (widened to the wide kind) resized to the image size.
    pub fn encode_decode(&self, img: &Tensor, rec: &mut Recorder) -> Result<Tensor> {
        self.encode_decode_timed(img, rec, &mut |_| {})
    }

    /// [`Self::encode_decode`], calling `lap(stage)` as each [`Stage`] ends (the caller
    /// synchronises the device in `lap` when it times a CUDA run).
    pub fn encode_decode_timed(&self, img: &Tensor, rec: &mut Recorder, lap: &mut dyn FnMut(Stage)) -> Result<Tensor> {
        let feats = self.extract_feat_timed(img, rec, lap)?;
        let logits = self.decode_head.forward(&feats, "decode_head", rec)?;
        let logits = logits.f_to_kind(self.ctx.wide_kind())?;
        lap(Stage::DecodeHead);
        let out = ops::resize(&logits, ops::hw(img), self.cfg.align_corners())?;
        lap(Stage::Resize);
        for (k, head) in self.auxiliary_heads.iter().enumerate() {
            let p = self.cfg.aux_prefix(k);
            if rec.wants_prefix(&p) {
                let _ = head.forward(&feats, &p, rec)?;
            }
        }
        Ok(out)
    }

    /// Slide inference over `crop`-sized windows every `stride`, all windows in one batch.
    pub fn slide_inference(&self, img: &Tensor, crop: (usize, usize), stride: (usize, usize)) -> Result<Tensor> {
        let s = img.size();
        let (b, h, w) = (s[0], s[2] as usize, s[3] as usize);
        let grid = slide_windows((h, w), crop, stride);
        if is_one_whole_window(&grid, (h, w)) {
            return self.encode_decode(img, &mut Recorder::none());
        }
        let windows: Vec<(usize, usize, usize, usize)> = grid.into_iter().map(|w| (w.y1, w.y2, w.x1, w.x2)).collect();
        // [B, C, H, W] -> [K·B, C, hw, ww], window-major.
        let crops = windows
            .iter()
            .map(|&(y1, y2, x1, x2)| {
                Ok(img.f_narrow(2, y1 as i64, (y2 - y1) as i64)?.f_narrow(3, x1 as i64, (x2 - x1) as i64)?)
            })
            .collect::<Result<Vec<Tensor>>>()?;
        let batch = Tensor::f_cat(&crops, 0)?;
        let logits = self.encode_decode(&batch, &mut Recorder::none())?;
        let classes = logits.size()[1];
        let wide = self.ctx.wide_kind();
        let preds = Tensor::f_zeros([b, classes, h as i64, w as i64], (wide, self.ctx.device))?;
        let count = Tensor::f_zeros([1, 1, h as i64, w as i64], (wide, self.ctx.device))?;
        for (k, &(y1, y2, x1, x2)) in windows.iter().enumerate() {
            let (y1, hh, x1, ww) = (y1 as i64, (y2 - y1) as i64, x1 as i64, (x2 - x1) as i64);
            let logit = logits.f_narrow(0, k as i64 * b, b)?;
            // In-place adds through views of `preds` / `count` (never recorded).
            let _ = preds.f_narrow(2, y1, hh)?.f_narrow(3, x1, ww)?.f_add_(&logit)?;
            let _ = count.f_narrow(2, y1, hh)?.f_narrow(3, x1, ww)?.f_add_scalar_(1.0)?;
        }
        // Every pixel is covered at least once by construction of the grid.
        Ok(preds.f_div(&count)?)
    }

    /// `inference` + argmax on a batch of normalised images (any float kind, any device: moved
    /// and cast to the model's).
    pub fn forward(&self, img: &Tensor, rec: &mut Recorder) -> Result<SegOutput> {
        let _no_grad = tch::no_grad_guard();
        if img.dim() != 4 {
            return Err(ModelError::Input(format!("expected an NCHW image batch, got shape {:?}", img.size())));
        }
        let img = img.f_to_device(self.ctx.device)?.f_to_kind(self.ctx.kind())?;
        let seg_logits = match self.cfg.test {
            TestMode::Whole => self.encode_decode(&img, rec)?,
            TestMode::Slide { crop, stride } => self.slide_inference(&img, crop, stride)?,
        };
        rec.put("seg_logits", &seg_logits);
        let pred = seg_logits.f_argmax(1, false)?;
        debug_assert_eq!(pred.kind(), Kind::Int64);
        rec.put("pred", &pred);
        Ok(SegOutput { seg_logits, pred })
    }
}
