#!/usr/bin/env python3
"""Run every peer on the bundled cases through `beit-seg verify --candidate`, write docs/peers.md.

    scripts/peers/run.sh            # regenerate docs/peers.md
    scripts/peers/run.sh --check    # regenerate into a temp dir, compare with the committed file

Everything lands in one temp dir (removed at the end). The binary is $BEIT_SEG or
target/release/beit-seg; while it lacks `verify --candidate`, scripts/peers/pycompare.py (the same
rule in numpy) stands in and the report says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import contextlib  # noqa: E402

import peers_doc  # noqa: E402
import pycompare  # noqa: E402


def seg_cases():
    out = []
    for name in sorted(os.listdir(os.path.join(ROOT, "fixtures"))):
        p = os.path.join(ROOT, "fixtures", name, "case.json")
        if not os.path.exists(p):
            continue
        c = json.load(open(p))
        if c.get("kind") == "segmentor" and str(c.get("weights", "")).endswith(".npz"):
            out.append(name)
    return out


def f64(cases):
    return [c for c in cases if c.endswith("-f64")]


ONNX_CASES = ["tiny-whole", "ppm-nondiv", "slide-b2"]


def peers(cases):
    """Each peer: id, name map, cases, and `run(case, out_root)` -> meta dict (in-process: one import)."""
    import hf_peer
    import onnx_peer
    import timm_peer

    def hf(variant, tag, **kw):
        def run(c, out):
            m = hf_peer.run_case(c, variant, out, **kw)
            m["peer"] = tag
            return m
        return run
    f64c = f64(cases)
    return [
        dict(id="hf-converted", names="hf", cases=cases, run=hf("converted", "hf-converted")),
        dict(id="hf-corrected", names="hf", cases=cases, run=hf("corrected", "hf-corrected")),
        dict(id="hf-patched", names="hf", cases=cases, run=hf("patched", "hf-patched")),
        dict(id="hf-patched-eps1e-12", names="hf", cases=f64c, evidence=True,
             run=hf("patched", "hf-patched-eps1e-12", eps=1e-12)),
        dict(id="hf-patched-eager", names="hf", cases=f64c, evidence=True,
             run=hf("patched", "hf-patched-eager", attn="eager")),
        dict(id="timm", names="timm", cases=cases, run=lambda c, out: timm_peer.run_case(c, out)),
        dict(id="timm-norm", names="timm", cases=["var-final-norm", "var-final-norm-f64"], evidence=True,
             run=lambda c, out: timm_peer.run_case(c, out, norm=True)),
        dict(id="onnx-torchscript", names=None, cases=ONNX_CASES, as_f32=True,
             run=lambda c, out: onnx_peer.export_and_run(c, out, dynamo=False)),
        dict(id="onnx-dynamo", names=None, cases=ONNX_CASES, as_f32=True,
             run=lambda c, out: onnx_peer.export_and_run(c, out, dynamo=True)),
        dict(id="ours-ref", names=None, cases=cases, ours="ref"),
    ]


@contextlib.contextmanager
def fd_redirect(f):
    """Also send fd 1/2 (C++ and exporter dumps) to the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for s in saved:
            os.close(s)


def binary():
    b = os.environ.get("BEIT_SEG", os.path.join(ROOT, "target", "release", "beit-seg"))
    if not os.path.exists(b):
        return None, False, False
    h = subprocess.run([b, "verify", "--help"], capture_output=True, text=True)
    text = h.stdout + h.stderr
    return b, "--candidate" in text, "--save-outputs" in text


