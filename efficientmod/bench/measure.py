"""Measuring candidates on backends (:func:`benchmark`), and the machine they ran on
(:func:`environment`).

``compile-cuda`` and ``cudagraph-cuda`` of one model share one compiled copy (compiled once
per batch size, after one eager call), held by a :class:`~efficientmod.bench.backends.CompiledModels`
that :func:`benchmark` makes for each candidate and drops after it; ``cudagraph-cuda``
captures that compiled forward in one CUDA graph per batch size and times its replays, so its
set-up time leaves out the compilation when ``compile-cuda`` ran first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from efficientmod.bench.backends import BACKENDS, CUDA_SETTINGS, BackendOptions, CompiledModels, cuda_settings
from efficientmod.bench.protocol import (
    THROUGHPUT_WARMUP_MAX,
    BenchReport,
    BenchRow,
    BenchSettings,
    Candidate,
    count_macs,
    count_params,
    latency_statistics,
    time_batches,
    time_calls,
)

__all__ = ["benchmark", "environment"]


@contextlib.contextmanager
def _torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _new_row(candidate: Candidate, backend: str, settings: BenchSettings, params: int, macs: int | None) -> BenchRow:
    declared = BACKENDS[backend]
    return BenchRow(
        model=candidate.label, family=candidate.family, backend=backend,
        dtype=declared.dtype_name(settings.dtype),
        threads=settings.threads if declared.device == "cpu" else None,
        input_size=tuple(candidate.input_size), params=params, macs=macs,
        top1=candidate.top1, top1_source=candidate.top1_source,
    )


def _describe(error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"


def _measure(candidate: Candidate, backend: str, settings: BenchSettings, options: BackendOptions,
             params: int, macs: int) -> BenchRow:
    declared = BACKENDS[backend]
    on_cpu = declared.device == "cpu"
    row = _new_row(candidate, backend, settings, params, macs)
    sync = (lambda: None) if on_cpu else torch.cuda.synchronize
    context = _torch_threads(settings.threads) if on_cpu else cuda_settings()
    warmup = max(settings.warmup, declared.min_warmup)
    batch = 1
    make_step = step = None
    try:
        with context:
            start = time.perf_counter()
            make_step = declared.prepare(candidate.model, candidate.input_size, options)
            step = make_step(1)
            time_calls(step, 0, warmup, sync)
            row.setup_s, row.warmup_runs = time.perf_counter() - start, warmup
            for name, value in latency_statistics(time_calls(step, settings.runs, 0, sync)).items():
                setattr(row, name, value)
            batch = settings.batch_for(backend)
            if batch:
                step = make_step(batch)
                time_calls(step, 0, max(1, declared.min_warmup, min(settings.warmup, THROUGHPUT_WARMUP_MAX)), sync)
                seconds = time_batches(step, settings.throughput_runs, sync)
                row.throughput_batch, row.throughput_runs = batch, settings.throughput_runs
                row.throughput_img_s = batch * settings.throughput_runs / seconds
    except Exception as error:  # one failing model/backend must not stop the others
        row.error = f"out of GPU memory at batch {batch}" if is_out_of_memory(error) else _describe(error)
    if row.error and not on_cpu:
        del make_step, step  # the model copy and the inputs go before the cache is emptied
        gc.collect()
        torch.cuda.empty_cache()
    if row.error:
        print(f"efficientmod bench: {candidate.label} on {backend}: {row.error}", file=sys.stderr)
    return row


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, also when it arrives wrapped (inductor's autotuning and
    compilation re-raise it as their own exception types, the original as the cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def benchmark(
    candidates: Iterable[Candidate | tuple],
    settings: BenchSettings | None = None,
    progress: bool = False,
) -> BenchReport:
    """Measure every candidate on every backend of ``settings`` that this machine has.

    ``candidates`` are :class:`Candidate` objects or tuples of its fields
    ``(label, family, module, input_size[, top1, top1_source])``. Backends the machine
    lacks are listed in ``report.skipped``; a model that fails on a backend (out of GPU
    memory, an op ONNX cannot export) gets a row with ``error`` and the others run on. A
    ``KeyboardInterrupt`` (Ctrl-C, or a time limit's signal turned into one) ends the run
    with the rows measured so far and ``report.interrupted`` set. ``settings`` default to
    :class:`BenchSettings`'s.
    """
    settings = settings or BenchSettings()
    candidates = [c if isinstance(c, Candidate) else Candidate(*c) for c in candidates]
    machine = environment(settings.threads)
    skipped = {b: reason for b in settings.backends if (reason := BACKENDS[b].unavailable_reason())}
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
        options = settings.backend_options(CompiledModels())  # this candidate's compilations, dropped after it
        for backend in backends:
            bar.set_postfix_str(f"{candidate.label} / {backend}")
            rows.append(_measure(candidate, backend, settings, options, params, macs))
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
