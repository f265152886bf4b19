"""ONNX export and its verification in ONNX Runtime: the ``onnx`` :data:`FORMAT`.

:func:`export_onnx` writes the file (atomically), :func:`verify_onnx` runs it in ONNX
Runtime against PyTorch on random inputs of several batch sizes, and
:func:`export_verified` does both, writing the file only when the outputs agree — what
``efficientmod export`` runs. :func:`export_onnx_int8` quantises that verified graph
(:func:`efficientmod.export.quantize.quantize_onnx_int8`) and checks the int8 file by its
agreement with it. The graph's batch axis is dynamic unless asked otherwise.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from efficientmod.checkpoint import atomic_write
from efficientmod.export.calibration import check_agreement, prediction_agreement, run_batched
from efficientmod.export.format import (
    ExportFormat,
    ExportOptions,
    VerifiedExport,
    compare_with_pytorch,
    run_in_file_batches,
)
from efficientmod.export.quantize import check_calibration, quantize_onnx_int8

__all__ = [
    "FORMAT", "MIN_OPSET", "MAX_OPSET", "check_opset", "export_onnx", "verify_onnx", "export_verified",
    "export_onnx_int8",
    "ort_session", "read_onnx_metadata", "OnnxRuntime", "open_runtime",
]

MIN_OPSET = 17  # the first opset with LayerNormalization, which ONNX Runtime runs as one kernel
MAX_OPSET = 20  # the newest torch.onnx's TorchScript exporter writes


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
    check_opset(opset)
    path = Path(path)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    atomic_write(path, lambda tmp: _write_onnx(model, tmp, input_size, opset, dynamic_batch, metadata, batch))
    return path


def check_opset(opset: int) -> None:
    """A ``ValueError`` for an opset outside :data:`MIN_OPSET` to :data:`MAX_OPSET`."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        age = "too old" if opset < MIN_OPSET else "newer than torch.onnx writes"
        raise ValueError(f"opset {opset} is {age}: use {MIN_OPSET} to {MAX_OPSET}")


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
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {path} as an ONNX model: the file is empty")
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


def ort_session(path: str | os.PathLike, threads: int | None = None, optimized_path: str | os.PathLike | None = None,
                spinning: bool = True):
    """An ONNX Runtime CPU session with every graph optimization on (``ORT_ENABLE_ALL``:
    constant folding, Gemm / LayerNorm / GELU fusions, NCHWc convolutions).

    ``threads`` sets the intra-op threads (ONNX Runtime's default: one per core);
    ``optimized_path`` also saves the optimized graph (valid on this kind of CPU only);
    ``spinning=False``: idle intra-op threads sleep instead of spinning (spinning is ONNX
    Runtime's default), which costs latency but leaves the cores to the processes that share them (a server).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the optimized-model warning is documented above
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
) -> float:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch (float32, CPU) on standard
    normal inputs of each batch size; return the largest absolute output difference.

    Raises :class:`ExportVerificationError` when it exceeds ``tolerance`` (or the output
    shapes differ).
    """
    return _compare(model, ort_session(path), str(path), input_size, batch_sizes, tolerance, seed)


def _compare(model: nn.Module, session, label: str, input_size: tuple[int, int, int],
             batch_sizes: Sequence[int], tolerance: float, seed: int = 0) -> float:
    """:func:`verify_onnx` on an open ``session``; ``label`` names the file in errors."""
    return compare_with_pytorch(model, lambda x: session.run(None, {"input": x})[0], input_size, batch_sizes,
                                tolerance, label, "ONNX Runtime", seed)


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
    check_opset(opset)
    path = Path(path)
    checked_batches = _checked_batches(batch_sizes, dynamic_batch)
    worst = []

    def export_and_verify(tmp: str) -> None:
        _write_onnx(model, tmp, input_size, opset, dynamic_batch, metadata)
        worst.append(_compare(model, ort_session(tmp), str(path), input_size, checked_batches, tolerance))

    atomic_write(path, export_and_verify)
    if optimized_path is not None:
        ort_session(path, optimized_path=optimized_path)  # writes the file while building the session
    return worst[0]


def _checked_batches(batch_sizes: Sequence[int], dynamic_batch: bool) -> tuple[int, ...]:
    """The verification batch sizes of a file with a dynamic batch axis, else (1,)."""
    checked = tuple(batch_sizes) if dynamic_batch else (1,)
    if not checked or min(checked) < 1:
        raise ValueError(f"verification batch sizes must be positive, got {list(checked)}")
    return checked


