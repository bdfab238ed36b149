#!/usr/bin/env bash
# Everything that still needs a GPU, in one call sized for a single ~10-minute device window.
# Phases (each logged with its start time in $WORK/status.txt):
#   1. CUDA correctness (benchmarks/gpu_checks.py);
#   2. the efficiency benchmark on CUDA in bf16, L = 256 ... 32768, ALONE on the GPU (quiet timings);
#   3. together, on the one GPU:
#      a. the accuracy benchmark: every model of ACC_MODELS on every dataset of ACC_DATASETS, one
#         seed, all runs concurrently with the same wall-clock budget (computed so that everything
#         ends before DEADLINE_S), one CPU thread each;
#      b. DDP on nccl: `torchrun --nproc_per_node 1` (joins an nccl process group, wraps the model
#         in DDP, runs every collective) against a plain single-process run; same seed, data and
#         global batch, so the same validation metrics are expected;
#      c. phase "runs" (not in the default PHASES): one `elasticrec train` per line of RUNS_FILE
#         ("NAME ARGS...", e.g. `ml1m-elastic-s42 --config configs/ml-1m/large/elastic.yaml`), all
#         at once beside 3a with the same budget; the way to run settings that differ by more than
#         `bench accuracy`'s shared ACC_ARGS (see benchmarks/gpu_runs/);
#   4. collect: summary.{json,md} of every run, then one tarball (no checkpoints) in $OUT.
# The work folder WORK keeps everything (checkpoints too, so a second call on the same warm
# machine can `--resume`); OUT receives only status.txt and tarballs, since the device tool
# brings back at most 8 files: eff.tgz right after phase 2, session.tgz at the end.
#
#   ELASTICREC_DATA=/path/to/data OUT=out WORK=runs/gpu-session DEADLINE_S=540 bash benchmarks/gpu_session.sh
#
# With the device tool (its machine has no ../shared): copy the data into the ignored .devdata/
# and carry it; the package runs from src/ (no install needed), e.g.
#   run(command="ELASTICREC_DATA=.devdata bash benchmarks/gpu_session.sh", carry=[".devdata"])
# DEVICE=cpu with tiny settings rehearses the whole script on a CPU (gloo instead of nccl).
set -u
T0=$(date +%s)
OUT=${OUT:-runs/gpu-session-out}
WORK=${WORK:-runs/gpu-session}
DEVICE=${DEVICE:-cuda}
DEADLINE_S=${DEADLINE_S:-540}            # whole script, packing included
EFF_S=${EFF_S:-150}                      # hard cap on phase 2
EFF_LENGTHS=${EFF_LENGTHS:-50,256,512,1024,2048,4096,8192,16384,32768}
# ELASTIC first: on 2026-11-28 the phase hit its cap inside HSTU before reaching it
EFF_ARGS=${EFF_ARGS:---models elastic,sasrec,sasrec-explicit,linrec,hstu --time-limit-s 20}
ACC_DATASETS=${ACC_DATASETS:-ml-1m,ml-1m-1000,beauty,sports,yelp,lastfm,beauty-bert4rec,synthetic-4096}
ACC_MODELS=${ACC_MODELS:-sasrec,hstu,linrec,elastic}
ACC_SEEDS=${ACC_SEEDS:-42}
ACC_JOBS=${ACC_JOBS:-}                   # default: every run at once, so all get the same conditions
ACC_TAIL_S=${ACC_TAIL_S:-100}            # left after the training budget: start-up, test scoring, packing
ACC_ARGS=${ACC_ARGS:-}                   # more `bench accuracy` options for every run, e.g.
#   ACC_ARGS="--set model.score=cosine --set train.temperature=0.05"
#   (best ELASTIC setting on ML-1M so far, CPU: also --set model.elastic.memory=false
#    --set model.elastic.dispatcher_bias=items --set model.elastic.output_gate=true; to try:
#    --set model.elastic.output_norm=true and model.n_layers=4 or 8, see docs/results.md;
#    --set model.sasrec.output_gate=true gives SASRec the same gate, for a like-for-like baseline)
#   ACC_DATASETS=ml-1m-large ACC_MODELS=sasrec,hstu,elastic runs the 8-layer like-for-like set of
#   configs/ml-1m/large/ (HSTU at HSTU-large's size) without any ACC_ARGS
#   ACC_ARGS="--set train.windows=all" trains every model on every item of long histories, not
#   only each user's last max_len (README, "Which parts of a long history are trained on")
#   ACC_ARGS="--set train.fit=train+valid" trains on the validation items too and tests the final
#   weights at the budget's end: generative-recommenders' protocol for the published HSTU-large
#   numbers (README, "Refit on the validation items"); rows are marked [train+valid]
PHASES=${PHASES:-checks efficiency accuracy ddp}  # which phases to run (also: runs)
RUNS_FILE=${RUNS_FILE:-}                 # phase "runs": lines "NAME ARGS..." for `elasticrec train`
PREP_DATASETS=${PREP_DATASETS:-}         # datasets whose cache is built first (comma list), so that
                                         # concurrent runs do not each parse the raw file
