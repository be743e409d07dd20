#!/usr/bin/env bash
# Checks that `pip install ./python` works, offline: installs the capture helper into a throwaway
# venv made from PYTHON and runs the installed `beit-seg-capture` and `import beit_seg_capture`
# from another directory (plain install, then editable install), including one small capture of
# fixtures/tiny-whole with a module whose train() returns None and --root-name backbone.
#
#   scripts/check_capture_install.sh "$(scripts/setup-venv.sh)/bin/python"
#
# The throwaway venv is made with --system-site-packages, and a .pth file adds PYTHON's own
# site-packages (for a venv PYTHON, --system-site-packages alone only reaches the base
# interpreter's), so torch and numpy come from PYTHON with no download. pip runs with --no-index
# --no-deps --no-build-isolation: python/pyproject.toml's backend (python/_beit_seg_build.py)
# uses the standard library only (plus tomli on Python < 3.11). Exits non-zero on any failure.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 PYTHON   (the pinned venv: $0 \"\$(scripts/setup-venv.sh)/bin/python\")" >&2
  exit 2
fi
py="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
venv="$tmp/venv"

"$py" -m venv --system-site-packages --without-pip "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$py" -c 'import site, sysconfig
dirs = site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
print("\n".join(dict.fromkeys(d for d in dirs)))' > "$site/_check_capture_parent.pth"
"$venv/bin/python" -c 'import pip, numpy' || { echo "FAIL: $py has no pip or numpy" >&2; exit 1; }

pip_install() { "$venv/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation "$@"; }

# A port whose train() returns None (like MMSegmentation's BEiT) and that returns 4 feature maps.
cat > "$tmp/port.py" <<'PY'
import torch.nn as nn

class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in range(4))

    def train(self, mode=True):
        super().train(mode)

    def forward(self, x):
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)

def build():
    return Backbone()
PY

check() {  # $1: plain | editable
  mkdir -p "$tmp/elsewhere" && cd "$tmp/elsewhere"
  "$venv/bin/beit-seg-capture" --help > "$tmp/help.txt"
  grep -q -- "--root-name" "$tmp/help.txt" || { echo "FAIL ($1): --help does not mention --root-name" >&2; exit 1; }
  "$venv/bin/python" - "$1" "$here/python/beit_seg_capture.py" <<'PY'
import os, sys
import beit_seg_capture as bc
kind, src = sys.argv[1], sys.argv[2]
f = os.path.realpath(bc.__file__)
if kind == "plain":
    assert f.startswith(os.path.realpath(sys.prefix)), f"imported {f}, not the installed copy"
else:
    assert f == os.path.realpath(src), f"editable install imports {f}, not {src}"
rules = bc.load_names({"format": "beit-seg-names/1", "rules": [{"candidate": "vit.{*rest}", "fixture": "backbone.{*rest}"}]})
assert bc.map_name(rules, "vit.layers.3.ln1")[0] == "backbone.layers.3.ln1"
PY
  rm -rf "$tmp/cand"
  "$venv/bin/beit-seg-capture" --case "$here/fixtures/tiny-whole" --model port:build --path "$tmp" \
    --out "$tmp/cand" --root-name backbone > "$tmp/stdout.txt" 2> "$tmp/stderr.txt" \
    || { cat "$tmp/stderr.txt" >&2; echo "FAIL ($1): capture" >&2; exit 1; }
  for f in backbone.0 backbone.3 backbone.layers.3; do
    [ -f "$tmp/cand/$f.npy" ] || { echo "FAIL ($1): $f.npy not written" >&2; exit 1; }
  done
  grep -q "8/129 expected names present" "$tmp/stderr.txt" \
    || { cat "$tmp/stderr.txt" >&2; echo "FAIL ($1): summary" >&2; exit 1; }
  cd "$here"
  echo "ok: $1 install: beit-seg-capture --help, import beit_seg_capture, a --root-name capture"
}

list_src() { (cd "$here/python" && find . -path '*/__pycache__' -prune -o -print | LC_ALL=C sort); }
before="$(list_src)"
pip_install "$here/python"
check plain
"$venv/bin/python" -m pip uninstall -q -y beit-seg-capture
[ ! -e "$venv/bin/beit-seg-capture" ] || { echo "FAIL: uninstall left the console script" >&2; exit 1; }
pip_install -e "$here/python"
check editable
[ "$(list_src)" = "$before" ] || { echo "FAIL: the build wrote into python/:" >&2; diff <(echo "$before") <(list_src) >&2; exit 1; }
echo "ok: pip install ./python (offline, no setuptools/wheel needed)"
