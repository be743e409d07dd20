#!/usr/bin/env python3
"""Development comparator (the fixture-format comparison rule, in numpy): candidate dir vs a case.

    python scripts/peers/pycompare.py CASE_DIR CAND_DIR [--names MAP.json]

Only for developing adapters before `beit-seg verify --candidate` exists; run.sh uses the binary.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import beit_seg_capture as bc  # noqa: E402


def compare(case_dir, cand_dir, names=None):
    case = json.load(open(os.path.join(case_dir, "case.json")))
    tol = case.get("tolerance", {"rtol": 1e-4, "atol": 1e-4})
    raw = {f[:-4]: np.load(os.path.join(cand_dir, f)) for f in sorted(os.listdir(cand_dir)) if f.endswith(".npy")}
    shapes = bc.expected_shapes(case_dir, case)
    got, _ = bc.apply_names(raw, bc.load_names(names), shapes) if names else (raw, [])
    rows = []
    for name, rel in case["outputs"].items():
        e = np.load(os.path.join(case_dir, rel))
        t = case.get("tolerances", {}).get(name, tol)
        if name not in got:
            rows.append((name, "NOT COVERED", None, None))
            continue
        g = got[name]
        if g.shape != e.shape:
            rows.append((name, f"FAIL shape {g.shape} vs {e.shape}", None, None))
            continue
        if e.dtype.kind in "iu":
            rows.append((name, "ok" if np.array_equal(g, e) else f"FAIL {int((g != e).sum())} labels differ", None, None))
            continue
        d = np.abs(g.astype(np.float64) - e)
        ok = bool((d <= t["atol"] + t["rtol"] * np.abs(e)).all())
        rel_err = (d / np.maximum(np.abs(e), 1e-300)).max()
        rows.append((name, "ok" if ok else "FAIL", float(d.max()), float(rel_err)))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("cand")
    ap.add_argument("--names")
    ap.add_argument("--failures", action="store_true")
    a = ap.parse_args()
    for name, st, ma, mr in compare(a.case, a.cand, a.names):
        if a.failures and st == "ok":
            continue
        print(f"{name:45s} {st:12s} {'' if ma is None else f'{ma:.2e} {mr:.2e}'}")
