//! The test docs/validating.md ("From Rust") tells a porter to paste, compiled and run here with
//! beit-seg's own reference backend standing in for the port (`mod my_port` below), and a check
//! that the guide shows exactly this code.

// BEGIN docs/validating.md "From Rust"
// tests/mmseg_conformance.rs of your crate; its Cargo.toml has
//   [dev-dependencies] beit-seg = { git = "<beit-seg's repository>" }   # or { path = "..." }
use beit_seg::conformance::{case_dir, verify_case, AnyArray, Candidate, Case, Scope, VerifyOptions};

/// Your port on one case: config, weights and input in; tensors named like the fixture out.
fn run_my_port(case: &Case) -> Result<Vec<(String, AnyArray)>, Box<dyn std::error::Error>> {
    let cfg = case.model_config()?; // typed MMSegmentation config (raw JSON: case.model_json())
    let weights = case.weights()?; // MMSegmentation state dict: Vec<(name, AnyArray)>
    let x = case.input()?.to_float::<f32>().ok_or("a float input")?; // NCHW, normalized
    let model = my_port::Beit::new(&cfg, &weights)?; // your code from here on
    let features: Vec<ndarray::ArrayD<f32>> = model.forward_features(&x)?;
    Ok(features.into_iter().enumerate().map(|(k, f)| (format!("backbone.{k}"), f.into())).collect())
}

#[test]
fn backbone_matches_mmsegmentation() {
    // The four feature maps: the backbone without the per-layer tensors this port does not expose.
    let ignore = ["backbone.layers.*".to_string(), "backbone.patch_embed.*".to_string()];
    let scope = Scope::new(&["backbone".to_string()], &ignore).unwrap();
    let opts = VerifyOptions { scope, ..Default::default() };
    let port = Candidate::from_fn(run_my_port);
    for name in ["tiny-whole", "real-640", "ppm-nondiv", "var-out-indices"] {
        let report = verify_case(case_dir(name).unwrap(), &port, &opts);
        report.assert_pass(); // on failure: verify's table, first failing tensor first
    }
}
// END docs/validating.md "From Rust"

/// Stand-in for the porter's crate: beit-seg's own reference backend behind the shape of API a
/// port typically has.
mod my_port {
    use beit_seg::backend::reference::RefBackend;
    use beit_seg::backend::{Backend, Model, OutTensor};
    use beit_seg::config::SegmentorConfig;
    use beit_seg::conformance::AnyArray;
    use beit_seg::weights::StateDict;
    use beit_seg::Dtype;
    use ndarray::ArrayD;

    pub struct Beit {
        model: Box<dyn Model>,
        outputs: usize,
    }

    impl Beit {
        pub fn new(cfg: &SegmentorConfig, weights: &StateDict) -> Result<Self, Box<dyn std::error::Error>> {
            let model = RefBackend.load(cfg, weights.clone(), Dtype::F32)?;
            Ok(Beit { model, outputs: cfg.backbone.num_outputs() })
        }

        pub fn forward_features(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>, Box<dyn std::error::Error>> {
            let wanted: Vec<String> = (0..self.outputs).map(|k| format!("backbone.{k}")).collect();
            let out = self.model.run(&AnyArray::F32(x.clone()), &wanted)?;
            wanted
                .iter()
                .map(|k| match out.get(k) {
                    Some(OutTensor::Float(a)) => Ok(a.mapv(|v| v as f32)),
                    _ => Err(format!("{k} not produced").into()),
                })
                .collect()
        }
    }
}

#[test]
fn the_guide_shows_this_test() {
    let me = include_str!("from_rust.rs");
    let begin = "// BEGIN docs/validating.md \"From Rust\"\n";
    let end = "// END docs/validating.md \"From Rust\"";
    let snippet = &me[me.find(begin).unwrap() + begin.len()..me.find(end).unwrap()];
    let guide = include_str!("../docs/validating.md");
    assert!(
        guide.contains(&format!("```rust\n{snippet}```")),
        "docs/validating.md (\"From Rust\") must show tests/from_rust.rs between the BEGIN/END markers verbatim"
    );
}
