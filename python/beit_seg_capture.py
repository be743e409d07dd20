#!/usr/bin/env python3
"""Capture the tensors of any PyTorch port of BEiT + UPerNet for `beit-seg verify --candidate`.

Dependencies: torch and numpy only. Given an `nn.Module`, a fixture case directory
(`case.json`, `inputs.npy`, see docs/fixture-format.md) and optionally a name map
(`beit-seg-names/1`, see docs/validating.md), it

1. loads the case's `inputs.npy` (and runs the module in the case's dtype, or `--dtype`),
2. registers a forward hook on every entry of `module.named_modules()` (outputs are *cloned*:
   ports with in-place activations would otherwise overwrite a captured BN output) and a forward
   pre-hook for every `NAME@input` the map mentions or `--inputs-of NAME` asks for,
3. runs the forward (`module(x)`, or a user callable `forward(module, x)`),
4. writes the candidate directory: `OUT/<name>.npy` with the raw capture names
   (`<module>`, `<module>.<k>` for tuple/list outputs, `<module>.<field>` for dict/ModelOutput
   outputs, `<module>@input[.<k>]`), or with `--apply-map` the fixture names after the map.

Library use::

    from beit_seg_capture import capture_case
    tensors = capture_case(model, "fixtures/tiny-whole", out="/tmp/cand")

CLI::

    python python/beit_seg_capture.py --case fixtures/tiny-whole --model my_port:build \\
        --weights W --out /tmp/cand [--names MAP.json [--apply-map]] [--dtype float64]

`my_port:build` is `module:function` (module importable from the current directory or
`--path`); the function is called with the keyword arguments it accepts among `case_dir`,
`case` (the parsed case.json), `weights` (the `--weights` value) and returns the `nn.Module`.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
from collections import OrderedDict

import numpy as np

try:  # torch is needed for capture, not for the name-map functions.
    import torch
except ImportError:  # pragma: no cover
    torch = None

NAMES_FORMAT = "beit-seg-names/1"


# ----------------------------------------------------------------------------------------------
# Case files
# ----------------------------------------------------------------------------------------------

def load_case(case_dir):
    """Return (case.json dict, inputs ndarray) of a fixture case directory."""
    with open(os.path.join(case_dir, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    inputs = case.get("inputs", {}).get("inputs")
    if inputs is None:
        raise ValueError(f"{case_dir}/case.json: no inputs.inputs (kind {case.get('kind')!r})")
    return case, np.load(os.path.join(case_dir, inputs))


def expected_shapes(case_dir, case=None):
    """Shapes of the case's expected outputs, read from the .npy headers only."""
    if case is None:
        with open(os.path.join(case_dir, "case.json"), encoding="utf-8") as f:
            case = json.load(f)
    shapes = OrderedDict()
    for name, rel in case.get("outputs", {}).items():
        shapes[name] = tuple(np.load(os.path.join(case_dir, rel), mmap_mode="r").shape)
    return shapes


# ----------------------------------------------------------------------------------------------
# Name maps (the contract's rule language, same semantics as the Rust side)
# ----------------------------------------------------------------------------------------------

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(\d+))?\}")


def _compile(pattern):
    """Pattern -> (regex, [(var, offset)]); `{v+N}` matches m and binds v = m - N."""
    out, groups, pos = [], [], 0
    for m in _VAR.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(r"(\d+)")
        off = int(m.group(3) or 0) * (1 if m.group(2) == "+" else -1)
        groups.append((m.group(1), off))
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z"), groups


def _fill(pattern, env):
    def sub(m):
        off = int(m.group(3) or 0) * (1 if m.group(2) == "+" else -1)
        return str(env[m.group(1)] + off)
    return _VAR.sub(sub, pattern)


def load_names(path_or_dict):
    """Load and check a `beit-seg-names/1` map (a path or an already parsed dict)."""
    if isinstance(path_or_dict, dict):
        names = path_or_dict
    else:
        with open(path_or_dict, encoding="utf-8") as f:
            names = json.load(f)
    if names.get("format") != NAMES_FORMAT:
        raise ValueError(f"name map: format {names.get('format')!r}, expected {NAMES_FORMAT!r}")
    rules = []
    for r in names.get("rules", []):
        rx, groups = _compile(r["candidate"])
        rules.append((rx, groups, r))
    return rules


