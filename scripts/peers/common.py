"""Shared helpers of the peer adapters (scripts/peers/*.py): cases, weights, candidate output.

Weights: the fixtures hold MMSegmentation-named `weights.npz`. `beit-seg convert --to hf` and
`--to beit-official` exist (src/checkpoint/export.rs), and the adapters use them where they fit:
- timm_peer converts with `beit-seg convert --to beit-official` (`convert_with_binary`: $BEIT_SEG or
  target/release/beit-seg) and falls back to `mmseg_to_official` below only when there is no such
  binary or the conversion fails; the fallback renames the backbone the same way (mmseg's
  beit2mmseg.py read backwards).
- hf_peer always uses `mmseg_to_hf` below: it loads straight into transformers 5's module state
  dict (`beit.layers.N.attention.q_proj.*`, ...: the names after transformers 5 renames on load,
  following its conversion_mapping.py), while `convert --to hf` writes the `from_pretrained`
  file names (`beit.encoder.layer.N.attention.attention.query.*`, ...).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))

import beit_seg_capture as bc  # noqa: E402


def case_dir(name):
    return os.path.join(ROOT, "fixtures", name)


def load_case(name):
    d = case_dir(name)
    with open(os.path.join(d, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    return d, case


def mmseg_weights(d, case):
    w = np.load(os.path.join(d, case["weights"]))
    return OrderedDict((k, w[k]) for k in w.files)


def beit_seg_binary():
    b = os.environ.get("BEIT_SEG", os.path.join(ROOT, "target", "release", "beit-seg"))
    return b if os.path.exists(b) else None


def convert_with_binary(d, case, dialect):
    """`beit-seg convert weights.npz OUT --to DIALECT` if this binary supports it, else None."""
    b = beit_seg_binary()
    if b is None:
        return None
    with tempfile.TemporaryDirectory() as t:
        out = os.path.join(t, "w.npz")
        r = subprocess.run([b, "convert", os.path.join(d, case["weights"]), out, "--to", dialect],
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(out):
            return None
        w = np.load(out)
        return OrderedDict((k, w[k]) for k in w.files)


# ----------------------------------------------------------------------------------------------
# mmseg -> HF transformers v5 (BeitForSemanticSegmentation state_dict names)
# ----------------------------------------------------------------------------------------------

def _conv_module(src, dst, sd, out):
    """mmcv ConvModule `src.conv|bn` -> HF BeitConvLayer `dst.convolution|normalization`."""
    for k, v in sd.items():
        if k.startswith(src + ".conv."):
            out[dst + ".convolution." + k[len(src) + 6:]] = v
        elif k.startswith(src + ".bn."):
            out[dst + ".normalization." + k[len(src) + 4:]] = v


def mmseg_to_hf(sd, num_layers, embed_dims):
    """mmseg names -> HF transformers 5 module names (what hf_peer loads; `beit-seg convert --to hf`
    writes the `from_pretrained` file names instead)."""
    out = OrderedDict()
    C = embed_dims
    out["beit.embeddings.cls_token"] = sd["backbone.cls_token"]
    out["beit.embeddings.patch_embeddings.projection.weight"] = sd["backbone.patch_embed.projection.weight"]
    out["beit.embeddings.patch_embeddings.projection.bias"] = sd["backbone.patch_embed.projection.bias"]
    for i in range(num_layers):
        s, t = f"backbone.layers.{i}.", f"beit.layers.{i}."
        out[t + "lambda_1"] = sd[s + "gamma_1"]
        out[t + "lambda_2"] = sd[s + "gamma_2"]
        for a, b in (("ln1", "layernorm_before"), ("ln2", "layernorm_after")):
            out[t + b + ".weight"] = sd[s + a + ".weight"]
            out[t + b + ".bias"] = sd[s + a + ".bias"]
        qkv = sd[s + "attn.qkv.weight"]
        out[t + "attention.q_proj.weight"] = qkv[:C]
        out[t + "attention.k_proj.weight"] = qkv[C:2 * C]
        out[t + "attention.v_proj.weight"] = qkv[2 * C:]
        zero = np.zeros(C, qkv.dtype)
        if s + "attn.q_bias" in sd:
            out[t + "attention.q_proj.bias"] = sd[s + "attn.q_bias"]
            out[t + "attention.v_proj.bias"] = sd[s + "attn.v_bias"]
        elif s + "attn.qkv.bias" in sd:  # qv_bias=False: nn.Linear(bias=False) in mmseg
            b = sd[s + "attn.qkv.bias"]
            out[t + "attention.q_proj.bias"], out[t + "attention.v_proj.bias"] = b[:C], b[2 * C:]
        else:  # no bias at all: HF's q/v projections always have one, zero expresses it
            out[t + "attention.q_proj.bias"] = zero
            out[t + "attention.v_proj.bias"] = zero
        out[t + "attention.o_proj.weight"] = sd[s + "attn.proj.weight"]
        out[t + "attention.o_proj.bias"] = sd[s + "attn.proj.bias"]
        out[t + "relative_position_bias.relative_position_bias_table"] = sd[s + "attn.relative_position_bias_table"]
        out[t + "mlp.fc1.weight"] = sd[s + "ffn.layers.0.0.weight"]
        out[t + "mlp.fc1.bias"] = sd[s + "ffn.layers.0.0.bias"]
        out[t + "mlp.fc2.weight"] = sd[s + "ffn.layers.1.weight"]
        out[t + "mlp.fc2.bias"] = sd[s + "ffn.layers.1.bias"]
    for k, v in sd.items():
        for a, b in (("neck.upsample_4x.0.", "fpn.fpn1.conv_transpose1."), ("neck.upsample_4x.1.", "fpn.fpn1.normalization."),
                     ("neck.upsample_4x.3.", "fpn.fpn1.conv_transpose2."), ("neck.upsample_2x.0.", "fpn.fpn2.")):
            if k.startswith(a):
                out[b + k[len(a):]] = v
    for head in ("decode_head", "auxiliary_head"):
        for k, v in sd.items():
            if k.startswith(head + ".conv_seg."):
                out[head + ".classifier." + k.rsplit(".", 1)[1]] = v
    for k in range(8):
        _conv_module(f"decode_head.psp_modules.{k}.1", f"decode_head.psp_modules.blocks.{k}.conv", sd, out)
        _conv_module(f"decode_head.lateral_convs.{k}", f"decode_head.lateral_convs.{k}", sd, out)
        _conv_module(f"decode_head.fpn_convs.{k}", f"decode_head.fpn_convs.{k}", sd, out)
        _conv_module(f"auxiliary_head.convs.{k}", f"auxiliary_head.convs.{k}", sd, out)
    _conv_module("decode_head.bottleneck", "decode_head.psp_bottleneck", sd, out)
    _conv_module("decode_head.fpn_bottleneck", "decode_head.fpn_bottleneck", sd, out)
    _conv_module("auxiliary_head.conv_cat", "auxiliary_head.conv_cat", sd, out)
    return out


# ----------------------------------------------------------------------------------------------
# mmseg -> official BEiT / timm names (backbone only; beit2mmseg.py read backwards)
# ----------------------------------------------------------------------------------------------

def mmseg_to_official(sd):
    """backbone.* -> timm names: timm_peer's fallback when no beit-seg binary runs
    `convert --to beit-official` (which renames the backbone the same way)."""
    out = OrderedDict()
    for k, v in sd.items():
        if not k.startswith("backbone.") or k.endswith("relative_position_index"):
            continue
        k = k[len("backbone."):]
        k = k.replace("patch_embed.projection", "patch_embed.proj").replace("layers.", "blocks.", 1)
        k = k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.")
        k = k.replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2.")
        if k.startswith("ln1."):
            k = "norm." + k[4:]
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def write_meta(path, meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def torch_dtype(torch, name):
    return {"float32": torch.float32, "float64": torch.float64}[name]
