#!/usr/bin/env bash
# The whole test suite (README "Set-up", command 2; CI runs it through .ci/run).
#  1. gates: cargo fmt --check; cargo clippy -D warnings (default features).
#  2. cargo test: unit tests, per-module and whole-model conformance against every bundled
#     MMSegmentation fixture (fp32 and float64 twins), candidates, bad input, property tests.
#  3. the benchmarks compile (they are run on demand, never timed in tests).
#  4. Python (pinned venv under ~/.cache/beit-seg, created on first use, ~6 min):
#     fixtures/generate.py --check (MMSegmentation regenerates every fixture and must reproduce
#     the committed files); our .pth/.safetensors/.npz writers read back by torch.load and numpy;
#     fixtures/sweep.py writes unseen MMSegmentation cases that verify must pass; the capture
#     helper's tests and `pip install ./python` into a throwaway venv; the peers (HF transformers,
#     timm, ONNX Runtime) through verify --candidate must reproduce docs/peers.md
#     (scripts/peers/run.sh --check).
#     BEIT_SEG_SKIP_PY=1 skips this step on a machine without network.
#  5. the libtorch backend (--features tch) against every bundled case, in bf16 and fp16 against
#     every half-precision twin, its differential tests, and clippy with the feature.
#     BEIT_SEG_SKIP_TCH=1 skips it.
#  6. the `blas` build (system OpenBLAS + LAPACK; apt libopenblas-dev, installed if missing)
#     against every bundled case at the same tolerances. BEIT_SEG_SKIP_BLAS=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

step "1. gates: rustfmt, clippy"
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings

step "2. cargo test"
cargo test --release --no-fail-fast

step "3. benchmarks compile"
cargo bench --no-run --quiet

if [ "${BEIT_SEG_SKIP_PY:-0}" != "1" ]; then
  venv="$(scripts/setup-venv.sh)"
  step "4. Python: fixtures regenerate, writers read back, unseen cases, peers"
  "$venv/bin/python" fixtures/generate.py --check
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/beit-seg"
  "$venv/bin/python" fixtures/gen_checkpoint.py --check-writer "$bin"
  sweep="$(mktemp -d)"
  trap 'rm -rf "$sweep"' EXIT
  "$venv/bin/python" fixtures/sweep.py --out "$sweep/cases"
  "$bin" verify --quiet "$sweep/cases"
  # The ground truth on its plain twins (textbook loops / one GEMM instead of the fast kernels).
  BEIT_SEG_PLAIN_KERNELS=1 "$bin" verify --quiet fixtures/
  "$venv/bin/python" python/tests/test_capture.py
  bash scripts/check_capture_install.sh "$venv/bin/python"
  BEIT_SEG="$bin" VENV="$venv" scripts/peers/run.sh --check
  # bench's other engines run for real (a 64² crop of BEiT-B, one iteration each, ~1 min): every
  # one is timed, none is silently left out.
  BEIT_SEG_BENCH_CACHE="$sweep/bench-onnx" "$bin" bench --backend ref --size 64 --warmup 0 --iters 1 \
      --rounds 1 --against pytorch,onnxruntime,openvino --python "$venv/bin/python" --json "$sweep/bench.json"
  "$venv/bin/python" - "$sweep/bench.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
ran = {(a['engine'], a['precision']) for r in rows for a in r['against'] if a['seconds']}
want = {('pytorch', 'fp32'), ('onnxruntime', 'fp32'), ('openvino', 'fp32')}
notes = [a['note'] for r in rows for a in r['against'] if a['note']]
assert want <= ran, f'engines that did not run: {sorted(want - ran)}: {notes}'
print('bench engines ran:', sorted(ran))
EOF
fi

if [ "${BEIT_SEG_SKIP_TCH:-0}" != "1" ] && [ "${BEIT_SEG_SKIP_PY:-0}" != "1" ]; then
  step "5. the libtorch backend (feature tch; first build ~10 min)"
  export LIBTORCH_USE_PYTORCH=1 PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="${BEIT_SEG_TCH_TARGET:-target/tch}"
  cargo test --release --features tch --test fast
  cargo run --release --quiet --features tch -- verify --quiet --backend tch --device cpu fixtures/
  # Half precision: judged on the half-precision twins against MMSegmentation's own error.
  for p in bf16 fp16; do
    cargo run --release --quiet --features tch -- verify --quiet --backend tch --precision "$p" fixtures/
  done
  cargo clippy --release --features tch --all-targets --quiet -- -D warnings
