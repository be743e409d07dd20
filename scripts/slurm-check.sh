#!/bin/bash
# The Slurm recipe of docs/evaluation.md ("Scaling out: shards on Slurm"), run for real on a
# one-node Slurm cluster started here (munged, slurmctld, slurmd; Debian's slurm-wlm and munge,
# installed when missing), with a fault:
#
#   1. a single unsharded `beit-seg eval` of the pipeline fixture's model on a data root of
#      copies of its 4 images (the reference totals);
#   2. an array job `sbatch --array=0-2` whose task K runs `beit-seg eval --shard K/3 --out DIR`;
#      task 1 is killed (`scancel --full --signal=KILL`) once its results file holds a record,
#      then requeued (`scontrol requeue`): it must resume its results file, not start over;
#   3. `beit-seg merge` of the three shards: aAcc, mIoU, mAcc and the four total_area_* vectors
#      must equal the unsharded run's exactly; every image recorded once;
#   4. a shard of the same run from a different checkpoint (the same weights.npz with one bias
#      value changed, same size on disk) must be refused by `merge`, naming the checkpoint.
#
# Every daemon and job started here is stopped on exit. Prints `slurm-check: N passed, M failed`;
# exits non-zero on a failure; exits 0 with `slurm-check: skipped: ...` where Slurm cannot be
# installed or started (not root, no package, a daemon that does not come up).
#
# Usage: scripts/slurm-check.sh [BIN]   (BIN: a built beit-seg, default target/release/beit-seg)
# Environment: SLURM_CHECK_REPLICAS (copies of the 4 images, default 300: 1200 images, ~2-4 s
# per shard, so that the kill lands mid-run), SLURM_CHECK_KEEP=1 keeps the temporary directory.
set -u
cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-target/release/beit-seg}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
fixture="$root/fixtures/pipeline-ade-tiny"
replicas=${SLURM_CHECK_REPLICAS:-300}
start_s=$SECONDS

say() { echo "slurm-check: $*"; }
skip() {
    say "skipped: $*"
    exit 0
}

