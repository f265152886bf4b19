"""What an export format declares, what writing one is given and what it reports.

Each format module of this package (:mod:`~efficientmod.export.onnx`,
:mod:`~efficientmod.export.openvino`, :mod:`~efficientmod.export.executorch`) defines one
:class:`ExportFormat` as ``FORMAT``: its name and file suffixes, the precisions it writes,
the batch axes its files may have, the pip extra of its runtime, and three functions:

* ``write(model, path, input_size, metadata, options) -> VerifiedExport``: the file, written
  only once it has been verified (an existing file is kept when a check fails, with an
  :class:`ExportVerificationError`);
* ``open_runtime(path, threads, **options) -> InferenceRuntime``: the file loaded in its runtime
  (options of that runtime only, e.g. ONNX's ``spinning``), with the metadata stored beside
  the graph; :meth:`ExportFormat.verify` runs it against PyTorch;
* ``check(options)``: a ``ValueError`` for options the format does not take, before anything
  is loaded.

:data:`efficientmod.export.FORMATS` lists them; adding a format is one module and one line there.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = [
    "ExportVerificationError", "Agreement", "ExportOptions", "VerifiedExport", "InferenceRuntime", "ExportFormat",
    "BATCH_MODES", "compare_with_pytorch", "run_in_file_batches",
]

BATCH_MODES = ("dynamic", "static")  # a file's batch axis: any size, or fixed to 1


class ExportVerificationError(ValueError):
    """An exported file's outputs differ from PyTorch's by more than the tolerance (or its
    predictions agree too rarely with the float32 model's)."""


@dataclass(frozen=True)
class Agreement:
    """How often a reduced-precision model predicts what the reference predicts."""

    top1: float  # % of images whose best class is the reference's best class
    top5: float  # % of images whose five best classes include the reference's best class
    samples: int
    max_abs_diff: float  # largest logit difference, for the record

    def __str__(self) -> str:
        return (f"top-1 agreement {self.top1:.2f}%, top-5 agreement {self.top5:.2f}% on {self.samples} "
                f"image(s) (max abs logit diff {self.max_abs_diff:.3g})")


@dataclass(frozen=True)
class ExportOptions:
    """How to write and verify a file; each format's ``check`` refuses what it does not take."""

    precision: str = "fp32"
    calibration: np.ndarray | None = None  # (N, C, H, W) preprocessed images for int8
    check_images: np.ndarray | None = None  # for the bf16 / int8 agreement check (default: calibration)
    tolerance: float = 1e-4  # largest max abs difference of the float32 graph to PyTorch
    agreement_tolerance: float = 1.0  # percentage points below 100 allowed for bf16 / int8 agreement
    batch_sizes: Sequence[int] = (1, 2, 3)  # of the random verification inputs (dynamic batch)
    dynamic_batch: bool | None = None  # None: the format's default batch axis
    opset: int = 18  # of the ONNX graph (ONNX, and OpenVINO, which converts it)
    optimized_path: Path | None = None  # ONNX Runtime's optimized graph (fp32 ONNX only)
    progress: Callable[[str], None] | None = None  # receives a line per stage of a slow export


@dataclass(frozen=True)
class VerifiedExport:
    """What an export wrote and what its verification found."""

    path: Path
    format: str  # ExportFormat.name
    precision: str
    input_size: tuple[int, int, int]  # (C, H, W)
    batch: int | None  # the file's batch size; None: dynamic
    max_abs_diff: float | None  # ``compared`` against PyTorch on random inputs (None: not measured)
    compared: str  # what ran against PyTorch: "ONNX Runtime", "fp32 graph", "ExecuTorch", ...
    checked_on: str  # on which inputs, e.g. "batch sizes [1, 2, 3]"
    agreement: Agreement | None = None  # bf16 / int8: the file's predictions against ``agreement_reference``
    agreement_reference: str = "fp32"
    notes: tuple[str, ...] = ()  # further report lines, e.g. where an ExecuTorch program's ops run
    details: tuple[str, ...] = ()  # for the summary, e.g. "opset 18", "1.2 MB"


class InferenceRuntime(Protocol):
    """An exported model loaded in its runtime."""

    path: Path
    metadata: dict[str, object]  # what `efficientmod export` stored: producer, input_size, mean, ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 images -> (B, classes) float32 logits."""
        ...


def compare_with_pytorch(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], input_size: tuple[int, int, int],
                         batch_sizes: Sequence[int], tolerance: float, label: str, runtime: str,
                         seed: int = 0) -> float:
    """``run`` (a runtime's batch -> logits) and ``model`` (PyTorch, float32, CPU, eval mode
    meanwhile) on standard normal inputs of each batch size: the largest absolute output
    difference. An :class:`ExportVerificationError` naming ``label`` and ``runtime`` when it
    exceeds ``tolerance`` (or the output shapes differ)."""
    import torch

    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"verification batch sizes must be positive, got {list(batch_sizes)}")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, *input_size, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            actual = run(x.numpy())
            if actual.shape != expected.shape:
                raise ExportVerificationError(
                    f"{label}: {runtime} output shape {actual.shape} != PyTorch {expected.shape} at batch {batch}")
            worst = max(worst, float(np.abs(actual - expected).max()))
    finally:
        model.train(was_training)
    if not worst <= tolerance:  # also catches NaN
        raise ExportVerificationError(
            f"{label}: {runtime} differs from PyTorch by {worst:.3g} (max abs) > tolerance {tolerance:g}")
    return worst


