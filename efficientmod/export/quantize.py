"""int8 post-training quantisation for ONNX Runtime and OpenVINO, calibrated on real images.

Where int8 goes in these networks. Their time is in matrix multiplies (the EfficientMod
token mixers and MLPs, the attention projections of all three families) and convolutions
(stems, MobileNet blocks, depth-wise context convs); that is where int8 dot products (VNNI)
pay. The ops between them — LayerNorm / GroupNorm, GELU / SiLU, softmax, the element-wise
modulation multiply and the residual adds — cost little, and their inputs have the widest
ranges (pre-LayerNorm residual streams, pre-softmax logits), so quantising them loses the
most accuracy for the least time. Hence:

* **ONNX Runtime** (:func:`quantize_onnx_int8`): static QDQ quantisation of the *inputs*
  of ``Conv``, ``MatMul`` and ``Gemm`` only (:data:`ORT_INT8_OPS`); weights symmetric int8
  per output channel, activations asymmetric uint8 per tensor with min/max ranges from the
  calibration images; their outputs and everything else stay float32. The graph is first put through ORT's
  quantisation pre-processing (shape inference, basic fusions), as its docs recommend.
* **OpenVINO** (:func:`quantize_openvino_int8`): NNCF post-training quantisation of the same
  places: int8 convolutions and matmuls (OpenVINO's low-precision transformations fuse them
  with their neighbours), with NNCF's element-wise ``Multiply`` / ``Add`` inputs left in float
  (:data:`OPENVINO_FLOAT_OPS`: the modulation product ``ctx * v``, the residual adds and the
  scale-and-shift of the normalisations); activation ranges from the global minimum and
  maximum over the calibration images (:data:`OPENVINO_RANGES`) rather than NNCF's default
  mean of per-image extremes, which clips the heavy tails of the inputs of the modulation's
  ``proj`` and ``g`` matmuls; fast bias correction. Measured on a trained EfficientMod
  (benchmarks/deploy.md): NNCF's default placement kept 77.7% of the fp32 predictions,
  float element-wise inputs 81.7%, plus global ranges 95.5% (NNCF's histogram ranges 95.8%,
  but they fail on EfficientViT's near-constant activations); NNCF's ``ModelType.TRANSFORMER``
  placement (SmoothQuant) kept 70%. Leaving the element-wise inputs in float is also faster
  (fewer re-quantisations between the int8 kernels).

Both take calibration images as one float32 (N, C, H, W) array, preprocessed as at inference
(:func:`efficientmod.export.calibration.read_calibration_images`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from efficientmod.checkpoint import atomic_write

__all__ = ["ORT_INT8_OPS", "OPENVINO_FLOAT_OPS", "check_calibration", "quantize_onnx_int8", "quantize_openvino_int8"]

ORT_INT8_OPS = ("Conv", "MatMul", "Gemm")
OPENVINO_FLOAT_OPS = ("Multiply", "Add")  # OpenVINO op types whose inputs NNCF leaves in float
OPENVINO_RANGES = "MINMAX"  # nncf RangeEstimatorParametersSet of the activations: global min / max


def check_calibration(calibration: np.ndarray) -> np.ndarray:
    """``calibration`` as a float32 (N, C, H, W) array; a ``ValueError`` when it is not one or empty."""
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) array, got shape {calibration.shape}")
    return calibration


class _Images:
    """The calibration images ``batch`` at a time (the batch of a static-batch graph; a
    remainder smaller than ``batch`` is left out), as ONNX Runtime's ``CalibrationDataReader``."""

    def __init__(self, images: np.ndarray, batch: int = 1):
        if len(images) < batch:
            raise ValueError(f"a graph of static batch {batch} needs at least {batch} calibration images, "
                             f"got {len(images)}")
        self.images, self.batch = images, batch
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position + self.batch > len(self.images):
            return None
        self.position += self.batch
        return {"input": self.images[self.position - self.batch:self.position]}

    def rewind(self) -> None:
        self.position = 0


def quantize_onnx_int8(source: str | os.PathLike, target: str | os.PathLike, calibration: np.ndarray,
                       per_channel: bool = True) -> Path:
    """Statically quantise the float32 ONNX file ``source`` to a QDQ int8 file ``target``
    (written atomically), calibrated on ``calibration`` (fed ``batch`` images at a time when
    ``source`` has a static batch). The metadata of ``source`` is kept.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = check_calibration(calibration)
    target = Path(target)
    source_model = onnx.load(str(source), load_external_data=False)
    metadata = {p.key: p.value for p in source_model.metadata_props}
    batch = source_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1  # 0: a dynamic batch

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(prefix="efficientmod-int8-") as folder:
            prepared = Path(folder) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), tmp, _Images(calibration, batch), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(ORT_INT8_OPS), per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               # their outputs feed float ops (norms, GELU, the modulation multiply):
                               # no quantise-dequantise round trip there
                               "OpTypesToExcludeOutputQuantization": list(ORT_INT8_OPS)},
            )
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    atomic_write(target, write)
    return target


def quantize_openvino_int8(ov_model, calibration: np.ndarray):
    """NNCF post-training int8 quantisation of an ``openvino.Model`` (convolution and matmul
    inputs, histogram activation ranges, every calibration image used); returns the quantised model."""
    try:
        import nncf
    except ImportError:
        raise ImportError("NNCF is not installed: pip install 'efficientmod[openvino]'") from None
    calibration = check_calibration(calibration)
    dataset = nncf.Dataset([image[None] for image in calibration])
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = getattr(RangeEstimatorParametersSet, OPENVINO_RANGES)
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)  # NNCF logs every float node and range fallback to stdout
    try:
        return nncf.quantize(
            ov_model, dataset, subset_size=len(calibration), fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(types=list(OPENVINO_FLOAT_OPS), validate=False),
            advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=ranges))
    finally:
        nncf.set_log_level(level)
