"""Measuring models: parameters, MACs, latency and throughput on every backend.

The protocol, the same for every model and backend:

* **latency** at batch 1: the backend is prepared (copy, ONNX export, ``torch.compile``
  wrapping), then ``warmup`` untimed calls absorb what the first calls pay once (compilation,
  CUDA-graph capture, lazy CUDA initialisation, cache warm-up) — never fewer than the
  backend's ``min_warmup`` (1 on the CUDA backends), so a ``--warmup 0`` cannot put
  compilation into the figures; then ``runs`` calls are timed
  one by one with ``time.perf_counter``. On the GPU each timed call ends with
  ``torch.cuda.synchronize``, so a time covers the kernels' execution, not only their
  launch. Reported: median, p90 (linear interpolation, ``numpy.percentile``), mean and min
  in milliseconds, and the warm-up count actually used.
* **throughput** at batch ``batch``: ``min(warmup, 3)`` untimed batches (at least one, and at
  least the backend's ``min_warmup``: a new batch size recompiles / recaptures), then
  ``throughput_runs`` batches timed together (synchronised before and once after): images/s.
* ``compile-cuda`` and ``cudagraph-cuda`` of one model share one compiled copy (compiled once
  per batch size, after one eager call); ``cudagraph-cuda`` captures that compiled forward in
  one CUDA graph per batch size and times its replays, so its set-up time leaves out the
  compilation when ``compile-cuda`` ran first.
* parameters and MACs (``torch.utils.flop_counter``, FLOPs / 2) at the model's input size.

Models are given as :class:`Candidate` (label, family, module, input size, paper top-1), so
any ``nn.Module`` can be measured; :func:`resolve_models` turns command-line specs
(``efficientmod_s``, ``efficientvit_m*``, ``timm:mobilevit_xxs``, ``efficientmod_s@deploy``)
into candidates. :func:`benchmark` measures them and returns a :class:`BenchReport`, which
:func:`write_json`, :func:`write_csv` and :func:`plot_accuracy_latency` save.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import difflib
import gc
import importlib
import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from efficientmod.checkpoint import atomic_write
from efficientmod.fuse import deploy

__all__ = [
    "count_params", "count_macs", "BACKENDS", "DTYPES", "Candidate", "BenchSettings", "BenchRow",
    "BenchReport", "ClaimCheck", "benchmark", "expand_specs", "resolve_models", "paper_claims", "check_claims",
    "environment", "time_calls", "pareto_front", "write_json", "write_csv", "plot_accuracy_latency",
]

PAPER_RESULTS = Path(__file__).parent / "assets" / "paper_results.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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


def _time_batches(step: Callable[[], object], runs: int, sync: Callable[[], None]) -> float:
    """Seconds for ``runs`` back-to-back calls, synchronised once at the end."""
    sync()
    start = time.perf_counter()
    for _ in range(runs):
        step()
    sync()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- backends
# A backend's ``prepare(model, input_size, settings)`` returns ``make_step(batch)``, which
# returns a zero-argument callable running one forward pass on a fixed random input.

StepFactory = Callable[[int], Callable[[], object]]


@dataclass(frozen=True)
class Backend:
    name: str
    device: str  # "cpu" or "cuda"
    help: str
    prepare: Callable[[nn.Module, tuple[int, int, int], BenchSettings], StepFactory]
    min_warmup: int = 0  # untimed calls the first call's one-off work needs, whatever --warmup says
    precision: str | None = None  # a CPU backend's fixed precision (bf16, int8); None: fp32 / --dtype


def _layout(settings: BenchSettings, device: str) -> tuple[torch.dtype, torch.memory_format]:
    """The dtype and memory format of the model and its inputs on ``device``: off the CPU
    ``settings.dtype`` (converted, not autocast, which would re-cast every weight on every
    timed call); CPU backends stay float32."""
    dtype = torch.float32 if device == "cpu" else DTYPES[settings.dtype]
    return dtype, torch.channels_last if settings.channels_last else torch.contiguous_format


def _converted(model: nn.Module, settings: BenchSettings, device: str) -> nn.Module:
    """A copy of ``model`` in eval mode on ``device``, in :func:`_layout`'s dtype and format."""
    dtype, memory_format = _layout(settings, device)
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval().to(memory_format=memory_format)


