//! Wall time of one full 640x640 crop of BEiT-B (or -L) + UPerNet through the ndarray reference,
//! with random weights: what a CPU evaluation costs per crop (an ADE20K image is 1-2 crops).
//!
//! `cargo run --release --example crop_cost [beit-base-640|beit-large-640]`; prints the time per
//! stage (backbone, neck, decode head, final resize) as well.

use std::time::Instant;

use beit_seg::array::AnyArray;
use beit_seg::config::SegmentorConfig;
use beit_seg::reference::ops;
use beit_seg::reference::segmentor::EncoderDecoder;
use beit_seg::reference::Recorder;
use beit_seg::weights::WeightStore;
use ndarray::{Array4, ArrayD, IxDyn};

fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "beit-base-640".into());
    let mut v = beit_seg::config::presets::model_dict(&name).ok_or_else(|| anyhow::anyhow!("unknown preset {name}"))?;
    v.as_object_mut().expect("object").remove("data_preprocessor");
    let cfg = SegmentorConfig::from_value(&v)?;
    let mut seed = 1u64;
    let mut rnd = |shape: &[usize], scale: f32| {
        ArrayD::from_shape_fn(IxDyn(shape), |_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
    };
    let arrays: Vec<(String, AnyArray)> = EncoderDecoder::<f32>::parameter_shapes(&cfg)
        .into_iter()
        .map(|(k, s)| {
            let a = if k.ends_with("running_var") { rnd(&s, 0.5).mapv(|x| x + 1.0) } else { rnd(&s, 0.05) };
            (k, AnyArray::F32(a))
        })
        .collect();
    let params: usize = arrays.iter().map(|(_, a)| a.shape().iter().product::<usize>()).sum();
    let model = EncoderDecoder::<f32>::load(&cfg, WeightStore::from_arrays(arrays))?;
    let img =
        Array4::<f32>::from_shape_fn((1, 3, 640, 640), |(_, c, y, x)| ((c * 7 + y * 3 + x) % 17) as f32 / 17.0 - 0.5);
    let rec = &mut Recorder::none();
    let t = Instant::now();
    let feats = model.backbone.forward(&img, "backbone", rec)?;
    let t_backbone = t.elapsed().as_secs_f64();
    let feats = match &model.neck {
        Some(neck) => neck.forward(&feats, "neck", rec),
        None => feats,
    };
    let t_neck = t.elapsed().as_secs_f64();
    let logits = model.decode_head.forward(&feats, "decode_head", rec)?;
    let t_head = t.elapsed().as_secs_f64();
    let out = ops::resize(logits.view(), (640, 640), model.cfg.align_corners());
    let total = t.elapsed().as_secs_f64();
    println!(
        "{name}: {params} parameters, one 640x640 crop -> {:?} logits in {total:.2} s on {} rayon threads \
         (backbone {t_backbone:.2} s, neck {:.2} s, decode head {:.2} s, resize {:.2} s)",
        out.dim(),
        rayon::current_num_threads(),
        t_neck - t_backbone,
        t_head - t_neck,
        total - t_head,
    );
    Ok(())
}
