#!/bin/bash
# One seed of the live `edge` comparison on the llama.cpp executor (docs/BENCHMARKS.md):
# both policies on identical arrivals (same seed, same latency model file, so the same
# rate and SLOs), in the order given. Run under /work/tools/cpu-exclusive.
#   bash scripts/edge_llamacpp_seed.sh SEED N "slice vllm"
set -u
seed=$1; n=$2; order=${3:-"slice vllm"}
out=docs/bench/llamacpp
for policy in $order; do
  .venv/bin/sliceserve run --backend llamacpp --threads 2 -w edge -p "$policy" --load 1.5 \
    -l $out/profile_edge.json -n "$n" --seed "$seed" --max-time-s 170 --no-table \
    --out $out/edge_${policy}_seed${seed}.json 2> $out/edge_${policy}_seed${seed}.log
  echo "$policy seed $seed rc=$?"
done
