#!/bin/bash
# Builds the fuzz targets on the stable toolchain, as `cargo fuzz build --release` (cargo-fuzz 0.13,
# AddressSanitizer) does, without cargo-fuzz: RUSTC_BOOTSTRAP=1 for -Zsanitizer; --target so that
# build scripts and proc macros are not instrumented; the gemm kernels (not reached by any target)
# at opt-level 0 to save build time. Binaries: $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/TARGET
# (CARGO_TARGET_DIR defaults to fuzz/target). Extra arguments go to cargo (e.g. --bin npy_reader).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address -Cdebug-assertions \
-Coverflow_checks -Cforce-frame-pointers"
cfg=()
for p in gemm gemm-common gemm-f16 gemm-f32 gemm-f64 gemm-c32 gemm-c64; do
    cfg+=(--config "profile.release.package.$p.opt-level=0")
done
exec nice -n 15 cargo build --release --target "$(rustc -vV | sed -n 's/^host: //p')" --bins "${cfg[@]}" "$@"
