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



# ----------------------------------------------------------------------------------------------
# Modules whose train()/eval() return None, --root-name, the summary
# ----------------------------------------------------------------------------------------------

class NoneTrain(Toy):
    """Like OpenMMLab backbones (mmseg's BEiT): train() (hence eval()) and to() return None."""

    def train(self, mode=True):
        super().train(mode)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(3)
        self.mlp = nn.Linear(3, 3)

    def forward(self, x):
        return x + self.mlp(self.ln1(x))


class TinyBackbone(nn.Module):
    """A bare backbone: returns a tuple of per-layer NCHW maps; train() returns None."""

    def __init__(self, n=4):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(n))
        self.drop = nn.Dropout(0.5)

    def train(self, mode=True):
        super().train(mode)

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        outs = []
        for blk in self.layers:
            t = self.drop(blk(t))
            outs.append(t.transpose(1, 2).reshape(b, c, h, w))
        return tuple(outs)


def backbone_case(d, n=4, dtype="float32"):
    """A case whose expected names are a bare backbone's: backbone.{0..n-1}, backbone.layers.{i}[.ln1]."""
    x = make_case(d, dtype)
    case = json.load(open(os.path.join(d, "case.json")))
    case["outputs"] = {}
    for i in range(n):
        for name in (f"backbone.layers.{i}.ln1", f"backbone.layers.{i}", f"backbone.{i}"):
            case["outputs"][name] = f"outputs/{name}.npy"
            np.save(os.path.join(d, "outputs", f"{name}.npy"), np.zeros((1,), dtype))
    case["outputs"]["decode_head"] = "outputs/decode_head.npy"
    np.save(os.path.join(d, "outputs", "decode_head.npy"), np.zeros((1,), dtype))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f)
    return x


def test_train_returning_none():
    with tempfile.TemporaryDirectory() as d:
        make_case(d, "float64")
        m = NoneTrain()
        assert m.eval() is None and m.train() is None  # the old `module.to(dtype).eval()` crashed here
        t = bc.capture_case(m, d, inputs_of=["head"])
        assert not m.training and not m.bn.training, "capture_case must put the module in eval mode"
        assert m.conv.weight.dtype == torch.float64, "capture_case must convert the module in place"
        for k in ["conv", "bn", "pair.0", "head.logits", "head@input"]:
            assert k in t, (k, list(t))
        assert t["conv"].dtype == np.float64
        assert t.summary.root is None and "head" in t.summary.hooked and "" not in t.summary.hooked


def test_root_name_bare_backbone():
    with tempfile.TemporaryDirectory() as d:
        x = backbone_case(d)
        m = TinyBackbone()
        out = os.path.join(d, "cand")
        t = bc.capture_case(m, d, out=out, root_name="backbone", inputs_of=["layers.1", "backbone.layers.2"])
        with torch.no_grad():
            ref = m(torch.from_numpy(x))
        for k in range(4):
            assert np.array_equal(t[f"backbone.{k}"], ref[k].numpy()), k
            assert os.path.exists(os.path.join(out, f"backbone.{k}.npy"))
            assert f"backbone.layers.{k}.ln1" in t and f"backbone.layers.{k}" in t
        assert "backbone.layers.1@input" in t and "backbone.layers.2@input" in t  # raw or prefixed name
        assert not any(k.startswith("layers") for k in t), "children must be prefixed with the root name"
        assert list(t)[-4:] == [f"backbone.{k}" for k in range(4)]  # the root output comes last
        s = t.summary
        assert s.root == "backbone" and "backbone.layers.0.ln1" in s.hooked and "backbone" not in s.hooked
        assert len(s.expected) == 13 and len(s.present) == 12 and s.missing == ["decode_head"], s
        assert "backbone.drop" in s.unexpected
        line = s.line()
        assert "hooked" in line and "12/13 expected names present" in line and "decode_head" in line, line

        # Without root_name: the root output is not written, names are raw.
        t = bc.capture_case(TinyBackbone(), d)
        assert "layers.0.ln1" in t and not any(k.startswith("backbone") for k in t)
        assert t.summary.present == [] and len(t.summary.missing) == 13
        assert "--root-name" in t.summary.format()

        # With --forward the root output is what the callable returns.
        t = bc.capture_case(TinyBackbone(), d, root_name="backbone", forward=lambda mod, inp: list(mod(inp))[2:])
        assert "backbone.0" in t and "backbone.1" in t and "backbone.2" not in t
        assert np.array_equal(t["backbone.0"], t["backbone.layers.2"].transpose(0, 2, 1).reshape(1, 3, 2, 3))

        # A root output holding no tensor is a note, not an error; bad root names are errors.
        t = bc.capture_case(TinyBackbone(), d, root_name="bb", forward=lambda mod, inp: (mod(inp), None)[1])
        assert "bb" not in t and any("holds no tensor" in n for n in t.summary.notes)
        for bad in ["", ".x", "x.", "a@b", "a/b"]:
            try:
                bc.capture_case(TinyBackbone(), d, root_name=bad)
            except ValueError:
                pass
            else:
                raise AssertionError(f"root_name {bad!r} must be refused")


