#!/usr/bin/env python3
"""Plain-assert tests of python/beit_seg_capture.py (no pytest): `$V/bin/python python/tests/test_capture.py`."""
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import beit_seg_capture as bc  # noqa: E402


class Toy(nn.Module):
    """conv -> BN -> in-place ReLU, a tuple-returning branch and a dict-returning one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.pair = Pair()
        self.head = Head()

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        a, b = self.pair(y)
        return self.head(a + b)


class Pair(nn.Module):
    def forward(self, x):
        return x * 2, x - 1


class Head(nn.Module):
    def forward(self, x):
        return {"logits": x.mean(1, keepdim=True), "tokens": x.flatten(2).transpose(1, 2)}


def make_case(d, dtype="float32"):
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 3)).astype(dtype)
    np.save(os.path.join(d, "inputs.npy"), x)
    os.makedirs(os.path.join(d, "outputs"))
    np.save(os.path.join(d, "outputs", "fixture.tok.npy"), np.zeros((1, 4, 2, 3), dtype))
    case = {"format": "beit-fixture/1", "name": "toy", "kind": "segmentor", "dtype": dtype,
            "inputs": {"inputs": "inputs.npy"}, "outputs": {"fixture.tok": "outputs/fixture.tok.npy"}}
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f)
    return x


def test_capture_names_and_clone():
    with tempfile.TemporaryDirectory() as d:
        x = make_case(d)
        m = Toy()
        with torch.no_grad():
            m.bn.bias.fill_(-0.5)  # some BN outputs negative: in-place ReLU would clobber them
        out = os.path.join(d, "cand")
        t = bc.capture_case(m, d, out=out, inputs_of=["head"])
        for k in ["conv", "bn", "act", "pair.0", "pair.1", "head.logits", "head.tokens", "head@input"]:
            assert k in t, (k, list(t))
            assert os.path.exists(os.path.join(out, k + ".npy")), k
        assert "" not in t and "output" not in t
        assert (t["bn"] < 0).any(), "BN output was not cloned before the in-place ReLU"
        assert np.array_equal(t["act"], np.maximum(t["bn"], 0))
        assert np.allclose(t["head@input"], t["pair.0"] + t["pair.1"])
        assert t["conv"].dtype == np.float32
        conv = m.conv(torch.from_numpy(x)).detach().numpy()
        assert np.allclose(np.load(os.path.join(out, "conv.npy")), conv)


def test_float64_and_map():
    with tempfile.TemporaryDirectory() as d:
        make_case(d, "float64")
        names = {"format": "beit-seg-names/1", "rules": [
            {"candidate": "pair.{k}", "fixture": None},
            {"candidate": "head@input", "fixture": "fixture.in"},
            {"candidate": "head.tokens", "fixture": "fixture.tok", "transform": [{"op": "tokens_to_nchw"}]},
            {"candidate": "layer.{i+1}", "fixture": "backbone.layers.{i}"},
        ]}
        t = bc.capture_case(Toy(), d, names=names, apply_map=True)
        assert t["fixture.tok"].dtype == np.float64
        assert t["fixture.tok"].shape == (1, 4, 2, 3)
        assert "fixture.in" in t, "the map's @input rule must install a pre-hook"
        assert np.allclose(t["fixture.tok"], t["fixture.in"])  # tokens_to_nchw inverts flatten
        assert not any(k.startswith("pair") for k in t)
        assert "conv" in t  # unmatched names pass through
        rules = bc.load_names(names)
        assert bc.map_name(rules, "layer.4")[0] == "backbone.layers.3"
        assert bc.map_name(rules, "layer.0")[0] == "layer.0"  # i would be -1: no match


def test_transforms_and_duplicates():
    a = np.arange(2 * 7 * 3).reshape(2, 7, 3)
    b = bc.apply_transform(a, [{"op": "drop_cls"}, {"op": "tokens_to_nchw"}], (2, 3, 2, 3))
    assert b.shape == (2, 3, 2, 3) and b[1, 2, 1, 0] == a[1, 1 + 3, 2]
    c = bc.apply_transform(np.ones((1, 2, 3, 4)), [{"op": "nhwc_to_nchw"}, {"op": "scale", "factor": 0.5}])
    assert c.shape == (1, 4, 2, 3) and c.max() == 0.5
    rules = bc.load_names({"format": "beit-seg-names/1", "rules": [{"candidate": "a{i}", "fixture": "x"}]})
    try:
        bc.apply_names({"a1": a, "a2": a}, rules)
    except ValueError as e:
        assert "a1" in str(e) and "a2" in str(e)
    else:
        raise AssertionError("two tensors mapping to one fixture name must fail")


def test_builtin_maps():
    """src/conformance/names/{hf,timm}.json (compiled into beit-seg) parse and map the key names."""
    names = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "conformance", "names")
    hf = bc.load_names(os.path.join(names, "hf.json"))
    for cand, fx in [("beit.layers.3.layernorm_before", "backbone.layers.3.ln1"), ("beit.layers.11", "backbone.layers.11"),
                     ("beit.layers.0.attention.0", "backbone.layers.0.attn"), ("fpn@input.2", "backbone.2"),
                     ("fpn.0", "neck.0"), ("fpn.fpn1.normalization", "neck.upsample_4x.1"),
                     ("decode_head.psp_modules.blocks.3", "decode_head.psp_modules.3"),
                     ("decode_head.psp_bottleneck.convolution", "decode_head.bottleneck.conv"),
                     ("decode_head.classifier", "decode_head.conv_seg"), ("decode_head", "decode_head"),
                     ("auxiliary_head.conv_cat.activation", "auxiliary_head.conv_cat.activate"),
                     ("beit.hidden_states.4", None), ("decode_head.psp_modules.2", None)]:
        assert bc.map_name(hf, cand)[0] == fx, (cand, bc.map_name(hf, cand)[0], fx)
    timm = bc.load_names(os.path.join(names, "timm.json"))
    for cand, fx in [("blocks.5.norm2", "backbone.layers.5.ln2"), ("blocks.2.mlp.act", "backbone.layers.2.ffn.layers.0.1"),
                     ("forward_intermediates.3", "backbone.3"), ("patch_embed", "backbone.patch_embed.0"),
                     ("blocks.1", "backbone.layers.1"), ("norm", None)]:
        assert bc.map_name(timm, cand)[0] == fx, (cand, bc.map_name(timm, cand)[0], fx)


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
