#!/bin/bash
# Seed corpora for the fuzz targets (fuzz/corpus/TARGET/, not committed): the repository's real
# files of each format, small files of every dtype written by the pinned venv's torch / numpy /
# safetensors (when the venv exists: scripts/setup-venv.sh), and results files written by
# `beit-seg eval` on the pipeline fixture (whole, sharded, interrupted, with a skipped image).
#
# Usage: fuzz/seed-corpora.sh [BIN]   (BIN: a built beit-seg, default target/release/beit-seg)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-target/release/beit-seg}
c=fuzz/corpus
mkdir -p $c/{pth_reader,safetensors_reader,npy_reader,npz_reader,image_decode,results_reader,case_manifest}

# Checkpoints, arrays, images, manifests of the repository.
cp fixtures/ckpt-*/*.pth fixtures/ckpt-*/*.bin tests/data/checkpoint/*.pth $c/pth_reader/ 2> /dev/null || true
cp fixtures/ckpt-*/*.safetensors $c/safetensors_reader/
cp fixtures/ckpt-official/expected.npz tests/data/checkpoint/*.npz $c/npz_reader/ 2> /dev/null || true
cp tests/data/checkpoint/fuzz/* $c/npy_reader/
for f in $(find fixtures -name '*.npy' -size -8k | sort | head -40); do cp "$f" "$c/npy_reader/$(echo "$f" | tr / _)"; done
cp tests/data/jpeg/*.jpg tests/data/jpeg/*.bin $c/image_decode/
for f in fixtures/pipeline-ade-tiny/data/*/validation/*; do cp "$f" "$c/image_decode/$(basename "$(dirname "$(dirname "$f")")")_$(basename "$f")"; done
for f in fixtures/*/case.json; do cp "$f" "$c/case_manifest/$(basename "$(dirname "$f")").json"; done

# Small files of every dtype (as the previous round's corpora).
if venv=$(ls -d ~/.cache/beit-seg/venv-* 2> /dev/null | head -1) && [ -x "$venv/bin/python" ]; then
    "$venv/bin/python" - "$root/$c" << 'EOF'
import io, sys, zipfile
import numpy as np, torch
from safetensors.torch import save_file
c = sys.argv[1]
g = torch.Generator().manual_seed(0)
t = {
    "f32": torch.randn(2, 3, generator=g), "f64": torch.randn(3, dtype=torch.float64, generator=g),
    "f16": torch.randn(4, generator=g).half(), "bf16": torch.randn(4, generator=g).bfloat16(),
    "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32), "u8": torch.arange(4, dtype=torch.uint8),
    "b": torch.tensor([True, False]), "t": torch.randn(3, 2, generator=g).t(),
}
torch.save(t, f"{c}/pth_reader/dtypes.pth")
torch.save({"meta": {"epoch": 3, "name": "x"}, "state_dict": {"w": torch.randn(2, generator=g)}}, f"{c}/pth_reader/meta.pth")
torch.save({"model": {"a.weight": torch.randn(2, 2, generator=g)}}, f"{c}/pth_reader/model.pth")
torch.save({"w": torch.randn(3, generator=g)}, f"{c}/pth_reader/flat.pth")
torch.save({"w": torch.randn(3, generator=g)}, f"{c}/pth_reader/proto2.pth", pickle_protocol=2)
with zipfile.ZipFile(f"{c}/pth_reader/dtypes.pth") as z:
    for n in z.namelist():
        if n.endswith("data.pkl"):
            open(f"{c}/pth_reader/dtypes.data.pkl", "wb").write(z.read(n))
save_file({k: v.contiguous() for k, v in t.items()}, f"{c}/safetensors_reader/dtypes.safetensors")
save_file({"empty": torch.zeros(0, 3), "x": torch.ones(1)}, f"{c}/safetensors_reader/empty.safetensors")
a = {"f4": np.arange(6, dtype="<f4").reshape(2, 3), "f8be": np.arange(3, dtype=">f8"),
     "fortran": np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)), "i8": np.arange(4, dtype=np.int64),
     "i4": np.arange(4, dtype=np.int32), "u1": np.arange(4, dtype=np.uint8), "bool": np.array([True, False]),
     "f2": np.arange(3, dtype=np.float16), "scalar": np.array(1.5, dtype=np.float32)}
for k, v in a.items():
    np.save(f"{c}/npy_reader/{k}.npy", v)
np.savez(f"{c}/npz_reader/savez.npz", **a)
np.savez_compressed(f"{c}/npz_reader/savez_compressed.npz", **a)
EOF
fi

# Results files written by eval on the pipeline fixture.
if [ -x "$bin" ]; then
    t=$(mktemp -d)
    trap 'rm -rf "$t"' EXIT
    f=fixtures/pipeline-ade-tiny
    args=(eval -q --config $f/case.json --checkpoint $f/weights.npz)
    "$bin" "${args[@]}" --data-root $f/data --out "$t/whole" > /dev/null
    "$bin" "${args[@]}" --data-root $f/data --shard 1/2 --out "$t/shard" > /dev/null
    cp -r $f/data "$t/data"
    head -c 100 "$t/data/images/validation/ade_0002.jpg" > "$t/data/images/validation/ade_0002.jpg.cut"
    mv "$t/data/images/validation/ade_0002.jpg.cut" "$t/data/images/validation/ade_0002.jpg"
    "$bin" "${args[@]}" --data-root "$t/data" --skip-bad --out "$t/skip" > /dev/null
    cp "$t/whole/results.jsonl" $c/results_reader/whole.jsonl
    cp "$t/shard/results.shard-1-of-2.jsonl" $c/results_reader/shard.jsonl
    cp "$t/skip/results.jsonl" $c/results_reader/skipped.jsonl
    head -c -40 "$t/whole/results.jsonl" > $c/results_reader/torn.jsonl
    head -n 1 "$t/whole/results.jsonl" > $c/results_reader/header-only.jsonl
fi
for d in $c/*/; do echo "$(basename "$d"): $(ls "$d" | wc -l) files"; done
