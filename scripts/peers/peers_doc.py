"""docs/peers.md from the peer runs (scripts/peers/run.py): tables, evidence, robust comparison."""
from __future__ import annotations

import json
import os
import re
from importlib import metadata

import numpy as np

import common  # noqa: F401  (re-exported for run.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

LEVELS = [("patch", r"backbone\.patch_embed"), ("layers", r"backbone\.(layers|ln1)"), ("feats", r"backbone\.\d"),
          ("neck", r"neck\."), ("decode", r"decode_head"), ("aux", r"auxiliary_head"),
          ("seg_logits", r"seg_logits"), ("pred", r"pred")]

DESC = {
    "hf-converted": "HF transformers 5.24.0 `BeitForSemanticSegmentation`, config as HF's conversion script "
                    "would write it (layer_norm_eps 1e-12 default, out_indices = mmseg's numbers)",
    "hf-corrected": "the same with every *setting* moved to MMSegmentation's: layer_norm_eps = norm_cfg.eps, "
                    "out_indices + 2 (set on `config._out_indices`: the validator rejects the last block's index)",
    "hf-patched": "hf-corrected plus two code patches built from HF's own classes: UPerHead with the case's "
                  "`channels`, relative-position table used as stored at the native window",
    "hf-patched-eps1e-12": "evidence run: hf-patched with HF's default layer_norm_eps 1e-12, float64 cases",
    "hf-patched-eager": "evidence run: hf-patched with `attn_implementation='eager'`, float64 cases",
    "timm": "timm 1.0.31 `timm.models.beit.Beit` backbone, `forward_intermediates(indices=out_indices, "
            "output_fmt='NCHW', intermediates_only=True)` + block hooks",
    "timm-norm": "evidence run: timm with `forward_intermediates(norm=True)` on the final_norm cases",
    "onnx-torchscript": "MMSegmentation's own model, `torch.onnx.export(dynamo=False)` (TorchScript exporter), "
                        "onnxruntime 1.32 CPU; float64 cases run in float32 (`--as-f32`)",
    "onnx-dynamo": "MMSegmentation's own model, `torch.onnx.export(dynamo=True)`, onnxruntime 1.32 CPU; "
                   "float64 cases run in float32 (`--as-f32`)",
    "ours-ref": "our reference backend through the same path: `beit-seg verify --backend ref --save-outputs` then "
                "`verify --candidate` (consistency check of the candidate path)",
}


def _v(pkg):
    try:
        return metadata.version(pkg)
    except Exception:
        return "?"


def sci(x):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if x == float("inf"):
        return "inf"
    return f"{x:.1e}"


def short(note):
    """First sentence of a note, at most ~160 characters (full texts are in the findings)."""
    n = note.split(". Please")[0]
    return n if len(n) <= 160 else n[:157] + "..."


def tensors_of(rep):
    return rep.get("tensors", [])


def status(t):
    return str(t.get("status", "")).lower()


def level_of(name):
    for lv, rx in LEVELS:
        if re.match(rx, name):
            return lv
    return "other"


def case_summary(rep):
    ts = tensors_of(rep)
    cov = [t for t in ts if status(t) != "not_covered"]
    fails = [t for t in ts if status(t) == "fail"]
    per = {}
    for t in cov:
        lv = level_of(t["name"])
        m = t.get("max_abs")
        if m is None or (isinstance(m, float) and np.isnan(m)):
            m = float("inf") if status(t) == "fail" else 0.0
        bad = status(t) == "fail"
        cur = per.get(lv, (0.0, False))
        per[lv] = (max(cur[0], m), cur[1] or bad)
    st = "FAIL" if fails else "pass"
    return dict(status=st, covered=len(cov), total=len(ts), first=fails[0]["name"] if fails else "-",
                first_note=(fails[0].get("note") or "") if fails else "", levels=per)


