//! Unit tests of `export.rs`'s helpers (the round trip is a property test in
//! tests/properties_checkpoint.rs).

use ndarray::{ArrayD, IxDyn};

use super::*;

fn f32a(shape: &[usize]) -> AnyArray {
    let n: usize = shape.iter().product();
    AnyArray::F32(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| v as f32).collect()).unwrap())
}

#[test]
fn row_blocks_are_torch_chunk_along_dim_0() {
    let w = f32a(&[6, 2]);
    let k = row_block(&w, 3, 1, "w").unwrap();
    assert_eq!(k.shape(), &[2, 2]);
    assert_eq!(k.to_f64().iter().copied().collect::<Vec<_>>(), vec![4.0, 5.0, 6.0, 7.0]);
    assert!(row_block(&f32a(&[5, 2]), 3, 0, "w").unwrap_err().to_string().contains("(3·C, C)"));
}

#[test]
fn official_names_invert_beit2mmseg() {
    for k in [
        "blocks.3.norm1.weight",
        "blocks.0.mlp.fc1.bias",
        "blocks.1.mlp.fc2.weight",
        "blocks.2.attn.q_bias",
        "blocks.2.gamma_2",
        "patch_embed.proj.weight",
        "cls_token",
    ] {
        let m = crate::checkpoint::convert::beit2mmseg_key(k);
        assert_eq!(official_name(&m).as_deref(), Some(k), "{m}");
    }
    assert_eq!(official_name("ln1.bias").as_deref(), Some("norm.bias"));
    assert_eq!(official_name("layers.0.mystery"), None);
}

#[test]
fn unknown_keys_are_errors_not_silently_dropped() {
    let e = export(vec![("what.ever".into(), f32a(&[1]))], Dialect::Hf, &ExportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`what.ever`"), "{e}");
    let e = export(vec![], Dialect::UnilmAde, &ExportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}
