#!/usr/bin/env python3
"""Capture the tensors of any PyTorch port of BEiT + UPerNet for `beit-seg verify --candidate`.

Dependencies: numpy, and torch for capturing (the name-map functions need numpy only). Given an
`nn.Module`, a fixture case directory (`case.json`, `inputs.npy`, see docs/fixture-format.md) and
optionally a name map (`beit-seg-names/1`, see docs/validating.md), it

1. loads the case's `inputs.npy`, converts the module to the case's dtype (or `--dtype`) and puts
   it in eval mode, in place (`.to()`/`.eval()` are called for their effect only: OpenMMLab
   backbones override `train()` without returning the module),
2. registers a forward hook on every entry of `module.named_modules()` but the root (outputs are
   *cloned*: ports with in-place activations would otherwise overwrite a captured BN output) and
   a forward pre-hook for every `NAME@input` the map mentions or `--inputs-of NAME` asks for,
3. runs the forward (`module(x)`, or a user callable `forward(module, x)`),
4. writes the candidate directory: `OUT/<name>.npy` with the raw capture names
   (`<module>`, `<module>.<k>` for tuple/list outputs, `<module>.<field>` for dict/ModelOutput
   outputs, `<module>@input[.<k>]`), or with `--apply-map` the fixture names after the map,
5. says what it did: which modules it hooked, how many tensors it wrote, and which of the case's
   expected names (case.json `outputs`) are present and which are missing (after the map when
   `--names` is given), e.g. on stderr
   `hooked 57 modules + root output as `backbone`; wrote 61 tensors to /tmp/cand;
   50/129 expected names present; missing (first 10 of 79): neck.upsample_4x.0, ...`.

`--root-name NAME` (`root_name=`) also writes the root module's own output, i.e. the value the
forward returns, as `NAME` / `NAME.<k>` / `NAME.<field>`, and names every module `NAME.<module>`:
a bare backbone captured with `--root-name backbone` writes `backbone.0` .. `backbone.3` and
`backbone.layers.0.ln1`, the fixture names. Without it the root's output is not written.

Install (optional; the file also runs as is): `pip install ./python` gives the importable module
`beit_seg_capture` and the command `beit-seg-capture` (numpy is the declared dependency; install
torch yourself, or `pip install './python[torch]'`).

Library use::

    from beit_seg_capture import capture_case
    tensors = capture_case(model, "fixtures/tiny-whole", out="/tmp/cand")   # {name: ndarray}
    print(tensors.summary.line())       # CaptureSummary: hooked, written, present, missing, ...
    capture_case(backbone, "fixtures/tiny-whole", out="/tmp/cand", root_name="backbone")

CLI::

    beit-seg-capture --case fixtures/tiny-whole --model my_port:build \\
        --weights W --out /tmp/cand [--names MAP.json [--apply-map]] [--dtype float64] \\
        [--root-name backbone] [--inputs-of MODULE] [--forward my_port:fwd] [-v]
    # or: python python/beit_seg_capture.py ... (same arguments)

`my_port:build` is `module:function` (module importable from the current directory or
`--path`); the function is called with the keyword arguments it accepts among `case_dir`,
`case` (the parsed case.json) and `weights` (the `--weights` value), and returns the `nn.Module`.
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
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

try:  # torch is needed for capture, not for the name-map functions.
    import torch
except ImportError:  # pragma: no cover
    torch = None

NAMES_FORMAT = "beit-seg-names/1"

_EPILOG = """\
--root-name NAME: the root module's output (the --forward return value) is written as NAME,
NAME.k (tuple/list) or NAME.field (dict), and module names become NAME.<module>: a bare
MMSegmentation-style backbone with --root-name backbone writes backbone.0..3,
backbone.layers.0.ln1, ... (the fixture names). Without it the root output is not written.

After the capture a summary goes to stderr: the number of hooked modules and written
tensors, and how many of the case's expected names (case.json outputs) are present (after
the --names map if given), with the first missing ones; -v lists every name.

