"""ONNX export and its verification in ONNX Runtime.

:func:`export_onnx` writes the file (atomically), :func:`verify_onnx` runs it in ONNX
Runtime against PyTorch on random inputs of several batch sizes, and
:func:`export_verified` does both, writing the file only when the outputs agree — what
``efficientmod export`` runs.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from efficientmod.checkpoint import atomic_write

__all__ = [
    "MIN_OPSET", "ExportVerificationError", "export_onnx", "verify_onnx", "export_verified",
    "ort_session", "read_onnx_metadata", "OnnxRuntime", "open_runtime",
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
    batch: int = 1,
) -> Path:
    """Export ``model`` (in eval mode, on CPU, float32) to ``path`` atomically.

    The graph has one input ``input`` (N×C×H×W, N dynamic when ``dynamic_batch``, else
    ``batch``) and one output ``output``. Uses the TorchScript-based exporter, which handles
    every family of this library in well under a second per model. ``metadata`` entries are stored in the
    model's ``metadata_props`` (strings kept, anything else JSON-encoded); see
    :func:`read_onnx_metadata`.
    """
    _check_opset(opset)
    path = Path(path)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    atomic_write(path, lambda tmp: _write_onnx(model, tmp, input_size, opset, dynamic_batch, metadata, batch))
    return path


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer")


def _write_onnx(model: nn.Module, path: str, input_size: tuple[int, int, int], opset: int,
                dynamic_batch: bool, metadata: dict[str, object] | None, batch: int = 1) -> None:
    """The export itself (not atomic), traced at ``batch`` images: ``model`` in eval mode
    meanwhile, the tracer's expected warnings silenced."""
    was_training = model.training
    model.eval()
    example = torch.zeros(batch, *input_size)
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # crops of padded maps
            torch.onnx.export(
                model, (example,), path, input_names=["input"], output_names=["output"],
                opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
            )
    finally:
        model.train(was_training)
    if metadata:
        _add_metadata(path, metadata)


def _add_metadata(path: str, metadata: dict[str, object]) -> None:
    import onnx

    proto = onnx.load(path)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, path)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (plain strings kept); a
    file that is not ONNX is a ``ValueError``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError for a file that is not ONNX
        raise ValueError(f"cannot read {path} as an ONNX model: {error}") from error
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
    return _compare(model, session or ort_session(path), str(path), input_size, batch_sizes, tolerance, seed)


@torch.no_grad()
def _compare(model: nn.Module, session, label: str, input_size: tuple[int, int, int],
             batch_sizes: Sequence[int], tolerance: float, seed: int = 0) -> float:
    """:func:`verify_onnx` on an open ``session``; ``label`` names the file in errors."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        for batch in batch_sizes:
            x = torch.randn(batch, *input_size, generator=generator)
            expected = model(x).numpy()
            (actual,) = session.run(None, {"input": x.numpy()})
            if actual.shape != expected.shape:
                raise ExportVerificationError(
                    f"{label}: ONNX Runtime output shape {actual.shape} != PyTorch {expected.shape} at batch {batch}"
                )
            worst = max(worst, float(np.abs(actual - expected).max()))
    finally:
        model.train(was_training)
    if not worst <= tolerance:  # also catches NaN
        raise ExportVerificationError(
            f"{label}: ONNX Runtime differs from PyTorch by {worst:.3g} (max abs) > tolerance {tolerance:g}"
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
    """:func:`export_onnx` and :func:`verify_onnx` on a temporary file, which replaces
    ``path`` only once verified: when verification fails (or anything else goes wrong)
    ``path`` is left as it was. Then ONNX Runtime's optimized graph goes to
    ``optimized_path`` when given. Returns the max abs difference.

    Without ``dynamic_batch`` only batch size 1 is checked.
    """
    _check_opset(opset)
    path = Path(path)
    checked_batches = batch_sizes if dynamic_batch else (1,)
    if not checked_batches or min(checked_batches) < 1:
        raise ValueError(f"verification batch sizes must be positive, got {list(checked_batches)}")
    worst = []

    def export_and_verify(tmp: str) -> None:
        _write_onnx(model, tmp, input_size, opset, dynamic_batch, metadata)
        worst.append(_compare(model, ort_session(tmp), str(path), input_size, checked_batches, tolerance))

    atomic_write(path, export_and_verify)
    if optimized_path is not None:
        ort_session(path, optimized_path=optimized_path)  # writes the file while building the session
    return worst[0]


class OnnxRuntime:
    """An ONNX file in an ONNX Runtime CPU session (see :func:`efficientmod.load_runtime`)."""

    def __init__(self, path: Path, threads: int | None = None):
        self.path = path
        self.metadata = read_onnx_metadata(path)
        self.session = ort_session(path, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def open_runtime(path: str | os.PathLike, threads: int | None = None) -> OnnxRuntime:
    return OnnxRuntime(Path(path), threads)
