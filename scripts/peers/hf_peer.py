#!/usr/bin/env python3
"""HF transformers `BeitForSemanticSegmentation` on the fixture cases -> candidate directories.

    python scripts/peers/hf_peer.py --variant converted|corrected|patched --out DIR CASE...

Variants:
* `converted`: the config HF's own conversion script (convert_beit_unilm_to_pytorch.py) would
  write: `BeitConfig` defaults (layer_norm_eps 1e-12) and `out_indices` with mmseg's numbers.
* `corrected`: every *setting* moved to MMSegmentation's: layer_norm_eps = norm_cfg.eps and
  out_indices shifted by +2 (HF feeds the decoder hidden_states[i-1], mmseg the output of block i
  = hidden_states[i+1]). BeitConfig's validator rejects an index above num_hidden_layers, which the
  last block needs, so the shifted list is set on `config._out_indices` after validation.
* `patched`: `corrected` plus two code patches for what no setting expresses: the UPerHead built
  with the case's `channels` (HF hard-codes channels = hidden_size) from HF's own classes, and the
  relative-position table used as stored at the native window (HF always resamples it from a
  (2Ww-1)x(2Wh-1) image, which for non-square windows is a real resampling of a transposed layout).

Candidate tensors keep HF's raw module names (python/beit_seg_capture.py convention); compare with
`beit-seg verify --candidate DIR/<case> --names hf`. `pred` is written by HF's own
`BeitImageProcessor.post_process_semantic_segmentation(outputs, target_sizes=[(H, W)])`.
Per-case notes (what HF cannot express, and why) go to META/<case>.json (`--meta`, default DIR.meta).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

warnings.filterwarnings("ignore")
HF_SRC = "transformers/models/beit/modeling_beit.py"


def limits(case):
    """What BeitForSemanticSegmentation cannot express for this case (config-level), with sources."""
    m = case["model"]
    b, n, h, a = m["backbone"], m.get("neck") or {}, m["decode_head"], m.get("auxiliary_head")
    out = []
    if m["test_cfg"].get("mode") == "slide":
        out.append("slide: HF has no test_cfg; forward() returns 1/4-resolution logits of one "
                   "input (modeling_beit.py BeitForSemanticSegmentation.forward); mmseg's "
                   "EncoderDecoder.slide_inference is not part of HF")
    if h["channels"] != b["embed_dims"]:
        out.append(f"channels != hidden_size: UPerHead channels {h['channels']} != hidden_size {b['embed_dims']}: "
                   "BeitUperHead sets self.channels = config.hidden_size (modeling_beit.py:808)")
    wh, ww = (b["img_size"][0] // b["patch_size"], b["img_size"][1] // b["patch_size"])
    if wh != ww:
        out.append(f"non-square window: {wh}x{ww}; BeitRelativePositionBias.forward reshapes the table "
                   "as (old_width, old_height) and always bilinearly resamples it to "
                   "(new_height, new_width) (modeling_beit.py:236-240): not an identity unless square")
    if b.get("final_norm"):
        out.append("final_norm: HF taps hidden_states (pre-layernorm); BeitModel.layernorm only "
                   "feeds last_hidden_state (modeling_beit.py:503, 557)")
    if b.get("patch_norm"):
        out.append("patch_norm: BeitPatchEmbeddings has no norm (modeling_beit.py:63-90)")
    if h.get("align_corners") or (a and a.get("align_corners")):
        out.append("align_corners: HF hard-codes align_corners=False (modeling_beit.py:761, 855, 867)")
    if list(n.get("rescales", [4, 2, 1, 0.5])) != [4, 2, 1, 0.5]:
        out.append(f"rescales: {n['rescales']}; BeitFPNNeck is fixed to 4x, 2x, 1x, 0.5x "
                   "(modeling_beit.py:955-974)")
    if a is not None:
        if a["in_channels"] != b["embed_dims"] or a.get("in_index", 2) != 2 or a.get("kernel_size", 3) != 3:
            out.append("FCN in_index/in_channels: HF uses hidden_size, 2, 3 (modeling_beit.py:880-896)")
    return out


def build(case, sd_mm, variant, attn="sdpa", eps=None):
    import torch
    from transformers import BeitConfig, BeitForSemanticSegmentation
    b, h, a = case["model"]["backbone"], case["model"]["decode_head"], case["model"].get("auxiliary_head")
    kw = dict(hidden_size=b["embed_dims"], num_hidden_layers=b["num_layers"], num_attention_heads=b["num_heads"],
              intermediate_size=int(b["embed_dims"] * b.get("mlp_ratio", 4)), hidden_act="gelu",
              image_size=list(b["img_size"]), patch_size=b["patch_size"], num_channels=b.get("in_channels", 3),
              use_relative_position_bias=True, use_absolute_position_embeddings=False,
              use_shared_relative_position_bias=False, layer_scale_init_value=b.get("init_values", 0.1),
              drop_path_rate=0.0, use_mean_pooling=True, pool_scales=list(h.get("pool_scales", [1, 2, 3, 6])),
              num_labels=h["num_classes"], use_auxiliary_head=a is not None,
              out_indices=list(b["out_indices"]))
    if a is not None:
        kw.update(auxiliary_channels=a["channels"], auxiliary_num_convs=a.get("num_convs", 2),
                  auxiliary_concat_input=a.get("concat_input", True))
    if variant != "converted":
        kw["layer_norm_eps"] = b.get("norm_cfg", {}).get("eps", 1e-6)
    notes = []
    if eps is not None:
        kw["layer_norm_eps"] = eps
        notes.append(f"layer_norm_eps forced to {eps}")
    try:
        cfg = BeitConfig(**kw)
    except ValueError as e:
        # e.g. out_indices [0, 1, 2, 3] is fine, but duplicates/unsorted are rejected
        return None, [f"BeitConfig rejected the config: {e}"]
    if variant != "converted":
        cfg._out_indices = [i + 2 for i in b["out_indices"]]
        notes.append(f"out_indices {list(b['out_indices'])} -> {cfg._out_indices}")
    cfg._attn_implementation = attn
    model = BeitForSemanticSegmentation(cfg).eval()
    if variant == "patched":
        patch_model(model, cfg, case)
    sd = common.mmseg_to_hf(sd_mm, b["num_layers"], b["embed_dims"])
    own = model.state_dict()
    dropped = sorted(k for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    load = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items() if k in own and k not in dropped}
    missing, unexpected = model.load_state_dict(load, strict=False)
    unexpected = sorted(set(unexpected) | {k for k in sd if k not in own})
    if dropped:
        notes.append(f"{len(dropped)} weights do not fit HF's shapes (not loaded), e.g. {dropped[0]}")
    if unexpected:
        notes.append(f"{len(unexpected)} weights have no HF parameter, e.g. {unexpected[0]}")
    return model, notes, set(dropped), [k for k in missing if not k.endswith("num_batches_tracked")]


def patch_model(model, cfg, case):
    """The `patched` variant: fix what no BeitConfig setting can express, with HF's own classes."""
    import torch.nn as nn
    from transformers.models.beit import modeling_beit as mb
    h = case["model"]["decode_head"]
    in_ch, ch = cfg.hidden_size, h["channels"]
    head = model.decode_head
    if ch != in_ch:
        n = len(head.pool_scales)
        head.channels = ch
        head.classifier = nn.Conv2d(ch, cfg.num_labels, kernel_size=1)
        head.psp_modules = mb.BeitPyramidPoolingModule(head.pool_scales, in_ch, ch)
        head.psp_bottleneck = mb.BeitConvLayer(in_ch + n * ch, ch, kernel_size=3, padding=1)
        head.lateral_convs = nn.ModuleList([mb.BeitConvLayer(in_ch, ch, kernel_size=1) for _ in range(3)])
        head.fpn_convs = nn.ModuleList([mb.BeitConvLayer(ch, ch, kernel_size=3, padding=1) for _ in range(3)])
        head.fpn_bottleneck = mb.BeitConvLayer(4 * ch, ch, kernel_size=3, padding=1)
    for layer in model.beit.layers:
        rpb = layer.relative_position_bias
        orig = rpb.forward

        def fwd(window_size, interpolate_pos_encoding=False, dim_size=None, _rpb=rpb, _orig=orig):
            if tuple(window_size) != tuple(_rpb.window_size):
                return _orig(window_size, interpolate_pos_encoding, dim_size)
            idx = _rpb.generate_relative_position_index(tuple(window_size))
            n = window_size[0] * window_size[1] + 1
            bias = _rpb.relative_position_bias_table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)
            return bias.contiguous().unsqueeze(0)
        rpb.forward = fwd