Install: pip install ./python (numpy is the declared dependency; torch is needed to capture:
pip install './python[torch]' or bring your own) gives this command and the importable
module beit_seg_capture. Name maps: beit-seg-names/1, see docs/validating.md; {i}, {i+1}
match integers, {*rest} matches whole dotted segments (vit.{*rest} -> backbone.{*rest})."""


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

class _Pattern:
    """A parsed name pattern: literal text, integer variables `{v}` / `{v+N}` / `{v-N}` and string
    variables `{*v}` (the grammar of src/conformance/names.rs)."""

    __slots__ = ("text", "pieces")

    def __init__(self, text):
        self.text = text
        self.pieces = _parse_pattern(text)

    def variables(self):
        """{name: "int" | "str"} of the pattern's variables (a name used as both is an error)."""
        out = {}
        for p in self.pieces:
            if p[0] != "lit":
                if out.get(p[1], p[0]) != p[0]:
                    raise ValueError(f"pattern `{self.text}`: `{p[1]}` is both an integer and a string variable")
                out[p[1]] = p[0]
        return out

    def match(self, name):
        """The variables bound by matching all of `name` ({var: int or str}), or None."""
        return _match(self.pieces, name)

    def fill(self, env):
        return _fill(self.pieces, env)

    def __repr__(self):
        return f"_Pattern({self.text!r})"


_VAR_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
_OFFSET = re.compile(r"[+-]?[0-9]+\Z")
_DIGITS = frozenset("0123456789")


def _parse_pattern(p):
    """Pattern text -> pieces: ("lit", text) | ("int", var, offset) | ("str", var, 0)."""
    out, rest = [], p
    while "{" in rest:
        open_ = rest.index("{")
        if open_ > 0:
            out.append(("lit", rest[:open_]))
        close = rest.find("}", open_)
        if close < 0:
            raise ValueError(f"pattern `{p}`: unclosed `{{`")
        inner = rest[open_ + 1:close]
        if inner.startswith("*"):
            kind, name, offset = "str", inner[1:], 0
            if not _VAR_NAME.match(name):
                raise ValueError(f"pattern `{p}`: bad string variable `{{{inner}}}` (`{{*NAME}}`, NAME "
                                 f"of letters, digits and `_`, no offset)")
        else:
            i = min((k for k in (inner.find("+"), inner.find("-")) if k >= 0), default=-1)
            if i >= 0:
                if not _OFFSET.match(inner[i + 1:]):
                    raise ValueError(f"pattern `{p}`: bad offset in `{{{inner}}}`")
                n = int(inner[i + 1:])
                kind, name, offset = "int", inner[:i], (-n if inner[i] == "-" else n)
            else:
                kind, name, offset = "int", inner, 0
            if not _VAR_NAME.match(name):
                raise ValueError(f"pattern `{p}`: bad variable `{{{inner}}}`")
        if out and out[-1][0] != "lit":
            raise ValueError(f"pattern `{p}`: two variables without text between them")
        out.append((kind, name, offset))
        rest = rest[close + 1:]
    if rest:
        out.append(("lit", rest))
    return out


def _dotted_run(t):
    """A non-empty run of whole dotted segments: no `@`, not starting or ending with `.`."""
    return bool(t) and "@" not in t and t[0] != "." and t[-1] != "."


