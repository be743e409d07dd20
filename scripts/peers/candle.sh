#!/usr/bin/env bash
# candle-transformers' BEiT, run for real: the tests of peers/candle (its own crate; beit-seg is a
# dev-dependency) and the candle section of docs/peers.md rendered from what they measured.
#   scripts/peers/candle.sh [--check]
# --check: the tests must pass and the committed section must match a fresh run
# (scripts/peers/candle_doc.py). CARGO_TARGET_DIR is honoured (scripts/test.sh caches it).
# peers/candle/Cargo.lock is used as committed (--locked): after beit-seg gains a dependency, run
# `cargo update -p beit-seg` in peers/candle and commit the lock.
set -euo pipefail
# A relative CARGO_TARGET_DIR is the caller's, not peers/candle's.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR="$(realpath -m "$CARGO_TARGET_DIR")"; fi
cd "$(dirname "$0")/../.."
evidence="$(mktemp)"
trap 'rm -f "$evidence"' EXIT
(cd peers/candle && BEIT_SEG_CANDLE_REPORT="$evidence" cargo test --release --locked)
python3 scripts/peers/candle_doc.py "$@" "$evidence"
