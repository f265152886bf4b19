"""What is measured and how it is timed: the settings, the records, the timing loops and
their statistics, parameter and MAC counts.

* **latency** at batch 1: the backend is prepared (copy, ONNX export, ``torch.compile``
  wrapping), then ``warmup`` untimed calls absorb what the first calls pay once (compilation,
  CUDA-graph capture, lazy CUDA initialisation, cache warm-up) — never fewer than the
  backend's ``min_warmup`` (1 on the CUDA backends), so a ``--warmup 0`` cannot put
  compilation into the figures; then ``runs`` calls are timed one by one with
  ``time.perf_counter``. On the GPU each timed call ends with ``torch.cuda.synchronize``, so
  a time covers the kernels' execution, not only their launch. Reported: median, p90
  (linear interpolation, ``numpy.percentile``), mean and min in milliseconds, and the
  warm-up count actually used.
* **throughput** at batch ``batch``: ``min(warmup, 3)`` untimed batches (at least one, and at
  least the backend's ``min_warmup``: a new batch size recompiles / recaptures), then
  ``throughput_runs`` batches timed together (synchronised before and once after): images/s.
* parameters and MACs (``torch.utils.flop_counter``, FLOPs / 2) at the model's input size.
"""
from __future__ import annotations

import dataclasses
import difflib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from efficientmod.bench.backends import BACKENDS, DTYPES, BackendOptions, CompiledModels

__all__ = ["count_params", "count_macs", "time_calls", "time_batches", "latency_statistics", "Candidate",
           "BenchSettings", "BenchRow", "BenchReport", "DEFAULT_BATCH", "THROUGHPUT_WARMUP_MAX"]

DEFAULT_BATCH = {"cpu": 16, "cuda": 256}  # EfficientViT's CPU protocol; a GPU-sized batch
THROUGHPUT_WARMUP_MAX = 3


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by
    ``torch.utils.flop_counter`` (matmuls, convolutions and attention; FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: not at start-up

    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


# --------------------------------------------------------------------------- timing

def _no_sync() -> None:
    return None


def time_calls(step: Callable[[], object], runs: int, warmup: int,
               sync: Callable[[], None] = _no_sync) -> list[float]:
    """Seconds taken by each of ``runs`` calls of ``step``, after ``warmup`` untimed calls.
    ``sync`` (``torch.cuda.synchronize`` on GPU) closes every timed call."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def time_batches(step: Callable[[], object], runs: int, sync: Callable[[], None] = _no_sync) -> float:
    """Seconds for ``runs`` back-to-back calls, synchronised once at the end."""
    sync()
    start = time.perf_counter()
    for _ in range(runs):
        step()
    sync()
    return time.perf_counter() - start


def latency_statistics(seconds: list[float]) -> dict[str, float | int]:
    """Median, p90 (linear interpolation), mean and min in milliseconds, and the count, as
    the ``latency_*`` fields of a :class:`BenchRow`."""
    ms = np.asarray(seconds) * 1e3
    return dict(latency_ms_median=float(statistics.median(ms)), latency_ms_p90=float(np.percentile(ms, 90)),
                latency_ms_mean=float(ms.mean()), latency_ms_min=float(ms.min()), latency_runs=len(ms))


# --------------------------------------------------------------------------- what is measured

@dataclass
class Candidate:
    """One model to measure. ``model`` is on the CPU in float32; each backend works on a copy."""

    label: str
    family: str
    model: nn.Module
    input_size: tuple[int, int, int] = (3, 224, 224)
    top1: float | None = None  # the paper's ImageNet-1K top-1 (%), for the plot
    top1_source: str = ""


@dataclass(frozen=True)
class BenchSettings:
    """How to measure. ``batch=None`` picks 16 on CPU backends and 256 on GPU ones; 0 skips
    throughput. ``threads`` sets PyTorch's and ONNX Runtime's intra-op threads on CPU;
    ``dtype`` is the dtype the CUDA backends convert model and inputs to (CPU backends run
    float32, or their fixed precision: bf16 / int8)."""

    backends: tuple[str, ...] = ("torch-cpu",)
    threads: int = 4
    runs: int = 50
    warmup: int = 10
    batch: int | None = None
    throughput_runs: int = 10
    dtype: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        for backend in self.backends:
            if backend not in BACKENDS:
                close = difflib.get_close_matches(backend, list(BACKENDS), n=1, cutoff=0.4)
                hint = f" Did you mean {close[0]}?" if close else ""
                raise ValueError(f"unknown backend {backend!r}.{hint} Known: {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        for name in ("threads", "runs", "throughput_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.warmup < 0 or (self.batch is not None and self.batch < 0):
            raise ValueError("warmup and batch must not be negative")

    def batch_for(self, backend: str) -> int:
        return DEFAULT_BATCH[BACKENDS[backend].device] if self.batch is None else self.batch

    def backend_options(self, compilations: CompiledModels) -> BackendOptions:
        """What the backends' preparation reads, sharing ``compilations`` between them."""
        return BackendOptions(self.threads, self.dtype, self.channels_last, compilations)


@dataclass
class BenchRow:
    """Every figure of one model on one backend; ``error`` says why a figure is missing."""

    model: str
    family: str
    backend: str
    dtype: str
    threads: int | None
    input_size: tuple[int, int, int]
    params: int
    macs: int | None  # None when the model fails at this input size
    top1: float | None
    top1_source: str
    latency_ms_median: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_min: float | None = None
    latency_runs: int = 0
    warmup_runs: int = 0
    setup_s: float | None = None  # export / compilation / warm-up, excluded from the figures
    throughput_batch: int = 0
    throughput_img_s: float | None = None
    throughput_runs: int = 0
    error: str = ""


@dataclass
class BenchReport:
    rows: list[BenchRow]
    settings: BenchSettings
    environment: dict
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run
    interrupted: bool = False  # stopped early (Ctrl-C, a time limit): the rows are those measured by then

    def row(self, model: str, backend: str) -> BenchRow | None:
        return next((r for r in self.rows if r.model == model and r.backend == backend), None)

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "settings": dataclasses.asdict(self.settings),
            "skipped_backends": self.skipped,
            "interrupted": self.interrupted,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }
