"""OpenVINO IR export (``.xml`` + ``.bin``) in float32, bf16 or int8, and its runtime: the
``openvino`` :data:`FORMAT`.

The deployed model goes through the ONNX graph of :mod:`efficientmod.export.onnx` (the same
graph ONNX Runtime runs) into OpenVINO's converter, so every format starts from one graph.
Precisions:

* ``fp32``: OpenVINO runs every op in float32 — *set explicitly*: on CPUs with AVX-512 BF16
  or AMX, OpenVINO's CPU plugin defaults to bf16 inference precision. Verified against
  PyTorch like the ONNX export (max abs difference on random inputs).
* ``bf16``: the same float32 IR with ``inference_precision`` bf16 stored beside it, so the
  CPU plugin runs matmuls and convolutions in bfloat16 (the hardware's native dot products).
* ``int8``: NNCF post-training quantisation (:func:`efficientmod.export.quantize.quantize_openvino_int8`)
  calibrated on an image folder; the ops NNCF leaves in float run in float32.

bf16 and int8 cannot match float32 to 1e-4; they are verified by top-1 / top-5 agreement
with the float32 graph on real images (:mod:`efficientmod.export.calibration`).

**Batch axis.** Files have a static batch of 1 by default, so OpenVINO's own tools load them as
written (``benchmark_app -m FILE -d CPU`` refuses a dynamic input without ``-shape``, and
OpenVINO 2026.4's shape inference fails on the int8 graphs' token-matrix reshapes
((B·H·W, C) → (B, H, W, C)) when the batch is dynamic); a dynamic batch is written on request.
Every file is compiled *as written* before it is moved into place (:func:`save_openvino`), and
the verification runs that compiled file. :class:`OpenVinoRuntime` also runs files as written:
a batch of images goes through a static-batch file a file-batch at a time.

The preprocessing and class names are stored in the IR's ``rt_info`` under ``efficientmod``, so
:func:`efficientmod.load_runtime` / ``efficientmod predict OUT.xml`` read them as from ONNX.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.nn as nn

from efficientmod.checkpoint import write_error
from efficientmod.export.calibration import check_agreement, prediction_agreement, run_batched
from efficientmod.export.format import (
    ExportFormat,
    ExportOptions,
    ExportVerificationError,
    VerifiedExport,
    compare_with_pytorch,
    run_in_file_batches,
)
from efficientmod.export.onnx import check_opset, export_onnx

__all__ = [
    "FORMAT", "PRECISIONS", "RT_INFO_KEY", "convert_onnx", "save_openvino", "read_openvino_metadata",
    "compile_openvino", "export_openvino", "StaticBatchModel", "OpenVinoRuntime", "open_runtime",
]

PRECISIONS = ("fp32", "bf16", "int8")
RT_INFO_KEY = "efficientmod"  # the rt_info section holding the export's metadata
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # of the ops left in float


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError("OpenVINO is not installed: pip install 'efficientmod[openvino]'") from None
    return openvino


def convert_onnx(onnx_path: str | os.PathLike):
    """An ONNX file as an ``openvino.Model`` (float32 weights, the batch axis kept dynamic)."""
    return _openvino().convert_model(str(onnx_path))


def save_openvino(ov_model, path: str | os.PathLike, metadata: dict[str, object] | None = None,
                  batch: int | None = 1, check: Callable[[Path], object] | None = None) -> Path:
    """Write ``ov_model`` as ``path`` (.xml) and its .bin beside it: the input's batch axis set
    to ``batch`` (None: dynamic; ``ov_model`` is reshaped in place), float32 weights kept (no
    fp16 compression), ``metadata`` in the ``efficientmod`` section of ``rt_info``
    (JSON-encoded). Both files are written in a temporary folder beside ``path`` first;
    ``check`` runs on that .xml (default: :class:`OpenVinoRuntime`, which compiles it as
    written) and the files are moved into place (.bin, then .xml) only once it passes."""
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR file ends in .xml, got {path}")
    ov_model.reshape([-1 if batch is None else batch, *_image_shape(ov_model)])
    for key, value in (metadata or {}).items():
        ov_model.set_rt_info(json.dumps(value), [RT_INFO_KEY, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        try:
            _openvino().save_model(ov_model, staging / path.name, compress_to_fp16=False)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError on a full disk
            raise write_error(path, error, existed) from error
        (check or OpenVinoRuntime)(staging / path.name)  # a file that does not compile is not a write error
        try:
            os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(staging / path.name, path)
        except OSError as error:
            raise write_error(path, error, existed) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _image_shape(ov_model) -> list[int]:
    """The (C, H, W) of ``ov_model``'s N×C×H×W input; a ``ValueError`` unless they are static."""
    shape = ov_model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or any(d.is_dynamic for d in list(shape)[1:]):
        raise ValueError(f"expected an N×C×H×W input with static C, H, W, got {shape}")
    return [d.get_length() for d in list(shape)[1:]]


