#!/usr/bin/env bash
# GPU check of the libtorch fast path, for a machine with an NVIDIA GPU and PyTorch 2.11.0 in its
# `python3`, but no Rust toolchain and no network (docs/fast-path.md, "GPU check").
#
#   scripts/gpu-check.sh [BINARY]        # default: ./beit-seg beside this script, else target/tch-gpu/beit-seg
#
# BINARY is `beit-seg` built elsewhere with `--features tch` against torch 2.11.0 (tch 0.24.0).
# Steps, each under a time limit (the whole script stays under 8 minutes):
#   1. libtorch from that python3 (LD_LIBRARY_PATH=<torch>/lib); the binary must load;
#   2. a CUDA GPU must be visible (nvidia-smi and torch.cuda), else exit 3 at once;
#   3. beit-seg verify --backend tch --device cuda fixtures/   (fp32, TF32 off);
#   4. beit-seg bench --backend tch --device cuda --precision fp32,fp16,bf16 (BEiT-B, 640;
#      crops/s and images/s for 640x854; fp16/bf16 against fp32; PyTorch eager only where
#      python3 can import mmseg).
# Dry run elsewhere: DEVICE=cpu skips the GPU gate and runs steps 3-4 on the CPU; PRECISIONS,
# WARMUP, ITERS and PYTORCH=0 shorten the bench (e.g. DEVICE=cpu PRECISIONS=fp32 WARMUP=0 ITERS=1).
# Writes the report to $REPORT (default: $OUT/gpu-check-report.txt when $OUT is set, else
# ./gpu-check-report.txt). Exit status: 0 all passed, 1 verify failed, 2 bench failed,
# 3 no GPU, 4 set-up problem (binary, python, torch).
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="${1:-}"
if [ -z "$bin" ]; then
  for c in "$here/beit-seg" "$root/target/tch-gpu/beit-seg"; do
    if [ -x "$c" ]; then bin="$c"; break; fi
  done
fi
report="${REPORT:-${OUT:-.}/gpu-check-report.txt}"
python="${PYTHON:-python3}"
fixtures="${FIXTURES:-$root/fixtures}"
device="${DEVICE:-cuda}"
precisions="${PRECISIONS:-fp32,fp16,bf16}"
warmup="${WARMUP:-3}"
iters="${ITERS:-10}"
t0=$(date +%s)

log() { echo "$*" | tee -a "$report"; }
die() { local code=$1; shift; log "FAIL: $*"; log "gpu-check: exit $code after $(( $(date +%s) - t0 )) s"; exit "$code"; }

mkdir -p "$(dirname "$report")"
: > "$report"
log "# beit-seg gpu-check ($(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname))"

[ -n "$bin" ] && [ -x "$bin" ] || die 4 "no beit-seg binary (pass its path, or put it beside this script)"
command -v "$python" >/dev/null 2>&1 || die 4 "no $python"
torch_lib="$(timeout 60 "$python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)" \
  || die 4 "$python cannot import torch"
torch_ver="$(timeout 60 "$python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
log "binary: $bin"
log "python: $(command -v "$python"), torch $torch_ver, lib $torch_lib"
case "$torch_ver" in
  2.11.0*) ;;
  *) log "WARNING: the binary was built for torch 2.11.0 (tch 0.24.0); this is torch $torch_ver" ;;
esac
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# fp32 conformance: no TF32 in cuBLAS/cuDNN (the binary also refuses TF32 per convolution).
export NVIDIA_TF32_OVERRIDE=0
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE
ver="$(timeout 60 "$bin" --version 2>&1)" || die 4 "the binary does not start with LD_LIBRARY_PATH=$torch_lib: $ver"
log "beit-seg: $ver"

# --- 2. GPU present? (both checks are bounded; neither can hang the script)
if [ "$device" = cpu ]; then
  log "DRY RUN on the CPU (DEVICE=cpu): GPU checks skipped"
elif ! smi="$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"; then
  die 3 "no NVIDIA GPU: nvidia-smi failed or is missing (${smi:-no output})"
else
  log "gpu: $smi"
  cuda="$(timeout 120 "$python" -c 'import torch; print(torch.cuda.is_available(), torch.cuda.device_count(), torch.version.cuda)' 2>&1)" \
    || die 3 "torch cannot initialise CUDA: $cuda"
  case "$cuda" in
    True*) log "torch.cuda: available, devices/CUDA: ${cuda#True }" ;;
    *) die 3 "torch.cuda.is_available() is False ($cuda)" ;;
  esac
fi

# --- 3. conformance on the GPU (fp32)
status=0
log ""
log "## verify --backend tch --device $device (fp32, TF32 off)"
timeout 240 "$bin" verify --backend tch --device "$device" --precision fp32 --quiet --json "${report%.txt}-verify.json" "$fixtures" > "${report%.txt}-verify.log" 2>&1
rc=$?
grep -E '^(PASS|FAIL)|^coverage|passed,|^failed:|^error' "${report%.txt}-verify.log" | tee -a "$report"
if [ $rc -eq 124 ]; then log "verify: TIMEOUT (240 s)"; status=1;
elif [ $rc -ne 0 ]; then log "verify: FAILED (exit $rc; details in ${report%.txt}-verify.log)"; status=1;
else log "verify: ok"; fi

# --- 4. throughput (BEiT-B at 640)
log ""
log "## bench --backend tch --device $device --precision $precisions"
pyargs=(--python "$python")
[ "${PYTORCH:-1}" = 0 ] && pyargs=(--no-pytorch)
timeout 300 "$bin" bench --backend tch --device "$device" --precision "$precisions" --warmup "$warmup" --iters "$iters" \
  "${pyargs[@]}" --out "${report%.txt}-bench.txt" > "${report%.txt}-bench.log" 2>&1
rc=$?
if [ -f "${report%.txt}-bench.txt" ]; then cat "${report%.txt}-bench.txt" >> "$report"; cat "${report%.txt}-bench.txt"; fi
if [ $rc -eq 124 ]; then log "bench: TIMEOUT (300 s)"; [ $status -eq 0 ] && status=2;
elif [ $rc -ne 0 ]; then log "bench: FAILED (exit $rc): $(tail -3 "${report%.txt}-bench.log")"; [ $status -eq 0 ] && status=2;
fi

log ""
log "gpu-check: exit $status after $(( $(date +%s) - t0 )) s; report $report"
exit $status