[ -x "$bin" ] || { say "no beit-seg binary at $bin (build it: cargo build --release)"; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root (to install slurm-wlm and munge and to start munged, slurmctld and slurmd)"
command -v python3 > /dev/null || skip "python3 is needed to compare the metrics JSON and to write the other checkpoint"
if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null \
    || ! command -v sbatch > /dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        > /tmp/slurm-check-apt.log 2>&1; then
        tail -5 /tmp/slurm-check-apt.log
        skip "could not install slurm-wlm and munge (log: /tmp/slurm-check-apt.log)"
    fi
fi

T=$(mktemp -d /tmp/beit-seg-slurm.XXXXXX)
chmod 755 "$T"
pids=()
cleanup() {
    if [ -n "${SLURM_CONF:-}" ] && [ -n "${ctld_pid:-}" ]; then
        scancel --full --signal=KILL --user=root > /dev/null 2>&1
        scancel --user=root > /dev/null 2>&1
        for _ in $(seq 1 50); do
            [ -z "$(squeue -h 2> /dev/null)" ] && break
            sleep 0.1
        done
    fi
    # The daemons started here, newest first, by their ids.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2> /dev/null
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$p" 2> /dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2> /dev/null
        wait "$p" 2> /dev/null
    done
    if [ "${SLURM_CHECK_KEEP:-0}" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

pass=0
fail=0
ok() {
    pass=$((pass + 1))
    say "ok: $*"
}
bad() {
    fail=$((fail + 1))
    say "FAIL: $*"
}
finish() {
    say "took $((SECONDS - start_s)) s"
    say "$pass passed, $fail failed"
    [ "$fail" = 0 ]
    exit
}

# ---------------------------------------------------------------------------------- the cluster
host=$(hostname -s)
mkdir -p "$T/state" "$T/spool" "$T/out" "$T/logs"
if [ -r /etc/munge/munge.key ]; then cp /etc/munge/munge.key "$T/munge.key"; else head -c 1024 /dev/urandom > "$T/munge.key"; fi
chmod 600 "$T/munge.key"
munged -f -F --socket="$T/munge.sock" --key-file="$T/munge.key" --pid-file="$T/munged.pid" \
    --seed-file="$T/munged.seed" --log-file="$T/munged.log" > "$T/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
    [ -S "$T/munge.sock" ] && break
    sleep 0.1
done
[ -S "$T/munge.sock" ] || { tail -5 "$T/munged.out"; skip "munged did not start"; }

port=$((20000 + RANDOM % 20000))
cat > "$T/slurm.conf" << EOF
ClusterName=beitseg
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$T/munge.sock
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$T/slurm.conf"
slurmctld -D -i -f "$SLURM_CONF" > "$T/slurmctld.out" 2>&1 &
ctld_pid=$!
pids+=("$ctld_pid")
slurmd -D -f "$SLURM_CONF" > "$T/slurmd.out" 2>&1 &
pids+=($!)
up=
for _ in $(seq 1 100); do
    if [ "$(sinfo -h -N -o %t 2> /dev/null)" = idle ]; then up=1; break; fi
    sleep 0.2
done
if [ -z "$up" ]; then
    tail -5 "$T/slurmctld.out" "$T/slurmd.out"
    skip "slurmctld/slurmd did not bring node $host up (sinfo: $(sinfo -h -N -o %t 2>&1))"
fi
ok "one-node cluster up: $(sinfo -h -o '%P %D %t %N') (slurm $(sinfo -V | awk '{print $2}'))"

# ------------------------------------------------------------------------------ data, reference
data="$T/data"
mkdir -p "$data/images/validation" "$data/annotations/validation"
for r in $(seq -w 0 $((replicas - 1))); do
    for f in "$fixture"/data/images/validation/*.jpg; do
        b=$(basename "$f" .jpg)
        cp "$f" "$data/images/validation/r${r}_$b.jpg"
        cp "$fixture/data/annotations/validation/$b.png" "$data/annotations/validation/r${r}_$b.png"
    done
done
nimg=$(ls "$data/images/validation" | wc -l)
eval_args=(--config "$fixture/case.json" --data-root "$data")
RAYON_NUM_THREADS=1 "$bin" eval -q "${eval_args[@]}" --checkpoint "$fixture/weights.npz" --out "$T/single" \
    > "$T/logs/single.log" 2>&1 \
    && ok "unsharded eval: $nimg images, $(grep -o 'aAcc.*' "$T/logs/single.log")" \
    || { bad "unsharded eval failed: $(tail -3 "$T/logs/single.log")"; finish; }

# ------------------------------------------------------------------ the array job, with a fault
# The recipe of docs/evaluation.md, one CPU per task.
cat > "$T/eval-array.sh" << EOF
#!/bin/bash
#SBATCH --job-name=beit-eval --array=0-2 --cpus-per-task=1
export RAYON_NUM_THREADS=\$SLURM_CPUS_PER_TASK
echo "task \$SLURM_ARRAY_TASK_ID start, restart \${SLURM_RESTART_COUNT:-0}"
exec "$bin" eval --config "$fixture/case.json" --checkpoint "$fixture/weights.npz" --data-root "$data" \\
    --shard \${SLURM_ARRAY_TASK_ID}/3 --out "$T/out"
EOF
job=$(sbatch --parsable --open-mode=append --output="$T/logs/slurm-%A_%a.out" "$T/eval-array.sh" 2>&1)
case "$job" in
    *[!0-9]* | "") bad "sbatch: $job"; finish ;;
esac
ok "sbatch --array=0-2: job $job"

state() { scontrol show job "$1" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
victim="${job}_1"
vfile="$T/out/results.shard-1-of-3.jsonl"
shard1=$(( (nimg + 1) / 3 ))   # images i with i % 3 == 1
killed=
for _ in $(seq 1 1200); do
    n=$(lines "$vfile")
    if [ "$n" -ge 2 ]; then
        scancel --full --signal=KILL "$victim"
        killed=$n
        break
    fi
    sleep 0.05
done
if [ -z "$killed" ]; then bad "task 1 wrote no record within 60 s (state $(state "$victim"))"; finish; fi
for _ in $(seq 1 100); do
    case "$(state "$victim")" in RUNNING | COMPLETING | CONFIGURING) sleep 0.1 ;; *) break ;; esac
done
vstate=$(state "$victim")
at_kill=$(($(lines "$vfile") - 1))
if [ "$vstate" != COMPLETED ] && [ "$at_kill" -lt "$shard1" ]; then
    ok "task $victim killed mid-run (scancel --full --signal=KILL): $vstate with $at_kill of $shard1 records"
else
    bad "task $victim was not killed mid-run ($vstate, $at_kill of $shard1 records): raise SLURM_CHECK_REPLICAS"
    finish
fi
if scontrol requeue "$victim" && scontrol update JobId="$victim" StartTime=now; then
    ok "scontrol requeue $victim"
else
    bad "scontrol requeue $victim failed"
    finish
fi

done_all=
for _ in $(seq 1 600); do
    s0=$(state "${job}_0") s1=$(state "$victim") s2=$(state "${job}_2")
    if [ -z "$(squeue -h -j "$job" 2> /dev/null)" ] && [ -n "$s0$s1$s2" ]; then done_all=1; break; fi
    sleep 0.2
done
s0=$(state "${job}_0") s1=$(state "$victim") s2=$(state "${job}_2")
if [ -n "$done_all" ] && [ "$s0 $s1 $s2" = "COMPLETED COMPLETED COMPLETED" ]; then
    ok "array tasks done: $s0 $s1 $s2"
else
    bad "array tasks: $s0 $s1 $s2 (logs in $T/logs)"
    tail -5 "$T"/logs/*.out
    finish
fi
restarts=$(scontrol show job "$victim" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
vlog="$T/logs/slurm-${job}_1.out"
resumed=$(grep -o 'resuming from .*' "$vlog" | head -1)
if [ "$restarts" = 1 ] && [ -n "$resumed" ] && grep -q 'start, restart 1' "$vlog"; then
    ok "task 1 ran again (Restarts=$restarts) and resumed: $resumed"
else
    bad "task 1 did not resume (Restarts=$restarts; log $vlog): $(tail -3 "$vlog")"
fi

# ---------------------------------------------------------------------------------------- merge
shards=("$T"/out/results.shard-{0,1,2}-of-3.jsonl)
python3 - "$nimg" "${shards[@]}" > "$T/logs/records.txt" 2>&1 << 'EOF'
import json, sys
n = int(sys.argv[1])
for k, path in enumerate(sys.argv[2:]):
    lines = open(path).read().splitlines()
    assert json.loads(lines[0])["shard"] == {"k": k, "n": 3}, f"{path}: header of shard {json.loads(lines[0])['shard']}"
    idx = [json.loads(l)["index"] for l in lines[1:]]
    want = list(range(k, n, 3))
    assert sorted(idx) == want, f"{path}: {len(idx)} records, {len(set(idx))} distinct, want {len(want)}"
    assert sum(1 for l in lines if '"beit_seg_results"' in l) == 1, f"{path}: more than one header"
print("ok")
EOF
if [ "$(cat "$T/logs/records.txt")" = ok ]; then
    ok "each shard file holds one header and each of its images exactly once"
else
    bad "shard files: $(tail -2 "$T/logs/records.txt")"
fi
if "$bin" merge "${shards[@]}" --out "$T/merged.json" > "$T/logs/merge.log" 2>&1; then
    python3 - "$T/single/metrics.json" "$T/merged.json" > "$T/logs/compare.txt" 2>&1 << 'EOF'
import json, sys
a, b = (json.load(open(p))["metrics"] for p in sys.argv[1:])
keys = ["aAcc", "mIoU", "mAcc", "total_area_intersect", "total_area_union", "total_area_pred_label", "total_area_label"]
diff = [k for k in keys if a.get(k) != b.get(k) or a.get(k) is None]
print("equal" if not diff else "differ: " + ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in diff))
EOF
    if [ "$(cat "$T/logs/compare.txt")" = equal ]; then
        ok "merge of the 3 shards = the unsharded run (aAcc, mIoU, mAcc, total_area_*): $(grep -o 'aAcc.*' "$T/logs/merge.log")"
    else
        bad "merged metrics $(cat "$T/logs/compare.txt")"
    fi
else
    bad "merge failed: $(tail -3 "$T/logs/merge.log")"
fi

# ------------------------------------------------------------- a shard of another checkpoint
python3 - "$fixture/weights.npz" "$T/other.npz" > "$T/logs/other.txt" 2>&1 << 'EOF'
import struct, sys, zipfile
src, dst = sys.argv[1:]
done = None
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
        b = bytearray(zin.read(info))
        if done is None and info.filename.endswith(".bias.npy") and b[:6] == b"\x93NUMPY":
            hlen = struct.unpack("<H", b[8:10])[0] if b[6] == 1 else struct.unpack("<I", b[8:12])[0]
            start = (10 if b[6] == 1 else 12) + hlen
            header = bytes(b[:start])
            if b"'<f4'" in header:
                (v,) = struct.unpack_from("<f", b, start)
                struct.pack_into("<f", b, start, v + 1e-3)
                done = f"{info.filename}[0]: {v} -> {v + 1e-3}"
        zout.writestr(info, bytes(b), compress_type=info.compress_type)
assert done, "no float32 bias in the archive"
print(done)
EOF
if [ $? != 0 ]; then
    bad "could not write the other checkpoint: $(tail -2 "$T/logs/other.txt")"
    finish
fi
RAYON_NUM_THREADS=1 "$bin" eval -q "${eval_args[@]}" --checkpoint "$T/other.npz" --shard 2/3 --out "$T/other" \
    > "$T/logs/other-eval.log" 2>&1 \
    || { bad "eval --shard 2/3 with the other checkpoint failed: $(tail -3 "$T/logs/other-eval.log")"; finish; }
if "$bin" merge "${shards[0]}" "${shards[1]}" "$T/other/results.shard-2-of-3.jsonl" --out "$T/mixed.json" \
    > "$T/logs/mixed.log" 2>&1; then
    bad "merge accepted a shard of another checkpoint ($(cat "$T/logs/other.txt"))"
elif grep -q 'not from the same run: a different checkpoint (weights)' "$T/logs/mixed.log" && [ ! -e "$T/mixed.json" ]; then
    ok "merge refuses a shard of another checkpoint ($(cat "$T/logs/other.txt")): $(grep -o 'a different checkpoint.*' "$T/logs/mixed.log" | cut -c1-160)..."
else
    bad "merge of a shard of another checkpoint failed without naming it: $(tail -3 "$T/logs/mixed.log")"
fi

finish
