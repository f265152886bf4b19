"""The CPU deployment frontier: deployed models in ONNX Runtime and OpenVINO, fp32 / bf16 /
int8, against the export they must beat, timed *interleaved* in one process.

    OMP_NUM_THREADS=1 python benchmarks/cpu_frontier.py --json benchmarks/results/cpu_frontier.json

Each group is one model: its baseline (the first entry) and the deployed model on every
CPU backend of ``efficientmod bench`` (``ort-cpu``, ``ort-cpu-int8``, ``openvino-cpu``,
``openvino-cpu-bf16``, ``openvino-cpu-int8``; prepared exactly as the bench prepares them).
Baselines: for EfficientMod, this library's *undeployed* model exported to ONNX (the
official code is not available offline; the undeployed model reproduces it exactly, see
tests/test_efficientmod.py); for EfficientViT-M4 and MobileViTv2-1.0, timm's model. All run
in ORT fp32 as the baseline, prepared by the same ``ort-cpu`` backend as ours: the same
export settings on both sides (the backend's ``OnnxExport``: TorchScript exporter, opset 18,
static shapes, one export per batch size; tests/test_bench.py checks it). Figures recorded
before 2026-12-02 used a dynamic-batch ORT export on both sides. ``--reference-everywhere``
also runs the reference on every backend and adds the ratio of each row to the reference's
fastest artifact (issue 20's headline), beside the ratio to the ORT fp32 baseline.

Latency: batch 1, ``--threads`` (default 1) threads; after ``--warmup`` untimed rounds, each
of ``--rounds`` rounds runs every entry of the group once in a rotating order, so load from
other processes hits all entries alike. Throughput: batch ``--batch`` (default 32) with
``--batch-threads`` (default: all cores), ``--batch-rounds`` interleaved rounds of one batch
each. Prints a markdown table per group (median, p10, ratio to the baseline) and writes
every time, the command, the machine and its load before and after each group as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from efficientmod.bench import BACKENDS, BackendOptions, environment, resolve_models
from efficientmod.checkpoint import atomic_write

DEPLOYED_BACKENDS = ("ort-cpu", "ort-cpu-int8", "openvino-cpu", "openvino-cpu-bf16", "openvino-cpu-int8")
GROUPS = {  # model -> its baseline spec
    "efficientmod_s": "efficientmod_s",
    "efficientmod_xs": "efficientmod_xs",
    "efficientmod_xxs": "efficientmod_xxs",
    "efficientvit_m4": "timm:efficientvit_m4",
    "mobilevitv2_100": "timm:mobilevitv2_100",
}


def interleaved(steps: list, rounds: int, warmup: int) -> list[list[float]]:
    """Seconds of each step in each of ``rounds`` rounds (rotating order), after ``warmup`` rounds."""
    times = [[] for _ in steps]
    for round_ in range(warmup + rounds):
        for i in np.roll(np.arange(len(steps)), round_):
            start = time.perf_counter()
            steps[i]()
            if round_ >= warmup:
                times[i].append(time.perf_counter() - start)
    return times


def prepare(entries, threads: int, batch: int):
    """One step per entry, each prepared by its backend exactly as ``efficientmod bench`` does."""
    steps = []
    for label, model, input_size, backend, _ in entries:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        steps.append(BACKENDS[backend].prepare(model, input_size, BackendOptions(threads=threads))(batch))
        print(f"  prepared {label} on {backend} (threads {threads}, batch {batch}) in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return steps


def group_entries(name: str, baseline: str, backends, img_size: int | None = None,
                  reference_everywhere: bool = False) -> list[tuple]:
    """(label, model, input size, backend, role) of a group: the baseline in ORT fp32 first,
    with ``reference_everywhere`` the same reference model on each of the other ``backends``
    (role "reference"), then the deployed model on each of ``backends`` (role "ours")."""
    base, = resolve_models([baseline], img_size)
    ours, = resolve_models([f"{name}@deploy"], img_size)
    entries = [(f"{base.label} (baseline)", base.model, base.input_size, "ort-cpu", "reference")]
    if reference_everywhere:
        entries += [(f"{base.label} (reference)", base.model, base.input_size, b, "reference")
                    for b in backends if b != "ort-cpu"]
    return entries + [(ours.label, ours.model, ours.input_size, b, "ours") for b in backends]


def add_ratios(rows: list[dict]) -> None:
    """Each row's ratios to the baseline (the first row: the reference in ORT fp32) and to the
    reference's fastest artifact (lowest median / p10, highest images/s over the reference rows)."""
    references = [r for r in rows if r["role"] == "reference"]
    fastest_median = min(r["median_ms"] for r in references)
    fastest_p10 = min(r["p10_ms"] for r in references)
    for row in rows:
        row["median_ratio"] = row["median_ms"] / rows[0]["median_ms"]
        row["p10_ratio"] = row["p10_ms"] / rows[0]["p10_ms"]
        row["median_ratio_to_fastest_reference"] = row["median_ms"] / fastest_median
        row["p10_ratio_to_fastest_reference"] = row["p10_ms"] / fastest_p10
        if row["throughput_img_s"] is not None:
            row["throughput_ratio"] = row["throughput_img_s"] / rows[0]["throughput_img_s"]
            row["throughput_ratio_to_fastest_reference"] = (
                row["throughput_img_s"] / max(r["throughput_img_s"] for r in references))