def _match(pieces, name):
    """Match all of `name`; returns the bindings {var: int | str} or None.

    `{v+N}` takes every ASCII digit at that point (at most 18; no backtracking into fewer digits)
    and binds v = m - N (v >= 0). `{*v}` takes a run of whole dotted segments: greedy, longest
    first, with backtracking; the text before it is empty or ends with `.`, the text after it is
    empty or starts with `.` or `@`; when `{*v}` ends the pattern it also takes a trailing
    `@...` suffix of the name (`a.b@input.0`), so `vit.{*rest}` maps `@input` names too. A
    variable used twice must bind the same value both times."""
    env = {}
    n = len(name)

    def rec(i, pos):
        if i == len(pieces):
            return pos == n
        piece = pieces[i]
        kind = piece[0]
        if kind == "lit":
            lit = piece[1]
            return name.startswith(lit, pos) and rec(i + 1, pos + len(lit))
        var = piece[1]
        if kind == "int":
            j = pos
            while j < n and name[j] in _DIGITS:
                j += 1
            if j == pos or j - pos > 18:
                return False
            v = int(name[pos:j]) - piece[2]
            if v < 0 or (var in env and env[var] != v):
                return False
            fresh = var not in env
            env[var] = v
            if rec(i + 1, j):
                return True
            if fresh:
                del env[var]
            return False
        # string variable
        if pos > 0 and name[pos - 1] != ".":
            return False
        if i == len(pieces) - 1:  # last piece: the rest of the name, `@` suffix included
            t = name[pos:]
            head = t.split("@", 1)[0]
            if not _dotted_run(head) or (var in env and env[var] != t):
                return False
            env[var] = t
            return True
        at = name.find("@", pos)
        end = n if at < 0 else at
        while end > pos:
            t = name[pos:end]
            if _dotted_run(t) and (end == n or name[end] in ".@") and env.get(var, t) == t:
                fresh = var not in env
                env[var] = t
                if rec(i + 1, end):
                    return True
                if fresh:
                    del env[var]
            end -= 1
        return False

    return env if rec(0, 0) else None


def _fill(pieces, env):
    """Fill a (fixture) pattern: `{v+N}` writes env[v] + N, `{*v}` writes env[v] verbatim."""
    out = []
    for p in pieces:
        if p[0] == "lit":
            out.append(p[1])
        elif p[1] not in env:
            raise ValueError(f"variable `{p[1]}` is not bound by the candidate pattern")
        elif p[0] == "int":
            out.append(str(env[p[1]] + p[2]))
        else:
            out.append(env[p[1]])
    return "".join(out)


def load_names(path_or_dict):
    """Load and check a `beit-seg-names/1` map (a path or an already parsed dict).

    Returns the rules as [(candidate _Pattern, fixture _Pattern or None, rule dict)]. Errors
    (ValueError): wrong format, a bad pattern, a fixture variable the candidate pattern does not
    bind, a name used as an integer and as a string variable."""
    if isinstance(path_or_dict, dict):
        names, src = path_or_dict, "<dict>"
    else:
        src = str(path_or_dict)
        with open(path_or_dict, encoding="utf-8") as f:
            names = json.load(f)
    if names.get("format") != NAMES_FORMAT:
        raise ValueError(f"name map: format {names.get('format')!r}, expected {NAMES_FORMAT!r}")
    rules = []
    for i, r in enumerate(names.get("rules", [])):
        try:
            cand = _Pattern(r["candidate"])
            cvars = cand.variables()
            fx = None if r.get("fixture") is None else _Pattern(r["fixture"])
            if fx is not None:
                for var, kind in fx.variables().items():
                    if var not in cvars:
                        raise ValueError(f"`{{{'*' if kind == 'str' else ''}{var}}}` in `fixture` is not "
                                         f"in `candidate`")
                    if cvars[var] != kind:
                        raise ValueError(f"`{var}` is an integer variable in one pattern and a string "
                                         f"variable in the other")
        except ValueError as e:
            raise ValueError(f"name map {src}: rules[{i}]: {e}") from None
        rules.append((cand, fx, r))
    return rules