DDP_S=${DDP_S:-150}                      # hard cap on each of the two DDP check runs
DDP_ARGS=${DDP_ARGS:---set data.synthetic.n_users=2000 --set data.synthetic.n_items=1000 --set model.max_len=128}
mkdir -p "$OUT" "$WORK/logs"
WORK=$(cd "$WORK" && pwd)
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export ELASTICREC_CACHE=${ELASTICREC_CACHE:-$WORK/cache}
py=${PYTHON:-python3}
now() { echo $(( $(date +%s) - T0 )); }
has() { case " $PHASES " in *" $1 "*) return 0;; esac; return 1; }  # is phase $1 in PHASES?
say() { echo "[$(now) s] $*" | tee -a "$WORK/status.txt"; cp "$WORK/status.txt" "$OUT/status.txt"; }
pack() {  # pack NAME PATH...: a tarball of the given paths under WORK, without checkpoints
  local name=$1; shift
  tar -C "$WORK" --exclude=checkpoints --exclude=cache --exclude='*.safetensors' -czf "$OUT/$name.tgz" "$@" 2>>"$WORK/logs/pack.log"
  say "packed $name.tgz ($(du -k "$OUT/$name.tgz" | cut -f1) KiB)"
}

say "start: device $DEVICE, deadline ${DEADLINE_S} s"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $py -c "import torch, sys, os; print(torch.__version__, torch.version.cuda, sys.version.split()[0], os.cpu_count(), 'cpus')"
} > "$WORK/machine.txt"
cat "$WORK/machine.txt" >> "$WORK/status.txt"

# 1. correctness on CUDA
if [ "$DEVICE" = cuda ] && has checks; then
  timeout -k 10 90 $py benchmarks/gpu_checks.py > "$WORK/logs/gpu_checks.log" 2>&1
  say "gpu_checks rc=$? ($(tail -1 "$WORK/logs/gpu_checks.log"))"
fi

# 1b. build the processed-data caches once, before anything is timed
for ds in $(echo "$PREP_DATASETS" | tr ',' ' '); do
  $py -m elasticrec data stats --dataset "$ds" > "$WORK/logs/prep-$ds.log" 2>&1
  say "prep $ds rc=$?"
done

# 2. efficiency, alone on the device
if has efficiency; then
  say "efficiency: start"
  timeout -s INT -k 20 "$EFF_S" $py -m elasticrec bench efficiency --device "$DEVICE" --lengths "$EFF_LENGTHS" \
    $EFF_ARGS --out "$WORK/efficiency" --md "$WORK/efficiency.md" > "$WORK/logs/efficiency.log" 2>&1
  say "efficiency rc=$?"
  pack eff efficiency efficiency.md logs/efficiency.log logs/gpu_checks.log status.txt machine.txt
fi

# 3a. accuracy: one wave, equal budget for all
n_of() { echo "$1" | tr ',' '\n' | grep -c .; }
ACC_JOBS=${ACC_JOBS:-$(( $(n_of "$ACC_DATASETS") * $(n_of "$ACC_MODELS") * $(n_of "$ACC_SEEDS") ))}
budget=$(( DEADLINE_S - $(now) - ACC_TAIL_S ))
[ "$budget" -lt 30 ] && budget=30
acc=
runs=()
if has accuracy; then
  say "accuracy: start, ${ACC_JOBS} runs at a time, budget ${budget} s per run"
  $py -m elasticrec bench accuracy --datasets "$ACC_DATASETS" --models "$ACC_MODELS" --seeds "$ACC_SEEDS" \
    --time-budget-s "$budget" --jobs "$ACC_JOBS" --threads 1 --device "$DEVICE" \
    --runs-dir "$WORK/acc" --out "$WORK/accuracy" $ACC_ARGS \
    --note "All runs at once on one GPU ($(head -2 "$WORK/machine.txt" | tail -1)), one CPU thread each, ${budget} s budget." \
    > "$WORK/logs/accuracy.log" 2>&1 &
  acc=$!