def run_group(name: str, baseline: str, args) -> dict:
    entries = group_entries(name, baseline, args.backends, reference_everywhere=args.reference_everywhere)
    load_before = os.getloadavg()[0]
    latency = interleaved(prepare(entries, args.threads, 1), args.rounds, args.warmup)
    throughput = None
    if args.batch:
        seconds = interleaved(prepare(entries, args.batch_threads, args.batch), args.batch_rounds, 1)
        throughput = [args.batch / float(np.median(s)) for s in seconds]
    rows = []
    for i, (label, _, input_size, backend, role) in enumerate(entries):
        ms = 1e3 * np.asarray(latency[i])
        rows.append(dict(model=label, backend=backend, role=role, input=list(input_size),
                         median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
                         min_ms=float(ms.min()), latency_ms=ms.round(4).tolist(),
                         throughput_img_s=None if throughput is None else throughput[i]))
    add_ratios(rows)
    return dict(group=name, baseline=baseline, load_1m_before=load_before, load_1m_after=os.getloadavg()[0],
                rows=rows)


def markdown(group: dict, args) -> str:
    """The group as a table; with ``--reference-everywhere`` also the median ratio to the
    reference's fastest artifact (the headline) and its throughput counterpart."""
    fastest = args.reference_everywhere
    extra = " median × ref's fastest | img/s × ref's fastest |" if fastest else ""
    lines = [f"**{group['group']}** (load {group['load_1m_before']:.1f} → {group['load_1m_after']:.1f})", "",
             f"| model | backend | median ms | p10 ms | median ratio | p10 ratio | img/s @{args.batch} "
             f"({args.batch_threads} thr) | ratio |{extra}", "|---|---|---|---|---|---|---|---|" + "---|" * 2 * fastest]
    for r in group["rows"]:
        measured = r["throughput_img_s"] is not None
        tput = f"{r['throughput_img_s']:.1f}" if measured else "-"
        tratio = f"{r['throughput_ratio']:.2f}" if measured else "-"
        line = (f"| {r['model']} | {r['backend']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
                f"{r['median_ratio']:.3f} | {r['p10_ratio']:.3f} | {tput} | {tratio} |")
        if fastest:
            to_fastest = f"{r['throughput_ratio_to_fastest_reference']:.2f}" if measured else "-"
            line += f" {r['median_ratio_to_fastest_reference']:.3f} | {to_fastest} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", default=list(GROUPS), help=f"models (default: {' '.join(GROUPS)})")
    parser.add_argument("-b", "--backends", nargs="+", default=list(DEPLOYED_BACKENDS),
                        help="backends of the deployed model (default: all five CPU backends)")
    parser.add_argument("--reference-everywhere", action="store_true",
                        help="also run the reference on every backend (same export settings), and report "
                        "ours against the reference's fastest artifact")
    parser.add_argument("--threads", type=int, default=1, help="latency threads (default 1)")
    parser.add_argument("--rounds", type=int, default=100, help="timed latency rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed latency rounds (default 10)")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch, 0 skips it (default 32)")
    parser.add_argument("--batch-threads", type=int, default=os.cpu_count(), help="throughput threads (default: all)")
    parser.add_argument("--batch-rounds", type=int, default=5, help="timed throughput rounds (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    missing = {b: reason for b in args.backends if (reason := BACKENDS[b].unavailable_reason())}
    if missing:
        parser.error(f"backends not available here: {missing}")
    result = dict(command=" ".join([os.path.basename(sys.executable), *sys.argv]),
                  environment=environment(args.threads), settings=vars(args) | {"json": str(args.json)}, groups=[])
    for name in args.groups:
        print(f"{name}: preparing", file=sys.stderr, flush=True)
        group = run_group(name, GROUPS[name], args)
        result["groups"].append(group)
        print(markdown(group, args) + "\n", flush=True)
        if args.json:  # after every group: a long run interrupted keeps what it measured
            text = json.dumps(result, indent=1)
            atomic_write(args.json, lambda tmp, text=text: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
