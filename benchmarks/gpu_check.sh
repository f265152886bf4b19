#!/usr/bin/env bash
# Every GPU claim of README.md and benchmarks/ measured in one go on one GPU, as JSON, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS] [--jobs N]  # on a CUDA machine (budget 450, jobs 8)
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]  # anywhere (CI): every command parses, every model builds
#
# What it measures (DIR, default benchmarks/results/gpu_check; summary DIR/gpu_check.json, rewritten after every
# step). The eager steps come first (cheap, certain, and run before anything is compiled in the machine), the
# compiled ones last:
#   1. inference, bf16 (model and inputs converted), channels-last, batch-1 latency and batch-256 throughput, eager:
#      EfficientMod-s deployed vs the official architecture (this library's undeployed model, identical to the
#      official code: tests/test_efficientmod.py), EfficientViT-M4 / MobileViTv2-1.0 deployed vs timm's models;
#   2. training images/s (synthetic batch 256, bf16, channels-last, fused AdamW), eager;
#   3. dense prediction images/s (Mask R-CNN 1333x800, Semantic FPN 512x512), training and inference;
#   4. the papers' GPU claims (`efficientmod bench --paper`, fp32 eager);
#   5. inference as 1., in fp32, eager;
#   6. inference as 1., torch.compile and CUDA graphs;
#   7. training images/s as 2., compiled.
#
# How it fits into 8 minutes (the first H200 run of this script took ~15, nearly all compilation:
# benchmarks/gpu_h200.md):
#   - compile-cuda and cudagraph-cuda measure one compiled module per model (cudagraph-cuda captures the compiled
#     forward in a CUDA graph): one compilation per model and batch size instead of two;
#   - before any compiled step, every graph the compiled steps need is compiled by parallel untimed processes
#     ("warm", at most --jobs at once, 2 inductor compile workers each) into one inductor cache
#     (TORCHINDUCTOR_CACHE_DIR: FX-graph and AOTAutograd caches, kept between runs); the timed steps then load
#     their graphs from it. Nothing is timed while the warm-up processes run;
#   - a deadline of --budget seconds: each step runs under `timeout` with what is left (a bench step stopped by
#     it still writes the rows it measured), and a step with less than 15 s left is skipped, so the script ends
#     within the budget plus the summary, whatever happens; each step's seconds, the time expected for it and
#     its status are in gpu_check.json ("steps"), so the next GPU session sees where the time went.
# Estimated time on an H200, from the figures of benchmarks/gpu_h200.md (each step's estimate is the number
# after its name below, and is recorded as "expected_s"): ~410 s if the warm-up's cache serves the timed
# compilations (eager steps ~150 s, warm-up ~110 s, compiled steps ~150 s). If it does not (a cached compilation
# costing as much as a cold one), the work is ~700 s and the deadline stops the compiled inference step part-way
# (its rows so far kept, EfficientMod-s first) and skips compiled training, saying so. How the estimate was
# made, and what is assumed in it: benchmarks/gpu_h200.md, "What the next GPU session should do".
#
# The dry run executes the very same command lines on the CPU with toy sizes appended (argparse keeps the last
# value of an option): GPU backends become torch-cpu, --compile becomes --no-compile (inductor on a CPU takes
# minutes), images shrink to 32-64 px, one step each; of the warm-up processes it starts one of each kind (the
# others differ only in the model name). No deadline unless --budget is given.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=
budget=
jobs=8
usage="usage: $0 [--dry-run] [--out DIR] [--budget SECONDS (0: none)] [--jobs N]"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --out|--budget|--jobs)
      if [[ $# -lt 2 ]]; then echo "$usage" >&2; exit 2; fi
      declare "${1#--}=$2"; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
if [[ ! ${budget:-0} =~ ^[0-9]+$ || ! $jobs =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage" >&2; exit 2
fi
python=${PYTHON:-python}
if [[ $dry_run == 1 ]]; then
  budget=${budget:-0}
  if [[ -z $out ]]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_dry.XXXXXX")
    trap 'rm -rf "$out"' EXIT
  fi
else
  budget=${budget:-450}
  out=${out:-benchmarks/results/gpu_check}
  if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; run with --dry-run to check the commands on CPU" >&2
    exit 1
  fi
fi
mkdir -p "$out/warm"
rm -f "$out/steps.jsonl"
started=$SECONDS
deadline=$((started + budget))
MIN_STEP_S=15

export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/efficientmod-gpu-check-inductor}
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1  # the defaults, made explicit
mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
cache_entries_at_start=$(find "$TORCHINDUCTOR_CACHE_DIR" -type f | wc -l)

# The arguments every command of a kind gets in a dry run (appended: argparse keeps the last value).
toy_args() {
  case "$1" in
    bench) echo -b torch-cpu --img-size 64 --runs 1 --warmup 0 --batch 2 --throughput-runs 1 --threads 1 ;;
    train) echo --device cpu --no-compile --batch-size 2 --img-size 32 --benchmark-steps 1 --amp none --threads 1 ;;
    dense) echo --device cpu --size 64 64 --batch-size 1 --steps 1 --warmup 0 ;;
  esac
}