fi

# 3c. named training runs from RUNS_FILE, same budget, started before the DDP check
if has runs; then
  if [ ! -f "$RUNS_FILE" ]; then
    say "runs: RUNS_FILE '$RUNS_FILE' not found, skipped"
  else
    mkdir -p "$WORK/runs"
    while read -r name args; do
      case "$name" in ''|'#'*) continue;; esac
      # shellcheck disable=SC2086  # ARGS are words on purpose
      $py -m elasticrec train $args --device "$DEVICE" --no-progress --run-dir "$WORK/runs/$name" \
        --set train.time_budget_s="$budget" --set train.num_threads=1 > "$WORK/logs/run-$name.log" 2>&1 &
      runs+=($!)
    done < "$RUNS_FILE"
    say "runs: started ${#runs[@]} from $RUNS_FILE, budget ${budget} s each"
  fi
fi

# 3b. nccl DDP (1 process) versus the single-process run
ddp() {
  local args=(--dataset synthetic --model elastic --epochs 2 --device "$DEVICE" --no-progress $DDP_ARGS)
  timeout -k 10 "$DDP_S" $py -m elasticrec train "${args[@]}" --run-dir "$WORK/ddp-single" > "$WORK/logs/ddp-single.log" 2>&1
  say "ddp single rc=$?"
  timeout -k 10 "$DDP_S" $py -m torch.distributed.run --standalone --nproc_per_node 1 -m elasticrec train "${args[@]}" \
    --run-dir "$WORK/ddp-torchrun" > "$WORK/logs/ddp-torchrun.log" 2>&1
  say "ddp torchrun rc=$?"
  $py - "$WORK" >> "$WORK/status.txt" 2>&1 <<'PY'
import json, sys
def valid(run):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
    return [round(r["valid/NDCG@10"], 5) for r in rows if "valid/NDCG@10" in r]
a, b = valid("ddp-single"), valid("ddp-torchrun")
ok = len(a) == len(b) and all(abs(x - y) <= 0.02 * max(abs(x), 1e-6) for x, y in zip(a, b))
print(f"ddp valid NDCG@10 single {a} torchrun {b}: {'match' if ok else 'MISMATCH'}")
PY
  grep -h "process group" "$WORK/logs/ddp-torchrun.log" | head -3 >> "$WORK/status.txt"
}
has ddp && ddp

# 4. wait for the accuracy runs and the named runs, but never past the deadline
# until_deadline LABEL PID...: wait for the processes, but stop those still running 25 s before
# the deadline (unfinished runs keep their checkpoints)
until_deadline() {
  local label=$1 p alive; shift
  while [ "$(now)" -lt $(( DEADLINE_S - 25 )) ]; do
    alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 2
  done
  for p in "$@"; do kill -0 "$p" 2>/dev/null && { say "$label: deadline reached, stopping pid $p"; kill -TERM "$p"; }; done
}
if [ -n "$acc" ]; then
  until_deadline accuracy "$acc"
  wait "$acc"
  say "accuracy done (rc=$?): $(ls "$WORK"/acc/*/test_metrics.json 2>/dev/null | wc -l) runs scored on test"
fi
if [ ${#runs[@]} -gt 0 ]; then
  until_deadline runs "${runs[@]}"
  wait "${runs[@]}" 2>/dev/null
  say "runs done: $(ls "$WORK"/runs/*/test_metrics.json 2>/dev/null | wc -l) of ${#runs[@]} scored on test"
  $py benchmarks/collect_runs.py "$WORK/runs" --json "$WORK/runs-summary.json" --md "$WORK/runs-summary.md" \
    > "$WORK/logs/collect-runs.log" 2>&1
fi
$py benchmarks/collect_runs.py "$WORK/acc" --json "$WORK/summary.json" --md "$WORK/summary.md" \
  > "$WORK/logs/collect.log" 2>&1
say "end"
pack session status.txt machine.txt logs efficiency efficiency.md accuracy acc ddp-single ddp-torchrun \
  summary.json summary.md runs runs-summary.json runs-summary.md