def map_name(rules, name):
    """Return (fixture name or None to drop, transform list, rule) for a candidate name.

    First matching rule wins; a name no rule matches keeps its own name (rule None)."""
    for cand, fx, r in rules:
        env = cand.match(name)
        if env is None:
            continue
        return (None if fx is None else fx.fill(env)), r.get("transform", []), r
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
    """Candidate patterns of the map's rules that mention `@input` (they decide the pre-hooks)."""
    return [cand for cand, _, r in rules if "@input" in r["candidate"]]


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
    """Forward hooks (outputs) and pre-hooks (`@input`) on a module tree; clones every tensor.

    Tensors are named after `named_modules()`; with `root_name` every child name is prefixed
    `ROOT.` (`layers.0.ln1` -> `backbone.layers.0.ln1`) and the root's `@input` can be asked for
    as `ROOT`. The root gets no forward hook (capture_case writes the forward's return value as
    `ROOT`), unless `include_root=True` (then its output is named `ROOT`, or `output`).
    `skip(name, module)` sees the raw `named_modules()` name. `hooked` lists the hooked modules
    by the names their tensors get."""

    def __init__(self, module, inputs_of=(), input_patterns=(), skip=None, include_root=False,
                 root_name=None):
        self.tensors = OrderedDict()
        self.calls = {}
        self.handles = []
        self.hooked = []
        self.root_name = root_name
        inputs_of = set(inputs_of)
        for name, mod in module.named_modules():
            is_root = name == ""
            if is_root and not (include_root or root_name):
                continue
            if skip is not None and skip(name, mod):
                continue
            full = self.full_name(name)
            if not is_root or include_root:
                self.handles.append(mod.register_forward_hook(self._hook(full)))
                self.hooked.append(full or "output")
            if not full:
                continue
            want_in = (name in inputs_of or full in inputs_of
                       or any(p.match(f"{full}@input") is not None or p.match(f"{full}@input.0") is not None
                              for p in input_patterns))
            if want_in:
                self.handles.append(mod.register_forward_pre_hook(self._pre_hook(full)))

    def full_name(self, name):
        """The tensor name of module `name` (a `named_modules()` name)."""
        if not self.root_name:
            return name
        return f"{self.root_name}.{name}" if name else self.root_name

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


@dataclass
class CaptureSummary:
    """What one capture did, for the porter: which modules were hooked, which tensors were
    written, and which of the case's expected names (case.json `outputs`) they cover.

    `present`/`missing`/`unexpected` are computed on the names `beit-seg verify` will compare:
    the written names, or, when a name map was given without apply_map, the names after the map
    (dropped names left out)."""

    hooked: list                  # modules with a forward hook, by tensor name (prefixed with root)
    root: Optional[str]           # root_name (the root's return value written as ROOT[.k|.field])
    written: list                 # tensor names returned (and written to `out`), in order
    expected: list                # the case's expected names (case.json `outputs`), in order
    present: list                 # expected names that a written tensor provides
    missing: list                 # expected names that no written tensor provides
    unexpected: list              # compared names that are not expected names (verify: "unused")
    mapped: bool = False          # present/missing/unexpected are after the name map
    dropped: list = field(default_factory=list)   # candidate names the map drops
    repeated: dict = field(default_factory=dict)  # module -> hook calls, when > 1 (last kept)
    notes: list = field(default_factory=list)
    out: Optional[str] = None

    def line(self, limit=10):
        """The one-line summary the CLI prints (stderr)."""
        root = f" + root output as `{self.root}`" if self.root else ""
        where = f" to {self.out}" if self.out else ""
        after = " (after the name map)" if self.mapped else ""
        s = (f"hooked {len(self.hooked)} modules{root}; wrote {len(self.written)} tensors{where}; "
             f"{len(self.present)}/{len(self.expected)} expected names present{after}")
        if self.missing:
            first = f"first {limit} of {len(self.missing)}" if len(self.missing) > limit else "all"
            s += f"; missing ({first}): " + ", ".join(self.missing[:limit])
        return s

    def format(self, limit=10, verbose=False):
        """The CLI's summary: the line, notes, and (verbose) every hooked/written/missing name."""
        lines = [self.line(limit)]
        if self.unexpected:
            first = f"first {limit} of {len(self.unexpected)}" if len(self.unexpected) > limit else "all"
            lines.append(f"{len(self.unexpected)} tensors match no expected name ({first}): "
                         + ", ".join(self.unexpected[:limit]))
        if self.expected and not self.present:
            lines.append("hint: no expected name was written: a bare backbone needs --root-name backbone, "
                         "other names need --names MAP")
        lines += [f"note: {n}" for n in self.notes]
        if verbose:
            for what, names in (("hooked", self.hooked), ("written", self.written),
                                ("missing", self.missing), ("unexpected", self.unexpected),
                                ("dropped by the map", self.dropped)):
                lines.append(f"{what} ({len(names)}): " + " ".join(names))
        return "\n".join(lines)

    def to_dict(self):
        return asdict(self)

    def __str__(self):
        return self.line()