seconds_left() {
  if ((budget == 0)); then echo 0; else echo $((deadline - SECONDS)); fi
}

# record NAME STATUS SECONDS EXPECTED_S EXIT_CODE: one line of DIR/steps.jsonl
record() {
  printf '{"step": "%s", "status": "%s", "seconds": %d, "expected_s": %d, "exit_code": %d}\n' "$@" \
    >> "$out/steps.jsonl"
}

# launch LIMIT_S LOG KIND MODULE ARGS...: python -m MODULE ARGS (+ toy arguments in a dry run) > LOG, stopped
# with SIGTERM after LIMIT_S seconds (0: no limit) and killed 20 s later; returns its exit status (124: stopped).
launch() {
  local limit=$1 log=$2 kind=$3; shift 3
  local extra=()
  [[ $dry_run == 1 ]] && read -r -a extra <<< "$(toy_args "$kind")"
  if ((limit > 0)); then
    timeout --kill-after=20 "$limit" "$python" -m "$@" "${extra[@]}" > "$log" 2>&1
  else
    "$python" -m "$@" "${extra[@]}" > "$log" 2>&1
  fi
}

failures=0
# step NAME EXPECTED_S KIND MODULE ARGS...: one timed step, skipped when the deadline is too close.
step() {
  local name=$1 expected=$2 kind=$3; shift 3
  local left status=ok code=0 begun=$SECONDS note=""
  left=$(seconds_left)
  if ((budget > 0 && left < MIN_STEP_S)); then
    echo "gpu_check: [$((SECONDS - started)) s] $name SKIPPED: ${left} s left of the ${budget} s budget" >&2
    record "$name" skipped 0 "$expected" 0
    failures=$((failures + 1))
    summarize
    return
  fi
  ((budget > 0)) && note=", ${left} s left"
  echo "gpu_check: [$((SECONDS - started)) s] $name (expected ~${expected} s$note): $*" >&2
  launch "$left" "$out/$name.log" "$kind" "$@" || code=$?
  if ((code == 124 || code == 137)); then
    status=stopped_at_deadline
  elif ((code != 0)); then
    status=failed
  fi
  if [[ $status != ok ]]; then
    tail -n 30 "$out/$name.log" >&2
    echo "gpu_check: $name $status (exit $code, log above)" >&2
    failures=$((failures + 1))
  fi
  record "$name" "$status" $((SECONDS - begun)) "$expected" "$code"
  summarize
}

# warm NAME KIND MODULE ARGS... (queued) and warm_run EXPECTED_S: the untimed compilations, in parallel.
warm_jobs=()
warm() { warm_jobs+=("$(printf '%q ' "$@")"); }
warm_run() {
  local expected=$1 begun=$SECONDS left running=0 status=ok job name limit=0 warm_end
  left=$(seconds_left)
  if ((budget > 0 && left < MIN_STEP_S)); then
    record warm skipped 0 "$expected" 0
    return
  fi
  warm_end=$((SECONDS + (left < 150 ? left : 150)))  # a slow warm-up must not eat the timed steps' time
  [[ $dry_run == 1 ]] && warm_jobs=("${warm_jobs[0]}" "${warm_jobs[-1]}")
  echo "gpu_check: [$((SECONDS - started)) s] warm: ${#warm_jobs[@]} untimed compilations, $jobs at a time," \
    "into $TORCHINDUCTOR_CACHE_DIR (expected ~${expected} s)" >&2
  for job in "${warm_jobs[@]}"; do
    eval "set -- $job"
    name=$1; shift
    if ((running >= jobs)); then
      wait -n || status=partial
      running=$((running - 1))
    fi
    if ((budget > 0)); then
      limit=$((warm_end - SECONDS))
      if ((limit < 1)); then status=partial; break; fi
    fi
    TORCHINDUCTOR_COMPILE_THREADS=2 launch "$limit" "$out/warm/$name.log" "$@" &
    running=$((running + 1))
  done
  while ((running > 0)); do
    wait -n || status=partial  # a failed warm-up only costs its step the compilation
    running=$((running - 1))
  done
  record warm "$status" $((SECONDS - begun)) "$expected" 0
}

# One summary: the steps, the bench rows, the training and dense figures, the machine, the time taken.
summarize() {
  "$python" - "$out" "$((SECONDS - started))" "$dry_run" "$budget" "$TORCHINDUCTOR_CACHE_DIR" \
    "$cache_entries_at_start" <<'PY'
import json, re, sys
from pathlib import Path
out, seconds, dry, budget, cache, entries = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:]
steps = {}
for line in (out / "steps.jsonl").read_text().splitlines() if (out / "steps.jsonl").exists() else []:
    entry = json.loads(line)
    steps[entry.pop("step")] = entry
summary = {"dry_run": dry, "seconds": seconds, "budget_s": int(budget) or None, "steps": steps,
           "inductor_cache": {"dir": cache, "files_at_start": int(entries)},
           "inference": {}, "training": {}, "dense": []}
