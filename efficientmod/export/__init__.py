"""Exported models: writing them, verifying them, and running them again.

Each deployment format lives in its own module of this package, which declares it as an
:class:`~efficientmod.export.format.ExportFormat` (name, suffixes, precisions, batch axes,
pip extra, and how to write, verify and load a file); :data:`FORMATS` lists them once.
:func:`format_of` picks the format from a file's suffix, so ``efficientmod export``,
``efficientmod predict`` and :func:`load_runtime` handle every format the same way. Adding a
format is one module and one line in :data:`FORMATS`.
"""
from __future__ import annotations

import os
from pathlib import Path

from efficientmod.export import executorch, onnx, openvino
from efficientmod.export.format import (
    ExportFormat,
    ExportOptions,
    ExportVerificationError,
    InferenceRuntime,
    VerifiedExport,
)
from efficientmod.export.onnx import (
    MIN_OPSET,
    export_onnx,
    export_verified,
    ort_session,
    read_onnx_metadata,
    verify_onnx,
)
from efficientmod.metadata import ExportMetadata

__all__ = [
    "FORMATS", "ExportFormat", "ExportOptions", "VerifiedExport", "InferenceRuntime", "find_format", "format_of",
    "resolve_format", "load_runtime", "load_classifier", "MIN_OPSET", "ExportVerificationError", "export_onnx",
    "export_verified",
    "ort_session", "read_onnx_metadata", "verify_onnx",
]

FORMATS: dict[str, ExportFormat] = {f.name: f for f in [onnx.FORMAT, openvino.FORMAT, executorch.FORMAT]}


def find_format(path: str | os.PathLike) -> ExportFormat | None:
    """The format a file's suffix names, None for another suffix."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt in FORMATS.values() if suffix in fmt.suffixes), None)


def format_of(path: str | os.PathLike) -> ExportFormat:
    """The format a file's suffix names; another suffix is a ``ValueError`` listing them."""
    fmt = find_format(path)
    if fmt is None:
        known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
        raise ValueError(f"{path}: not an exported model (known suffixes: {known})")
    return fmt


def resolve_format(path: str | os.PathLike, options: ExportOptions, name: str | None = None) -> ExportFormat:
    """The format that writes ``path`` with ``options``: ``name``, else the one of the suffix.
    A ``ValueError`` when ``path`` is a folder or under a file, the suffix is not that format's,
    the precision is not one it writes (naming the formats that write it) or the format refuses
    an option."""
    fmt = FORMATS[name] if name is not None else format_of(path)
    _check_output_path(Path(path))
    if Path(path).suffix.lower() not in fmt.suffixes:
        raise ValueError(f"--output of a {fmt.name} export ends in {' or '.join(fmt.suffixes)}, got {path}")
    if options.precision not in fmt.precisions:
        others = [f.name for f in FORMATS.values() if options.precision in f.precisions]
        raise ValueError(f"--precision {options.precision} is not written by {fmt.name} exports "
                         f"({', '.join(fmt.precisions)}): use --format {' or '.join(others)}")
    fmt.check(options)
    fmt.dynamic_batch(options)  # a batch axis the format cannot write is refused now
    return fmt


def _check_output_path(path: Path) -> None:
    """A ``ValueError`` for an ``--output`` that can never be written: an existing folder, or a
    path under a regular file."""
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder: name the file to write in it")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--output {path}: {parent} is a file, not a folder")


def load_runtime(path: str | os.PathLike, threads: int | None = None, **options) -> InferenceRuntime:
    """Load an exported file (any format of :data:`FORMATS`) in its runtime.

    The result has ``metadata`` (preprocessing and class names, as ``efficientmod export``
    stored them) and ``run(batch)``; ``threads`` sets the runtime's intra-op threads;
    ``options`` go to the format's ``open_runtime`` (ONNX: ``spinning``).
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"{fmt.name} file not found: {path}")
    return fmt.open_runtime(path, threads, **options)


def load_classifier(path: str | os.PathLike, threads: int | None = None,
                    **options) -> tuple[InferenceRuntime, ExportMetadata]:
    """An exported classifier (:func:`load_runtime`) and its checked metadata: the values
    (:meth:`ExportMetadata.from_dict`) and the graph against them - it takes the declared
    ``input_size`` and gives one logit per declared class (one zero image is run). A
    ``ValueError`` naming the file otherwise."""
    import numpy as np

    runtime = load_runtime(path, threads, **options)
    meta = ExportMetadata.from_dict(runtime.metadata, str(path))
    size = meta.preprocessing.input_size
    try:
        logits = runtime.run(np.zeros((1, *size), np.float32))
    except Exception as error:  # noqa: BLE001 - each runtime has its own shape error
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: the graph does not take the input_size {list(size)} of its metadata: "
                         f"{first_line[:200]}") from None
    if logits.ndim != 2 or logits.shape[1] != meta.num_classes:
        raise ValueError(f"{path}: the metadata declares {meta.num_classes} classes, the graph gives "
                         f"outputs of shape {list(logits.shape)}")
    return runtime, meta