def map_name(rules, name):
    """Return (fixture name or None to drop, transform list, rule) for a candidate name.

    A name no rule matches keeps its own name (rule None)."""
    for rx, groups, r in rules:
        m = rx.match(name)
        if not m:
            continue
        env, ok = {}, True
        for (var, off), val in zip(groups, m.groups()):
            v = int(val) - off
            if v < 0 or (var in env and env[var] != v):
                ok = False
                break
            env[var] = v
        if not ok:
            continue
        fx = r.get("fixture")
        return (None if fx is None else _fill(fx, env)), r.get("transform", []), r
    return name, [], None


def apply_transform(arr, ops, expected_shape=None):
    """Apply the map's layout ops in order (see docs/validating.md)."""
    a = np.asarray(arr)
    for op in ops:
        kind = op["op"]
        if kind == "permute":
            a = np.transpose(a, op["axes"])
        elif kind == "nhwc_to_nchw":
            a = np.transpose(a, (0, 3, 1, 2))
        elif kind == "drop_cls":
            a = a[:, 1:]
        elif kind == "tokens_to_nchw":
            if expected_shape is None or len(expected_shape) != 4:
                raise ValueError("tokens_to_nchw needs a 4-D expected tensor")
            b, n, c = a.shape
            h, w = expected_shape[2], expected_shape[3]
            if n != h * w:
                raise ValueError(f"tokens_to_nchw: {n} tokens, expected {h}x{w}")
            a = np.transpose(a, (0, 2, 1)).reshape(b, c, h, w)
        elif kind == "reshape":
            a = a.reshape(op["shape"])
        elif kind == "squeeze":
            a = np.squeeze(a, axis=op["axis"])
        elif kind == "unsqueeze":
            a = np.expand_dims(a, axis=op["axis"])
        elif kind == "scale":
            a = a * op["factor"]
        else:
            raise ValueError(f"unknown transform op {kind!r}")
    return np.ascontiguousarray(a)


def apply_names(tensors, rules, shapes=None):
    """Map raw capture names to fixture names; returns (mapped, dropped names).

    Two candidate tensors mapping to one fixture name is an error naming both."""
    shapes = shapes or {}
    out, src, dropped = OrderedDict(), {}, []
    for name, arr in tensors.items():
        fx, ops, _ = map_name(rules, name)
        if fx is None:
            dropped.append(name)
            continue
        if fx in out:
            raise ValueError(f"name map: {src[fx]!r} and {name!r} both map to {fx!r}")
        out[fx] = apply_transform(arr, ops, shapes.get(fx))
        src[fx] = name
    return out, dropped


def inputs_wanted(rules):
    """Module names whose `@input` the map mentions (a literal prefix of the rule, or a pattern)."""
    return [rx for rx, _, r in rules if "@input" in r["candidate"]]


# ----------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------

def _flatten(name, obj, out):
    """Tensors of a module output: tensor, tuple/list (`.k`), dict/ModelOutput (`.field`)."""
    if torch is not None and isinstance(obj, torch.Tensor):
        out[name] = obj.detach().clone().cpu()
    elif isinstance(obj, (tuple, list)):
        for k, v in enumerate(obj):
            _flatten(f"{name}.{k}", v, out)
    elif isinstance(obj, dict):  # ModelOutput is an OrderedDict of its non-None fields
        for k, v in obj.items():
            _flatten(f"{name}.{k}", v, out)


class Capture:
    """Forward hooks (outputs) and pre-hooks (`@input`) on a module tree; clones every tensor."""

    def __init__(self, module, inputs_of=(), input_patterns=(), skip=None, include_root=False):
        self.tensors = OrderedDict()
        self.calls = {}
        self.handles = []
        inputs_of = set(inputs_of)
        for name, mod in module.named_modules():
            if name == "" and not include_root:
                continue
            if skip is not None and skip(name, mod):
                continue
            self.handles.append(mod.register_forward_hook(self._hook(name)))
            want_in = name in inputs_of or any(rx.match(f"{name}@input") or rx.match(f"{name}@input.0")
                                              for rx in input_patterns)
            if want_in:
                self.handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))

    def _hook(self, name):
        def hook(_mod, _inp, out):
            self.calls[name] = self.calls.get(name, 0) + 1
            _flatten(name or "output", out, self.tensors)
        return hook

    def _pre_hook(self, name):
        def hook(_mod, inp):
            if inp:
                _flatten(f"{name}@input", inp[0], self.tensors)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def repeated(self):
        """Modules whose hook fired more than once (the last call's output is kept)."""
        return {k: v for k, v in self.calls.items() if v > 1}


