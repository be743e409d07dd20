#!/usr/bin/env python3
"""MMSegmentation's own model exported to ONNX (torch.onnx.export) and run by onnxruntime (CPU).

    python scripts/peers/onnx_peer.py --out DIR [--dynamo] [--f64] CASE...

The model is built exactly as fixtures/generate.py builds it (its `build_model`, `load_state` and
mmcv.ops stand-in), with the fixture's weights. A wrapper module re-runs the hooked forward
(`extract_feat` -> `decode_head` -> `auxiliary_head`, then `inference()` for `seg_logits`) and
returns every hooked module output as a graph output named like the fixture tensor, so the ONNX
graph itself exposes the intermediates. In slide cases only `seg_logits`/`pred` are outputs
(the python loop of slide_inference is unrolled by tracing). Float64 cases are run in float32
unless --f64 (which exports a float64 graph: see docs/peers.md for what onnxruntime does with it).
Tensor names are fixture names already: compare with `beit-seg verify --candidate DIR/<case>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

sys.path.insert(0, os.path.join(common.ROOT, "fixtures"))
warnings.filterwarnings("ignore")


class Hooked:
    def __init__(self, torch, model, skip):
        self.store = OrderedDict()
        self.on = False
        for name, mod in model.named_modules():
            if skip(name, mod):
                continue
            mod.register_forward_hook(self._hook(torch, name))

    def _hook(self, torch, name):
        def fn(mod, inp, out):
            if not self.on:
                return
            if isinstance(out, torch.Tensor):
                self.store[name] = out.clone()
            elif isinstance(out, (tuple, list)):
                for k, o in enumerate(out):
                    if isinstance(o, torch.Tensor):
                        self.store[f"{name}.{k}"] = o.clone()
        return fn


def build(case_name, dtype_name):
    import generate as gen
    torch, _, _, _ = gen._import_mmseg()
    d, case = common.load_case(case_name)
    spec = {"model": case["model"]}
    model = gen.build_model(torch, spec)
    w = np.load(os.path.join(d, case["weights"]))
    gen.load_state(torch, model, OrderedDict((k, w[k]) for k in w.files), common.torch_dtype(torch, dtype_name))
    model = model.to(common.torch_dtype(torch, dtype_name)).eval()
    return torch, gen, model, d, case


def make_wrapper(torch, gen, model, case, x):
    slide = case["model"]["test_cfg"].get("mode") == "slide"
    rec = Hooked(torch, model, gen.skip_module)
    h, w = x.shape[2:]
    metas = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
             for _ in range(x.shape[0])]
    wanted = set(case["outputs"])

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.names = None

        def forward(self, inputs):
            rec.store = OrderedDict()
            out = OrderedDict()
            if not slide:
                rec.on = True
                feats = self.model.extract_feat(inputs)
                self.model.decode_head(feats)
                if getattr(self.model, "auxiliary_head", None) is not None:
                    self.model.auxiliary_head(feats)
                rec.on = False
                out.update((k, v) for k, v in rec.store.items() if k in wanted)
            seg = self.model.inference(inputs, metas)
            out["seg_logits"] = seg
            out["pred"] = seg.argmax(dim=1)
            self.names = list(out)
            return tuple(out.values())
    return Wrapper().eval()


def export_and_run(case_name, out_root, dynamo=False, f64=False):
    import onnxruntime as ort
    d0, case0 = common.load_case(case_name)
    run_dtype = "float64" if (f64 and case0.get("dtype") == "float64") else "float32"
    torch, gen, model, d, case = build(case_name, run_dtype)
    torch.set_num_threads(1)
    x = torch.from_numpy(np.load(os.path.join(d, case["inputs"]["inputs"]))).to(common.torch_dtype(torch, run_dtype))
    wrapper = make_wrapper(torch, gen, model, case, x)
    meta = {"peer": "onnx" + ("-dynamo" if dynamo else "") + ("-f64" if f64 else ""), "case": case_name,
            "limits": [], "notes": [], "ran": False, "run_dtype": run_dtype}
    with torch.no_grad():
        wrapper(x)  # names
    names = wrapper.names
    with tempfile.TemporaryDirectory() as t:
        path = os.path.join(t, "model.onnx")
        t0 = time.time()
        slide = case["model"]["test_cfg"].get("mode") == "slide"
        if slide:
            return slide_via_ort(torch, model, case, x, out_root, case_name, meta, path, dynamo)
        try:
            with torch.no_grad():
                torch.onnx.export(wrapper, (x,), path, input_names=["inputs"], output_names=names,
                                  opset_version=18, dynamo=dynamo)
        except Exception as e:  # record why, never hide it
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            meta["notes"].append(f"torch.onnx.export(dynamo={dynamo}) failed: {msg[:400]}")
            meta["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
            return meta
        meta["export_s"] = round(time.time() - t0, 2)
        try:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            res = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
            onames = [o.name for o in sess.get_outputs()]
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            meta["notes"].append(f"onnxruntime failed: {msg[:400]}")
            return meta
    if onames != names:
        meta["notes"].append("graph output names differ from the wrapper's; using the graph's")
    tensors = OrderedDict(zip(onames, res))
    common.bc.write_candidate(tensors, os.path.join(out_root, case_name))
    meta["ran"] = True
    meta["tensors"] = len(tensors)
    if case.get("dtype") == "float64" and run_dtype == "float32":
        meta["notes"].append("float64 case run in float32 (compare with --as-f32)")
    return meta


def slide_via_ort(torch, model, case, x, out_root, case_name, meta, path, dynamo):
    """Slide case: export the per-window network (`encode_decode` on one crop) and run
    MMSegmentation's own `slide_inference` with `encode_decode` executed by onnxruntime.

    (Exporting the whole slide loop in one graph works with dynamo only via strict torch.export:
    non-strict export stops at the data-dependent `assert (count_mat == 0).sum() == 0`,
    mmseg/models/segmentors/encoder_decoder.py:289, and the strict trace of the unrolled loop took
    ~130 s on 2 cores here, too slow for CI. Deployments (mmdeploy) run slide outside the graph too.)"""
    import onnxruntime as ort
    ch, cw = case["model"]["test_cfg"]["crop_size"]
    crop = x[:, :, :ch, :cw].contiguous()
    metas = [dict(img_shape=(ch, cw), ori_shape=(ch, cw), pad_shape=(ch, cw), padding_size=[0, 0, 0, 0])
             for _ in range(x.shape[0])]

    class Crop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return self.model.encode_decode(inputs, metas)
    try:
        with torch.no_grad():
            torch.onnx.export(Crop().eval(), (crop,), path, input_names=["inputs"], output_names=["crop_logits"],
                              opset_version=18, dynamo=dynamo)
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        meta["notes"].append(f"torch.onnx.export(dynamo={dynamo}) of the crop network failed: {msg[:400]}")
        return meta
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    calls = []

    def encode_decode(inputs, batch_img_metas):
        calls.append(tuple(inputs.shape))
        (y,) = sess.run(None, {"inputs": inputs.detach().cpu().numpy()})
        return torch.from_numpy(y)
    model.encode_decode = encode_decode
    h, w = x.shape[2:]
    full = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])
            for _ in range(x.shape[0])]
    with torch.no_grad():
        seg = model.inference(x, full)
    meta["notes"].append(f"crop network exported (dynamo={dynamo}); mmseg's slide_inference ran "
                         f"{len(calls)} windows through onnxruntime")
    tensors = OrderedDict(seg_logits=seg.numpy(), pred=seg.argmax(1).numpy())
    common.bc.write_candidate(tensors, os.path.join(out_root, case_name))
    meta["ran"] = True
    meta["tensors"] = 2
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta")
    ap.add_argument("--dynamo", action="store_true")
    ap.add_argument("--f64", action="store_true", help="export float64 cases as float64 graphs")
    ap.add_argument("cases", nargs="+")
    args = ap.parse_args()
    for c in args.cases:
        meta = export_and_run(c, args.out, args.dynamo, args.f64)
        common.write_meta(os.path.join(args.meta or args.out.rstrip("/") + ".meta", f"{c}.json"), meta)
        print(f"{meta['peer']} {c}: {'ran' if meta['ran'] else 'not run'}; " + "; ".join(meta["notes"]))


if __name__ == "__main__":
    main()