fi

# --- Rust API (appended; owned by src/conformance/{memory,port}.rs and peers/candle) ------------
#  The library from outside, as a Rust port uses it: `cargo doc` with -D warnings (the conformance
#  API denies missing docs; its doc-tests and tests/in_memory.rs, tests/from_rust.rs run in step 2),
#  and peers/candle (candle-transformers' BEiT; its own crate and Cargo.lock, beit-seg a
#  dev-dependency) through its own `cargo test`, with docs/peers.md's candle section checked against
#  the run (scripts/peers/candle.sh --check) and its generated case against MMSegmentation
#  (generate.py --check, with the venv of step 4). Cost, measured on the 2-core machine under a
#  load of 6-9: the first build of peers/candle (candle-core/nn/transformers 0.11.1 CPU-only and
#  beit-seg, release) takes 17 min (11 min CPU), so the candle tests run only when its target dir
#  is cached in ~/.cache/beit-seg/candle-target (BEIT_SEG_CANDLE_TARGET) or BEIT_SEG_CANDLE=1
#  asks for the build (which fills the cache). With the cache, a rerun after a change to beit-seg
#  takes 3 min (+1.5 min for its clippy), an unchanged one seconds, the tests ~3 s.
#  BEIT_SEG_SKIP_CANDLE=1 skips them.
step "Rust API: cargo doc -D warnings; peers/candle's own cargo test"
RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="${BEIT_SEG_DOC_TARGET:-target}" cargo doc --no-deps --quiet
if [ "${BEIT_SEG_SKIP_PY:-0}" != "1" ]; then
  "$venv/bin/python" fixtures/generate.py --check --only candle-384 --out peers/candle/fixtures
fi
candle_target="${BEIT_SEG_CANDLE_TARGET:-$HOME/.cache/beit-seg/candle-target}"
if [ "${BEIT_SEG_SKIP_CANDLE:-0}" = "1" ]; then
  echo "peers/candle: skipped (BEIT_SEG_SKIP_CANDLE=1)" >&2
elif [ -d "$candle_target/release" ] || [ "${BEIT_SEG_CANDLE:-0}" = "1" ]; then
  (cd peers/candle && cargo fmt --check \
    && CARGO_TARGET_DIR="$candle_target" cargo clippy --release --all-targets --locked --quiet -- -D warnings)
  CARGO_TARGET_DIR="$candle_target" scripts/peers/candle.sh --check
else
  echo "peers/candle: skipped, no build cache at $candle_target (BEIT_SEG_CANDLE=1 builds it once, ~17 min)" >&2
fi

if [ "${BEIT_SEG_SKIP_BLAS:-0}" != "1" ]; then
  step "6. the blas build (OpenBLAS + LAPACK) against every bundled case"
  if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    { apt-get update -qq && apt-get install -y -qq libopenblas-dev; } >&2
  fi
  CARGO_TARGET_DIR="${BEIT_SEG_BLAS_TARGET:-target/blas}" cargo run --release --quiet --features blas -- verify --quiet fixtures/
fi

# --- 7. (appended; owned by scripts/slurm-check.sh) -------------------------------------------
#  7. the Slurm recipe of docs/evaluation.md for real: a one-node Slurm cluster started here
#     (apt slurm-wlm + munge, installed if missing; root only, else skipped), an array job of
#     `eval --shard K/3` with one task killed and requeued (it resumes), `merge` equal to one
#     unsharded run, a shard of another checkpoint refused. BEIT_SEG_SKIP_SLURM=1 skips it.
if [ "${BEIT_SEG_SKIP_SLURM:-0}" != "1" ]; then
  step "7. shards on a real Slurm cluster: one task killed and requeued, merge = one run"
  # Step 5 exports CARGO_TARGET_DIR for the libtorch build; this step uses the default build.
  slurm_target="${CARGO_TARGET_DIR:-target}"
  if [ "$slurm_target" = "${BEIT_SEG_TCH_TARGET:-target/tch}" ]; then slurm_target=target; fi
  CARGO_TARGET_DIR="$slurm_target" cargo build --release --quiet
  bin="$slurm_target/release/beit-seg"
  bash scripts/slurm-check.sh "$bin"
fi
