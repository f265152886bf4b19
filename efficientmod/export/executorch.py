"""ExecuTorch export: one ``.pte`` program for Android, iOS and Linux, verified here.

The papers sell MobileViTv2 (Mehta & Rastegari, 2022) and EfficientViT (Liu et al., 2023)
on iPhone latency, and EfficientMod (Ma et al., 2024) on cheap blocks where compute is
scarce. ExecuTorch runs the same program file in its Android (Java/Kotlin), iOS (Swift)
and Python runtimes, so a phone artifact is checked on this machine before it ships:

1. the deployed model (:func:`efficientmod.deploy`) is captured by ``torch.export`` at a
   fixed input of one image (what a phone app feeds);
2. :data:`XNNPACK_REWRITES` restate the few ops XNNPACK has no kernel for (LayerNorm,
   reductions over the last axis, attention, channel splits) in ops it has, so the
   network runs as one or a few XNNPACK partitions instead of being cut at every norm;
3. for ``int8``, the pt2e flow quantises convolutions and linear layers (per-channel
   symmetric weights, per-tensor activations calibrated on real images) before lowering;
4. the XNNPACK partitioner lowers what it can, ExecuTorch's portable kernels run the rest
   (:class:`DelegationReport` says what and why);
5. the program, with its preprocessing and class names in a constant method
   (:data:`METADATA_METHOD`, a JSON string), is run in ExecuTorch's Python runtime against
   PyTorch — fp32 to a max abs difference, int8 by top-1 / top-5 agreement — and only then
   replaces the output file (written atomically: on failure the old file stays).

Needs ``pip install 'efficientmod[executorch]'`` (tested with executorch 1.5.1, torch 2.14.1).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import operator
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from efficientmod.checkpoint import atomic_write
from efficientmod.export.calibration import check_agreement, prediction_agreement, run_batched
from efficientmod.export.format import (
    ExportFormat,
    ExportOptions,
    ExportVerificationError,
    VerifiedExport,
    compare_with_pytorch,
)

__all__ = [
    "FORMAT", "METADATA_METHOD", "PRECISIONS", "INT8_SCOPES", "XNNPACK_REWRITES", "DelegationReport",
    "ExecutorchExport", "quantize_int8", "lower_to_executorch", "export_executorch", "ExecutorchRuntime",
    "open_runtime", "set_threads",
]

METADATA_METHOD = "efficientmod_metadata"  # constant method of the program: the export's metadata as JSON
PRECISIONS = ("fp32", "int8")
INSTALL_HINT = "ExecuTorch is not installed: pip install 'efficientmod[executorch]'"
aten = torch.ops.aten


def _require_executorch() -> None:
    if importlib.util.find_spec("executorch") is None:
        raise ModuleNotFoundError(INSTALL_HINT)


# --------------------------------------------------------------------------- rewrites for XNNPACK
# Each function has the signature of the aten op it replaces and computes the same values
# (up to float rounding) with ops the XNNPACK delegate lowers; it returns NotImplemented
# for a call that XNNPACK takes as it is (the op is then kept). Shapes are static (batch 1).

def _mean_of_trailing(x: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Mean over the last ``count`` axes, kept as size-1 axes, and the number of values
    averaged. XNNPACK averages only the last two axes of a 4-D tensor, so the data is
    viewed as (rows, 1, 1, values) first."""
    values = math.prod(x.shape[x.dim() - count:])
    mean = x.reshape(-1, 1, 1, values).mean(dim=(2, 3), keepdim=True)
    return mean.reshape(*x.shape[:x.dim() - count], *([1] * count)), values


