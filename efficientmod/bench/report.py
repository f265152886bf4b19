"""A bench run's results as JSON, CSV, text tables and the accuracy-latency plot."""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import warnings
from pathlib import Path

from efficientmod.bench.claims import ClaimCheck
from efficientmod.bench.protocol import BenchReport, BenchRow
from efficientmod.bench.reference import versus_reference
from efficientmod.checkpoint import atomic_write

__all__ = ["write_json", "write_csv", "format_report", "format_claims", "pareto_front", "place_labels",
           "accuracy_latency_figure", "plot_accuracy_latency"]


def write_json(report: BenchReport, path: str | os.PathLike, claims: list[ClaimCheck] = ()) -> None:
    data = report.to_dict()
    data["versus_reference"] = [dataclasses.asdict(r) for r in versus_reference(report)]
    if claims:
        data["paper_claims"] = [dataclasses.asdict(c) for c in claims]
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def write_csv(report: BenchReport, path: str | os.PathLike) -> None:
    """One line per row; the environment and settings repeat in ``env_*`` / ``setting_*`` columns."""
    extra = {f"env_{k}": v for k, v in report.environment.items()}
    extra.update({f"setting_{k}": " ".join(v) if isinstance(v, (tuple, list)) else v
                  for k, v in dataclasses.asdict(report.settings).items()})
    fields = [f.name for f in dataclasses.fields(BenchRow)] + list(extra)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in report.rows:
                values = dataclasses.asdict(row)
                values["input_size"] = "x".join(map(str, row.input_size))
                writer.writerow({**values, **extra})

    atomic_write(path, write)


# --------------------------------------------------------------------------- text tables

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


# --------------------------------------------------------------------------- the plot

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower
    latency and higher accuracy), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# Where a label may sit, in points from its marker: rings of growing radius, 16 directions each,
# the nearest ring first; on each ring up-right first, as the labels always sat before.
LABEL_OFFSETS = [(round(r * math.cos(a), 1), round(r * math.sin(a), 1))
                 for r, a in itertools.product((5, 12, 21, 32, 45, 60, 78, 100),
                                               [math.pi / 4 + k * math.pi / 8 for k in range(16)])]
LABEL_MARGIN_PX = 2  # space kept between two labels, in pixels
MARKER_RADIUS_PX = 6


def _overlap(a, b, margin: float) -> float:
    """The area shared by the boxes ``a`` and ``b`` (matplotlib ``Bbox``) grown by ``margin``."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0) + 2 * margin
    height = min(a.y1, b.y1) - max(a.y0, b.y0) + 2 * margin
    return max(width, 0.0) * max(height, 0.0)


def _label_box(label, offset: tuple[float, float], renderer):
    """``label`` moved to ``offset`` (points from its marker, aligned away from it); the box
    of its text (its leader line left out)."""
    from matplotlib.text import Text

    dx, dy = offset
    label.set_position(offset)
    label.set(ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top")
    label.update_positions(renderer)  # what Annotation.get_window_extent does before measuring text and leader
    return Text.get_window_extent(label, renderer)


def _best_offset(label, renderer, placed: list, inside, markers: list) -> tuple[float, float]:
    """The first offset of :data:`LABEL_OFFSETS` whose box overlaps no placed label, stays in
    the axes and covers no marker; else the one that comes closest, in that order."""
    best = None
    for offset in LABEL_OFFSETS:
        box = _label_box(label, offset, renderer)
        score = (sum(_overlap(box, other, LABEL_MARGIN_PX) for other in placed),
                 box.width * box.height - _overlap(box, inside, 0),  # the part outside the axes
                 sum(_overlap(box, marker, 0) for marker in markers))
        if best is None or score < best[0]:
            best = score, offset
        if score == (0, 0, 0):
            break
    return best[1]


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7) -> list:
    """Annotate each point of ``ax`` with its text where the label box overlaps no label
    placed before it (greedy, the nearest free spot of :data:`LABEL_OFFSETS`), and if it can,
    stays inside the axes and covers no marker; where no spot is free, the least crowded. A
    label moved away from its marker gets a thin leader line. Returns the annotations. Call it
    once the axes' limits, scale and size are final: the boxes are measured with the figure's
    renderer."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    markers = [Bbox.from_bounds(px - MARKER_RADIUS_PX, py - MARKER_RADIUS_PX, 2 * MARKER_RADIUS_PX,
                                2 * MARKER_RADIUS_PX) for px, py in ax.transData.transform(points)]
    inside = ax.get_window_extent(renderer)
    placed, annotations = [], []
    for point, text in zip(points, texts, strict=True):
        probe = ax.annotate(text, point, xytext=LABEL_OFFSETS[0], textcoords="offset points", fontsize=fontsize)
        offset = _best_offset(probe, renderer, placed, inside, markers)
        probe.remove()
        leader = dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=4) if math.hypot(*offset) > 6 else None
        label = ax.annotate(text, point, xytext=offset, textcoords="offset points", fontsize=fontsize,
                            annotation_clip=False, arrowprops=leader)
        placed.append(_label_box(label, offset, renderer))
        annotations.append(label)
    return annotations


