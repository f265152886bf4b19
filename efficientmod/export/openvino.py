"""OpenVINO IR export (``.xml`` + ``.bin``) in float32, bf16 or int8, and its runtime.

The deployed model goes through the verified ONNX graph of :mod:`efficientmod.export.onnx`
(the same file ONNX Runtime runs) into OpenVINO's converter, so every format starts from
one graph. Precisions:

* ``fp32``: OpenVINO runs every op in float32 — *set explicitly*: on CPUs with AVX-512 BF16
  or AMX, OpenVINO's CPU plugin defaults to bf16 inference precision. Verified against
  PyTorch like the ONNX export (max abs difference on random inputs of several batch sizes).
* ``bf16``: the same float32 IR with ``inference_precision`` bf16 stored beside it, so the
  CPU plugin runs matmuls and convolutions in bfloat16 (the hardware's native dot products).
* ``int8``: NNCF post-training quantisation (:func:`efficientmod.export.quantize.quantize_openvino_int8`)
  calibrated on an image folder; the ops NNCF leaves in float run in float32.

bf16 and int8 cannot match float32 to 1e-4; they are verified by top-1 / top-5 agreement
with the float32 IR on real images (:mod:`efficientmod.export.calibration`). The
preprocessing and class names are stored in the IR's ``rt_info`` under ``efficientmod``, so
:func:`efficientmod.load_runtime` / ``efficientmod predict OUT.xml`` read them as from ONNX.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn as nn

from efficientmod.checkpoint import write_error
from efficientmod.export.calibration import VerifiedExport, check_agreement, prediction_agreement, run_batched
from efficientmod.export.onnx import export_onnx, verify_onnx

__all__ = [
    "PRECISIONS", "RT_INFO_KEY", "convert_onnx", "save_openvino",
    "read_openvino_metadata", "compile_openvino", "export_openvino", "StaticBatchModel", "OpenVinoRuntime",
    "open_runtime",
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


def save_openvino(ov_model, path: str | os.PathLike, metadata: dict[str, object] | None = None) -> Path:
    """Write ``ov_model`` as ``path`` (.xml) and its .bin beside it, float32 weights kept
    (no fp16 compression), ``metadata`` in the ``efficientmod`` section of ``rt_info``
    (JSON-encoded). Both files are written in a temporary folder beside ``path`` first and
    moved into place (.bin, then .xml) only once complete."""
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR file ends in .xml, got {path}")
    for key, value in (metadata or {}).items():
        ov_model.set_rt_info(json.dumps(value), [RT_INFO_KEY, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        _openvino().save_model(ov_model, staging / path.name, compress_to_fp16=False)
        os.replace(staging / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(staging / path.name, path)
    except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError on a full disk
        raise write_error(path, error, existed) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


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
        raise ValueError(f"cannot read {path} as an OpenVINO IR: {str(error).splitlines()[0]}") from error


def compile_openvino(ov_model, precision: str = "fp32", threads: int | None = None):
    """``ov_model`` compiled for the CPU, the float ops in ``precision``'s inference precision
    (float32 for fp32 and int8, bfloat16 for bf16), latency mode (one stream),
    ``threads`` inference threads when given."""
    if precision not in INFERENCE_PRECISION:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    ov = _openvino()
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": "1"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return ov.Core().compile_model(ov_model, "CPU", config)


class StaticBatchModel:
    """``ov_model`` compiled once per batch size it meets, each time with static shapes.

    Static shapes are what OpenVINO optimises best, and what its int8 low-precision
    transformations need here: with a dynamic batch they fail on the deployed graphs'
    token-matrix reshapes ((B·H·W, C) → (B, H, W, C)), OpenVINO 2026.4. The first call at a
    new batch size pays the compilation (about a second for these models)."""

    def __init__(self, ov_model, precision: str = "fp32", threads: int | None = None):
        self.ov_model, self.precision, self.threads = ov_model, precision, threads
        shape = ov_model.input(0).get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4 or any(d.is_dynamic for d in list(shape)[1:]):
            raise ValueError(f"expected an N×C×H×W input with static C, H, W, got {shape}")
        self.image_shape = [d.get_length() for d in list(shape)[1:]]
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


class OpenVinoRuntime(StaticBatchModel):
    """An OpenVINO IR on the CPU (see :func:`efficientmod.load_runtime`), compiled in the
    precision its export stored (float32 for files of other producers), per batch size."""

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        ov_model = _read_model(self.path)
        self.metadata = read_openvino_metadata(self.path, ov_model)
        super().__init__(ov_model, str(self.metadata.get("precision", "fp32")), threads)


def open_runtime(path: str | os.PathLike, threads: int | None = None) -> OpenVinoRuntime:
    return OpenVinoRuntime(Path(path), threads)


class _Session:
    """An OpenVINO model behind ONNX Runtime's ``session.run`` call, so
    :func:`efficientmod.export.onnx.verify_onnx` compares it with PyTorch unchanged."""

    def __init__(self, model: StaticBatchModel):
        self.model = model

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self.model.run(feeds["input"])]


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
) -> VerifiedExport:
    """Export ``model`` (eval mode, CPU, float32) to an OpenVINO IR at ``path`` in ``precision``.

    The float32 IR is always verified against PyTorch first (``tolerance``, random inputs of
    ``batch_sizes``). For bf16 / int8 the file's top-1 and top-5 agreement with the float32
    IR on ``check_images`` (default: ``calibration``) must be within ``agreement_tolerance``
    percentage points of 100. int8 needs ``calibration`` images (N, C, H, W, preprocessed).
    Nothing is written unless every check passes; an existing file is then replaced.
    Raises :class:`~efficientmod.export.onnx.ExportVerificationError` when a check fails.
    """
    from efficientmod.export.quantize import quantize_openvino_int8

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration images (efficientmod export --calib DIR)")
    path = Path(path)
    check_images = calibration if check_images is None else check_images
    with tempfile.TemporaryDirectory(prefix="efficientmod-openvino-") as folder:
        onnx_path = export_onnx(model, Path(folder) / "model.onnx", input_size, opset)
        ov_model = convert_onnx(onnx_path)
        fp32 = StaticBatchModel(convert_onnx(onnx_path), "fp32")
        worst = verify_onnx(model, path, input_size, batch_sizes, tolerance, session=_Session(fp32))
        agreement = None
        if precision != "fp32":
            if check_images is None:  # bf16 without images: random ones, better than nothing
                check_images = np.random.default_rng(0).standard_normal((32, *input_size), dtype=np.float32)
            reference = run_batched(fp32.run, check_images)
            if precision == "int8":  # quantised with a static batch: see StaticBatchModel
                ov_model.reshape([1, *input_size])
                ov_model = quantize_openvino_int8(ov_model, calibration)
            reduced = StaticBatchModel(ov_model, precision)
            agreement = check_agreement(prediction_agreement(reference, run_batched(reduced.run, check_images)),
                                        agreement_tolerance, f"{path} ({precision})")
            ov_model.reshape([-1, *input_size])  # the file keeps a dynamic batch axis whatever was compiled
        save_openvino(ov_model, path, {**(metadata or {}), "precision": precision})
    return VerifiedExport(path, precision, worst, agreement)