def _torch_dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


def capture_case(module, case_dir, names=None, apply_map=False, out=None, dtype="case",
                 inputs_of=(), forward=None, skip=None, quiet=True):
    """Run `module` on the case's inputs with hooks; return {name: ndarray} (and write `out`).

    names: a map path/dict (`beit-seg-names/1`) or None; it decides the `@input` pre-hooks and,
    with apply_map=True, the written names. dtype: "case" (the case's dtype), "float32" or
    "float64". forward: callable(module, x) -> anything, default `module(x)`."""
    case, inputs = load_case(case_dir)
    run_dtype = case.get("dtype", "float32") if dtype == "case" else dtype
    tdt = _torch_dtype(run_dtype)
    rules = load_names(names) if names is not None else []
    module = module.to(tdt).eval()
    x = torch.from_numpy(np.ascontiguousarray(inputs)).to(tdt)
    cap = Capture(module, inputs_of=inputs_of, input_patterns=inputs_wanted(rules), skip=skip)
    try:
        with torch.no_grad():
            (forward or (lambda m, t: m(t)))(module, x)
    finally:
        cap.remove()
    tensors = OrderedDict((k, v.numpy()) for k, v in cap.tensors.items())
    if not quiet and cap.repeated():
        print(f"note: hooks fired more than once (last kept): {cap.repeated()}", file=sys.stderr)
    if apply_map and rules:
        tensors, _ = apply_names(tensors, rules, expected_shapes(case_dir, case))
    if out is not None:
        write_candidate(tensors, out)
    return tensors


def write_candidate(tensors, out):
    """Write `out/<name>.npy` per tensor (the candidate layout of `verify --candidate`)."""
    os.makedirs(out, exist_ok=True)
    for name, arr in tensors.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"tensor name {name!r} cannot be a file stem")
        np.save(os.path.join(out, f"{name}.npy"), np.ascontiguousarray(arr))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def _load_callable(spec, paths):
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    mod_name, _, fn = spec.partition(":")
    if not fn:
        raise SystemExit(f"--model/--forward {spec!r}: expected module:function")
    return getattr(importlib.import_module(mod_name), fn)


def _call_builder(fn, **avail):
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**avail)
    return fn(**{k: v for k, v in avail.items() if k in params})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, help="fixture case directory (case.json, inputs.npy)")
    ap.add_argument("--model", required=True, help="module:function returning the nn.Module")
    ap.add_argument("--weights", help="passed to the builder as weights=")
    ap.add_argument("--out", required=True, help="candidate directory to write")
    ap.add_argument("--names", help="name map JSON (beit-seg-names/1): decides @input pre-hooks")
    ap.add_argument("--apply-map", action="store_true", help="write fixture names instead of raw names")
    ap.add_argument("--dtype", default="case", choices=["case", "float32", "float64"])
    ap.add_argument("--inputs-of", action="append", default=[], metavar="MODULE",
                    help="also capture MODULE@input (repeatable)")
    ap.add_argument("--forward", help="module:function(module, x) to run instead of module(x)")
    ap.add_argument("--path", action="append", default=["."], help="added to sys.path (repeatable)")
    args = ap.parse_args(argv)
    if torch is None:
        raise SystemExit("beit_seg_capture: torch is not importable")
    with open(os.path.join(args.case, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    build = _load_callable(args.model, args.path)
    module = _call_builder(build, case_dir=args.case, case=case, weights=args.weights)
    fwd = _load_callable(args.forward, args.path) if args.forward else None
    tensors = capture_case(module, args.case, names=args.names, apply_map=args.apply_map,
                           out=args.out, dtype=args.dtype, inputs_of=args.inputs_of, forward=fwd,
                           quiet=False)
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