def run_case(name, variant, out_root, attn="sdpa", dtype=None, eps=None):
    import torch
    from transformers import BeitImageProcessor
    d, case = common.load_case(name)
    lims = limits(case)
    if variant == "patched":  # the two limits this variant patches
        lims = [x for x in lims if not x.startswith(("channels", "non-square"))]
    meta = {"peer": f"hf-{variant}", "case": name, "limits": lims, "notes": [], "ran": False}
    if case["model"]["test_cfg"].get("mode") == "slide":
        meta["notes"].append("not run: slide inference is not expressible in HF")
        return meta
    built = build(case, common.mmseg_weights(d, case), variant, attn, eps)
    if built[0] is None:
        meta["notes"] += built[1]
        return meta
    model, notes, dropped, missing = built
    meta["notes"] += notes
    bad_prefixes = sorted({k.split(".")[0] for k in list(dropped) + missing})
    out = os.path.join(out_root, name)
    holder = {}

    def forward(m, x):
        holder["out"] = m(pixel_values=x)
        return holder["out"]
    tensors = common.bc.capture_case(model, d, out=None, dtype=dtype or "case", inputs_of=["fpn"], forward=forward)
    if bad_prefixes:
        # heads whose weights could not be loaded compute with random init: do not offer them
        tensors = {k: v for k, v in tensors.items() if k.split(".")[0].split("@")[0] not in bad_prefixes}
        meta["notes"].append(f"not written (weights not loadable): {', '.join(bad_prefixes)}")
    else:
        x = np.load(os.path.join(d, case["inputs"]["inputs"]))
        proc = BeitImageProcessor()
        with torch.no_grad():
            labels = proc.post_process_semantic_segmentation(holder["out"], target_sizes=[x.shape[2:]] * x.shape[0])
        tensors["pred"] = np.stack([lab.numpy().astype(np.int64) for lab in labels])
    common.bc.write_candidate(tensors, out)
    meta["ran"] = True
    meta["tensors"] = len(tensors)
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["converted", "corrected", "patched"], required=True)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--eps", type=float, help="force layer_norm_eps (evidence runs)")
    ap.add_argument("--tag", help="peer name in the notes (default hf-VARIANT[-ATTN])")
    ap.add_argument("--out", required=True, help="candidate root: OUT/<case>/<name>.npy")
    ap.add_argument("--meta", help="notes per case: META/<case>.json (default OUT.meta)")
    ap.add_argument("cases", nargs="+")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    tag = args.tag or (f"hf-{args.variant}" + ("" if args.attn == "sdpa" else f"-{args.attn}"))
    for c in args.cases:
        meta = run_case(c, args.variant, args.out, args.attn, eps=args.eps)
        meta["peer"] = tag
        common.write_meta(os.path.join(args.meta or args.out.rstrip("/") + ".meta", f"{c}.json"), meta)
        print(f"{tag} {c}: {'ran' if meta['ran'] else 'not run'}; " + "; ".join(meta["notes"]))


if __name__ == "__main__":
    main()


def build_for_capture(case_dir, case):
    """`python python/beit_seg_capture.py --path scripts/peers --model hf_peer:build_for_capture ...`:
    the hf-patched model for a case (an example of the helper's builder signature)."""
    d = case_dir
    model, _notes, _dropped, _missing = build(case, common.mmseg_weights(d, case), "patched")
    return model


def forward_for_capture(module, x):
    """HF models take `pixel_values=`."""
    return module(pixel_values=x)