def read_openvino_metadata(path: str | os.PathLike, ov_model=None) -> dict[str, object]:
    """The ``efficientmod`` ``rt_info`` entries of an IR file (JSON-decoded); ``{}`` when it
    has none. ``ov_model``: the file already read."""
    if ov_model is None:
        ov_model = _read_model(Path(path))
    if not ov_model.has_rt_info([RT_INFO_KEY]):
        return {}
    section = ov_model.get_rt_info([RT_INFO_KEY]).astype(dict)
    return {key: json.loads(value.astype(str)) if hasattr(value, "astype") else json.loads(value)
            for key, value in section.items()}


def _read_model(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"OpenVINO file not found: {path}")
    if not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path}: its weights file {path.with_suffix('.bin')} is missing")
    try:
        return _openvino().Core().read_model(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read {path} as an OpenVINO IR: {_reason(error)}") from error


def _reason(error: RuntimeError) -> str:
    """The first line of an OpenVINO error that says something (not "Exception from FILE:LINE:"), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from")]
    return (said or lines or [type(error).__name__])[0][:300]


def compile_openvino(ov_model, precision: str = "fp32", threads: int | None = None, profile: bool = False):
    """``ov_model`` compiled for the CPU, the float ops in ``precision``'s inference precision
    (float32 for fp32 and int8, bfloat16 for bf16), latency mode (one stream),
    ``threads`` inference threads when given; ``profile``: with per-layer performance
    counters (``PERF_COUNT``, read by an infer request's ``get_profiling_info()``)."""
    if precision not in INFERENCE_PRECISION:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    ov = _openvino()
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": "1"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if profile:
        config["PERF_COUNT"] = "YES"
    return ov.Core().compile_model(ov_model, "CPU", config)


class StaticBatchModel:
    """An in-memory ``ov_model`` compiled once per batch size it meets, each time with static
    shapes (what OpenVINO optimises best, and what its int8 transformations need here, see the
    module docstring); ``ov_model`` is reshaped in place. The first call at a new batch size
    pays the compilation (about a second for these models). Files run as written instead:
    :class:`OpenVinoRuntime`."""

    def __init__(self, ov_model, precision: str = "fp32", threads: int | None = None):
        self.ov_model, self.precision, self.threads = ov_model, precision, threads
        self.image_shape = _image_shape(ov_model)
        self.requests = {}

    def request(self, batch: int):
        """The infer request of the model compiled for ``batch`` images."""
        if batch not in self.requests:
            self.ov_model.reshape([batch, *self.image_shape])
            self.requests[batch] = compile_openvino(self.ov_model, self.precision, self.threads).create_infer_request()
        return self.requests[batch]

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = self.request(len(batch))
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()


class OpenVinoRuntime:
    """An OpenVINO IR on the CPU (see :func:`efficientmod.load_runtime`), compiled as written
    in the precision its export stored (float32 for files of other producers). A file with a
    static batch runs a batch of images that many at a time (the last group padded)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = Path(path)
        self.ov_model = _read_model(self.path)
        self.metadata = read_openvino_metadata(self.path, self.ov_model)
        self.precision = str(self.metadata.get("precision", "fp32"))
        self.image_shape = tuple(_image_shape(self.ov_model))
        batch = self.ov_model.input(0).get_partial_shape()[0]
        self.batch = None if batch.is_dynamic else batch.get_length()  # None: any batch size
        try:
            self.request = compile_openvino(self.ov_model, self.precision, threads).create_infer_request()
        except RuntimeError as error:
            hint = (": with a dynamic batch axis its shapes do not infer; write it with a static batch"
                    if self.batch is None else "")
            raise ExportVerificationError(f"OpenVINO cannot compile {self.path.name} as written "
                                          f"({_reason(error)}){hint}") from error

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return self.request.get_output_tensor(0).data.copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 images -> (B, classes) float32 logits."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.image_shape:
            raise ValueError(f"{self.path} takes (B, {', '.join(map(str, self.image_shape))}) images, "
                             f"got {tuple(batch.shape)}")
        return run_in_file_batches(self._infer, batch, self.batch)


def open_runtime(path: str | os.PathLike, threads: int | None = None) -> OpenVinoRuntime:
    return OpenVinoRuntime(Path(path), threads)


def export_openvino(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    precision: str = "fp32",
    metadata: dict[str, object] | None = None,
    calibration: np.ndarray | None = None,
    check_images: np.ndarray | None = None,
    tolerance: float = 1e-4,
    agreement_tolerance: float = 1.0,
    batch_sizes: Sequence[int] = (1, 2, 3),
    opset: int = 18,
    dynamic_batch: bool = False,
) -> VerifiedExport:
    """Export ``model`` (eval mode, CPU, float32) to an OpenVINO IR at ``path`` in ``precision``,
    with a batch of 1 (or a dynamic batch axis: ``dynamic_batch``).

    fp32: the file, compiled as written, against PyTorch (``tolerance``, random inputs of
    ``batch_sizes``; of batch 1 for a static file). bf16 / int8: the float32 graph against
    PyTorch so, then the file's top-1 and top-5 agreement with that graph on ``check_images``
    (default: ``calibration``) within ``agreement_tolerance`` percentage points of 100. int8
    needs ``calibration`` images (N, C, H, W, preprocessed). Nothing is written unless every
    check passes; an existing file is then replaced.
    Raises :class:`~efficientmod.export.format.ExportVerificationError` when a check fails.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration images (efficientmod export --calib DIR)")
    path = Path(path)
    batches = tuple(batch_sizes) if dynamic_batch else (1,)
    found: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="efficientmod-openvino-") as folder:
        ov_model = convert_onnx(export_onnx(model, Path(folder) / "model.onnx", input_size, opset))
        if precision == "fp32":
            def check(xml: Path) -> None:
                found["worst"] = compare_with_pytorch(model, OpenVinoRuntime(xml).run, input_size, batches,
                                                      tolerance, str(path), "OpenVINO")
        else:
            check, found["worst"] = _reduced_precision_check(
                model, ov_model, path, input_size, precision, batches, tolerance,
                calibration if check_images is None else check_images, agreement_tolerance, found)
            if precision == "int8":  # quantised with a static batch: see the module docstring
                from efficientmod.export.quantize import quantize_openvino_int8

                ov_model.reshape([1, *input_size])
                ov_model = quantize_openvino_int8(ov_model, calibration)
        save_openvino(ov_model, path, {**(metadata or {}), "precision": precision},
                      None if dynamic_batch else 1, check)
    return VerifiedExport(path, FORMAT.name, precision, tuple(input_size), None if dynamic_batch else 1,
                          found["worst"], "OpenVINO" if precision == "fp32" else "fp32 graph",
                          f"batch sizes {list(batches)}", found.get("agreement"), details=(f"opset {opset}",))


def _reduced_precision_check(model: nn.Module, ov_model, path: Path, input_size, precision: str,
                             batches: Sequence[int], tolerance: float, check_images: np.ndarray | None,
                             agreement_tolerance: float, found: dict) -> tuple[Callable[[Path], None], float]:
    """The float32 graph (a copy of ``ov_model``) verified against PyTorch, and the check of a
    written bf16 / int8 file: its agreement with that graph on ``check_images`` (random
    images without them, better than nothing) stored as ``found["agreement"]``."""
    fp32 = StaticBatchModel(ov_model.clone(), "fp32")
    worst = compare_with_pytorch(model, fp32.run, input_size, batches, tolerance, str(path), "OpenVINO fp32 graph")
    if check_images is None:
        check_images = np.random.default_rng(0).standard_normal((32, *input_size), dtype=np.float32)
    reference = run_batched(fp32.run, check_images)

    def check(xml: Path) -> None:
        written = run_batched(OpenVinoRuntime(xml).run, check_images)
        found["agreement"] = check_agreement(prediction_agreement(reference, written), agreement_tolerance,
                                             f"{path} ({precision})")

    return check, worst


def _write(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int],
           metadata: dict[str, object] | None, options: ExportOptions) -> VerifiedExport:
    """``FORMAT.write``: :func:`export_openvino` with ``options``."""
    return export_openvino(model, path, input_size, options.precision, metadata, options.calibration,
                           options.check_images, options.tolerance, options.agreement_tolerance, options.batch_sizes,
                           options.opset, FORMAT.dynamic_batch(options))


def _check(options: ExportOptions) -> None:
    check_opset(options.opset)
    if options.optimized_path is not None:
        raise ValueError("--save-optimized applies to fp32 ONNX exports only")


FORMAT = ExportFormat(
    name="openvino", suffixes=(".xml",), precisions=PRECISIONS, batch_modes=("static", "dynamic"),
    extra="openvino", runtime="OpenVINO", write=_write, open_runtime=open_runtime, check=_check,
)