def _draw_panel(ax, panel: list[BenchRow], colours: dict) -> None:
    """One backend's models: a marker per model, the Pareto front; labels are placed later."""
    for r in panel:
        ax.scatter(r.latency_ms_median, r.top1, color=colours[r.family], s=40, zorder=3)
    front = [panel[i] for i in pareto_front([(r.latency_ms_median, r.top1) for r in panel])]
    ax.plot([r.latency_ms_median for r in front], [r.top1 for r in front], "k--", lw=1, zorder=2,
            label="Pareto front")
    ax.scatter([r.latency_ms_median for r in front], [r.top1 for r in front], s=110,
               facecolors="none", edgecolors="k", zorder=4)
    for family in dict.fromkeys(r.family for r in panel):
        ax.scatter([], [], color=colours[family], label=family)
    latencies = [r.latency_ms_median for r in panel]
    if max(latencies) > 20 * min(latencies):
        ax.set_xscale("log")
    first = panel[0]
    ax.set(xlabel="latency, batch 1, median (ms)", ylabel="ImageNet-1K top-1 (%, paper)",
           title=f"{first.backend}" + (f", threads={first.threads}" if first.threads else f", {first.dtype}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def accuracy_latency_figure(report: BenchReport):
    """Paper top-1 against measured batch-1 latency, one panel per backend, one colour per
    family, the Pareto front drawn as a line through its (ringed) models, the model names
    placed so that no two overlap (:func:`place_labels`). A matplotlib ``Figure`` on the Agg
    canvas (no pyplot state)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report.rows if r.top1 is not None and r.latency_ms_median is not None]
    if not rows:
        raise ValueError("nothing to plot: no model has both a published top-1 and a measured latency "
                         "(every backend skipped or failed, or only models without a top-1)")
    backends = list(dict.fromkeys(r.backend for r in rows))
    palette = matplotlib.colormaps["tab10"].colors
    colours = {family: palette[i % len(palette)] for i, family in enumerate(dict.fromkeys(r.family for r in rows))}
    fig = Figure(figsize=(7 * len(backends), 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(backends), squeeze=False)[0]
    panels = [[r for r in rows if r.backend == backend] for backend in backends]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel, colours)
    env = report.environment
    fig.suptitle(f"{env['cpu']} ({env['logical_cpus']} logical CPUs)" + (f", {env['gpu']}" if env.get("gpu") else "")
                 + f"; torch {env['torch']}, onnxruntime {env['onnxruntime']}; {env['date_utc']}", fontsize=9)
    fig.tight_layout()
    for ax, panel in zip(axes, panels, strict=True):  # the axes' size and limits are final now
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        place_labels(ax, [(r.latency_ms_median, r.top1) for r in panel], [r.model for r in panel])
    return fig


def plot_accuracy_latency(report: BenchReport, path: str | os.PathLike) -> None:
    """:func:`accuracy_latency_figure` saved as a PNG at ``path``."""
    fig = accuracy_latency_figure(report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