def export_onnx_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: np.ndarray,
    input_size: tuple[int, int, int] = (3, 224, 224),
    metadata: dict[str, object] | None = None,
    check_images: np.ndarray | None = None,
    tolerance: float = 1e-4,
    agreement_tolerance: float = 1.0,
    batch_sizes: Sequence[int] = (1, 2, 3),
    opset: int = 18,
    dynamic_batch: bool = True,
) -> VerifiedExport:
    """The verified float32 ONNX export of ``model`` (:func:`export_verified`), quantised by
    :func:`~efficientmod.export.quantize.quantize_onnx_int8` into ``path``, whose top-1 / top-5
    agreement with the float32 file on ``check_images`` (default: ``calibration``) must be
    within ``agreement_tolerance`` points of 100; nothing is written otherwise."""
    path = Path(path)
    calibration = check_calibration(calibration)
    check_images = calibration if check_images is None else check_images
    with tempfile.TemporaryDirectory(prefix="efficientmod-int8-") as folder:
        fp32_path = Path(folder) / "fp32.onnx"
        worst = export_verified(model, fp32_path, input_size, opset, dynamic_batch,
                                {**(metadata or {}), "precision": "int8"}, batch_sizes, tolerance)
        reference = run_batched(OnnxRuntime(fp32_path).run, check_images)
        int8_path = quantize_onnx_int8(fp32_path, Path(folder) / "int8.onnx", calibration)
        int8 = run_batched(OnnxRuntime(int8_path).run, check_images)
        agreement = check_agreement(prediction_agreement(reference, int8), agreement_tolerance, f"{path} (int8)")
        atomic_write(path, lambda tmp: os.replace(int8_path, tmp))
    return VerifiedExport(path, FORMAT.name, "int8", tuple(input_size), None if dynamic_batch else 1, worst,
                          "fp32 graph", f"batch sizes {list(_checked_batches(batch_sizes, dynamic_batch))}",
                          agreement, details=(f"opset {opset}",))


class OnnxRuntime:
    """An ONNX file in an ONNX Runtime CPU session (see :func:`efficientmod.load_runtime`); a
    file with a static batch runs a batch of images that many at a time."""

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = True):
        self.path = path
        self.metadata = read_onnx_metadata(path)
        self.session = ort_session(path, threads, spinning=spinning)
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None  # None: a dynamic (named) batch axis

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": batch})[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_file_batches(self._infer, np.ascontiguousarray(batch, dtype=np.float32), self.batch)


def open_runtime(path: str | os.PathLike, threads: int | None = None, spinning: bool = True) -> OnnxRuntime:
    return OnnxRuntime(Path(path), threads, spinning)


def _write(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int],
           metadata: dict[str, object] | None, options: ExportOptions) -> VerifiedExport:
    """``FORMAT.write``: fp32 (:func:`export_verified`) or int8 (:func:`export_onnx_int8`)."""
    dynamic = FORMAT.dynamic_batch(options)
    if options.precision == "int8":
        if options.calibration is None:
            raise ValueError("int8 needs calibration images (efficientmod export --calib DIR)")
        return export_onnx_int8(model, path, options.calibration, input_size, metadata, options.check_images,
                                options.tolerance, options.agreement_tolerance, options.batch_sizes, options.opset,
                                dynamic)
    worst = export_verified(model, path, input_size, options.opset, dynamic, metadata, options.batch_sizes,
                            options.tolerance, options.optimized_path)
    return VerifiedExport(Path(path), FORMAT.name, "fp32", tuple(input_size), None if dynamic else 1, worst,
                          "ONNX Runtime", f"batch sizes {list(_checked_batches(options.batch_sizes, dynamic))}",
                          details=(f"opset {options.opset}",))


def _check(options: ExportOptions) -> None:
    check_opset(options.opset)
    if options.optimized_path is not None and options.precision != "fp32":
        raise ValueError("--save-optimized applies to fp32 ONNX exports only")


FORMAT = ExportFormat(
    name="onnx", suffixes=(".onnx",), precisions=("fp32", "int8"), batch_modes=("dynamic", "static"),
    extra="deploy", runtime="ONNX Runtime", write=_write, open_runtime=open_runtime, check=_check,
)
