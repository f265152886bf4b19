"""Ours against the reference, the headline of a fair CPU comparison (issue 20).

A deployed model ``NAME@deploy`` is compared with its *reference* measured in the same run:
``NAME`` (the undeployed model: the official architecture, which it reproduces exactly) or,
when that is absent, ``timm:NAME`` (timm's implementation of the same network). Every
backend exports both sides through the same :class:`~efficientmod.bench.backends.OnnxExport`
settings, so the reference gets whatever a runtime gives any model. Two ratios per row of
ours (lower is faster):

* to the reference's **fastest artifact**: its lowest median latency over every backend of
  the run (ORT fp32, OpenVINO f32 / bf16 / int8, ...): what ours adds beyond the runtime;
* to the reference in **ONNX Runtime fp32** (``ort-cpu``), the common baseline.

Throughput (images/s at the run's batch) is compared the same way, as ours / the
reference's highest.
"""
from __future__ import annotations

from dataclasses import dataclass

from efficientmod.bench.protocol import BenchReport, BenchRow

__all__ = ["BASELINE_BACKEND", "ReferenceRatio", "reference_of", "versus_reference", "format_versus_reference"]

BASELINE_BACKEND = "ort-cpu"


@dataclass(frozen=True)
class ReferenceRatio:
    """One row of ours beside its reference's fastest artifact and its ORT fp32 row."""

    ours: str
    backend: str
    latency_ms: float | None
    reference: str
    fastest_backend: str | None
    fastest_ms: float | None
    vs_fastest: float | None
    baseline_ms: float | None  # the reference on BASELINE_BACKEND
    vs_baseline: float | None
    throughput_img_s: float | None
    best_throughput_backend: str | None
    vs_best_throughput: float | None  # ours / the reference's highest images/s (higher is faster)


def reference_of(label: str, labels) -> str | None:
    """The label of ``label``'s reference among ``labels``: ``NAME`` for ``NAME@deploy``,
    else ``timm:NAME``; ``None`` for a label that is not a deployed model or has none."""
    name, _, suffix = label.partition("@")
    if suffix != "deploy":
        return None
    return next((ref for ref in (name, f"timm:{name.removeprefix('timm:')}") if ref in labels), None)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _best(rows: list[BenchRow], figure: str, lowest: bool) -> BenchRow | None:
    measured = [r for r in rows if getattr(r, figure) is not None]
    if not measured:
        return None
    pick = min if lowest else max
    return pick(measured, key=lambda r: getattr(r, figure))


def versus_reference(report: BenchReport) -> list[ReferenceRatio]:
    """A :class:`ReferenceRatio` for every row of a deployed model whose reference ran too."""
    labels = {r.model for r in report.rows}
    ratios = []
    for row in report.rows:
        reference = reference_of(row.model, labels)
        if reference is None:
            continue
        theirs = [r for r in report.rows if r.model == reference]
        fastest = _best(theirs, "latency_ms_median", lowest=True)
        widest = _best(theirs, "throughput_img_s", lowest=False)
        baseline = next((r for r in theirs if r.backend == BASELINE_BACKEND), None)
        baseline_ms = baseline.latency_ms_median if baseline else None
        ratios.append(ReferenceRatio(
            ours=row.model, backend=row.backend, latency_ms=row.latency_ms_median, reference=reference,
            fastest_backend=fastest.backend if fastest else None,
            fastest_ms=fastest.latency_ms_median if fastest else None,
            vs_fastest=_ratio(row.latency_ms_median, fastest.latency_ms_median if fastest else None),
            baseline_ms=baseline_ms, vs_baseline=_ratio(row.latency_ms_median, baseline_ms),
            throughput_img_s=row.throughput_img_s,
            best_throughput_backend=widest.backend if widest else None,
            vs_best_throughput=_ratio(row.throughput_img_s, widest.throughput_img_s if widest else None)))
    return ratios


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def format_versus_reference(ratios: list[ReferenceRatio]) -> str:
    """The ratios as a text table (latency ratios: lower is faster; throughput: higher)."""
    header = (f"{'ours':<26} {'backend':<17} {'lat ms':>7} {'reference':<22} {'its fastest':<17} {'ms':>7} "
              f"{'ours/fastest':>12} {'ours/ORT fp32':>13} {'img/s ratio':>11}")
    lines = ["ours against the reference (same export settings; latency ratios: lower is faster, "
             "throughput: ours / the reference's highest)", header, "-" * len(header)]
    for r in ratios:
        lines.append(
            f"{r.ours:<26} {r.backend:<17} {_cell(r.latency_ms, '.2f'):>7} {r.reference:<22} "
            f"{r.fastest_backend or '-':<17} {_cell(r.fastest_ms, '.2f'):>7} {_cell(r.vs_fastest, '.3f', 'x'):>12} "
            f"{_cell(r.vs_baseline, '.3f', 'x'):>13} {_cell(r.vs_best_throughput, '.2f', 'x'):>11}")
    return "\n".join(lines)
