#!/usr/bin/env bash
# Creates (or reuses) the Python venv that runs fixtures/generate.py and, for the `tch`
# feature, provides libtorch (torch==2.11.0 from PyPI). The venv lives under
# ~/.cache/beit-seg/, keyed by a hash of fixtures/requirements.txt, so CI on a clean clone
# reuses it when the pins have not changed. Prints the venv path on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
req="$here/fixtures/requirements.txt"
key="$(sha256sum "$req" | cut -c1-12)"
venv="${BEIT_SEG_VENV:-$HOME/.cache/beit-seg/venv-$key}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "creating Python venv $venv (torch is ~4.7 GB with its CUDA wheels; ~6 min)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