for path in sorted(out.glob("infer*.json")) + [out / "paper_claims.json"]:
    if path.exists():
        data = json.loads(path.read_text())
        summary["environment"] = data["environment"]
        summary["inference"][path.stem] = {"interrupted": data.get("interrupted", False), "rows": [
            {k: r[k] for k in ("model", "backend", "dtype", "latency_ms_median", "throughput_img_s",
                               "throughput_batch", "setup_s", "error")} for r in data["rows"]]}
        if "paper_claims" in data:
            summary["paper_claims"] = data["paper_claims"]
for path in sorted(out.glob("train_*.log")):
    found = re.search(r"benchmark: ([\d.]+) img/s \((.*)\)", path.read_text())
    summary["training"][path.stem] = {"img_per_s": float(found[1]), "setting": found[2]} if found else None
for path in sorted(out.glob("dense_*.log")):
    summary["dense"] += [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
}

# ---- the commands ---------------------------------------------------------------------------------------------
infer=(efficientmod_s efficientmod_s@deploy efficientvit_m4@deploy mobilevitv2_100@deploy
       timm:efficientvit_m4 timm:mobilevitv2_100)
bf16=(--dtype bf16 --channels-last --batch 256 --no-progress)
timed=(--runs 50 --warmup 10 --throughput-runs 10)
train_models=(efficientmod_s efficientvit_m4 mobilevitv2_100)
train=(--synthetic --num-classes 1000 --batch-size 256 --img-size 224 --amp bf16 --channels-last --workers 0)

for model in "${train_models[@]}"; do  # the longest compilations first
  warm "train_${model}" train efficientmod train --model "$model" "${train[@]}" --compile --benchmark-steps 1 \
    --output "$out/warm/train_run_$model"
done
for model in "${infer[@]}"; do
  warm "infer_${model//[:@]/_}" bench efficientmod bench "$model" -b compile-cuda "${bf16[@]}" --runs 1 --warmup 1 \
    --throughput-runs 1
done

# The eager steps first: cheap, and nothing compiled has run in the machine yet.
# 1. inference, bf16, eager
step infer_bf16_eager 20 bench efficientmod bench "${infer[@]}" -b torch-cuda "${bf16[@]}" "${timed[@]}" \
  --json "$out/infer_bf16_eager.json"

# 2. training images/s, batch 256, bf16, channels-last, synthetic data (model compute only), eager
for model in "${train_models[@]}"; do
  step "train_${model}_no_compile" 12 train efficientmod train --model "$model" "${train[@]}" --no-compile \
    --benchmark-steps 30 --output "$out/train_run_$model"
done

# 3. dense prediction images/s at the papers' sizes
step dense_det 30 dense efficientmod bench-dense --task det --mode train infer --model efficientmod_s --batch-size 2 \
  --steps 10 --warmup 3 --amp
step dense_seg 20 dense efficientmod bench-dense --task seg --mode train infer --model efficientmod_s --batch-size 4 \
  --steps 10 --warmup 3 --amp

# 4. the papers' GPU claims (EfficientMod-s vs EfficientFormerV2-S2 latency, EfficientViT-M2 vs MobileViT-XXS throughput)
step paper_claims 25 bench efficientmod bench --paper -b torch-cuda --batch 256 "${timed[@]}" --no-progress \
  --json "$out/paper_claims.json"

# 5. inference, fp32, eager
step infer_fp32_eager 20 bench efficientmod bench "${infer[@]}" -b torch-cuda --dtype fp32 --channels-last \
  --batch 256 --no-progress "${timed[@]}" --json "$out/infer_fp32_eager.json"

# Then the compiled steps, their graphs compiled beforehand by the untimed parallel warm-up.
warm_run 110
# 6. inference, bf16: torch.compile and CUDA graphs (EfficientMod-s, the headline pair, first)
step infer_bf16_compiled 85 bench efficientmod bench "${infer[@]}" -b compile-cuda cudagraph-cuda "${bf16[@]}" \
  "${timed[@]}" --json "$out/infer_bf16_compiled.json"

# 7. training images/s, compiled
for model in "${train_models[@]}"; do
  step "train_${model}_compile" 22 train efficientmod train --model "$model" "${train[@]}" --compile \
    --benchmark-steps 30 --output "$out/train_run_$model"
done

summarize
"$python" - "$out/gpu_check.json" "$failures" <<'PY'
import json, sys
summary, failures = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])
rows = [r for v in summary["inference"].values() for r in v["rows"]]
measured = sum(r["latency_ms_median"] is not None for r in rows)
trained = sum(v is not None for v in summary["training"].values())
print(f"gpu_check: {'dry run ' if summary['dry_run'] else ''}done in {summary['seconds']} s: "
      f"{measured}/{len(rows)} inference rows measured, {trained} training runs, {len(summary['dense'])} dense "
      f"figures, {failures} step(s) failed, stopped or skipped -> {sys.argv[1]}")
for name, step in summary["steps"].items():
    print(f"  {name:<34} {step['status']:<20} {step['seconds']:>4} s (expected ~{step['expected_s']} s)")
sys.exit(1 if failures or measured < len(rows) or trained < 6 or len(summary["dense"]) < 4 else 0)
PY
