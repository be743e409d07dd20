//! candle-transformers' BEiT against MMSegmentation, in this crate's own `cargo test`, through
//! beit-seg's in-memory candidate API (a dev-dependency): the case's config, weights and input
//! go into candle, candle's feature maps come back as `backbone.{k}`, and beit-seg judges them
//! as `beit-seg verify` would.
//!
//! The case is `fixtures/candle-384` of this crate: no bundled case has candle's fixed
//! 384x384 geometry, so it was generated from MMSegmentation itself with
//! `fixtures/generate.py --only candle-384 --out peers/candle/fixtures` (from the repository
//! root; `--check` with the same arguments checks the committed copy).
//!
//! `BEIT_SEG_CANDLE_REPORT=FILE cargo test --release` also writes the evidence docs/peers.md is
//! rendered from (scripts/peers/candle_doc.py).

use std::path::{Path, PathBuf};

use beit_seg::config::SegmentorConfig;
use beit_seg::conformance::{
    bundled_cases, verify_case, AnyArray, Candidate, Case, CaseReport, Scope, Target, VerifyOptions,
};
use beit_seg::Dtype;
use beit_seg_candle_peer::{
    feature_maps, to_candle_names, Gelu, Geometry, IMG_SIZE, IN_CHANNELS, LN_EPS, MLP_RATIO, PATCH_SIZE,
};
use candle::{DType, Device, Tensor};

fn candle_case() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("candle-384")
}

/// The part of the backbone candle can be checked on: it returns the feature maps
/// (`get_intermediate_layers`) and nothing inside a block, so the patch embedding and the
/// per-layer token tensors the case also keeps are out of scope (listed, never passed).
fn opts() -> VerifyOptions {
    let scope = Scope::new(&["backbone".into()], &["backbone.patch_embed.*".into(), "backbone.layers.*".into()])
        .expect("a valid scope");
    VerifyOptions { scope, ..Default::default() }
}

/// candle's geometry for a case, or every reason its BEiT cannot express the case's backbone.
fn geometry(cfg: &SegmentorConfig) -> Result<Geometry, String> {
    let b = &cfg.backbone;
    let mut why = Vec::new();
    if b.img_size != (IMG_SIZE, IMG_SIZE) {
        why.push(format!("img_size {}x{} (candle: {IMG_SIZE}x{IMG_SIZE} only)", b.img_size.0, b.img_size.1));
    }
    if b.patch_size != PATCH_SIZE {
        why.push(format!("patch_size {} (candle: {PATCH_SIZE})", b.patch_size));
    }
    if b.in_channels != IN_CHANNELS {
        why.push(format!("in_channels {} (candle: {IN_CHANNELS})", b.in_channels));
    }
    if b.feedforward_channels != MLP_RATIO * b.embed_dims {
        why.push(format!("MLP width {} = {}x embed_dims (candle: {MLP_RATIO}x)", b.feedforward_channels, {
            b.feedforward_channels as f64 / b.embed_dims as f64
        }));
    }
    if b.norm.eps != LN_EPS {
        why.push(format!("LayerNorm eps {:e} (candle: {LN_EPS:e})", b.norm.eps));
    }
    if b.patch_norm {
        why.push("patch_norm (candle has no norm after the patch embedding)".into());
    }
    if b.final_norm {
        why.push("final_norm (candle's `norm` applies to every tap or to none)".into());
    }
    if b.num_fcs != 2 {
        why.push(format!("num_fcs {} (candle: 2)", b.num_fcs));
    }
    if why.is_empty() {
        Ok(Geometry { depth: b.num_layers, embed_dim: b.embed_dims, num_heads: b.num_heads })
    } else {
        Err(why.join("; "))
    }
}

fn tensor(a: &AnyArray, dtype: DType) -> Result<Tensor, String> {
    let shape = a.shape().to_vec();
    let t = match dtype {
        DType::F64 => Tensor::from_vec(
            a.to_float::<f64>().ok_or("not a float tensor")?.into_raw_vec_and_offset().0,
            shape,
            &Device::Cpu,
        ),
        _ => Tensor::from_vec(
            a.to_float::<f32>().ok_or("not a float tensor")?.into_raw_vec_and_offset().0,
            shape,
            &Device::Cpu,
        ),
    };
    t.map_err(|e| e.to_string())
}

