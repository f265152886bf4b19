"""``efficientmod bench``: measure models side by side (see :mod:`efficientmod.bench`);
``efficientmod bench-dense``: images per second of the dense prediction models
(:func:`efficientmod.dense.speed.measure`)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from efficientmod.bench import (
    BACKENDS,
    DTYPES,
    BenchReport,
    BenchSettings,
    benchmark,
    check_claims,
    format_claims,
    format_report,
    format_versus_reference,
    paper_claims,
    plot_accuracy_latency,
    resolve_models,
    versus_reference,
    write_csv,
    write_json,
)
from efficientmod.runtime import AMP_CHOICES

DEFAULT_BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_bench(subparsers)
    _add_bench_dense(subparsers)


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    backends = "\n".join(f"  {b.name:<18} {b.help}" for b in BACKENDS.values())
    parser = subparsers.add_parser(
        "bench",
        help="measure parameters, MACs, latency and throughput of models side by side",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure models the same way on every backend: latency at batch 1 (median "
        "and p90 of --runs timed calls after --warmup untimed ones) and throughput at --batch.",
        epilog=f"backends:\n{backends}\n\nmodel specs:\n"
        "  efficientmod_s        a registered model (`efficientmod models` lists them)\n"
        "  'efficientvit_m*'     a glob over the registered models\n"
        "  timm:mobilevit_xxs    timm's own implementation of a model\n"
        "  efficientmod_s@deploy the model after efficientmod.deploy (inference fusion)\n\n"
        "NAME@deploy beside NAME (the official architecture) or timm:NAME adds the table 'ours against\n"
        "the reference': ours / the reference's fastest artifact, and ours / the reference in ORT fp32.\n\n"
        "examples:\n"
        "  efficientmod bench --paper\n"
        "  efficientmod bench efficientmod_s efficientmod_s@deploy -b ort-cpu openvino-cpu-bf16 \\\n"
        "      openvino-cpu-int8 --threads 1 --batch 32\n"
        "  efficientmod bench 'efficientmod_*' --compare timm:efficientformerv2_s2 -b torch-cpu ort-cpu\n"
        "  efficientmod bench efficientmod_s -b torch-cuda compile-cuda --dtype bf16 --batch 256",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model specs or glob patterns")
    parser.add_argument("--compare", nargs="+", default=[], metavar="NAME",
                        help="timm peer models measured the same way (the 'timm:' prefix is optional)")
    parser.add_argument("--paper", action="store_true",
                        help="the papers' comparisons (EfficientMod-s vs EfficientFormerV2-S2, "
                        "EfficientViT-M2 vs MobileViT-XXS) with the measured ratios next to the papers'")
    parser.add_argument("--ablation", nargs="?", const="efficientmod_xxs", default=None, metavar="BASE",
                        help="measure the EfficientMod ablations of BASE (default efficientmod_xxs); MODEL "
                        "arguments then pick ablations by name (docs/ablations.md)")
    parser.add_argument("-b", "--backend", nargs="+", default=None, metavar="BACKEND",
                        help=f"backends to run (default: {' '.join(DEFAULT_BACKENDS)}; "
                        "those this machine lacks are skipped with a note)")
    parser.add_argument("--threads", type=int, default=4,
                        help="CPU threads of the torch-cpu, ort-* and openvino-* backends "
                        "(default 4, as the EfficientMod paper)")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per model and backend (default 50)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed calls before timing; they absorb compilation and first-call set-up "
                        "(default 10; raised to 1 on the CUDA backends)")
    parser.add_argument("--batch", type=int, default=None,
                        help="throughput batch size (default 16 on CPU backends, 256 on GPU; 0 skips throughput)")
    parser.add_argument("--throughput-runs", type=int, default=10,
                        help="timed batches for throughput (default 10)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="dtype of model and inputs on the CUDA backends (CPU: fp32, or the backend's bf16 / int8)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (torch backends)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="input resolution for every model (default: each model's own)")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the environment as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write every figure and the environment as CSV")
    parser.add_argument("--plot", metavar="PATH.png",
                        help="plot paper top-1 against measured latency (Pareto front marked)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    claims = paper_claims() if args.paper else []
    specs = list(args.models) + [c if c.startswith("timm:") else f"timm:{c}" for c in args.compare]
    for claim in claims:
        specs += [claim["ours"], claim["peer"]]
    if not specs and not args.ablation:
        raise ValueError("name at least one model, --compare a timm model, or use --paper")
    settings = BenchSettings(
        backends=tuple(args.backend or DEFAULT_BACKENDS), threads=args.threads, runs=args.runs,
        warmup=args.warmup, batch=args.batch, throughput_runs=args.throughput_runs,
        dtype=args.dtype, channels_last=args.channels_last,
    )
    if args.ablation:
        return _run_ablations(args, settings)
    if args.threads > (os.cpu_count() or args.threads):
        print(f"efficientmod bench: note: --threads {args.threads} exceeds the {os.cpu_count()} "
              "logical CPUs of this machine", file=sys.stderr)
    for ours in dict.fromkeys(c["ours"] for c in claims if c["ours"].startswith("timm:")):
        print(f"efficientmod bench: note: {ours.removeprefix('timm:')} is not registered in this "
              f"library yet; --paper uses {ours}", file=sys.stderr)
    candidates = resolve_models(list(dict.fromkeys(specs)), img_size=args.img_size)
    with _terminate_as_interrupt():
        report = benchmark(candidates, settings, progress=not args.no_progress)
    checks = check_claims(report, claims)
    print(format_report(report))
    ratios = versus_reference(report)
    if ratios:
        print()
        print(format_versus_reference(ratios))
    if checks:
        print()
        print(format_claims(checks))
    if args.json:
        write_json(report, args.json, checks)
    if args.csv:
        write_csv(report, args.csv)
    if args.plot:
        plot_accuracy_latency(report, args.plot)
    if report.interrupted:
        return 130
    return _exit_status(report, explicit_backends=bool(args.backend))


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (what `timeout` and job schedulers send) stops the run like Ctrl-C: the rows
    measured so far are still printed and written."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_status(report: BenchReport, explicit_backends: bool) -> int:
    """1 when nothing was measured, or when a backend named with -b is missing here
    (the default backends a machine lacks are only noted)."""
    if not any(r.latency_ms_median is not None or r.throughput_img_s is not None for r in report.rows):
        print("efficientmod bench: nothing was measured (every backend skipped or failed)", file=sys.stderr)
        return 1
    if explicit_backends and report.skipped:
        print(f"efficientmod bench: named backend(s) not available here: {', '.join(report.skipped)}", file=sys.stderr)
        return 1
    return 0


def _run_ablations(args: argparse.Namespace, settings: BenchSettings) -> int:
    """``efficientmod bench --ablation [BASE] [NAME ...]``: the named ablations (all by
    default) of BASE measured with the bench options; prints the Markdown table and
    writes ``--json`` / ``--csv`` like any benchmark."""
    from efficientmod.bench.ablations import check_ablation_request, format_ablation_table, run_ablations

    combined = [flag for flag, used in (("--compare", args.compare), ("--paper", args.paper), ("--plot", args.plot))
                if used]
    if combined:
        raise ValueError(f"--ablation measures the ablations only; drop {', '.join(combined)}")
    check_ablation_request(args.ablation, args.models)
    report = run_ablations(args.ablation, args.models or None, settings, args.img_size,
                           progress=not args.no_progress)
    print(format_ablation_table(report, args.ablation))
    if args.json:
        write_json(report, args.json)
    if args.csv:
        write_csv(report, args.csv)
    return 0


def _add_bench_dense(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-dense",
        help="images per second of Mask R-CNN / Semantic FPN training and inference on random data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Images per second of Mask R-CNN and Semantic FPN training and inference, at the papers' "
        "input sizes by default (COCO 1333x800, 80 classes; ADE20K 512x512, 150 classes), on random images "
        "with random objects / label maps. One JSON line per mode.",
        epilog="example:\n  efficientmod bench-dense --task det --mode train --model efficientmod_s --device cuda",
    )
    parser.add_argument("--task", choices=("det", "seg"), required=True, help="Mask R-CNN or Semantic FPN")
    parser.add_argument("--mode", choices=("train", "infer"), nargs="+", default=["train", "infer"],
                        help="training steps, inference or both (default both, one JSON line each)")
    parser.add_argument("--model", default="efficientmod_s", help="backbone")
    parser.add_argument("--batch-size", type=int, default=2, help="images per iteration")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size (default: the paper's)")
    parser.add_argument("--steps", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--amp", choices=AMP_CHOICES, nargs="?", const="bf16", default="none",
                        help="mixed precision, as in `efficientmod det/seg train`: auto (bf16 on GPU, none on CPU), "
                        "bf16 (also a bare --amp, which meant bf16 before the flag took a choice), fp16 (with "
                        "loss scaling) or none (default)")
    parser.set_defaults(func=run_bench_dense)


def run_bench_dense(args: argparse.Namespace) -> int:
    import torch

    from efficientmod.dense.speed import measure  # imports the detection and segmentation engines

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for mode in args.mode:
        print(json.dumps(measure(args.task, mode, args.model, args.batch_size, args.size, args.steps, args.warmup,
                                 device, args.amp)), flush=True)
    return 0
