#!/usr/bin/env bash
# Every GPU claim of README.md and benchmarks/ measured in one go on one GPU, as JSON.
#
#   bash benchmarks/gpu_check.sh [--out DIR]        # on a CUDA machine; target: under 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run          # anywhere (CI): every command parses, every model builds
#
# What it measures (results in DIR, default benchmarks/results/gpu_check; summary in DIR/gpu_check.json):
#   1. inference, bf16 (model and inputs converted), channels-last, batch 1 latency and batch 256 throughput,
#      eager / torch.compile / CUDA graphs: EfficientMod-s deployed vs the official architecture (this
#      library's undeployed model, identical to the official code: tests/test_efficientmod.py), and
#      EfficientViT-M4 / MobileViTv2-1.0 deployed vs timm's models;
#   2. the papers' GPU claims (`efficientmod bench --paper`, eager);
#   3. training images/s (synthetic batch 256, bf16, channels-last, fused AdamW), eager and compiled;
#   4. dense prediction images/s (Mask R-CNN 1333x800, Semantic FPN 512x512), training and inference.
# The dry run executes the very same command lines on the CPU with toy sizes appended (argparse keeps
# the last value of an option): GPU backends become torch-cpu, --compile becomes --no-compile (inductor
# on a CPU takes minutes), images shrink to 32-64 px, one step each.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=benchmarks/results/gpu_check
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python}
if [[ $dry_run == 1 ]]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_dry.XXXXXX")
  trap 'rm -rf "$out"' EXIT
elif ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; run with --dry-run to check the commands on CPU" >&2
  exit 1
fi
mkdir -p "$out"
started=$SECONDS

# step NAME KIND MODULE ARGS...: python -m MODULE ARGS (output in $out/NAME.log, its tail shown on failure);
# in a dry run with KIND's toy arguments appended.
step() {
  local name=$1 kind=$2; shift 2
  local extra=()
  if [[ $dry_run == 1 ]]; then
    case "$kind" in
      bench) extra=(-b torch-cpu --img-size 64 --runs 1 --warmup 0 --batch 2 --throughput-runs 1 --threads 1) ;;
      train) extra=(--device cpu --no-compile --batch-size 2 --img-size 32 --benchmark-steps 1 --amp none --threads 1) ;;
      dense) extra=(--device cpu --size 64 64 --batch-size 1 --steps 1 --warmup 0) ;;
    esac
  fi
  echo "gpu_check: [$((SECONDS - started)) s] $name: $* ${extra[*]}" >&2
  if ! "$python" -m "$@" "${extra[@]}" > "$out/$name.log" 2>&1; then
    tail -n 30 "$out/$name.log" >&2
    echo "gpu_check: $name FAILED (log above)" >&2
    exit 1
  fi
}

# 1. ours vs the official architecture and timm: eager, compiled, CUDA graphs; bf16; batch 1 and 256
pairs=(efficientmod_s efficientmod_s@deploy efficientvit_m4@deploy mobilevitv2_100@deploy
       --compare efficientvit_m4 mobilevitv2_100)
step infer_eager_compiled bench efficientmod bench "${pairs[@]}" -b torch-cuda compile-cuda \
  --dtype bf16 --channels-last --batch 256 --runs 50 --warmup 10 --throughput-runs 10 --no-progress \
  --json "$out/infer_eager_compiled.json"
step infer_cudagraphs bench efficientmod bench "${pairs[@]}" -b cudagraph-cuda \
  --dtype bf16 --channels-last --batch 256 --runs 50 --warmup 10 --throughput-runs 10 --no-progress \
  --json "$out/infer_cudagraphs.json"
step infer_fp32_eager bench efficientmod bench "${pairs[@]}" -b torch-cuda \
  --dtype fp32 --channels-last --batch 256 --runs 50 --warmup 10 --throughput-runs 10 --no-progress \
  --json "$out/infer_fp32_eager.json"

# 2. the papers' GPU claims (EfficientMod-s vs EfficientFormerV2-S2 latency, EfficientViT-M2 vs MobileViT-XXS throughput)
step paper_claims bench efficientmod bench --paper -b torch-cuda --batch 256 --runs 50 --warmup 10 \
  --throughput-runs 10 --no-progress --json "$out/paper_claims.json"

# 3. training images/s, batch 256, bf16, channels-last, synthetic data (model compute only)
for model in efficientmod_s efficientvit_m4 mobilevitv2_100; do
  for compile in --no-compile --compile; do
    step "train_${model}${compile/--/_}" train efficientmod train --model "$model" --synthetic --num-classes 1000 \
      --batch-size 256 --img-size 224 --amp bf16 --channels-last "$compile" --benchmark-steps 30 \
      --output "$out/train_run_$model" --workers 0
  done
done

# 4. dense prediction images/s at the papers' sizes
step dense_det dense efficientmod.dense.speed --task det --mode train infer --model efficientmod_s --batch-size 2 \
  --steps 10 --warmup 3 --amp
step dense_seg dense efficientmod.dense.speed --task seg --mode train infer --model efficientmod_s --batch-size 4 \
  --steps 10 --warmup 3 --amp

# One summary: the bench rows, the training and dense figures, the machine, how long it all took.
"$python" - "$out" "$((SECONDS - started))" "$dry_run" <<'PY'
import json, re, sys
from pathlib import Path
out, seconds, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
summary = {"dry_run": dry, "seconds": seconds, "inference": {}, "training": {}, "dense": []}
for path in sorted(out.glob("*.json")):
    if path.name != "gpu_check.json":
        data = json.loads(path.read_text())
        summary["environment"] = data["environment"]
        summary["inference"][path.stem] = [{k: r[k] for k in ("model", "backend", "dtype", "latency_ms_median",
                                            "throughput_img_s", "throughput_batch", "error")} for r in data["rows"]]
        if "paper_claims" in data:
            summary["paper_claims"] = data["paper_claims"]
for path in sorted(out.glob("train_*.log")):
    found = re.search(r"benchmark: ([\d.]+) img/s \((.*)\)", path.read_text())
    summary["training"][path.stem] = {"img_per_s": float(found[1]), "setting": found[2]} if found else None
for path in sorted(out.glob("dense_*.log")):
    summary["dense"] += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
rows = sum(len(v) for v in summary["inference"].values())
measured = sum(r["latency_ms_median"] is not None for v in summary["inference"].values() for r in v)
print(f"gpu_check: {'dry run ' if dry else ''}done in {seconds} s: {measured}/{rows} inference rows measured, "
      f"{len(summary['training'])} training runs, {len(summary['dense'])} dense figures -> {out / 'gpu_check.json'}")
if measured < rows or len(summary["dense"]) < 4 or None in summary["training"].values():
    sys.exit(1)
PY