def _reduce(x: torch.Tensor, dims, keepdim: bool, total: bool) -> torch.Tensor:
    """Mean (or sum, ``total``) over ``dims``: the reduced axes moved last, then
    :func:`_mean_of_trailing`."""
    rank, shape = x.dim(), list(x.shape)
    dims = sorted({d % rank for d in (dims or range(rank))})
    kept = [d for d in range(rank) if d not in dims]
    if dims != list(range(rank - len(dims), rank)):
        x = x.permute(*kept, *dims)
    mean, values = _mean_of_trailing(x, len(dims))
    out = mean * float(values) if total else mean  # a float scalar: an int one would add a dtype cast
    return out.reshape([1 if d in dims else shape[d] for d in range(rank)] if keepdim else [shape[d] for d in kept])


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    count = len(normalized_shape)
    centred = x - _mean_of_trailing(x, count)[0]
    y = centred * torch.rsqrt(_mean_of_trailing(centred * centred, count)[0] + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _mean_dim(x, dim, keepdim=False, dtype=None):
    if x.dim() == 4 and keepdim and dtype is None and sorted(d % 4 for d in dim or ()) == [2, 3]:
        return NotImplemented  # XNNPACK's global average pooling
    return _reduce(x if dtype is None else x.to(dtype), dim, keepdim, total=False)


def _sum_dim(x, dim, keepdim=False, dtype=None):
    return _reduce(x if dtype is None else x.to(dtype), dim, keepdim, total=True)


def _softmax(x, dim, dtype=None):
    """Softmax with the reduced axis last and the others flattened: in ExecuTorch 1.5.1 a
    softmax over the last axis of a 4-D map that XNNPACK holds channels-last (after a
    convolution) is computed over the wrong axis; a 2-D view has one layout only."""
    x = x if dtype is None else x.to(dtype)
    if dim % x.dim() != x.dim() - 1 or x.dim() <= 2:
        return NotImplemented
    return aten._softmax.default(x.reshape(-1, x.shape[-1]), 1, False).reshape(x.shape)


def _batched(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of same-batch tensors as one ``bmm`` (``matmul`` would add expand copies)."""
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*lead, *out.shape[-2:])


def _matmul(a, b):
    """``a @ b``: ``mm`` for matrices, ``bmm`` over broadcast batch axes (1-D operands as
    1-row / 1-column matrices)."""
    if a.dim() == 1 or b.dim() == 1:
        out = _matmul(a.reshape(1, -1) if a.dim() == 1 else a, b.reshape(-1, 1) if b.dim() == 1 else b)
        dropped = {out.dim() - 2} if a.dim() == 1 else set()
        dropped |= {out.dim() - 1} if b.dim() == 1 else set()
        return out.reshape([size for d, size in enumerate(out.shape) if d not in dropped])
    if a.dim() == b.dim() == 2:
        return torch.mm(a, b)
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if a.shape[:-2] != lead:
        a = a.expand(*lead, *a.shape[-2:])
    if b.shape[:-2] != lead:
        b = b.expand(*lead, *b.shape[-2:])
    return _batched(a, b)


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(QKᵀ·scale + mask)V written out (inference: no dropout, no causal mask)."""
    if dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("ExecuTorch export supports scaled_dot_product_attention without dropout, "
                                  "causal masking or grouped queries")
    scores = _batched(q, k.transpose(-2, -1))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if scale != 1.0:
        scores = scores * scale
    if attn_mask is not None:
        scores = scores + attn_mask
    return _batched(_softmax(scores, -1), v)


def _unsqueeze(x, dim):
    shape = list(x.shape)
    shape.insert(dim % (x.dim() + 1), 1)
    return x.reshape(shape)


def _split_with_sizes(x, split_sizes, dim=0):
    parts, start = [], 0
    for size in split_sizes:
        parts.append(x.narrow(dim, start, size))
        start += size
    return parts


def _split(x, split_size, dim=0):
    length = x.shape[dim]
    return _split_with_sizes(x, [min(split_size, length - s) for s in range(0, length, split_size)], dim)


def _select(x, dim, index):
    dim = dim % x.dim()
    index = index % x.shape[dim]
    return x.narrow(dim, index, 1).reshape([s for d, s in enumerate(x.shape) if d != dim])


XNNPACK_REWRITES: dict = {
    aten.layer_norm.default: _layer_norm,
    aten.mean.dim: _mean_dim,
    aten.sum.dim_IntList: _sum_dim,
    aten.softmax.int: _softmax,
    aten.matmul.default: _matmul,
    aten.scaled_dot_product_attention.default: _attention,
    aten.unsqueeze.default: _unsqueeze,
    aten.split_with_sizes.default: _split_with_sizes,
    aten.split.Tensor: _split,
    aten.select.int: _select,
}


# --------------------------------------------------------------------------- int8 (pt2e)

INT8_SCOPES = {
    # what the pt2e quantiser may turn into int8; everything else stays float32 in XNNPACK
    "gemm": frozenset({aten.conv2d.default, aten.linear.default}),
    "all": None,  # every pattern the XNNPACK quantiser knows: also add, mul, cat, pooling
}


def _xnnpack_quantizer(scope: str):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    if scope not in INT8_SCOPES:
        raise ValueError(f"unknown int8 scope {scope!r}; choose from {', '.join(INT8_SCOPES)}")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    allowed = INT8_SCOPES[scope]
    if allowed is not None:
        quantizer.set_filter_function(lambda node: node.op != "call_function" or node.target in allowed)
    return quantizer


CALIBRATION_BATCH = 32  # images per calibration forward pass


def _silent(line: str) -> None:
    """The ``progress`` of a caller that asked for none."""


def _stages(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """``progress`` with each line prefixed by the seconds since this call (silent when None)."""
    if progress is None:
        return _silent
    start = time.perf_counter()
    return lambda line: progress(f"[{time.perf_counter() - start:4.0f} s] {line}")


def _calibration_batches(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``images`` cut into the fewest near-equal batches of at most ``batch_size`` (so none is
    a lone image when there are two or more: the captured graph's batch axis starts at 2)."""
    return list(torch.tensor_split(images, math.ceil(len(images) / batch_size)))


def quantize_int8(model: nn.Module, calibration: np.ndarray, scope: str = "gemm",
                  progress: Callable[[str], None] | None = None) -> nn.Module:
    """Post-training static int8 (pt2e): weights per output channel, symmetric; activations
    per tensor, ranges observed (histogram) on ``calibration`` images (N, C, H, W).

    The graph is captured with a dynamic batch axis and calibrated :data:`CALIBRATION_BATCH` images per
    forward pass: every observer sees the same values as image by image (the same min / max),
    its histogram is merged once per batch instead of once per image. ``progress`` gets a
    line per stage and per quarter of the calibration."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one image")
    say = progress or _silent
    images = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
    batches = _calibration_batches(images, CALIBRATION_BATCH)
    say("int8: capturing the graph for calibration")
    dynamic = ({0: torch.export.Dim("batch", min=2)},) if len(images) > 1 else None
    captured = torch.export.export(model.eval(), (batches[0],), dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(captured, _xnnpack_quantizer(scope))
    say(f"int8: calibrating on {len(images)} images in {len(batches)} batch(es)")
    done, quarter = 0, 1
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
            done += len(batch)
            if done >= quarter * len(images) / 4:
                say(f"int8: calibration {done}/{len(images)} images")
                quarter = math.floor(4 * done / len(images)) + 1
    say("int8: converting observers to quantise / dequantise ops")
    return convert_pt2e(prepared)


# --------------------------------------------------------------------------- lowering

@dataclass
class DelegationReport:
    """Where a lowered program's ops run: ``partitions`` XNNPACK subgraphs, and the op
    counts left to ExecuTorch's portable kernels with the partitioner's reasons."""

    partitions: int = 0
    portable_ops: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)  # op -> why XNNPACK did not take it

    def __str__(self) -> str:
        if not self.portable_ops:
            return f"all ops in XNNPACK ({self.partitions} partition(s))"
        rest = ", ".join(f"{op} x{count}" + (f" ({self.reasons[op]})" if op in self.reasons else "")
                         for op, count in self.portable_ops.most_common())
        return f"{self.partitions} XNNPACK partition(s); portable kernels run {rest}"

    def to_dict(self) -> dict:
        return {"partitions": self.partitions, "portable_ops": dict(self.portable_ops), "reasons": self.reasons}


class _WhyNoPartition(logging.Handler):
    """Collects the XNNPACK partitioner's debug lines saying why it skipped a node."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        node = getattr(record.msg, "node", None)
        if node is not None:
            self.reasons.setdefault(str(node), str(getattr(record.msg, "reason", "")))


@contextlib.contextmanager
def _partitioner_reasons():
    logger = logging.getLogger("executorch.backends.xnnpack")
    handler, level, propagate = _WhyNoPartition(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler.reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))  # EdgeOpOverload: "aten.native_layer_norm.default"
    return name.removeprefix("aten.").removesuffix(".default")


def _delegation(graph: torch.fx.Graph, reasons: dict[str, str]) -> DelegationReport:
    report = DelegationReport()
    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if getattr(node.target, "__name__", "") == "executorch_call_delegate":
            report.partitions += 1
            continue
        op = _op_name(node.target)
        report.portable_ops[op] += 1
        if node.name in reasons:
            report.reasons.setdefault(op, reasons[node.name])
    for op in report.portable_ops:
        report.reasons.setdefault(op, "no XNNPACK kernel")
    return report


def lower_to_executorch(
    model: nn.Module,
    input_size: tuple[int, int, int],
    metadata: dict[str, object] | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    int8_scope: str = "gemm",
    progress: Callable[[str], None] | None = None,
) -> tuple[bytes, DelegationReport]:
    """The ExecuTorch program (bytes of a ``.pte``) of ``model`` on one (C, H, W) image,
    lowered to XNNPACK after :data:`XNNPACK_REWRITES`, and where its ops run.

    ``model`` should be deployed (:func:`efficientmod.deploy`) and in eval mode. ``int8``
    quantises it first (:func:`quantize_int8` on ``calibration``). ``metadata`` becomes the
    program's :data:`METADATA_METHOD`. ``progress`` gets a line per stage.
    """
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration images")
    say = progress or _silent
    was_training = model.training
    model.eval()
    try:
        captured = quantize_int8(model, calibration, int8_scope, say) if precision == "int8" else model
        say(f"exporting the {precision} graph at batch 1")
        with torch.no_grad():
            program = torch.export.export(captured, (torch.zeros(1, *input_size),))
        program = program.run_decompositions(XNNPACK_REWRITES)
    finally:
        model.train(was_training)
    constants = {METADATA_METHOD: json.dumps(metadata or {})}
    say("lowering to XNNPACK")
    with _partitioner_reasons() as reasons:
        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
        except AssertionError as error:  # e.g. "Invalid partition, found dependency cycles" (int8 EfficientViT)
            raise ExportVerificationError(f"ExecuTorch's XNNPACK partitioner failed on the {precision} graph: "
                                          f"{error}") from error
    report = _delegation(edge.exported_program().graph, reasons)
    say("serialising the ExecuTorch program")
    return edge.to_executorch().buffer, report


# --------------------------------------------------------------------------- runtime

def set_threads(threads: int | None) -> None:
    """Size ExecuTorch's (process-wide) thread pool, which XNNPACK uses; None keeps it."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


class ExecutorchRuntime:
    """A ``.pte`` written by :func:`export_executorch` in ExecuTorch's Python runtime (see
    :func:`efficientmod.load_runtime`). The program takes one image at a time; :meth:`run`
    feeds a batch image by image."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        _require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ExecuTorch program not found: {self.path}")
        set_threads(threads)
        check_program_file(self.path)  # before the runtime, whose C++ loader logs its own lines
        try:
            program = Runtime.get().load_program(self.path)
        except Exception as error:  # the runtime's own error for a file that is not a program
            raise ValueError(f"cannot load {self.path} as an ExecuTorch program: {error}") from error
        self.metadata = _read_metadata(program, self.path)
        self.method = program.load_method("forward")
        self.input_size = tuple(self.method.metadata.input_tensor_meta(0).sizes())[1:]  # the program's (C, H, W)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 images -> (B, classes) float32 logits."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_size:
            raise ValueError(f"{self.path} takes (B, {', '.join(map(str, self.input_size))}) images, "
                             f"got {tuple(batch.shape)}")
        return np.concatenate([self.method.execute([torch.from_numpy(image[None])])[0].numpy() for image in batch])


def _read_metadata(program, path: Path) -> dict[str, object]:
    if METADATA_METHOD not in program.method_names:
        return {}
    (text,) = program.load_method(METADATA_METHOD).execute([])
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable {METADATA_METHOD}: {error}") from error


PROGRAM_IDENTIFIER = b"ET12"  # the flatbuffer file identifier of ExecuTorch's program schema
EXTENDED_HEADER_MAGIC = b"eh00"  # the header ExecuTorch's serializer writes after the identifier


def check_program_file(path: Path) -> None:
    """A one-line ``ValueError`` unless ``path`` starts like an ExecuTorch program and is as long
    as its extended header says (program, then segments): a truncated or foreign file is
    refused before ExecuTorch's loader reads it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(40)
    if len(head) < 8 or head[4:8] != PROGRAM_IDENTIFIER:
        raise ValueError(f"cannot load {path} as an ExecuTorch program: it is not one ({size} bytes, no "
                         f"{PROGRAM_IDENTIFIER.decode()} identifier)")
    if head[8:12] == EXTENDED_HEADER_MAGIC and len(head) >= 32:
        length, program_size, segment_offset = (int.from_bytes(head[i:j], "little") for i, j in
                                                 ((12, 16), (16, 24), (24, 32)))
        segment_size = int.from_bytes(head[32:40], "little") if length >= 32 and len(head) >= 40 else 0
        expected = segment_offset + segment_size if segment_offset else program_size
        if size < expected:
            raise ValueError(f"cannot load {path} as an ExecuTorch program: the file is cut short "
                             f"({size} of {expected} bytes)")


def open_runtime(path: str | os.PathLike, threads: int | None = None) -> ExecutorchRuntime:
    return ExecutorchRuntime(path, threads)


# --------------------------------------------------------------------------- verified export

@dataclass(frozen=True)
class ExecutorchExport(VerifiedExport):
    """What :func:`export_executorch` wrote and found: a :class:`VerifiedExport` (``max_abs_diff``
    for fp32, ``agreement`` with PyTorch's fp32 predictions for int8) and where the ops run."""

    delegation: DelegationReport = field(default_factory=DelegationReport)
    seconds: float = 0.0  # export + verification
    size_bytes: int = 0


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    metadata: dict[str, object] | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_images: np.ndarray | None = None,
    tolerance: float = 1e-4,
    agreement_tolerance: float = 1.0,
    checks: int = 3,
    int8_scope: str = "gemm",
    progress: Callable[[str], None] | None = None,
) -> ExecutorchExport:
    """Lower ``model`` (deployed, see :func:`lower_to_executorch`), verify the program in
    ExecuTorch's runtime, and only then write it to ``path`` (atomically: on a failed
    verification :class:`ExportVerificationError` is raised and an existing file stays).

    fp32: ``checks`` random images, max abs logit difference to PyTorch <= ``tolerance``.
    int8: top-1 and top-5 agreement with PyTorch's fp32 predictions on ``check_images``
    (default: the ``calibration`` images) within ``agreement_tolerance`` percentage points.
    ``progress`` receives a line per stage, with the seconds since the start (an int8
    lowering of a registered model at 224×224 takes a minute or more).
    """
    path = Path(path)
    if precision == "int8" and calibration is None:
        raise ValueError("--precision int8 needs calibration images (--calib DIR)")
    say = _stages(progress)
    start = time.perf_counter()
    say(f"lowering {precision} program to ExecuTorch / XNNPACK (input 1x{'x'.join(map(str, input_size))})")
    program, delegation = lower_to_executorch(model, input_size, metadata, precision, calibration, int8_scope, say)
    say(f"delegation: {delegation}")
    result: dict[str, object] = {}

    def write_and_verify(tmp: str) -> None:
        Path(tmp).write_bytes(program)
        runtime = ExecutorchRuntime(tmp)
        if precision == "fp32":
            result["max_abs_diff"] = compare_with_pytorch(model, runtime.run, input_size, (checks,), tolerance,
                                                          str(path), FORMAT.runtime)
        else:
            images = calibration if check_images is None else check_images
            with torch.no_grad():
                reference = run_batched(lambda batch: model.eval()(torch.from_numpy(batch)).numpy(), images)
            agreement = prediction_agreement(reference, runtime.run(images))
            result["agreement"] = check_agreement(agreement, agreement_tolerance, str(path))

    checked = f"{checks} random" if precision == "fp32" else len(calibration if check_images is None else check_images)
    say(f"verifying in ExecuTorch's runtime on {checked} images")
    atomic_write(path, write_and_verify)
    say("verified")
    seconds = time.perf_counter() - start
    return ExecutorchExport(
        path, FORMAT.name, precision, tuple(input_size), 1, result.get("max_abs_diff"), FORMAT.runtime,
        f"{checks} random images", result.get("agreement"), "PyTorch fp32", notes=(f"delegation: {delegation}",),
        details=(f"{len(program) / 1e6:.1f} MB", f"{seconds:.0f} s"), delegation=delegation, seconds=seconds,
        size_bytes=len(program))


def _write(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int],
           metadata: dict[str, object] | None, options: ExportOptions) -> ExecutorchExport:
    """``FORMAT.write``: :func:`export_executorch` with ``options``."""
    return export_executorch(model, path, input_size, metadata, options.precision, options.calibration,
                             options.check_images, options.tolerance, options.agreement_tolerance,
                             progress=options.progress)


def _check(options: ExportOptions) -> None:
    if options.dynamic_batch is not None or options.optimized_path is not None or options.opset != 18:
        raise ValueError("--static-batch, --dynamic-batch, --save-optimized and --opset apply to ONNX and OpenVINO "
                         "exports only (an ExecuTorch program always takes one image)")


FORMAT = ExportFormat(
    name="executorch", suffixes=(".pte",), precisions=PRECISIONS, batch_modes=("static",), extra="executorch",
    runtime="ExecuTorch", write=_write, open_runtime=open_runtime, check=_check,
)