def sh(cmd, log, env=None):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--keep", help="keep the work dir here instead of a temp dir")
    ap.add_argument("--only", nargs="*", help="peer ids (development; the doc then lists only these)")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="beit-peers-")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "run.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    import torch
    torch.set_num_threads(1)
    b, has_candidate, has_save = binary()
    cases = seg_cases()
    results = []
    t_all = time.time()
    try:
        for p in peers(cases):
            if args.only and p["id"] not in args.only:
                continue
            cand, meta = os.path.join(work, "cand", p["id"]), os.path.join(work, "meta", p["id"])
            t0 = time.time()
            if p.get("ours"):
                if not has_save:
                    results.append(dict(peer=p, skipped="beit-seg binary without verify --save-outputs"))
                    continue
                sh([b, "verify", "--backend", p["ours"], "--save-outputs", cand, "--quiet"]
                   + [os.path.join("fixtures", c) for c in p["cases"]], log, env)
                ran = [c for c in p["cases"] if os.path.isdir(os.path.join(cand, c))]
            else:
                with open(log, "a") as f, fd_redirect(f), contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    for c in p["cases"]:
                        try:
                            m = p["run"](c, cand)
                        except Exception as e:  # an adapter crash is a result, recorded per case
                            shutil.rmtree(os.path.join(cand, c), ignore_errors=True)
                            m = {"peer": p["id"], "case": c, "ran": False, "limits": [],
                                 "notes": [f"adapter failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"]}
                        peers_doc.common.write_meta(os.path.join(meta, c + ".json"), m)
                ran = [c for c in p["cases"] if os.path.isdir(os.path.join(cand, c))]
            jpath = os.path.join(work, "json", p["id"] + ".json")
            os.makedirs(os.path.dirname(jpath), exist_ok=True)
            dirs = [os.path.join("fixtures", c) for c in ran]
            comparator = "none"
            if dirs:
                groups = [(dirs, False)]
                if p.get("as_f32"):
                    groups = [([d for d in dirs if not d.endswith("-f64")], False),
                              ([d for d in dirs if d.endswith("-f64")], True)]
                reps = []
                for k, (ds, as_f32) in enumerate(groups):
                    if not ds:
                        continue
                    part = f"{jpath}.{k}"
                    if has_candidate:
                        comparator = "beit-seg verify --candidate"
                        cmd = [b, "verify", "--candidate", cand, "--allow-uncovered", "--json", part, "--quiet"]
                        if p["names"]:  # the built-in maps (compiled from src/conformance/names/*.json)
                            nm = p["names"]
                            if os.environ.get("PEERS_NAMES_FROM_FILES"):  # a binary built before the maps
                                nm = os.path.join(ROOT, "src", "conformance", "names", nm + ".json")
                            cmd += ["--names", nm]
                    else:
                        comparator = "scripts/peers/pycompare.py (fallback: this binary has no verify --candidate)"
                        nm = os.path.join(ROOT, "src", "conformance", "names", p["names"] + ".json") if p["names"] else None
                        cr = [pycompare.compare_case(os.path.join(ROOT, d), os.path.join(cand, os.path.basename(d)),
                                                     nm, as_f32) for d in ds]
                        json.dump({"cases": cr}, open(part, "w"))
                        cmd = None
                    if cmd is not None:
                        if as_f32:
                            cmd.append("--as-f32")
                        sh(cmd + ds, log, env)
                    if os.path.exists(part):
                        reps += json.load(open(part)).get("cases", [])
                json.dump({"cases": reps}, open(jpath, "w"))
            metas = {}
            for c in p["cases"]:
                mp = os.path.join(meta, c + ".json")
                if os.path.exists(mp):
                    metas[c] = json.load(open(mp))
            results.append(dict(peer=p, json=json.load(open(jpath)) if os.path.exists(jpath) else {"cases": []},
                                meta=metas, cand=cand, comparator=comparator, seconds=time.time() - t0))
            print(f"{p['id']}: {len(ran)}/{len(p['cases'])} cases run, {time.time() - t0:.0f}s", flush=True)
        text = peers_doc.render(results, cases, work)
        target = os.path.join(ROOT, "docs", "peers.md")
        if args.check:
            new = os.path.join(work, "peers.md")
            open(new, "w").write(text)
            problems = peers_doc.compare_docs(open(target).read(), text)
            if problems:
                print("docs/peers.md differs from a fresh run:\n  " + "\n  ".join(problems[:40]))
                print(f"(fresh copy: {new}; work dir kept)")
                args.keep = args.keep or work
                return 1
            print(f"docs/peers.md matches a fresh run ({time.time() - t_all:.0f}s)")
        else:
            open(target, "w").write(text)
            print(f"wrote {target} ({time.time() - t_all:.0f}s)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
