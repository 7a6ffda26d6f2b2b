#!/bin/bash
# One seed of the live `edge` comparison on the llama.cpp executor (docs/BENCHMARKS.md):
# both policies on identical arrivals (same seed, same latency model file, so the same
# rate and SLOs), in the order given. Run alone on the machine (under
# /work/tools/cpu-exclusive where it exists).
#   bash scripts/edge_llamacpp_seed.sh SEED N "slice vllm"
# OUT (default docs/bench/llamacpp) is where the runs go; PROFILE (default $OUT/profile_edge.json,
# from `sliceserve profile --backend llamacpp --threads 2 --out ...`) is the latency model.
# Each run also writes its iterations (shape, time, KV stream runs) as $OUT/edge_*.iterations.jsonl.
set -u
seed=$1; n=$2; order=${3:-"slice vllm"}
out=${OUT:-docs/bench/llamacpp}
profile=${PROFILE:-$out/profile_edge.json}
for policy in $order; do
  .venv/bin/sliceserve run --backend llamacpp --threads 2 -w edge -p "$policy" --load 1.5 \
    -l "$profile" -n "$n" --seed "$seed" --max-time-s 170 --no-table \
    --iterations-out "$out/edge_${policy}_seed${seed}.iterations.jsonl" \
    --out "$out/edge_${policy}_seed${seed}.json" 2> "$out/edge_${policy}_seed${seed}.log"
  echo "$policy seed $seed rc=$?"
done
