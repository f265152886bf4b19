"""``efficientmod bench``: measure models side by side (see :mod:`efficientmod.bench`)."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from efficientmod.bench import (
    BACKENDS,
    DTYPES,
    BenchReport,
    BenchSettings,
    ClaimCheck,
    benchmark,
    check_claims,
    paper_claims,
    plot_accuracy_latency,
    resolve_models,
    write_csv,
    write_json,
)

DEFAULT_BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
        "examples:\n"
        "  efficientmod bench --paper\n"
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
        from efficientmod.ablation_bench import run_ablation_command  # imports the model families

        return run_ablation_command(args, settings)
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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: BenchReport) -> str:
    """The rows as an aligned text table, then the environment and skipped backends."""
    header = (f"{'model':<28} {'backend':<17} {'dtype':<5} {'thr':>3} {'input':>7} {'params M':>8} "
              f"{'GMACs':>6} {'top-1':>5} {'lat ms (med':>11} {'p90)':>7} {'runs':>4} "
              f"{'img/s':>9} {'@batch':>6}  note")
    lines = [header, "-" * len(header)]
    for r in report.rows:
        lines.append(
            f"{r.model:<28} {r.backend:<17} {r.dtype:<5} {_fmt(r.threads, 'd'):>3} "
            f"{r.input_size[1]:>3}x{r.input_size[2]:<3} {r.params / 1e6:>8.3f} "
            f"{_fmt(r.macs and r.macs / 1e9, '.3f'):>6} "
            f"{_fmt(r.top1, '.1f'):>5} {_fmt(r.latency_ms_median, '.2f'):>11} {_fmt(r.latency_ms_p90, '.2f'):>7} "
            f"{r.latency_runs:>4} {_fmt(r.throughput_img_s, ',.1f'):>9} {r.throughput_batch or '-':>6}  {r.error}"
        )
    env = report.environment
    lines.append("")
    lines.append(f"machine: {env['cpu']} ({env['logical_cpus']} logical CPUs, 1-min load "
                 f"{_fmt(env['load_average_1m'], '.2f')} before, {_fmt(env.get('load_average_1m_after'), '.2f')} after)"
                 + (f", GPU {env['gpu']} (CUDA {env['cuda']})" if env["gpu"] else ", no GPU"))
    settings = report.settings
    throughput = (f"throughput over {settings.throughput_runs} batches" if settings.batch != 0
                  else "throughput not measured (--batch 0)")
    lines.append(f"software: torch {env['torch']}, onnxruntime {env['onnxruntime']}, timm {env['timm']}, "
                 f"python {env['python']}; warm-up {settings.warmup} calls, {throughput}")
    lines += [f"skipped {backend}: {reason}" for backend, reason in report.skipped.items()]
    return "\n".join(lines)


def format_claims(checks: list[ClaimCheck]) -> str:
    """The measured speed-ups of ours over the peers, next to the papers' figures."""
    header = f"{'ours':<22} {'vs':<26} {'metric':<10} {'backend':<17} {'here':>6} {'paper':>6}  paper's statement"
    lines = ["speed-up of ours over the peer: measured here vs the papers", header, "-" * len(header)]
    for c in checks:
        here = "-" if c.measured_speedup is None else f"{c.measured_speedup:.2f}x"
        paper = "-" if c.paper_speedup is None else f"{c.paper_speedup:.2f}x"
        flags = [c.why_missing and f"[{c.why_missing}]", c.note and f"[{c.note}]"]
        note = "  ".join(filter(None, [c.stated, *flags]))
        lines.append(f"{c.ours:<22} {c.peer:<26} {c.metric:<10} {c.backend:<14} {here:>6} {paper:>6}  {note}")
    return "\n".join(lines)