class CaptureResult(OrderedDict):
    """capture_case's return value: {name: ndarray} (an OrderedDict, as before) with the
    capture's `CaptureSummary` as `.summary`."""

    summary = None


def _torch_dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _check_root_name(root_name):
    if root_name is None:
        return
    if (not isinstance(root_name, str) or not _dotted_run(root_name) or "/" in root_name
            or "{" in root_name):
        raise ValueError(f"root_name {root_name!r}: expected a dotted name such as `backbone`")


def summarize(case, tensors, hooked=(), root_name=None, rules=None, apply_map=False, dropped=(),
              repeated=None, notes=(), out=None):
    """Build the `CaptureSummary` of `tensors` ({name: array}) against a parsed case.json."""
    expected = list(case.get("outputs", {}))
    names = list(tensors)
    mapped = bool(rules) and not apply_map
    dropped = list(dropped)
    if mapped:
        compared = []
        for n in names:
            fx = map_name(rules, n)[0]
            if fx is None:
                dropped.append(n)
            else:
                compared.append(fx)
    else:
        compared = names
    have, exp = set(compared), set(expected)
    return CaptureSummary(
        hooked=list(hooked), root=root_name, written=names, expected=expected,
        present=[e for e in expected if e in have], missing=[e for e in expected if e not in have],
        unexpected=[c for c in compared if c not in exp], mapped=mapped, dropped=dropped,
        repeated=dict(repeated or {}), notes=list(notes), out=out)