def run_in_file_batches(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                        file_batch: int | None) -> np.ndarray:
    """``infer`` on ``images`` as a file with a static batch of ``file_batch`` takes them: that
    many at a time, the last group padded with zeros (whose outputs are dropped); all at once
    when the file's batch axis is dynamic (``file_batch`` None)."""
    if file_batch is None:
        return infer(images)
    outputs = []
    for start in range(0, len(images), file_batch):
        group = images[start:start + file_batch]
        padding = np.zeros((file_batch - len(group), *images.shape[1:]), images.dtype)
        outputs.append(infer(np.concatenate([group, padding]))[:len(group)])
    return np.concatenate(outputs)


@dataclass(frozen=True)
class ExportFormat:
    """One deployment format (see the module docstring)."""

    name: str  # the --format value
    suffixes: tuple[str, ...]  # file suffixes that select it
    precisions: tuple[str, ...]  # what --precision may be
    batch_modes: tuple[str, ...]  # of BATCH_MODES, the default first
    extra: str  # `pip install 'efficientmod[EXTRA]'` installs its runtime
    runtime: str  # the runtime's name, for messages
    write: Callable[..., VerifiedExport]  # (model, path, input_size, metadata, options)
    open_runtime: Callable[..., InferenceRuntime]  # (path, threads=None, **runtime options)
    check: Callable[[ExportOptions], None]  # ValueError for options this format does not take

    def dynamic_batch(self, options: ExportOptions) -> bool:
        """Whether the file gets a dynamic batch axis: ``options.dynamic_batch``, else the default."""
        if options.dynamic_batch is None:
            return self.batch_modes[0] == "dynamic"
        mode = "dynamic" if options.dynamic_batch else "static"
        if mode not in self.batch_modes:
            raise ValueError(f"{self.name} files have a {' or '.join(self.batch_modes)} batch axis, not a {mode} one")
        return options.dynamic_batch

    def verify(self, model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int],
               batch_sizes: Sequence[int] = (1,), tolerance: float = 1e-4) -> float:
        """The file at ``path`` as its runtime loads it, against ``model`` in PyTorch on random
        inputs of ``batch_sizes``: the max abs difference (see :func:`compare_with_pytorch`)."""
        runtime = self.open_runtime(Path(path))
        return compare_with_pytorch(model, runtime.run, input_size, batch_sizes, tolerance, str(path), self.runtime)
