"""The EfficientMod ablations measured side by side (``efficientmod bench --ablation``).

Each named ablation of :data:`efficientmod.models.ablations.ABLATIONS` is built on one
base variant and measured by :func:`efficientmod.bench.measure.benchmark` (same protocol, same
backends as every other benchmark); :func:`format_ablation_table` lays the figures out as
one Markdown row per ablation, with latency relative to the unmodified block.
"""
from __future__ import annotations

from collections.abc import Iterable

from efficientmod.bench.measure import benchmark
from efficientmod.bench.protocol import BenchReport, BenchSettings, Candidate
from efficientmod.models import model_info
from efficientmod.models.ablations import ABLATIONS, create_ablation

__all__ = ["ablation_candidates", "check_ablation_request", "run_ablations", "format_ablation_table"]

REFERENCE = "efficientmod"


def ablation_candidates(base: str = "efficientmod_xxs", names: Iterable[str] | None = None,
                        img_size: int | None = None) -> list[Candidate]:
    """One :class:`Candidate` per ablation (all of them by default), labelled by its name;
    the unmodified block (the reference of the ratios) always comes first; a name given
    twice is measured once."""
    names = list(dict.fromkeys([REFERENCE, *(names or ABLATIONS)]))
    info = model_info(base)
    input_size = info.input_size if img_size is None else (info.input_size[0], img_size, img_size)
    return [Candidate(name, info.family, create_ablation(name, base), tuple(input_size)) for name in names]


def run_ablations(base: str = "efficientmod_xxs", names: Iterable[str] | None = None,
                  settings: BenchSettings | None = None, img_size: int | None = None,
                  progress: bool = False) -> BenchReport:
    """Measure the ablations of ``base`` (see :func:`efficientmod.bench.measure.benchmark`;
    ``settings`` default to :class:`BenchSettings`'s)."""
    return benchmark(ablation_candidates(base, names, img_size), settings or BenchSettings(), progress=progress)


def _changes(name: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in ABLATIONS[name].items()) or "(official)"


def format_ablation_table(report: BenchReport, base: str, statistic: str = "median") -> str:
    """A Markdown table: one row per ablation; per backend the batch-1 latency (ms; the
    ``statistic`` of the timed runs: median, p90, mean or min) and its ratio to the
    ``efficientmod`` row when that row was measured. On a busy machine ``min`` is the
    steadiest figure."""
    if statistic not in ("median", "p90", "mean", "min"):
        raise ValueError(f"unknown statistic {statistic!r}; choose median, p90, mean or min")
    field_name = f"latency_ms_{statistic}"
    backends = [b for b in report.settings.backends if b not in report.skipped]
    header = ["ablation", "changes", "params M", "GMACs"]
    for backend in backends:
        header += [f"{backend} ms ({statistic})", "× ref"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = list(dict.fromkeys(r.model for r in report.rows))
    for name in names:
        first = next(r for r in report.rows if r.model == name)
        macs = f"{first.macs / 1e9:.3f}" if first.macs is not None else "-"
        cells = [name, _changes(name), f"{first.params / 1e6:.3f}", macs]
        for backend in backends:
            row, ref = report.row(name, backend), report.row(REFERENCE, backend)
            latency = getattr(row, field_name) if row else None
            if latency is None:
                cells += [(row.error if row else "") or "-", "-"]
                continue
            ref_latency = getattr(ref, field_name) if ref else None
            cells += [f"{latency:.2f}", f"{latency / ref_latency:.2f}" if ref_latency else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    env, settings = report.environment, report.settings
    input_size = report.rows[0].input_size if report.rows else model_info(base).input_size
    load = env["load_average_1m"]  # None where the OS has no load average
    lines += [
        "",
        f"base {base}, input {input_size[1]}x{input_size[2]}, batch 1, {statistic} of {settings.runs} runs "
        f"after {settings.warmup} warm-up calls, {settings.threads} CPU thread(s); "
        f"{env['cpu']} ({env['logical_cpus']} logical CPUs, load {'unknown' if load is None else f'{load:.2f}'})"
        + (f", GPU {env['gpu']}" if env["gpu"] else ", no GPU"),
    ]
    lines += [f"skipped {backend}: {reason}" for backend, reason in report.skipped.items()]
    return "\n".join(lines)


def check_ablation_request(base: str, names: list[str]) -> None:
    """A ``ValueError`` naming the fix when ``base`` is an ablation rather than a model (the
    command line reads ``--ablation van`` as BASE 'van') or a name is not an ablation."""
    if base in ABLATIONS:
        raise ValueError(f"--ablation takes the BASE model first, then ablation names: "
                         f"--ablation efficientmod_xxs {' '.join([base, *names])}")
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; with --ablation, name ablations from "
                         f"{', '.join(ABLATIONS)}")
