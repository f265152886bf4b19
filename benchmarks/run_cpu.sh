#!/usr/bin/env bash
# The CPU runs recorded in benchmarks/README.md (results in benchmarks/results/).
# Usage: bash benchmarks/run_cpu.sh   (from the repository root, with `efficientmod` on PATH)
set -euo pipefail
out=benchmarks/results
mkdir -p "$out"
short=(--runs 30 --warmup 5 --throughput-runs 5 --no-progress)

# The papers' comparisons at 1 thread (EfficientViT's CPU protocol), 2 (all cores here), 4 (EfficientMod's).
for threads in 1 2 4; do
  efficientmod bench --paper --threads "$threads" "${short[@]}" \
    --json "$out/cpu_paper_threads$threads.json" | tee "$out/cpu_paper_threads$threads.txt"
done

# Every registered variant and the two timm peers, batch-1 latency, 1 thread.
efficientmod bench 'efficientmod_*' 'efficientvit_m*' 'mobilevitv2_*' --compare efficientformerv2_s2 mobilevit_xxs \
  -b torch-cpu ort-cpu --threads 1 --runs 20 --warmup 3 --batch 0 --no-progress \
  --json "$out/cpu_variants_threads1.json" --csv "$out/cpu_variants_threads1.csv" \
  --plot "$out/cpu_variants_threads1.png" | tee "$out/cpu_variants_threads1.txt"
