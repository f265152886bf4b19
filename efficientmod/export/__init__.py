"""Exported models: writing them, verifying them, and running them again.

Each deployment format lives in its own module of this package and is listed once in
:data:`FORMATS` (its ``--format`` name, file suffixes, the module and the pip extra that
installs its runtime). A format module provides

* ``open_runtime(path, threads=None) -> InferenceRuntime``: the file loaded in its runtime,
  with the metadata (preprocessing, class names) that the export stored beside the graph.

:func:`load_runtime` picks the format from the file's suffix, so ``efficientmod predict``
and the Python API run any exported file the same way.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from efficientmod.export.onnx import (
    MIN_OPSET,
    ExportVerificationError,
    export_onnx,
    export_verified,
    ort_session,
    read_onnx_metadata,
    verify_onnx,
)

__all__ = [
    "FORMATS", "ExportFormat", "InferenceRuntime", "format_of", "load_runtime",
    "MIN_OPSET", "ExportVerificationError", "export_onnx", "export_verified", "ort_session",
    "read_onnx_metadata", "verify_onnx",
]


class InferenceRuntime(Protocol):
    """An exported model loaded in its runtime."""

    path: Path
    metadata: dict[str, object]  # what `efficientmod export` stored: producer, input_size, mean, ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 images -> (B, classes) float32 logits."""
        ...


@dataclass(frozen=True)
class ExportFormat:
    name: str  # the --format value
    suffixes: tuple[str, ...]  # file suffixes that select it
    module: str  # provides open_runtime(path, threads)
    extra: str  # `pip install 'efficientmod[EXTRA]'` installs its runtime


FORMATS: dict[str, ExportFormat] = {f.name: f for f in [
    ExportFormat("onnx", (".onnx",), "efficientmod.export.onnx", "deploy"),
    ExportFormat("openvino", (".xml",), "efficientmod.export.openvino", "openvino"),
    ExportFormat("executorch", (".pte",), "efficientmod.export.executorch", "executorch"),
]}


def format_of(path: str | os.PathLike) -> ExportFormat:
    """The format a file's suffix names; another suffix is a ``ValueError`` listing them."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise ValueError(f"{path}: not an exported model (known suffixes: {known})")


def load_runtime(path: str | os.PathLike, threads: int | None = None) -> InferenceRuntime:
    """Load an exported file (any format of :data:`FORMATS`) in its runtime.

    The result has ``metadata`` (preprocessing and class names, as ``efficientmod export``
    stored them) and ``run(batch)``; ``threads`` sets the runtime's intra-op threads.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"{fmt.name} file not found: {path}")
    return importlib.import_module(fmt.module).open_runtime(path, threads)