def repro(pid, case, names):
    n = f" --names {names}" if names else ""
    f32 = " --as-f32" if pid.startswith("onnx") and case.endswith("-f64") else ""
    adapters = {
        "hf-converted": "scripts/peers/hf_peer.py --variant converted",
        "hf-corrected": "scripts/peers/hf_peer.py --variant corrected",
        "hf-patched": "scripts/peers/hf_peer.py --variant patched",
        "hf-patched-eps1e-12": "scripts/peers/hf_peer.py --variant patched --eps 1e-12",
        "hf-patched-eager": "scripts/peers/hf_peer.py --variant patched --attn eager",
        "timm": "scripts/peers/timm_peer.py", "timm-norm": "scripts/peers/timm_peer.py --norm",
        "onnx-torchscript": "scripts/peers/onnx_peer.py", "onnx-dynamo": "scripts/peers/onnx_peer.py --dynamo",
    }
    if pid == "ours-ref":
        gen = f"beit-seg verify --backend ref --save-outputs /tmp/c fixtures/{case}"
    else:
        gen = f"$V/bin/python {adapters[pid]} --out /tmp/c {case}"
    return f"`{gen} && beit-seg verify --candidate /tmp/c/{case}{n}{f32} --allow-uncovered fixtures/{case}`"


def _fixture(case, name):
    c = json.load(open(os.path.join(ROOT, "fixtures", case, "case.json")))
    rel = c["outputs"].get(name)
    return None if rel is None else np.load(os.path.join(ROOT, "fixtures", case, rel))


def tap_table(cand, case):
    """Which fixture tensor each HF decoder-level input equals (max abs difference to each)."""
    d = os.path.join(cand, case)
    if not os.path.isdir(d):
        return []
    c = json.load(open(os.path.join(ROOT, "fixtures", case, "case.json")))
    L = c["model"]["backbone"]["num_layers"]
    oi = c["model"]["backbone"]["out_indices"]
    refs = {}
    pe = _fixture(case, "backbone.patch_embed.0")
    for i in range(L):
        t = _fixture(case, f"backbone.layers.{i}")
        if t is not None:
            refs[f"layers.{i}"] = t[:, 1:]
    if pe is not None:
        refs["patch_embed (+cls = hidden_states[0])"] = pe
    rows = []
    for k in range(4):
        p = os.path.join(d, f"fpn@input.{k}.npy")
        if not os.path.exists(p):
            continue
        f = np.load(p)
        tok = f.reshape(f.shape[0], f.shape[1], -1).transpose(0, 2, 1)
        errs = {n: float(np.abs(tok - r).max()) for n, r in refs.items() if r.shape == tok.shape}
        best = min(errs, key=errs.get)
        rows.append((k, oi[k], f"layers.{oi[k]}", best, errs[best], errs.get(f"layers.{oi[k]}", float("nan"))))
    return rows


def tensor_err(results, pid, case, name):
    for r in results:
        if r["peer"]["id"] != pid:
            continue
        for rep in r.get("json", {}).get("cases", []):
            if rep.get("name") == case:
                for t in tensors_of(rep):
                    if t["name"] == name and status(t) != "not_covered":
                        return t.get("max_abs"), status(t)
    return None, None


