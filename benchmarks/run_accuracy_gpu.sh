#!/usr/bin/env bash
# Train every accuracy configuration of docs/results.md concurrently on one GPU machine.
# Each run gets the same wall-clock training budget (BUDGET seconds, default 400) on top of
# its preset's epoch cap and early stopping; the test item is scored once at the end.
#
#   ELASTICREC_DATA=/path/to/data BUDGET=400 bash benchmarks/run_accuracy_gpu.sh runs/gpu
set -u
ROOT=${1:-runs/gpu}
BUDGET=${BUDGET:-400}
mkdir -p "$ROOT/logs"
export OMP_NUM_THREADS=1
run() {
  local name=$1; shift
  python -m elasticrec train "$@" --run-dir "$ROOT/$name" --no-progress \
    --set train.time_budget_s="$BUDGET" --set train.num_threads=1 > "$ROOT/logs/$name.log" 2>&1 &
}
# ML-1M (L=200): SASRec and five ELASTIC settings
run ml-1m-sasrec            --dataset ml-1m --model sasrec
run ml-1m-elastic           --dataset ml-1m --model elastic
run ml-1m-elastic-noimr     --dataset ml-1m --model elastic --set model.elastic.memory=false
run ml-1m-elastic-k32       --dataset ml-1m --model elastic --set model.elastic.n_dispatchers=32
run ml-1m-elastic-c64       --dataset ml-1m --model elastic --set model.elastic.chunk_size=64
run ml-1m-elastic-bn        --dataset ml-1m --model elastic --set model.elastic.memory_query_norm=batchnorm
# the other real datasets: SASRec and ELASTIC presets (ml-100k is small enough for a CPU)
for ds in beauty sports yelp lastfm beauty-bert4rec; do
  run "$ds-sasrec"  --dataset "$ds" --model sasrec
  run "$ds-elastic" --dataset "$ds" --model elastic
done
wait
python benchmarks/collect_runs.py "$ROOT" --json "$ROOT/summary.json" --md "$ROOT/summary.md"