def _random_input(batch: int, input_size, settings: BenchSettings, device: str) -> torch.Tensor:
    dtype, memory_format = _layout(settings, device)
    return torch.randn(batch, *input_size, device=device, dtype=dtype).contiguous(memory_format=memory_format)


# compile-cuda and cudagraph-cuda of one model share one compiled module (one compilation per
# batch size, not two): benchmark() opens a scope per candidate, _compiled() fills it.
_SHARED_COMPILES: dict[tuple, nn.Module] | None = None


@contextlib.contextmanager
def _shared_compilation():
    """Within the block, :func:`_compiled` hands every compiled backend of a model the same
    compiled copy; after it, the copies (and the GPU memory they hold) are released."""
    global _SHARED_COMPILES
    previous, _SHARED_COMPILES = _SHARED_COMPILES, {}
    try:
        yield
    finally:
        _SHARED_COMPILES = previous


def _compiled(model: nn.Module, input_size, settings: BenchSettings, device: str) -> nn.Module:
    """``torch.compile(dynamic=False)`` of a converted copy of ``model``, in inductor's default
    mode: each batch size compiles its own static-shape graph (not a dynamic-batch one).

    The copy runs once eagerly before it is compiled, as a server's model has run before it
    serves: state that a model builds on its first inference call then exists before
    tracing and is read as an input, instead of being created inside the compiled graph
    (timm's EfficientViT caches its gathered attention biases in a dict on the first eval
    call; created inside the graph, that tensor costs a second compilation, and with
    CUDA-graph trees it was an output of one replay read by the next:
    ``benchmarks/gpu_h200.md``)."""
    key = (id(model), device, _layout(settings, device))
    if _SHARED_COMPILES is not None and key in _SHARED_COMPILES:
        return _SHARED_COMPILES[key]
    converted = _converted(model, settings, device)
    with torch.inference_mode():
        converted(_random_input(1, input_size, settings, device))
    torch._dynamo.reset()  # fresh caches: variants of one class must not hit the recompile limit
    compiled = torch.compile(converted, dynamic=False)
    if _SHARED_COMPILES is not None:
        _SHARED_COMPILES[key] = compiled
    return compiled


def _torch_steps(model: nn.Module, input_size, settings: BenchSettings, device: str,
                 compiled: bool = False, graphed: bool = False) -> StepFactory:
    """Eager PyTorch, ``compiled`` by :func:`_compiled`, or also ``graphed``: each batch
    size's compiled forward captured whole in one CUDA graph (:func:`_graph_replay`)."""
    if compiled or graphed:
        model = _compiled(model, input_size, settings, device)
    else:
        model = _converted(model, settings, device)

    def make_step(batch: int):
        x = _random_input(batch, input_size, settings, device)

        def step():
            with torch.inference_mode():
                return model(x)

        return _graph_replay(step) if graphed else step

    return make_step


GRAPH_WARMUP = 3  # calls before capture: compilation, cuDNN autotuning, lazy kernel loading


