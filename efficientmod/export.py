"""ONNX export and its verification in ONNX Runtime.

:func:`export_onnx` writes the file (atomically), :func:`verify_onnx` runs it in ONNX
Runtime against PyTorch on random inputs of several batch sizes, and
:func:`export_verified` does both and removes the file when the outputs disagree — what
``efficientmod export`` runs.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from efficientmod.checkpoint import atomic_write

__all__ = [
    "MIN_OPSET", "ExportVerificationError", "export_onnx", "verify_onnx", "export_verified",
    "ort_session", "read_onnx_metadata",
]

MIN_OPSET = 17  # the first opset with LayerNormalization, which ONNX Runtime runs as one kernel


class ExportVerificationError(ValueError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    opset: int = 18,
    dynamic_batch: bool = True,
    metadata: dict[str, object] | None = None,
) -> Path:
    """Export ``model`` (in eval mode, on CPU, float32) to ``path`` atomically.

    The graph has one input ``input`` (N×C×H×W, N dynamic when ``dynamic_batch``) and one
    output ``output``. Uses the TorchScript-based exporter, which handles every family of
    this library in well under a second per model. ``metadata`` entries are stored in the
    model's ``metadata_props`` (strings kept, anything else JSON-encoded); see
    :func:`read_onnx_metadata`.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    path = Path(path)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size)
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None

    def write(tmp: str) -> None:
        torch.onnx.export(
            model, (example,), tmp, input_names=["input"], output_names=["output"],
            opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
        )
        if metadata:
            _add_metadata(tmp, metadata)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # crops of padded maps
            atomic_write(path, write)
    finally:
        model.train(was_training)
    return path


def _add_metadata(path: str, metadata: dict[str, object]) -> None:
    import onnx

    proto = onnx.load(path)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (plain strings kept)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    proto = onnx.load(str(path), load_external_data=False)
    decoded = {}
    for entry in proto.metadata_props:
        try:
            decoded[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            decoded[entry.key] = entry.value
    return decoded


def ort_session(path: str | os.PathLike, threads: int | None = None, optimized_path: str | os.PathLike | None = None):
    """An ONNX Runtime CPU session with every graph optimization on (``ORT_ENABLE_ALL``:
    constant folding, Gemm / LayerNorm / GELU fusions, NCHWc convolutions).

    ``threads`` sets the intra-op threads (ONNX Runtime's default: one per core);
    ``optimized_path`` also saves the optimized graph (valid on this kind of CPU only).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the optimized-model warning is documented above
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch_sizes: Sequence[int] = (1, 2, 3),
    tolerance: float = 1e-4,
    seed: int = 0,
    session=None,
) -> float:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch (float32, CPU) on standard
    normal inputs of each batch size; return the largest absolute output difference.

    Raises :class:`ExportVerificationError` when it exceeds ``tolerance`` (or the output
    shapes differ).
    """
    was_training = model.training
    model.eval()
    session = session or ort_session(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, *input_size, generator=generator)
            expected = model(x).numpy()
            (actual,) = session.run(None, {"input": x.numpy()})
            if actual.shape != expected.shape:
                raise ExportVerificationError(
                    f"{path}: ONNX Runtime output shape {actual.shape} != PyTorch {expected.shape} at batch {batch}"
                )
            worst = max(worst, float(np.abs(actual - expected).max()))
    finally:
        model.train(was_training)
    if not worst <= tolerance:  # also catches NaN
        raise ExportVerificationError(
            f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} (max abs) > tolerance {tolerance:g}"
        )
    return worst


def export_verified(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    opset: int = 18,
    dynamic_batch: bool = True,
    metadata: dict[str, object] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 3),
    tolerance: float = 1e-4,
    optimized_path: str | os.PathLike | None = None,
) -> float:
    """:func:`export_onnx` then :func:`verify_onnx`; the file is removed when verification
    fails (or anything else goes wrong after it was written). Returns the max abs difference.

    Without ``dynamic_batch`` only batch size 1 is checked.
    """
    path = Path(path)
    export_onnx(model, path, input_size, opset, dynamic_batch, metadata)
    try:
        session = ort_session(path, optimized_path=optimized_path)
        return verify_onnx(model, path, input_size, batch_sizes if dynamic_batch else (1,), tolerance,
                           session=session)
    except BaseException:
        path.unlink(missing_ok=True)
        if optimized_path is not None:
            Path(optimized_path).unlink(missing_ok=True)
        raise
