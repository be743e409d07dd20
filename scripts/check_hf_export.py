#!/usr/bin/env python3
"""Loads a `beit-seg convert --to hf` export into transformers' BeitForSemanticSegmentation.

Usage: check_hf_export.py CASE_DIR EXPORT.safetensors

Builds the BeitConfig that matches the fixture case's MMSegmentation config (CASE_DIR/case.json),
loads EXPORT with `from_pretrained(..., output_loading_info=True)` (the loader that applies
transformers 5's renames of the v4-style names the exporter writes) and checks, strictly, that
no key is missing or unexpected. Keys whose *shape* HF cannot express for this config (UPerHead
`channels` != `hidden_size`) are listed as such; any other mismatch fails. Exit code 0 = pass.
"""
import json
import os
import shutil
import sys
import tempfile

from transformers import BeitConfig, BeitForSemanticSegmentation


def hf_config(model):
    bb, dh, aux = model["backbone"], model["decode_head"], model.get("auxiliary_head")
    img = bb["img_size"]
    img = list(img) if isinstance(img, (list, tuple)) else [img, img]
    limits = []
    if dh["channels"] != bb["embed_dims"]:
        limits.append(f"UPerHead channels {dh['channels']} != hidden_size {bb['embed_dims']} (HF ties them)")
    if not bb.get("qv_bias", True):
        limits.append("qv_bias=False (HF's query/value always have a bias)")
    cfg = BeitConfig(
        image_size=img,
        patch_size=bb["patch_size"],
        num_channels=bb.get("in_channels", 3),
        hidden_size=bb["embed_dims"],
        num_hidden_layers=bb["num_layers"],
        num_attention_heads=bb["num_heads"],
        intermediate_size=int(bb["embed_dims"] * bb.get("mlp_ratio", 4)),
        layer_norm_eps=bb.get("norm_cfg", {}).get("eps", 1e-6),
        use_absolute_position_embeddings=False,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=False,
        layer_scale_init_value=bb.get("init_values", 0.1),
        use_mean_pooling=not bb.get("final_norm", False),
        out_indices=[i + 1 for i in bb["out_indices"]],
        pool_scales=dh["pool_scales"],
        num_labels=dh["num_classes"],
        use_auxiliary_head=aux is not None,
        auxiliary_channels=(aux or {}).get("channels", 256),
        auxiliary_num_convs=(aux or {}).get("num_convs", 1),
        auxiliary_concat_input=(aux or {}).get("concat_input", False),
    )
    return cfg, limits


def main():
    case_dir, export = sys.argv[1], sys.argv[2]
    model = json.load(open(os.path.join(case_dir, "case.json")))["model"]
    cfg, limits = hf_config(model)
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        shutil.copy(export, os.path.join(d, "model.safetensors"))
        _, info = BeitForSemanticSegmentation.from_pretrained(
            d, output_loading_info=True, ignore_mismatched_sizes=True
        )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(info.get("mismatched_keys", []))
    print(f"missing: {len(missing)} {missing[:20]}")
    print(f"unexpected: {len(unexpected)} {unexpected[:20]}")
    print(f"mismatched shapes: {len(mismatched)}")
    for m in mismatched:
        print("   ", m)
    print("HF cannot express:", "; ".join(limits) if limits else "nothing")
    bad_mismatch = [m for m in mismatched if not (str(m[0] if isinstance(m, tuple) else m).startswith("decode_head.") and limits)]
    ok = not missing and not unexpected and not bad_mismatch
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