def _graph_replay(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` captured in one ``torch.cuda.CUDAGraph``; returns a callable replaying it.

    ``GRAPH_WARMUP`` calls run first on the capture stream, so that nothing one-off
    (compilation, cuDNN's algorithm search, cuBLAS workspaces) happens during capture. A
    forward that cannot be captured (a host synchronisation, a CPU tensor) fails here with
    PyTorch's error, reported in the row. One graph of the whole compiled forward is what
    ``mode="reduce-overhead"`` builds per graph partition, without its tree bookkeeping, and
    it reuses the compilation ``compile-cuda`` made."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(GRAPH_WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        output = step()

    def replay():
        graph.replay()
        return output

    return replay


# The CUDA math settings of every GPU figure, set explicitly (training code turns cuDNN's
# autotuner and TF32 on process-wide, so leaving them alone would make the figures depend on
# what ran earlier in the process) and recorded with the environment. PyTorch's defaults for
# TF32: off for matmuls (fp32 means fp32), on for cuDNN convolutions.
CUDA_SETTINGS = {"cudnn_benchmark": True, "matmul_tf32": False, "cudnn_tf32": True}


@contextlib.contextmanager
def _cuda_settings():
    """:data:`CUDA_SETTINGS` in force for the block, the previous values restored after."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul, torch.backends.cudnn
    names = "benchmark", "allow_tf32", "allow_tf32"
    previous = [getattr(flag, name) for flag, name in zip(flags, names, strict=True)]
    for flag, name, value in zip(flags, names, CUDA_SETTINGS.values(), strict=True):
        setattr(flag, name, value)
    try:
        yield
    finally:
        for flag, name, value in zip(flags, names, previous, strict=True):
            setattr(flag, name, value)


CALIBRATION_IMAGES = 8  # random images calibrating the int8 backends: their speed, not their accuracy


def _random_images(count: int, input_size) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, *input_size), dtype=np.float32)


def _ort_steps(model: nn.Module, input_size, settings: BenchSettings, int8: bool = False) -> StepFactory:
    """ONNX Runtime (every graph optimization) on the model's ONNX export; ``int8``: after
    static QDQ quantisation (:func:`efficientmod.export.quantize.quantize_onnx_int8`)."""
    from efficientmod.export import export_onnx, ort_session
    from efficientmod.export.quantize import quantize_onnx_int8

    with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
        path = export_onnx(copy.deepcopy(model).float(), Path(folder) / "model.onnx", input_size)
        if int8:
            path = quantize_onnx_int8(path, Path(folder) / "int8.onnx", _random_images(CALIBRATION_IMAGES, input_size))
        session = ort_session(path, settings.threads)

    def make_step(batch: int):
        x = _random_images(batch, input_size)
        return lambda: session.run(None, {"input": x})

    return make_step


def _openvino_steps(model: nn.Module, input_size, settings: BenchSettings, precision: str = "fp32") -> StepFactory:
    """OpenVINO on the CPU from the model's ONNX export, in ``precision`` (fp32 set explicitly:
    OpenVINO's default on bf16-capable CPUs is bf16), compiled with static shapes for each
    batch size; int8 by NNCF post-training quantisation."""
    from efficientmod.export import export_onnx
    from efficientmod.export.openvino import StaticBatchModel, convert_onnx
    from efficientmod.export.quantize import quantize_openvino_int8

    with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
        ov_model = convert_onnx(export_onnx(copy.deepcopy(model).float(), Path(folder) / "model.onnx", input_size))
    if precision == "int8":
        ov_model.reshape([1, *input_size])
        ov_model = quantize_openvino_int8(ov_model, _random_images(CALIBRATION_IMAGES, input_size))
    runner = StaticBatchModel(ov_model, precision, settings.threads)

    def make_step(batch: int):
        x = _random_images(batch, input_size)
        request = runner.request(batch)  # compiled for this batch size, static shapes
        return lambda: request.infer({0: x})

    return make_step


def _executorch_steps(model: nn.Module, input_size, settings: BenchSettings, precision: str) -> StepFactory:
    """An ExecuTorch program (XNNPACK, batch 1; int8 calibrated on random images, which is
    enough for its speed) run by ExecuTorch's runtime; a batch runs image by image."""
    from efficientmod.export.executorch import ExecutorchRuntime, lower_to_executorch

    calibration = np.random.default_rng(0).standard_normal((4, *input_size), dtype=np.float32)
    program, _ = lower_to_executorch(copy.deepcopy(model).float(), input_size, None, precision, calibration)
    with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
        path = Path(folder) / "model.pte"
        path.write_bytes(program)
        runtime = ExecutorchRuntime(path, settings.threads)

    def make_step(batch: int):
        x = np.random.default_rng(0).standard_normal((batch, *input_size), dtype=np.float32)
        return lambda: runtime.run(x)

    return make_step


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("torch-cpu", "cpu", "eager PyTorch on the CPU, --threads intra-op threads",
            lambda m, s, cfg: _torch_steps(m, s, cfg, "cpu")),
    Backend("ort-cpu", "cpu", "ONNX export run by ONNX Runtime on the CPU, --threads intra-op threads",
            _ort_steps),
    Backend("ort-cpu-int8", "cpu", "ONNX Runtime, static int8 QDQ (convs and matmuls, per channel)",
            lambda m, s, cfg: _ort_steps(m, s, cfg, int8=True), precision="int8"),
    Backend("openvino-cpu", "cpu", "the ONNX export run by OpenVINO on the CPU, float32",
            _openvino_steps),
    Backend("openvino-cpu-bf16", "cpu", "OpenVINO on the CPU, bf16 inference precision",
            lambda m, s, cfg: _openvino_steps(m, s, cfg, "bf16"), precision="bf16"),
    Backend("openvino-cpu-int8", "cpu", "OpenVINO on the CPU, NNCF int8 post-training quantisation",
            lambda m, s, cfg: _openvino_steps(m, s, cfg, "int8"), precision="int8"),
    Backend("executorch-cpu", "cpu", "ExecuTorch program (XNNPACK, batch 1) in ExecuTorch's runtime, --threads threads",
            lambda m, s, cfg: _executorch_steps(m, s, cfg, "fp32")),
    Backend("executorch-cpu-int8", "cpu", "executorch-cpu with pt2e int8 convolutions and linear layers",
            lambda m, s, cfg: _executorch_steps(m, s, cfg, "int8"), precision="int8"),
    # the first CUDA call loads kernels and creates cuBLAS / cuDNN handles
    Backend("torch-cuda", "cuda", "eager PyTorch on the GPU (model and inputs in --dtype)",
            lambda m, s, cfg: _torch_steps(m, s, cfg, "cuda"), min_warmup=1),
    # the first call at a batch size compiles (unless the other compiled backend did)
    Backend("compile-cuda", "cuda", "torch.compile (default mode, static shapes) on the GPU",
            lambda m, s, cfg: _torch_steps(m, s, cfg, "cuda", compiled=True), min_warmup=1),
    # compilation and capture happen before the first call; the first replay uploads the graph
    Backend("cudagraph-cuda", "cuda", "compile-cuda's compiled forward captured in one CUDA graph, replayed",
            lambda m, s, cfg: _torch_steps(m, s, cfg, "cuda", graphed=True), min_warmup=1),
]}


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    if BACKENDS[backend].device == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if backend.startswith("ort-") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'efficientmod[deploy]')"
    if backend.startswith("openvino-") and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'efficientmod[openvino]')"
    if backend == "openvino-cpu-int8" and importlib.util.find_spec("nncf") is None:
        return "NNCF is not installed (pip install 'efficientmod[openvino]')"
    if backend.startswith("executorch-") and importlib.util.find_spec("executorch") is None:
        return "executorch is not installed (pip install 'efficientmod[executorch]')"
    if backend in ("compile-cuda", "cudagraph-cuda") and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs triton, which is not installed"
    return None


@contextlib.contextmanager
def _torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- measuring

def _new_row(candidate: Candidate, backend: str, settings: BenchSettings, params: int, macs: int | None) -> BenchRow:
    on_cpu = BACKENDS[backend].device == "cpu"
    return BenchRow(
        model=candidate.label, family=candidate.family, backend=backend,
        dtype=BACKENDS[backend].precision or ("fp32" if on_cpu else settings.dtype),
        threads=settings.threads if on_cpu else None,
        input_size=tuple(candidate.input_size), params=params, macs=macs,
        top1=candidate.top1, top1_source=candidate.top1_source,
    )


def _describe(error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"


def _measure(candidate: Candidate, backend: str, settings: BenchSettings, params: int, macs: int) -> BenchRow:
    spec = BACKENDS[backend]
    on_cpu = spec.device == "cpu"
    row = _new_row(candidate, backend, settings, params, macs)
    sync = _no_sync if on_cpu else torch.cuda.synchronize
    threads = _torch_threads(settings.threads) if on_cpu else _cuda_settings()
    warmup = max(settings.warmup, spec.min_warmup)
    batch = 1
    make_step = step = None
    try:
        with threads:
            start = time.perf_counter()
            make_step = spec.prepare(candidate.model, candidate.input_size, settings)
            step = make_step(1)
            time_calls(step, 0, warmup, sync)
            row.setup_s, row.warmup_runs = time.perf_counter() - start, warmup
            _record_latency(row, time_calls(step, settings.runs, 0, sync))
            batch = settings.batch_for(backend)
            if batch:
                step = make_step(batch)
                time_calls(step, 0, max(1, spec.min_warmup, min(settings.warmup, THROUGHPUT_WARMUP_MAX)), sync)
                seconds = _time_batches(step, settings.throughput_runs, sync)
                row.throughput_batch, row.throughput_runs = batch, settings.throughput_runs
                row.throughput_img_s = batch * settings.throughput_runs / seconds
    except Exception as error:  # one failing model/backend must not stop the others
        row.error = f"out of GPU memory at batch {batch}" if _is_out_of_memory(error) else _describe(error)
    if row.error and not on_cpu:
        del make_step, step  # the model copy and the inputs go before the cache is emptied
        gc.collect()
        torch.cuda.empty_cache()
    if row.error:
        print(f"efficientmod bench: {candidate.label} on {backend}: {row.error}", file=sys.stderr)
    return row


def _is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, also when it arrives wrapped (inductor's autotuning and
    compilation re-raise it as their own exception types, the original as the cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _record_latency(row: BenchRow, seconds: list[float]) -> None:
    ms = np.asarray(seconds) * 1e3
    row.latency_ms_median = float(statistics.median(ms))
    row.latency_ms_p90 = float(np.percentile(ms, 90))
    row.latency_ms_mean = float(ms.mean())
    row.latency_ms_min = float(ms.min())
    row.latency_runs = len(ms)


def benchmark(
    candidates: Iterable[Candidate | tuple],
    settings: BenchSettings = BenchSettings(),
    progress: bool = False,
) -> BenchReport:
    """Measure every candidate on every backend of ``settings`` that this machine has.

    ``candidates`` are :class:`Candidate` objects or tuples of its fields
    ``(label, family, module, input_size[, top1, top1_source])``. Backends the machine
    lacks are listed in ``report.skipped``; a model that fails on a backend (out of GPU
    memory, an op ONNX cannot export) gets a row with ``error`` and the others run on. A
    ``KeyboardInterrupt`` (Ctrl-C, or a time limit's signal turned into one) ends the run
    with the rows measured so far and ``report.interrupted`` set.
    """
    candidates = [c if isinstance(c, Candidate) else Candidate(*c) for c in candidates]
    machine = environment(settings.threads)
    skipped = {b: reason for b in settings.backends if (reason := unavailable_reason(b))}
    backends = [b for b in settings.backends if b not in skipped]
    for backend, reason in skipped.items():
        print(f"efficientmod bench: skipping {backend}: {reason}", file=sys.stderr)
    rows, interrupted = [], False
    with tqdm(total=len(candidates) * len(backends), disable=not progress, file=sys.stderr,
              unit="run", desc="bench") as bar:
        try:
            _measure_all(candidates, backends, settings, rows, bar)
        except KeyboardInterrupt:
            interrupted = True
            print(f"efficientmod bench: interrupted; keeping the {len(rows)} row(s) measured", file=sys.stderr)
    machine["load_average_1m_after"] = _load_average()  # how busy the machine was during the run
    return BenchReport(rows, settings, machine, skipped, interrupted)


def _measure_all(candidates: list[Candidate], backends: list[str], settings: BenchSettings, rows: list[BenchRow],
                 bar: tqdm) -> None:
    """Append every candidate's row on every backend to ``rows`` as it is measured."""
    for candidate in candidates:
        candidate.model.eval()
        params = count_params(candidate.model)
        try:
            macs = count_macs(candidate.model, candidate.input_size)
        except Exception as error:  # the model cannot run at this input: say so, go on
            message = f"fails at input {tuple(candidate.input_size)}: {_describe(error)}"
            print(f"efficientmod bench: {candidate.label} {message}", file=sys.stderr)
            rows += [dataclasses.replace(_new_row(candidate, b, settings, params, None), error=message)
                     for b in backends]
            bar.update(len(backends))
            continue
        with _shared_compilation():  # compile-cuda and cudagraph-cuda: one compilation
            for backend in backends:
                bar.set_postfix_str(f"{candidate.label} / {backend}")
                rows.append(_measure(candidate, backend, settings, params, macs))
                bar.update()


# --------------------------------------------------------------------------- the machine

def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def environment(threads: int | None = None) -> dict:
    """The machine and software the figures were measured with."""
    cuda = torch.cuda.is_available()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_1m": _load_average(),
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino") if importlib.util.find_spec("openvino") else None,
        "efficientmod": _version("efficientmod"),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_settings": CUDA_SETTINGS if cuda else None,
    }


# --------------------------------------------------------------------------- model specs

def _paper_results() -> dict:
    return json.loads(PAPER_RESULTS.read_text())



def _timm_candidate(name: str, img_size: int | None) -> Candidate:
    import timm

    from efficientmod.models import list_models, model_info

    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}.{hint}")
    model = _create_at_size(timm.create_model, name, img_size)
    input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    peer = _paper_results()["peers"].get(f"timm:{name}")
    if peer is not None:
        family, top1, source = peer["family"], peer["top1"], peer["top1_source"]
    elif name in list_models():  # timm's implementation of a variant we also register
        info = model_info(name)
        family, top1, source = info.family, info.top1, info.top1_source
    else:
        family, top1, source = "timm", None, ""
    return Candidate(f"timm:{name}", family, model, _sized(input_size, img_size), top1, source)


def _registry_candidate(name: str, img_size: int | None) -> Candidate:
    from efficientmod.models import create_model, model_info

    info = model_info(name)
    return Candidate(name, info.family, _create_at_size(create_model, name, img_size),
                     _sized(info.input_size, img_size), info.top1, info.top1_source)


def _create_at_size(create: Callable[..., nn.Module], name: str, img_size: int | None) -> nn.Module:
    """``create(name)``, rebuilt for ``img_size`` when its class takes one (architectures with
    resolution-dependent parts, such as attention biases, need it)."""
    model = create(name)
    if img_size is not None and "img_size" in inspect.signature(type(model)).parameters:
        model = create(name, img_size=img_size)
    return model


def _sized(input_size, img_size: int | None) -> tuple[int, int, int]:
    return tuple(input_size) if img_size is None else (input_size[0], img_size, img_size)


def expand_specs(specs: Iterable[str]) -> list[str]:
    """Expand glob patterns over the registry (``efficientvit_m*``), keeping order, no repeats."""
    from efficientmod.models import list_models

    expanded = []
    for spec in specs:
        name, at, suffix = spec.partition("@")
        if not name.startswith("timm:") and any(ch in name for ch in "*?["):
            matches = list_models(name)
            if not matches:
                raise ValueError(f"no model matches {name!r}; `efficientmod models` lists them")
            expanded += [m + at + suffix for m in matches]
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded))


def resolve_models(specs: Iterable[str], img_size: int | None = None) -> list[Candidate]:
    """Build the candidates named by ``specs``.

    A spec is a registered name or glob (``efficientmod_s``, ``efficientvit_m*``), or
    ``timm:NAME`` for timm's own implementation; a ``@deploy`` suffix applies
    ``efficientmod.deploy.deploy`` (inference-time fusion) before measuring. ``img_size``
    replaces every model's own input resolution. Unknown names raise ``ValueError`` with
    the closest known names.
    """
    candidates = []
    for spec in expand_specs(specs):
        name, _, suffix = spec.partition("@")
        if suffix not in ("", "deploy"):
            raise ValueError(f"{spec!r}: unknown suffix '@{suffix}' (only '@deploy' exists)")
        if name.startswith("timm:"):
            candidate = _timm_candidate(name.removeprefix("timm:"), img_size)
        else:
            candidate = _registry_candidate(name, img_size)
        if suffix:
            candidate.model = deploy(candidate.model.eval())
            candidate.label = spec
        candidates.append(candidate)
    return candidates


# --------------------------------------------------------------------------- the papers' claims

@dataclass(frozen=True)
class ClaimCheck:
    """The speed-up of ``ours`` over ``peer`` measured on one backend, next to the paper's
    figure when the paper states one for that kind of backend."""

    ours: str
    peer: str
    metric: str  # "latency" (peer / ours, batch 1) or "throughput" (ours / peer)
    backend: str
    measured_speedup: float | None
    paper_speedup: float | None = None
    stated: str = ""
    source: str = ""
    why_missing: str = ""
    note: str = ""  # why the figure may not be comparable (too few cores for the thread count)


def paper_claims() -> list[dict]:
    """The papers' claims (``assets/paper_results.json``). ``efficientvit_m2`` falls back to
    ``timm:efficientvit_m2`` while this library's own EfficientViT is not registered."""
    from efficientmod.models import list_models

    registered = set(list_models())
    claims = []
    for claim in _paper_results()["claims"]:
        ours = claim["ours"] if claim["ours"] in registered else f"timm:{claim['ours']}"
        claims.append({**claim, "ours": ours})
    return claims


def check_claims(report: BenchReport, claims: list[dict]) -> list[ClaimCheck]:
    """For each (ours, peer, metric) pair of ``claims``, one :class:`ClaimCheck` per backend
    of the run, carrying the paper's figure where a claim names that backend; a claim none
    of whose backends was asked for still gets a line, without a measurement."""
    checks = []
    run = report.settings.backends
    for ours, peer, metric in dict.fromkeys((c["ours"], c["peer"], c["metric"]) for c in claims):
        pair = [c for c in claims if (c["ours"], c["peer"], c["metric"]) == (ours, peer, metric)]
        stated = {b: c for c in pair for b in c["backends"]}
        for backend in run:
            measured, why = _speedup(report, ours, peer, metric, backend)
            claim = stated.get(backend, {})
            checks.append(ClaimCheck(ours, peer, metric, backend, measured, claim.get("speedup"),
                                     claim.get("stated", ""), claim.get("source", ""), why,
                                     _cores_note(report, backend, claim.get("threads"))))
        for claim in pair:
            if not set(claim["backends"]) & set(run):
                backend = claim["backends"][0]
                checks.append(ClaimCheck(ours, peer, metric, backend, None, claim["speedup"], claim["stated"],
                                         claim["source"], f"not run (add -b {backend})"))
    return checks


def _cores_note(report: BenchReport, backend: str, paper_threads: int | None) -> str:
    """On a CPU backend, a note when this machine has fewer logical CPUs than the threads
    the figure was measured with here or in the paper (then the threads share cores and
    the ratio is not the paper's protocol); else ''."""
    cores = report.environment.get("logical_cpus") or 0
    if BACKENDS[backend].device != "cpu" or not cores:
        return ""
    threads = max(report.settings.threads, paper_threads or 0)
    if threads <= cores:
        return ""
    return (f"this machine has {cores} logical CPU(s), fewer than the {threads} threads "
            f"{'of the paper' if (paper_threads or 0) >= report.settings.threads else 'asked for'}: "
            "threads share cores, not the paper's protocol")


def _speedup(report: BenchReport, ours: str, peer: str, metric: str, backend: str) -> tuple[float | None, str]:
    """(ours' speed-up over peer, why it is missing)."""
    if backend in report.skipped:
        return None, f"skipped: {report.skipped[backend]}"
    mine, theirs = report.row(ours, backend), report.row(peer, backend)
    if mine is None or theirs is None:
        return None, "not measured"
    if metric == "latency" and mine.latency_ms_median and theirs.latency_ms_median:
        return theirs.latency_ms_median / mine.latency_ms_median, ""
    if metric == "throughput" and mine.throughput_img_s and theirs.throughput_img_s:
        return mine.throughput_img_s / theirs.throughput_img_s, ""
    return None, mine.error or theirs.error or f"no {metric} measured"


# --------------------------------------------------------------------------- saving results

def write_json(report: BenchReport, path: str | os.PathLike, claims: list[ClaimCheck] = ()) -> None:
    data = report.to_dict()
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


def plot_accuracy_latency(report: BenchReport, path: str | os.PathLike) -> None:
    """Paper top-1 against measured batch-1 latency, one panel per backend, one colour per
    family, the Pareto front drawn as a line through its (ringed) models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.top1 is not None and r.latency_ms_median is not None]
    if not rows:
        raise ValueError("nothing to plot: no model has both a published top-1 and a measured latency "
                         "(every backend skipped or failed, or only models without a top-1)")
    backends = list(dict.fromkeys(r.backend for r in rows))
    families = list(dict.fromkeys(r.family for r in rows))
    palette = plt.get_cmap("tab10").colors
    colours = {family: palette[i % len(palette)] for i, family in enumerate(families)}
    fig, axes = plt.subplots(1, len(backends), figsize=(7 * len(backends), 5.5), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        panel = [r for r in rows if r.backend == backend]
        for r in panel:
            ax.scatter(r.latency_ms_median, r.top1, color=colours[r.family], s=40, zorder=3)
            ax.annotate(r.model, (r.latency_ms_median, r.top1), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = [panel[i] for i in pareto_front([(r.latency_ms_median, r.top1) for r in panel])]
        ax.plot([r.latency_ms_median for r in front], [r.top1 for r in front], "k--", lw=1,
                zorder=2, label="Pareto front")
        ax.scatter([r.latency_ms_median for r in front], [r.top1 for r in front], s=110,
                   facecolors="none", edgecolors="k", zorder=4)
        for family in dict.fromkeys(r.family for r in panel):
            ax.scatter([], [], color=colours[family], label=family)
        latencies = [r.latency_ms_median for r in panel]
        if max(latencies) > 20 * min(latencies):
            ax.set_xscale("log")
        ax.set(xlabel="latency, batch 1, median (ms)", ylabel="ImageNet-1K top-1 (%, paper)",
               title=f"{backend}" + (f", threads={panel[0].threads}" if panel[0].threads else f", {panel[0].dtype}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    env = report.environment
    fig.suptitle(f"{env['cpu']} ({env['logical_cpus']} logical CPUs)" + (f", {env['gpu']}" if env.get("gpu") else "")
                 + f"; torch {env['torch']}, onnxruntime {env['onnxruntime']}; {env['date_utc']}", fontsize=9)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
