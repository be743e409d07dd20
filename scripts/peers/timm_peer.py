#!/usr/bin/env python3
"""timm `timm.models.beit.Beit` (backbone only) on the fixture cases -> candidate directories.

    python scripts/peers/timm_peer.py --out DIR [--norm] CASE...

The model is built from the case's backbone config (use_abs_pos_emb=False, use_rel_pos_bias=True,
qkv_bias = qv_bias, init_values, LayerNorm eps from norm_cfg via timm's LayerNorm default 1e-6),
weights are the fixture's `backbone.*` in official BEiT names. It runs
`forward_intermediates(x, indices=out_indices, output_fmt='NCHW', intermediates_only=True)` with
block-level hooks (python/beit_seg_capture.py naming); the returned list is written as
`forward_intermediates.{k}`. Compare with `beit-seg verify --candidate DIR/<case> --names timm`.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

warnings.filterwarnings("ignore")


def limits(case):
    b = case["model"]["backbone"]
    out = ["backbone only: timm has no Feature2Pyramid neck, UPerHead or FCNHead"]
    if case["model"]["test_cfg"].get("mode") == "slide":
        out.append("slide: only seg_logits/pred are expected, which a backbone cannot produce")
    if b.get("patch_norm"):
        out.append("patch_norm: Beit builds PatchEmbed without norm_layer (timm/models/beit.py Beit.__init__)")
    if b.get("final_norm"):
        out.append("final_norm: forward_intermediates(norm=True) applies self.norm to EVERY "
                   "intermediate (timm/models/beit.py:840), mmseg only to the last block's output")
    return out


def build(case, norm=False):
    import torch
    from timm.layers import LayerNorm
    from timm.models.beit import Beit
    b = case["model"]["backbone"]
    eps = b.get("norm_cfg", {}).get("eps", 1e-6)
    model = Beit(img_size=tuple(b["img_size"]), patch_size=b["patch_size"], in_chans=b.get("in_channels", 3),
                 num_classes=0, global_pool="", embed_dim=b["embed_dims"], depth=b["num_layers"],
                 num_heads=b["num_heads"], qkv_bias=b.get("qv_bias", True), mlp_ratio=b.get("mlp_ratio", 4),
                 norm_layer=functools.partial(LayerNorm, eps=eps), init_values=b.get("init_values", 0.1),
                 use_abs_pos_emb=False, use_rel_pos_bias=True, use_shared_rel_pos_bias=False)
    return model.eval()


def run_case(name, out_root, norm=False):
    import torch
    d, case = common.load_case(name)
    meta = {"peer": "timm" + ("-norm" if norm else ""), "case": name, "limits": limits(case), "notes": [],
            "ran": False}
    if case["model"]["test_cfg"].get("mode") == "slide":
        meta["notes"].append("not run: slide case (seg_logits/pred only)")
        return meta
    model = build(case, norm)
    sd_mm = common.mmseg_weights(d, case)
    sd = common.convert_with_binary(d, case, "beit-official")
    if sd is None:
        sd = common.mmseg_to_official(sd_mm)
        meta["notes"].append("weights: scripts/peers/common.py mmseg_to_official (beit-seg convert --to "
                             "beit-official not available in this binary)")
    else:
        meta["notes"].append("weights: beit-seg convert --to beit-official")
    own = model.state_dict()
    load = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items() if k in own}
    missing, _ = model.load_state_dict(load, strict=False)
    missing = [k for k in missing if not k.endswith(("relative_position_index", "k_bias"))]
    if missing:
        meta["notes"].append(f"missing weights: {missing[:3]}")
    unused = sorted(k for k in sd if k not in own)
    if unused:
        meta["notes"].append(f"weights with no timm parameter: {unused[:3]}")
    out_idx = list(case["model"]["backbone"]["out_indices"])
    holder = {}

    def forward(m, x):
        holder["feats"] = m.forward_intermediates(x, indices=out_idx, output_fmt="NCHW", intermediates_only=True,
                                                  norm=norm)
        return holder["feats"]
    tensors = common.bc.capture_case(model, d, dtype="case", forward=forward)
    for k, f in enumerate(holder["feats"]):
        tensors[f"forward_intermediates.{k}"] = f.detach().cpu().numpy()
    common.bc.write_candidate(tensors, os.path.join(out_root, name))
    meta["ran"] = True
    meta["tensors"] = len(tensors)
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta")
    ap.add_argument("--norm", action="store_true", help="forward_intermediates(norm=True)")
    ap.add_argument("cases", nargs="+")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    for c in args.cases:
        meta = run_case(c, args.out, args.norm)
        common.write_meta(os.path.join(args.meta or args.out.rstrip("/") + ".meta", f"{c}.json"), meta)
        print(f"{meta['peer']} {c}: {'ran' if meta['ran'] else 'not run'}; " + "; ".join(meta["notes"]))


if __name__ == "__main__":
    main()