fn array(t: &Tensor) -> Result<AnyArray, String> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all().map_err(|e| e.to_string())?;
    let a: AnyArray = match t.dtype() {
        DType::F64 => ndarray::ArrayD::from_shape_vec(shape, flat.to_vec1::<f64>().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?
            .into(),
        _ => ndarray::ArrayD::from_shape_vec(shape, flat.to_vec1::<f32>().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?
            .into(),
    };
    Ok(a)
}

/// The port under test: a case in, candle's `backbone.{k}` out.
fn run_candle(case: &Case, gelu: Gelu) -> Result<Vec<(String, AnyArray)>, String> {
    let cfg = case.model_config().map_err(|e| e.to_string())?;
    let g = geometry(&cfg).map_err(|why| format!("candle's BEiT cannot express this backbone: {why}"))?;
    let dtype = if case.dtype == Dtype::F64 { DType::F64 } else { DType::F32 };
    // The weights, cast to the dtype the model runs in before they are loaded.
    let mut weights = Vec::new();
    for (k, a) in case.weights().map_err(|e| e.to_string())? {
        if k.starts_with("backbone.") && a.is_float() {
            weights.push((k, tensor(&a, dtype)?));
        }
    }
    let vars = to_candle_names(weights, &g, dtype, &Device::Cpu)?;
    let x = tensor(&case.input().map_err(|e| e.to_string())?, dtype)?;
    let blocks: Vec<usize> = (0..g.depth).filter(|i| cfg.backbone.out_indices.contains(&(*i as i64))).collect();
    let maps = feature_maps(vars, &g, gelu, &x, &blocks).map_err(|e| e.to_string())?;
    maps.iter().enumerate().map(|(k, m)| Ok((format!("backbone.{k}"), array(m)?))).collect()
}

fn check(gelu: Gelu) -> CaseReport {
    verify_case(candle_case(), &Candidate::from_fn(|case: &Case| run_candle(case, gelu)), &opts())
}

#[test]
fn candle_with_exact_gelu_matches_mmseg() {
    // The one-line fix (`.gelu_erf()` in the MLP): every feature map within the fp32 tolerance.
    check(Gelu::Erf).assert_pass();
}

#[test]
fn candle_as_published_departs_at_its_tanh_gelu() {
    let r = check(Gelu::Tanh);
    assert!(!r.passed(), "candle's tanh GELU was expected to fail:\n{}", r.text());
    // The first feature map (after block 0) already fails: the departure is in the first
    // block, and the exact-GELU run above passes with everything else unchanged.
    assert_eq!(r.first_failure().map(|t| t.name.as_str()), Some("backbone.0"), "{}", r.text());
}

#[test]
fn the_case_itself_is_sound() {
    // beit-seg's reference backend passes every tensor of the generated case, the ones candle
    // cannot produce included.
    let r = verify_case(
        candle_case(),
        Target::Backend(&beit_seg::backend::reference::RefBackend),
        &VerifyOptions::default(),
    );
    r.assert_pass();
    assert_eq!(r.coverage.covered, r.coverage.expected);
}

/// Every bundled segmentor case, with why candle's BEiT cannot run it.
fn bundled_not_expressible() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in bundled_cases().expect("the bundled fixtures") {
        let case = Case::load(&dir).expect("a bundled case loads");
        if case.model_json().is_none() || case.manifest["kind"] != "segmentor" {
            continue;
        }
        let cfg = case.model_config().expect("a bundled config parses");
        let why = geometry(&cfg).err().unwrap_or_else(|| "expressible".into());
        out.push((case.name, why));
    }
    out
}

#[test]
fn no_bundled_case_fits_candles_geometry() {
    let all = bundled_not_expressible();
    assert!(all.len() > 20, "{all:?}");
    for (name, why) in &all {
        assert!(why.contains("img_size"), "{name}: {why}");
    }
    // And verify says so, naming the reason, instead of passing anything.
    let dir = beit_seg::conformance::case_dir("tiny-whole").unwrap();
    let r = verify_case(&dir, &Candidate::from_fn(|case: &Case| run_candle(case, Gelu::Erf)), &opts());
    assert!(!r.passed());
    assert!(r.message.as_deref().unwrap_or("").contains("img_size 96x128 (candle: 384x384 only)"), "{}", r.text());
}

/// candle's `prepare_tokens_with_mask` concatenates the (1, 1, C) class token with the batch's
/// tokens without broadcasting it: a batch of two is an error.
fn batch_of_two() -> Result<(), String> {
    let case = Case::load(&candle_case()).map_err(|e| e.to_string())?;
    let cfg = case.model_config().map_err(|e| e.to_string())?;
    let g = geometry(&cfg)?;
    let mut weights = Vec::new();
    for (k, a) in case.weights().map_err(|e| e.to_string())? {
        if k.starts_with("backbone.") && a.is_float() {
            weights.push((k, tensor(&a, DType::F32)?));
        }
    }
    let vars = to_candle_names(weights, &g, DType::F32, &Device::Cpu)?;
    let x = tensor(&case.input().map_err(|e| e.to_string())?, DType::F32)?;
    let x2 = Tensor::cat(&[&x, &x], 0).map_err(|e| e.to_string())?;
    // The message only (candle appends a backtrace when RUST_BACKTRACE is set).
    feature_maps(vars, &g, Gelu::Erf, &x2, &[0])
        .map(|_| ())
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}

#[test]
fn candle_runs_batch_one_only() {
    let e = batch_of_two().expect_err("candle's BEiT was expected to refuse a batch of two");
    assert!(e.contains("shape mismatch") || e.contains("cat"), "{e}");
}

/// The evidence docs/peers.md is rendered from (scripts/peers/candle_doc.py), written when
/// `BEIT_SEG_CANDLE_REPORT` names a file.
#[test]
fn evidence_for_the_docs() {
    let Some(path) = std::env::var_os("BEIT_SEG_CANDLE_REPORT") else { return };
    let reports = [("candle", check(Gelu::Tanh)), ("candle-gelu-erf", check(Gelu::Erf))];
    let runs: Vec<serde_json::Value> = reports
        .iter()
        .map(|(id, r)| serde_json::json!({"id": id, "report": r, "line": beit_seg::conformance::report::case_line(r)}))
        .collect();
    let not_expressible: Vec<serde_json::Value> =
        bundled_not_expressible().into_iter().map(|(c, why)| serde_json::json!({"case": c, "why": why})).collect();
    let doc = serde_json::json!({
        "format": "beit-seg-candle-evidence/1",
        "candle_transformers": "0.11.1",
        "case": "candle-384",
        "runs": runs,
        "batch_of_two": batch_of_two().err(),
        "bundled": not_expressible,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}
