"""Batch-1 ONNX Runtime CPU latency of deployed exports against their baselines, measured
*interleaved*: each round runs every model once (in a rotating order), so load from other
processes on a shared machine hits all of them alike. ``efficientmod bench`` measures one
model after the other; this script exists for noisy machines.

    python benchmarks/deploy_ort_cpu.py efficientmod_s efficientmod_s@deploy --threads 1

Model specs are those of ``efficientmod bench`` (``NAME``, ``NAME@deploy``, ``timm:NAME``).
Every model is exported as the bench's ``ort-cpu`` backend exports it (its ``OnnxExport``:
opset 18, static batch 1; the same settings for every model) and run with every graph
optimization on. Prints a markdown table: median, p10 and
minimum latency, the ratio of each median / p10 to the first model's, and the number of
nodes ONNX Runtime runs after its optimizations.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from efficientmod.bench import BACKENDS, environment, resolve_models
from efficientmod.export import ort_session


def optimized_node_count(path: Path, threads: int) -> int:
    optimized = path.with_suffix(".opt.onnx")
    ort_session(path, threads, optimized_path=optimized)
    return len(onnx.load(str(optimized)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model specs; ratios are relative to the first")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=300, help="timed rounds (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    candidates = resolve_models(args.models)
    export = BACKENDS["ort-cpu"].export
    sessions, nodes, inputs = [], [], []
    for candidate in candidates:
        with tempfile.TemporaryDirectory(prefix="deploy-ort-") as folder:
            path = export.write(candidate.model.eval(), folder, candidate.input_size, batch=1)
            sessions.append(ort_session(path, args.threads))
            nodes.append(optimized_node_count(path, args.threads))
            inputs.append({"input": np.random.default_rng(0).standard_normal(
                (1, *candidate.input_size), dtype=np.float32)})
    times = [[] for _ in candidates]
    for round_ in range(args.warmup + args.rounds):
        order = np.roll(np.arange(len(candidates)), round_)
        for i in order:
            start = time.perf_counter()
            sessions[i].run(None, inputs[i])
            if round_ >= args.warmup:
                times[i].append((time.perf_counter() - start) * 1e3)

    env = environment(args.threads)
    print(f"ONNX Runtime {env['onnxruntime']}, {env['cpu']}, {args.threads} thread(s), batch 1, "
          f"{args.rounds} interleaved rounds, load average {env['load_average_1m']}")
    print("| model | input | median ms | p10 ms | min ms | median ratio | p10 ratio | ORT nodes |")
    print("|---|---|---|---|---|---|---|---|")
    base_median, base_p10 = np.median(times[0]), np.percentile(times[0], 10)
    for candidate, t, n in zip(candidates, times, nodes, strict=True):
        median, p10 = np.median(t), np.percentile(t, 10)
        size = "x".join(map(str, candidate.input_size[1:]))
        print(f"| {candidate.label} | {size} | {median:.2f} | {p10:.2f} | {min(t):.2f} | "
              f"{median / base_median:.3f} | {p10 / base_p10:.3f} | {n} |")


if __name__ == "__main__":
    main()