def capture_case(module, case_dir, names=None, apply_map=False, out=None, dtype="case",
                 inputs_of=(), forward=None, skip=None, quiet=True, root_name=None):
    """Run `module` on the case's inputs with hooks; return {name: ndarray} (and write `out`).

    names: a map path/dict (`beit-seg-names/1`) or None; it decides the `@input` pre-hooks and,
    with apply_map=True, the written names. dtype: "case" (the case's dtype), "float32" or
    "float64". forward: callable(module, x) -> anything, default `module(x)`.
    root_name: also write the root's output, i.e. the value `forward` (or `module(x)`) returns,
    as `ROOT` / `ROOT.k` (tuple/list) / `ROOT.field` (dict), and prefix every module name with
    `ROOT.` (`root_name="backbone"` for a bare backbone gives fixture names). inputs_of: module
    names (as written, or raw `named_modules()` names) whose first input to capture as `@input`.

    The module is converted and put in eval mode in place (`.to()`/`.eval()` are called for their
    effect, never for their return value: OpenMMLab backbones' `train()` returns None). The
    returned `CaptureResult` is an OrderedDict of the tensors; its `.summary` is a
    `CaptureSummary` (hooked modules, written tensors, expected names present/missing)."""
    if torch is None:
        raise RuntimeError("beit_seg_capture.capture_case needs torch (pip install torch)")
    _check_root_name(root_name)
    case, inputs = load_case(case_dir)
    run_dtype = case.get("dtype", "float32") if dtype == "case" else dtype
    tdt = _torch_dtype(run_dtype)
    rules = load_names(names) if names is not None else []
    module.to(tdt)  # for effect: overrides of .to()/.eval()/.train() may return None
    module.eval()
    x = torch.from_numpy(np.ascontiguousarray(inputs)).to(tdt)
    cap = Capture(module, inputs_of=inputs_of, input_patterns=inputs_wanted(rules), skip=skip,
                  root_name=root_name)
    try:
        with torch.no_grad():
            result = (forward or (lambda m, t: m(t)))(module, x)
    finally:
        cap.remove()
    notes = []
    if root_name:
        root_out = OrderedDict()
        _flatten(root_name, result, root_out)
        if not root_out:
            notes.append(f"the root output ({type(result).__name__}) holds no tensor: nothing written as "
                         f"`{root_name}`")
        clash = [k for k in root_out if k in cap.tensors]
        if clash:
            notes.append(f"the root output replaces module tensors of the same name: {', '.join(clash)}")
        for k, v in root_out.items():
            cap.tensors.pop(k, None)
            cap.tensors[k] = v
        del result, root_out
    tensors = OrderedDict((k, v.numpy()) for k, v in cap.tensors.items())
    rep = cap.repeated()
    if rep:
        items = [f"{k} ({v}x)" for k, v in rep.items()]
        more = f", ... ({len(items)} modules)" if len(items) > 5 else ""
        notes.append("hooks fired more than once, last output kept: " + ", ".join(items[:5]) + more)
    dropped = []
    if apply_map and rules:
        tensors, dropped = apply_names(tensors, rules, expected_shapes(case_dir, case))
    if out is not None:
        write_candidate(tensors, out)
    res = CaptureResult(tensors)
    res.summary = summarize(case, tensors, hooked=cap.hooked, root_name=root_name, rules=rules,
                            apply_map=apply_map, dropped=dropped, repeated=rep, notes=notes,
                            out=out)
    if not quiet:
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    return res


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
    ap = argparse.ArgumentParser(prog="beit-seg-capture", description=__doc__.split("\n\n")[0],
                                 epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, help="fixture case directory (case.json, inputs.npy)")
    ap.add_argument("--model", required=True, help="module:function returning the nn.Module")
    ap.add_argument("--weights", help="passed to the builder as weights=")
    ap.add_argument("--out", required=True, help="candidate directory to write")
    ap.add_argument("--names", help="name map JSON (beit-seg-names/1): decides @input pre-hooks")
    ap.add_argument("--apply-map", action="store_true", help="write fixture names instead of raw names")
    ap.add_argument("--dtype", default="case", choices=["case", "float32", "float64"])
    ap.add_argument("--root-name", metavar="NAME",
                    help="also write the root module's output (the --forward return value) as NAME, "
                         "NAME.k, NAME.field, and prefix module names with NAME. "
                         "(--root-name backbone for a bare backbone)")
    ap.add_argument("--inputs-of", action="append", default=[], metavar="MODULE",
                    help="also capture MODULE@input (repeatable)")
    ap.add_argument("--forward", help="module:function(module, x) to run instead of module(x)")
    ap.add_argument("--path", action="append", default=["."], help="added to sys.path (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list every hooked module, written tensor and missing expected name")
    args = ap.parse_args(argv)
    if torch is None:
        raise SystemExit("beit-seg-capture: torch is not importable (capture needs torch; pip install torch)")
    try:
        _check_root_name(args.root_name)
    except ValueError as e:
        ap.error(str(e))
    with open(os.path.join(args.case, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    build = _load_callable(args.model, args.path)
    module = _call_builder(build, case_dir=args.case, case=case, weights=args.weights)
    if module is None:
        raise SystemExit(f"beit-seg-capture: --model {args.model} returned None, not an nn.Module")
    fwd = _load_callable(args.forward, args.path) if args.forward else None
    tensors = capture_case(module, args.case, names=args.names, apply_map=args.apply_map,
                           out=args.out, dtype=args.dtype, inputs_of=args.inputs_of, forward=fwd,
                           root_name=args.root_name)
    for ln in tensors.summary.format(verbose=args.verbose).splitlines():
        print(f"beit-seg-capture: {ln}", file=sys.stderr)
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