def test_summary_after_map_and_cli():
    import contextlib
    import io
    with tempfile.TemporaryDirectory() as d:
        backbone_case(d)
        names = {"format": "beit-seg-names/1", "rules": [
            {"candidate": "vit.{*rest}", "fixture": "backbone.{*rest}"},
            {"candidate": "vit", "fixture": None}]}
        # a map without apply_map: presence is counted after the map, the raw names are written
        t = bc.capture_case(TinyBackbone(), d, root_name="vit", names=names)
        assert "vit.0" in t and t.summary.mapped
        assert len(t.summary.present) == 12 and t.summary.missing == ["decode_head"]
        t2 = bc.capture_case(TinyBackbone(), d, root_name="vit", names=names, apply_map=True)
        assert "backbone.0" in t2 and "vit.0" not in t2 and not t2.summary.mapped
        assert t2.summary.present == t.summary.present

        # the CLI: --root-name, the summary on stderr
        mod_dir = os.path.join(d, "mods")
        os.makedirs(mod_dir)
        with open(os.path.join(mod_dir, "tiny_port.py"), "w") as f:
            f.write("import sys\nsys.path.insert(0, %r)\nimport test_capture\n\n"
                    "def build(case):\n    assert case['name'] == 'toy'\n    return test_capture.TinyBackbone()\n"
                    % os.path.dirname(os.path.abspath(__file__)))
        out = os.path.join(d, "cand")
        err, so = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
            rc = bc.main(["--case", d, "--model", "tiny_port:build", "--path", mod_dir, "--out", out,
                          "--root-name", "backbone"])
        assert rc == 0
        assert os.path.exists(os.path.join(out, "backbone.3.npy"))
        assert os.path.exists(os.path.join(out, "backbone.layers.3.ln1.npy"))
        e = err.getvalue()
        assert "hooked 14 modules + root output as `backbone`" in e, e
        assert "12/13 expected names present" in e and "missing (all): decode_head" in e, e


# ----------------------------------------------------------------------------------------------
# MMSegmentation's own BEiT, captured as a bare backbone
# ----------------------------------------------------------------------------------------------

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _mmseg():
    """Import mmseg through fixtures/generate.py's `_import_mmseg()` (mmcv-lite has no compiled
    `mmcv.ops`; it installs a stand-in first) and register its modules."""
    sys.path.insert(0, os.path.join(ROOT, "fixtures"))
    import generate
    generate._import_mmseg()
    from mmseg.utils import register_all_modules
    register_all_modules()


def test_mmseg_beit_backbone():
    import copy
    try:
        _mmseg()
    except ImportError as e:
        print(f"SKIP test_mmseg_beit_backbone: mmseg not importable ({e})")
        return
    from mmseg.registry import MODELS
    d = os.path.join(ROOT, "fixtures", "tiny-whole")
    with open(os.path.join(d, "case.json")) as f:
        case = json.load(f)
    cfg = copy.deepcopy(case["model"]["backbone"])
    cfg["img_size"] = tuple(cfg["img_size"])
    beit = MODELS.build(cfg)
    assert type(beit).__name__ == "BEiT" and beit.train() is None  # the case this issue is about
    w = np.load(os.path.join(d, case["weights"]))
    sd = {k[len("backbone."):]: torch.from_numpy(w[k]) for k in w.files if k.startswith("backbone.")}
    beit.load_state_dict(sd, strict=True)
    t = bc.capture_case(beit, d, root_name="backbone")
    backbone_names = [k for k in case["outputs"] if k.startswith("backbone.")]
    n = case["model"]["backbone"]["num_layers"]
    must = [f"backbone.{k}" for k in range(4)] + [f"backbone.layers.{i}" for i in range(n)]
    assert set(must) <= set(backbone_names)
    worst = 0.0
    for name in backbone_names:
        assert name in t, (name, "not captured")
        exp = np.load(os.path.join(d, case["outputs"][name]))
        assert t[name].shape == exp.shape, (name, t[name].shape, exp.shape)
        err = float(np.abs(t[name].astype(np.float64) - exp).max())
        assert err <= 1e-5, (name, err)
        worst = max(worst, err)
    s = t.summary
    assert set(s.present) == set(backbone_names) and len(s.expected) == len(case["outputs"])
    assert s.missing and all(not m.startswith("backbone.") for m in s.missing), s.missing[:5]
    assert "neck.upsample_4x.0" in s.missing or "decode_head" in s.missing
    print(f"   mmseg BEiT: {len(backbone_names)} backbone tensors, max |err| {worst:.2e}; {s.line(3)}")


# ----------------------------------------------------------------------------------------------
# Name maps: string captures {*NAME}
# ----------------------------------------------------------------------------------------------

def _map(*rules):
    return bc.load_names({"format": "beit-seg-names/1", "rules": [
        {"candidate": c, "fixture": f} for c, f in rules]})


