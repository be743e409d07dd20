#!/usr/bin/env python3
"""Fallback comparator: the fixture-format comparison rule in numpy, candidate dir vs cases.

    python scripts/peers/pycompare.py --candidate DIR [--names MAP.json] [--as-f32] --json OUT CASE_DIR...

Used by scripts/peers/run.sh only while the beit-seg binary lacks `verify --candidate`; writes the
same JSON shape (`beit-seg-verify/1`: cases[].tensors[] with name, status, max_abs, max_rel,
violations, expected_shape). `beit-seg verify --candidate` is the authoritative implementation.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import beit_seg_capture as bc  # noqa: E402

F32_TOL = {"rtol": 1e-4, "atol": 1e-4}


def _load_dir(d):
    return {f[:-4]: np.load(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.endswith(".npy")}


def compare_case(case_dir, cand_dir, names=None, as_f32=False):
    case = json.load(open(os.path.join(case_dir, "case.json")))
    f64 = case.get("dtype", "float32") == "float64"
    tol = case.get("tolerance", F32_TOL)
    raw = _load_dir(cand_dir) if os.path.isdir(cand_dir) else {}
    shapes = bc.expected_shapes(case_dir, case)
    got, _ = bc.apply_names(raw, bc.load_names(names), shapes) if names else (raw, [])
    rows, exp = [], {}
    for name, rel in case["outputs"].items():
        exp[name] = np.load(os.path.join(case_dir, rel))
    for name, e in exp.items():
        t = case.get("tolerances", {}).get(name, tol)
        if as_f32 and f64:
            t = F32_TOL
        row = {"name": name, "expected_shape": list(e.shape), "actual_shape": None, "max_abs": None,
               "max_rel": None, "violations": 0, "numel": int(e.size), "tolerance": t}
        rows.append(row)
        if name not in got:
            row["status"] = "not_covered"
            continue
        g = got[name]
        row["actual_shape"] = list(g.shape)
        if g.shape != e.shape:
            row["status"] = "fail"
            row["note"] = f"shape {list(g.shape)}, expected {list(e.shape)}"
            continue
        if e.dtype.kind in "iu":
            diff = g != e
            ties = 0
            sl = exp.get("seg_logits")
            if sl is not None and sl.shape[0] == e.shape[0]:
                s = np.sort(sl, axis=1)
                margin = s[:, -1] - s[:, -2]
                near = margin <= 2 * (t["atol"] + t["rtol"] * np.abs(s[:, -1]))
                ties = int(near.sum())
                bad = diff & ~near
            else:
                bad = diff
            row.update(near_ties=ties, flips=int((diff & ~bad).sum()), violations=int(bad.sum()),
                       max_abs=float(diff.sum()), max_rel=0.0)
            row["status"] = "fail" if bad.any() else "pass"
            continue
        if f64 and g.dtype != np.float64 and not as_f32:
            row["status"] = "fail"
            row["note"] = "float32 candidate for a float64 case (use --as-f32)"
            continue
        d = np.abs(g.astype(np.float64) - e.astype(np.float64))
        viol = d > t["atol"] + t["rtol"] * np.abs(e)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(e != 0, d / np.abs(e), np.where(d == 0, 0.0, np.inf))
        row.update(max_abs=float(d.max()) if d.size else 0.0, max_rel=float(rel.max()) if d.size else 0.0,
                   violations=int(viol.sum()), status="fail" if viol.any() else "pass")
    failed = any(r["status"] != "pass" for r in rows if r["status"] != "not_covered")
    return {"name": case["name"], "dir": case_dir, "kind": case["kind"], "backend": "candidate",
            "dtype": case.get("dtype", "float32"),
            "run_dtype": "float32" if as_f32 else case.get("dtype", "float32"),
            "status": "fail" if failed else "pass", "tensors": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--names")
    ap.add_argument("--as-f32", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("cases", nargs="+")
    a = ap.parse_args()
    reps = []
    for c in a.cases:
        name = json.load(open(os.path.join(c, "case.json")))["name"]
        sub = os.path.join(a.candidate, name)
        reps.append(compare_case(c, sub if os.path.isdir(sub) else a.candidate, a.names, a.as_f32))
    out = {"format": "beit-seg-verify/1", "comparator": "scripts/peers/pycompare.py", "cases": reps}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    for r in reps:
        bad = [t["name"] for t in r["tensors"] if t["status"] == "fail"]
        print(f"{r['status'].upper()}  {r['name']}  first failing: {bad[0] if bad else '-'}")
    return 1 if any(r["status"] == "fail" for r in reps) else 0


if __name__ == "__main__":
    sys.exit(main())