def render(results, cases, work):
    by = {r["peer"]["id"]: r for r in results}
    comp = sorted({r.get("comparator", "") for r in results if r.get("comparator") not in (None, "none")})
    out = []
    w = out.append
    w("# Peers: HF transformers, timm, ONNX Runtime (and our own backend) against MMSegmentation")
    w("")
    w("Generated by `scripts/peers/run.sh` (do not edit by hand); `scripts/peers/run.sh --check` reruns every peer "
      "and compares statuses, first failing tensors and coverage exactly, numbers to their order of magnitude.")
    w(f"Versions: torch {_v('torch')}, transformers {_v('transformers')}, timm {_v('timm')}, "
      f"onnx {_v('onnx')}, onnxscript {_v('onnxscript')}, onnxruntime {_v('onnxruntime')}, "
      f"mmsegmentation {_v('mmsegmentation')}. Comparator: {', '.join(comp) or '-'}.")
    w("All fixtures are MMSegmentation 1.2.2 run for real (fixtures/README.md); every error below is relative "
      "to MMSegmentation. Weights are the fixtures' random weights, converted to each peer's names. "
      "Uncovered tensors (a peer has no such module) are listed as coverage, not as failures.")
    w("")
    w("## Summary")
    w("")
    w("| peer | what | cases pass / fail / not run |")
    w("|---|---|---|")
    for r in results:
        p = r["peer"]
        if r.get("skipped"):
            w(f"| {p['id']} | {DESC.get(p['id'], '')} | not run: {r['skipped']} |")
            continue
        reps = {rep["name"]: rep for rep in r["json"].get("cases", [])}
        sums = [case_summary(reps[c]) for c in p["cases"] if c in reps]
        npass = sum(s["status"] == "pass" for s in sums)
        w(f"| {p['id']} | {DESC.get(p['id'], '')} | {npass} / {len(sums) - npass} / {len(p['cases']) - len(sums)} |")
    w("")
    w(findings(results, by, work))
    for r in results:
        p = r["peer"]
        w(f"## {p['id']}")
        w("")
        w(DESC.get(p["id"], ""))
        w("")
        if r.get("skipped"):
            w(f"Not run: {r['skipped']}.")
            w("")
            continue
        reps = {rep["name"]: rep for rep in r["json"].get("cases", [])}
        w("| case | result | coverage | first failing tensor | max abs error per level (F = a failing tensor) | "
          "not expressible / notes |")
        w("|---|---|---|---|---|---|")
        for c in p["cases"]:
            m = r.get("meta", {}).get(c, {})
            keys = [lim.split(":", 1)[0] for lim in m.get("limits", [])]
            notes = "; ".join(keys + [short(n) for n in m.get("notes", []) if "weights:" not in n
                                      and "fit HF's shapes" not in n])
            notes = notes.replace("|", "/")
            if c not in reps:
                why = notes or "not run"
                w(f"| {c} | not run | - | - | - | {why} |")
                continue
            s = case_summary(reps[c])
            lv = ", ".join(f"{k} {sci(v[0])}{' F' if v[1] else ''}" for k, v in s["levels"].items())
            w(f"| {c} | {s['status']} | {s['covered']}/{s['total']} | {s['first']} | {lv} | {notes} |")
        w("")
        w("Reproduce one case (from the repository root, `V=$(scripts/setup-venv.sh)`):")
        w("")
        ex = next((c for c in p["cases"] if c in reps), p["cases"][0] if p["cases"] else "tiny-whole")
        w(repro(p["id"], ex, p.get("names")))
        w("")
    kept = kept_sections()
    return "\n".join(out).rstrip() + "\n" + ("\n" + kept if kept else "")


# Sections of docs/peers.md generated by other scripts, kept verbatim when this one regenerates the
# file (each has its own --check): the candle peer (scripts/peers/candle.sh, candle_doc.py).
KEPT = [("<!-- candle: begin", "<!-- candle: end -->")]


def kept_sections():
    path = os.path.join(ROOT, "docs", "peers.md")
    text = open(path).read() if os.path.exists(path) else ""
    out = []
    for begin, end in KEPT:
        i, j = text.find(begin), text.find(end)
        if i >= 0 and j > i:
            out.append(text[i:j + len(end)] + "\n")
    return "\n".join(out)