def _refused(*rules):
    try:
        _map(*rules)
    except ValueError as e:
        return str(e)
    raise AssertionError(f"map {rules} must be refused")


def test_string_capture():
    m = _map(("vit.{*rest}", "backbone.{*rest}"))
    assert bc.map_name(m, "vit.layers.3.ln1")[0] == "backbone.layers.3.ln1"
    assert bc.map_name(m, "vit.layers.3.attn@input")[0] == "backbone.layers.3.attn@input"
    assert bc.map_name(m, "vit.layers.3.attn@input.1")[0] == "backbone.layers.3.attn@input.1"
    assert bc.map_name(m, "vit.0")[0] == "backbone.0"
    for name in ["vit", "vitx.a", "vit.", "vit..a", "vit.a.", "vit.@input", "avit.a"]:
        assert bc.map_name(m, name) == (name, [], None), name  # no match: own name

    # greedy, longest first, with backtracking; whole segments only
    m = _map(("{*a}.{*b}", "{*b}|{*a}"))
    assert bc.map_name(m, "x.y.z")[0] == "z|x.y"
    assert bc.map_name(m, "x")[0] == "x"
    m = _map(("{*m}.{i}", "{*m}#{i}"))
    assert bc.map_name(m, "layers.3.attn.0")[0] == "layers.3.attn#0"
    assert bc.map_name(m, "a.b.c")[0] == "a.b.c"  # no integer last segment
    m = _map(("{*m}.ln{i}", "{*m}.norm{i}"))
    assert bc.map_name(m, "blocks.2.ln1")[0] == "blocks.2.norm1"
    assert bc.map_name(m, "blocks.2xln1")[0] == "blocks.2xln1"

    # `@` ends a run: {*m}@input takes the module path
    m = _map(("{*m}@input.{k}", "in.{*m}.{k}"), ("{*m}@input", "in.{*m}"))
    assert bc.map_name(m, "fpn.a@input.2")[0] == "in.fpn.a.2"
    assert bc.map_name(m, "fpn.a@input")[0] == "in.fpn.a"
    assert bc.map_name(m, "@input")[0] == "@input"

    # text before a run is empty or ends with `.`, text after is empty or starts with `.` or `@`
    m = _map(("pre{*m}", "x.{*m}"), ("{*m}x", "y.{*m}"))
    assert bc.map_name(m, "prefoo")[0] == "prefoo"
    assert bc.map_name(m, "a.bx")[0] == "a.bx"
    m = _map(("a.{*m}.z", "{*m}"))
    assert bc.map_name(m, "a.b.c.z")[0] == "b.c" and bc.map_name(m, "a.z")[0] == "a.z"
    assert bc.map_name(m, "a.b.cz")[0] == "a.b.cz"

    # integers and strings together; a variable used twice binds the same text
    m = _map(("vit.blocks.{i+1}.{*rest}", "backbone.layers.{i}.{*rest}"), ("{*a}.x.{*a}", "twice.{*a}"))
    assert bc.map_name(m, "vit.blocks.4.attn.proj")[0] == "backbone.layers.3.attn.proj"
    assert bc.map_name(m, "vit.blocks.0.attn")[0] == "vit.blocks.0.attn"  # i would be -1
    assert bc.map_name(m, "p.q.x.p.q")[0] == "twice.p.q"
    assert bc.map_name(m, "p.x.q")[0] == "p.x.q"

    # integer variables take every digit (no backtracking into fewer digits, as on the Rust side)
    m = _map(("a{i}1", "b{i}"))
    assert bc.map_name(m, "a121")[0] == "a121"

    # map errors
    assert "not in `candidate`" in _refused(("vit.{i}", "backbone.{*rest}"))
    assert "integer" in _refused(("vit.{*x}", "backbone.{x}"))
    assert "integer" in _refused(("{*x}.{x}", "y"))
    assert "two variables" in _refused(("{*a}{i}", "y"))
    assert "bad string variable" in _refused(("{*a+1}", "y"))
    assert "bad string variable" in _refused(("{*}", "y"))
    assert "bad string variable" in _refused(("{*a.b}", "y"))
    assert "unclosed" in _refused(("a.{*b", "y"))
    assert "bad variable" in _refused(("a.{b c}", "y"))
    _map(("{*rest}", None))  # dropping needs no fixture variables

    # apply_names and the capture's @input pre-hooks follow the same rules
    got, dropped = bc.apply_names({"vit.a": np.zeros(1), "vit": np.ones(1), "other": np.ones(2)},
                                  _map(("vit.{*rest}", "backbone.{*rest}"), ("vit", None)))
    assert list(got) == ["backbone.a", "other"] and dropped == ["vit"]
    with tempfile.TemporaryDirectory() as d:
        make_case(d)
        names = {"format": "beit-seg-names/1", "rules": [{"candidate": "{*m}@input", "fixture": "in.{*m}"}]}
        t = bc.capture_case(Toy(), d, names=names, apply_map=True)
        assert "in.head" in t and "in.pair" in t and "in.conv" in t


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
