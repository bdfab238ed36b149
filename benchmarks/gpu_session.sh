#!/usr/bin/env bash
# Everything that still needs a GPU, in one call sized for a ~10-minute device window:
#   1. CUDA correctness (benchmarks/gpu_checks.py);
#   2. DDP on nccl: `torchrun --nproc_per_node 1` (joins an nccl process group, wraps the model in
#      DDP and runs every collective) against a plain single-process run, same seed, same
#      validation metrics expected;
#   3. the efficiency benchmark on CUDA in bf16, L = 256 ... 32768 (background);
#   4. accuracy on the L=50 datasets: SASRec and four ELASTIC settings (preset, IMR off, k=8,
#      memory read by every position instead of the dispatchers),
#      every run with the same wall-clock budget, all concurrently on the one GPU.
# Outputs go under OUT (default runs/gpu-session): logs, run dirs, efficiency/, summary.{json,md}.
#
#   ELASTICREC_DATA=/path/to/data OUT=runs/gpu-session BUDGET=300 bash benchmarks/gpu_session.sh
#
# With the device tool (its machine has no ../shared): copy the data into the ignored .devdata/,
# carry it and install the package there first, e.g. run(command="pip install -e . &&
# ELASTICREC_DATA=.devdata OUT=$OUT/s bash benchmarks/gpu_session.sh", carry=[".devdata"]).
#
# 25 trainings share the GPU and the machine's CPU cores (one thread each); on the 2026-11-26
# H100 (16 cores) 16 such runs each got ~20 Beauty epochs in 380 s, i.e. they are CPU-bound.
set -u
OUT=${OUT:-runs/gpu-session}
BUDGET=${BUDGET:-300}
DATASETS=${DATASETS:-beauty sports yelp lastfm beauty-bert4rec}
BASELINES=${BASELINES:-}   # e.g. "hstu linrec": more models per dataset (their presets), same budget
mkdir -p "$OUT/logs"
export OMP_NUM_THREADS=1
py=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$py -c "import torch, sys; print(torch.__version__, torch.version.cuda, sys.version.split()[0])" >> "$OUT/gpu.txt"

# 1. correctness on CUDA
$py benchmarks/gpu_checks.py > "$OUT/logs/gpu_checks.log" 2>&1; echo "gpu_checks rc=$?" >> "$OUT/status.txt"

# 2. nccl DDP (1 process) versus the single-process run: same data, seed and global batch
ddp_args=(--dataset synthetic --model elastic --epochs 2 --device cuda --no-progress
          --set data.synthetic.n_users=2000 --set data.synthetic.n_items=1000 --set model.max_len=128)
$py -m elasticrec train "${ddp_args[@]}" --run-dir "$OUT/ddp-single" > "$OUT/logs/ddp-single.log" 2>&1
echo "ddp single rc=$?" >> "$OUT/status.txt"
torchrun --standalone --nproc_per_node 1 -m elasticrec train "${ddp_args[@]}" --run-dir "$OUT/ddp-nccl" \
  > "$OUT/logs/ddp-nccl.log" 2>&1
echo "ddp nccl rc=$?" >> "$OUT/status.txt"
$py - "$OUT" >> "$OUT/status.txt" 2>&1 <<'PY'
import json, sys
def valid(run):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
    return [r["valid/NDCG@10"] for r in rows if "valid/NDCG@10" in r]
a, b = valid("ddp-single"), valid("ddp-nccl")
ok = len(a) == len(b) and all(abs(x - y) <= 0.02 * max(abs(x), 1e-6) for x, y in zip(a, b))
print(f"ddp valid NDCG@10 single {a} nccl {b}: {'match' if ok else 'MISMATCH'}")
PY

# 3. efficiency on CUDA, bf16 autocast (runs beside the trainings; its timings are therefore
#    upper bounds: rerun alone with the same command for a quiet table)
$py -m elasticrec bench efficiency --device cuda --amp bf16 \
  --lengths 256,512,1024,2048,4096,8192,16384,32768 --out "$OUT/efficiency" \
  > "$OUT/logs/efficiency.log" 2>&1 &
eff=$!

# 4. accuracy: same budget for every run, test item scored once from the best-validation epoch
run() {
  local name=$1; shift
  $py -m elasticrec train "$@" --run-dir "$OUT/$name" --no-progress --device cuda \
    --set train.time_budget_s="$BUDGET" --set train.num_threads=1 --set train.patience=20 \
    > "$OUT/logs/$name.log" 2>&1 &
}
for ds in $DATASETS; do
  run "$ds-sasrec"            --dataset "$ds" --model sasrec
  run "$ds-elastic"           --dataset "$ds" --model elastic
  run "$ds-elastic-imr-off"   --dataset "$ds" --model elastic --set model.elastic.memory=false
  run "$ds-elastic-k8"        --dataset "$ds" --model elastic --set model.elastic.n_dispatchers=8
  run "$ds-elastic-imr-tokens" --dataset "$ds" --model elastic --set model.elastic.memory_site=tokens
  for m in $BASELINES; do run "$ds-$m" --dataset "$ds" --model "$m"; done
done
wait
echo "efficiency done" >> "$OUT/status.txt"
$py benchmarks/collect_runs.py "$OUT" --json "$OUT/summary.json" --md "$OUT/summary.md"
