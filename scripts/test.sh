#!/usr/bin/env bash
# The whole test suite (README "Set-up", command 2; CI runs it through .ci/run).
#  1. cargo test: unit tests, per-module and whole-model conformance against every bundled
#     MMSegmentation fixture (fp32 and float64 twins), property tests.
#  2. the benchmarks compile (they are run on demand, never timed in tests).
#  3. fixtures/generate.py --check: MMSegmentation 1.2.2 (pinned venv under ~/.cache/beit-seg,
#     created on first use, ~6 min) regenerates every fixture and must reproduce the committed
#     files; then fixtures/sweep.py writes unseen MMSegmentation cases that verify must
#     pass. Set BEIT_SEG_SKIP_PY=1 to skip this step on a machine without network.
#  4. the libtorch backend (--features tch) against every bundled case, and its differential tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Exact JPEG decoding (OpenCV's libjpeg-turbo) for the pipeline cases: the system libturbojpeg.
features=(--features jpeg-turbo)
if ! pkg-config --exists libturbojpeg 2>/dev/null; then
  echo "installing libturbojpeg0-dev (exact JPEG decoding for the pipeline cases)" >&2
  if ! { apt-get update -qq && apt-get install -y -qq libturbojpeg0-dev pkg-config; } >&2; then
    echo "WARNING: could not install libturbojpeg0-dev: pipeline cases will be SKIPPED" >&2
    features=()
  fi
fi
cargo test --release --no-fail-fast "${features[@]}"
cargo bench --no-run --quiet "${features[@]}"
if [ "${BEIT_SEG_SKIP_PY:-0}" != "1" ]; then
  venv="$(scripts/setup-venv.sh)"
  "$venv/bin/python" fixtures/generate.py --check
  # our .pth/.safetensors/.npz writers, read back by torch.load(weights_only=True) and numpy
  cargo build --release --quiet "${features[@]}"
  "$venv/bin/python" fixtures/gen_checkpoint.py --check-writer "${CARGO_TARGET_DIR:-target}/release/beit-seg"
  # cases that are not bundled (other sizes, heads, depths, batch 3, slide, head variants)
  sweep="$(mktemp -d)"
  trap 'rm -rf "$sweep"' EXIT
  "$venv/bin/python" fixtures/sweep.py --out "$sweep/cases"
  cargo run --release --quiet "${features[@]}" -- verify --quiet "$sweep/cases"
fi
# 4. the libtorch fast path (feature tch, torch 2.11.0 from the venv, its own target dir; the
#    first build takes ~5 min). BEIT_SEG_SKIP_TCH=1 skips it.
if [ "${BEIT_SEG_SKIP_TCH:-0}" != "1" ] && [ "${BEIT_SEG_SKIP_PY:-0}" != "1" ]; then
  LIBTORCH_USE_PYTORCH=1 PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="${BEIT_SEG_TCH_TARGET:-target/tch}" \
    cargo test --release --features tch "${features[@]}" --test fast
  LIBTORCH_USE_PYTORCH=1 PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="${BEIT_SEG_TCH_TARGET:-target/tch}" \
    cargo run --release --quiet --features tch "${features[@]}" -- verify --quiet --backend tch --device cpu fixtures/
fi

