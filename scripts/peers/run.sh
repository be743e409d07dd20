#!/usr/bin/env bash
# Run every peer (HF transformers, timm, ONNX Runtime, our ref backend) on the bundled cases through
# `beit-seg verify --candidate` and regenerate docs/peers.md; `--check` compares with the committed file.
#   scripts/peers/run.sh [--check] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
V=${VENV:-$(scripts/setup-venv.sh 2>/dev/null || echo /root/.cache/beit-seg/venv-70b7f753fd52)}
exec env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$V/bin/python" scripts/peers/run.py "$@"