def findings(results, by, work):
    o = []
    w = o.append
    w("## Findings (deviations from MMSegmentation, with evidence)")
    w("")
    # 1. feature tap
    hc = by.get("hf-converted")
    w("### 1. HF feeds the decoder the wrong blocks (feature tap), confirmed")
    w("")
    w("`BeitForSemanticSegmentation.forward` takes `encoder_hidden_states[i - 1] for i in out_indices` "
      "(modeling_beit.py:1043-1046), where `hidden_states[0]` is the embedding output and `hidden_states[k]` the "
      "output after k blocks; MMSegmentation's BEiT appends the output of block i (0-based), i.e. "
      "`hidden_states[i + 1]`. HF is two blocks early, and out_index 0 wraps to `hidden_states[-1]` "
      "(the last block). For BEiT-B's `[3, 5, 7, 11]` HF uses the outputs after 2, 4, 6, 10 blocks; mmseg after "
      "4, 6, 8, 12. Evidence: HF's `fpn` inputs (`fpn@input.{k}`) compared with every fixture "
      "`backbone.layers.{i}` (tokens without cls) on cases whose backbone HF computes correctly:")
    w("")
    w("| case | level k | mmseg out_index | mmseg feeds | HF's input equals | max abs to that | max abs to mmseg's |")
    w("|---|---|---|---|---|---|---|")
    for case in ("real-640",):
        for row in tap_table(hc["cand"], case) if hc else []:
            k, oi, mm, best, e, e2 = row
            w(f"| {case} | {k} | {oi} | {mm} | {best} | {sci(e)} | {sci(e2)} |")
    hp = by.get("hf-patched")
    for case in ("var-out-indices-f64", "tiny-whole"):
        for row in tap_table(hp["cand"], case) if hp else []:
            k, oi, mm, best, e, e2 = row
            w(f"| {case} (hf-patched: out_indices + 2) | {k} | {oi} | {mm} | {best} | {sci(e)} | {sci(e2)} |")
    w("")
    w("Fix: out_indices + 2 (`hf-corrected`). `BeitConfig` rejects an index above `num_hidden_layers` "
      "(backbone_utils.py `verify_out_features_out_indices`), which the last block needs, so no public setting "
      "expresses MMSegmentation's taps when the last block is used (BEiT-B: 13 > 12); "
      "the adapter sets `config._out_indices` after validation.")
    w("")
    # 2. eps
    w("### 2. LayerNorm eps 1e-12 (HF default), visible only in float64, confirmed")
    w("")
    w("`BeitConfig.layer_norm_eps = 1e-12` (configuration_beit.py) is used by every `BeitLayer` LayerNorm "
      "(modeling_beit.py:390-391); mmseg uses norm_cfg eps 1e-6. Same model, only eps changed:")
    w("")
    w("| case | tensor | eps 1e-6 (hf-patched) | eps 1e-12 (hf-patched-eps1e-12) | float64 tolerance |")
    w("|---|---|---|---|---|")
    for case in [c for c in (by.get("hf-patched-eps1e-12") or {"peer": {"cases": []}})["peer"]["cases"]]:
        for name in ("backbone.layers.0.ln1", "decode_head"):
            a, sa = tensor_err(list(by.values()), "hf-patched", case, name)
            b, sb = tensor_err(list(by.values()), "hf-patched-eps1e-12", case, name)
            if a is None or sa != "pass":  # not expressible in HF at all (see 5)
                continue
            w(f"| {case} | {name} | {sci(a)} {sa or ''} | {sci(b)} {sb or ''} | rtol 1e-9, atol 1e-10 |")
    w("")
    w("The fp32 tolerance (1e-4) hides it: the same eps change moves fp32 outputs by ~1e-6.")
    w("")
    # 3. non-square rel-pos
    w("### 3. HF resamples the relative-position table on every forward; wrong for non-square windows, confirmed")
    w("")
    w("`BeitRelativePositionBias.forward` (modeling_beit.py:220-262) reshapes the stored table as "
      "`(1, old_width, old_height, -1)` and bilinearly interpolates it to `(new_height, new_width)` even at the "
      "native window. For a square window that is an identity; for Wh != Ww it reinterprets the row-major "
      "(2Wh-1)x(2Ww-1) table as (2Ww-1)x(2Wh-1) and resamples it, so attention gets a wrong bias from layer 0 on. "
      "No setting avoids it (interpolate_pos_encoding only adds a second resize). First attention output:")
    w("")
    w("| case | window | hf-corrected `backbone.layers.0.attn` | hf-patched (table used as stored) |")
    w("|---|---|---|---|")
    for case in (by.get("hf-corrected") or {"peer": {"cases": []}})["peer"]["cases"]:
        a, sa = tensor_err(list(by.values()), "hf-corrected", case, "backbone.layers.0.attn")
        b, sb = tensor_err(list(by.values()), "hf-patched", case, "backbone.layers.0.attn")
        if a is None or sb != "pass":
            continue
        c = json.load(open(os.path.join(ROOT, "fixtures", case, "case.json")))["model"]["backbone"]
        win = f"{c['img_size'][0] // c['patch_size']}x{c['img_size'][1] // c['patch_size']}"
        w(f"| {case} | {win} | {sci(a)} {sa} | {sci(b)} {sb} |")
    w("")
    # 4. eager attention
    w("### 4. HF eager attention computes softmax in float32 even for a float64 model")
    w("")
    w("`eager_attention_forward` calls `softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)` "
      "(modeling_beit.py:285). With the default `sdpa` the float64 cases pass; with `attn_implementation='eager'`:")
    w("")
    w("| case | tensor | sdpa (hf-patched) | eager (hf-patched-eager) |")
    w("|---|---|---|---|")
    for case in (by.get("hf-patched-eager") or {"peer": {"cases": []}})["peer"]["cases"]:
        a, sa = tensor_err(list(by.values()), "hf-patched", case, "backbone.layers.0.attn")
        b, sb = tensor_err(list(by.values()), "hf-patched-eager", case, "backbone.layers.0.attn")
        if a is None or sa != "pass":
            continue
        w(f"| {case} | backbone.layers.0.attn | {sci(a)} {sa or ''} | {sci(b)} {sb or ''} |")
    w("")
    w("### 5. What HF cannot express at all (config level)")
    w("")
    w("- UPerHead `channels` != `hidden_size`: `BeitUperHead.__init__` sets `self.channels = config.hidden_size` "
      "(modeling_beit.py:808). Every bundled case uses channels < embed_dims, so in hf-converted/hf-corrected the "
      "decode head's weights cannot be loaded and its tensors are not offered (NOT COVERED); hf-patched builds "
      "the head from HF's own classes with the case's channels and then matches MMSegmentation.")
    w("- non-square windows (finding 3); `final_norm=True` (HF taps pre-layernorm hidden_states); `patch_norm=True` "
      "(no norm in `BeitPatchEmbeddings`); `align_corners=True` (hard-coded False, modeling_beit.py:761, 855, 867); "
      "neck rescales other than [4, 2, 1, 0.5] (`BeitFPNNeck` is fixed); FCN aux `in_index` != 2 / "
      "`in_channels` != hidden_size; slide inference (HF returns 1/4 logits of one input; slide-b2 not run).")
    w("- Expressible: `qv_bias=False` (zero q/v biases), `mlp_ratio` (intermediate_size), `init_values` "
      "(lambda_1/2 loaded), FCN `num_convs`/`concat_input` (`auxiliary_concat_input`, same `cat([x, out])` order), "
      "no aux head, odd input sizes (the patch conv truncates the same way), other out_indices (finding 1).")
    w("- Where HF is right: with those two patches every covered tensor of every whole-mode case HF can express "
      "matches MMSegmentation in fp32 and float64, including `pred` from HF's own "
      "`post_process_semantic_segmentation(target_sizes=...)`.")
    w("")
    w("### 6. timm: right; `forward_intermediates(norm=True)` is not mmseg's `final_norm`")
    w("")
    w("timm's backbone matches MMSegmentation to float64 tolerance on every case it can express (taps after "
      "block i like mmseg, eps 1e-6, exact GELU, zero k bias). `patch_norm=True` is not expressible (Beit builds "
      "PatchEmbed without a norm). For `final_norm=True`, `norm=True` applies `self.norm` to every intermediate "
      "(timm/models/beit.py:840) while mmseg normalizes only the last block's output:")
    w("")
    w("| case | tensor | timm (norm=False) | timm-norm (norm=True) |")
    w("|---|---|---|---|")
    for case in ("var-final-norm", "var-final-norm-f64"):
        for k in range(4):
            a, sa = tensor_err(list(by.values()), "timm", case, f"backbone.{k}")
            b, sb = tensor_err(list(by.values()), "timm-norm", case, f"backbone.{k}")
            if a is None and b is None:
                continue
            w(f"| {case} | backbone.{k} | {sci(a)} {sa or ''} | {sci(b)} {sb or ''} |")
    w("")
    w("### 7. ONNX: the TorchScript exporter cannot export the PPM; the dynamo exporter can")
    w("")
    for pid in ("onnx-torchscript", "onnx-dynamo"):
        r = by.get(pid)
        if not r:
            continue
        for c, m in sorted(r.get("meta", {}).items()):
            for n in m.get("notes", []):
                if "failed" in n:
                    w(f"- {pid} {c}: {short(n)}")
    w("")
    w("AdaptiveAvgPool2d to 2/3/6 bins of a 3x4 (or 5x7) map is not a whole-factor pooling, which the "
      "TorchScript symbolic refuses (torch/onnx/_internal/torchscript_exporter/symbolic_opset9.py:1717); every "
      "BEiT-UPerNet config hits it (BEiT-B at 640: a 20x20 map pooled to 3 and 6 bins). "
      "With `dynamo=True` the same model exports and onnxruntime matches MMSegmentation on every exposed "
      "intermediate, including the uneven PPM bins (ppm-nondiv), and on slide-b2 (the per-window graph run "
      "inside MMSegmentation's own slide_inference); see the onnx-dynamo table.")
    w("")
    w("float64: a float64 graph exports with dynamo (`onnx_peer.py --dynamo --f64 tiny-whole-f64`), but "
      "onnxruntime 1.32's CPU provider has no double Conv (`NOT_IMPLEMENTED: Could not find an implementation for "
      "Conv(11) node`), so ONNX Runtime can only be checked in fp32 (the f64 cases with `--as-f32`); not part of "
      "run.sh (the float64 export alone took ~130 s).")
    w("")
    w("### 8. What /work/shared/spec/peers.md claimed, checked here")
    w("")
    w("- Confirmed: the HF feature tap is two blocks early (finding 1; the rule is read from the source and shown "
      "per level above; out_index 0 additionally wraps to the last block); HF's LayerNorm eps 1e-12 (finding 2, "
      "~2e-6 at the first LayerNorm, float64 only); `channels` hard-coded to `hidden_size` (finding 5); all HF "
      "interpolations bilinear with align_corners=False, PPM/FPN/fpn_bottleneck/FCN (incl. `concat_input`) "
      "otherwise identical to mmseg (hf-patched passes, uneven PPM bins included); timm taps after block i with "
      "eps 1e-6 and matches mmseg's backbone (finding 6); the TorchScript ONNX export fails on the PPM (finding 7).")
    w("- Refuted / corrected: \"at the native window this resampling is an identity\" holds only for square "
      "windows; for non-square native windows HF's per-forward resampling is wrong (finding 3), so HF is not "
      "correct on non-square inputs with a table trained for them (all BEiT checkpoints are square, so the released "
      "models are not affected at their native size). \"FCN concat_input\" is expressible in HF "
      "(`auxiliary_concat_input`, hf-patched passes var-fcn-concat). The `[3, 5, 7, 11]` -> 2/4/6/10 claim follows "
      "from the rule; it was not rerun on a 12-layer model here (no such fixture).")
    w("- New: HF eager attention runs softmax in float32 inside a float64 model (finding 4); `BeitConfig` cannot "
      "express mmseg's taps for the last block (finding 1); timm's `norm=True` normalizes every intermediate "
      "(finding 6); the dynamo exporter handles the uneven PPM bins, and exporting the whole slide loop needs "
      "strict `torch.export` (non-strict stops at `assert (count_mat == 0).sum() == 0`, "
      "mmseg/models/segmentors/encoder_decoder.py:289; the strict trace took ~130 s here), so the ONNX peer "
      "exports the per-window network and runs MMSegmentation's own `slide_inference` around it.")
    w("- Not checked: HF's image processor defaults (0.5/0.5 mean/std, bicubic square resize): the fixtures' "
      "inputs are already normalized; the real-checkpoint logits slice of HF's integration test.")
    w("")
    return "\n".join(o)


# ----------------------------------------------------------------------------------------------
# --check: compare two renderings
# ----------------------------------------------------------------------------------------------

NUM = re.compile(r"(?<![\w.])-?\d+\.\de[+-]\d+")


def _mag(s):
    v = abs(float(s))
    return -99 if v < 1e-12 else int(np.floor(np.log10(v)))


def compare_docs(old, new):
    """Lines must match exactly after numbers in scientific notation are reduced to their order of
    magnitude (+-1 allowed); versions line ignored (another venv is another run)."""
    a, b = old.splitlines(), new.splitlines()
    probs = []
    if len(a) != len(b):
        probs.append(f"line count {len(a)} (committed) vs {len(b)} (fresh)")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.startswith("Versions:") and y.startswith("Versions:"):
            continue
        if NUM.sub("#", x) != NUM.sub("#", y):
            probs.append(f"line {i + 1}:\n    committed: {x}\n    fresh:     {y}")
            continue
        for u, v in zip(NUM.findall(x), NUM.findall(y)):
            mu, mv = _mag(u), _mag(v)
            if abs(mu - mv) > 1 and max(mu, mv) >= -6:  # below 1e-6 both are rounding noise
                probs.append(f"line {i + 1}: {u} vs {v}")
    return probs
