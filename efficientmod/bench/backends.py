"""The backends a model is measured on, each a :class:`Backend` record that declares what it
needs (Python modules, a device), the precision it runs in, how it exports the model, and how
it prepares one forward pass.

A backend's ``prepare(model, input_size, options)`` returns ``make_step(batch)``, which
returns a zero-argument callable running one forward pass on a fixed random input.

Every ONNX-based backend exports *every* model it is given through its one
:class:`OnnxExport` record: ours and the reference it is compared with get the same
exporter, opset and shapes. ONNX Runtime runs a static-shape export per batch size (a
dynamic-batch graph handicaps ONNX Runtime: timm's EfficientViT-M4 took 9.7 ms that way and
6.6-8.4 ms static, issue 20); OpenVINO converts the dynamic-batch export and compiles it with
static shapes per batch size (:class:`efficientmod.export.openvino.StaticBatchModel`).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["BACKENDS", "DTYPES", "CUDA_SETTINGS", "Backend", "BackendOptions", "CompiledModels", "OnnxExport",
           "Requirement", "cuda_settings", "openvino_model"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
StepFactory = Callable[[int], Callable[[], object]]


class CompiledModels:
    """The ``torch.compile`` copies of the models of one bench run, shared by its compiled
    backends: ``compile-cuda`` and ``cudagraph-cuda`` of one model measure one compiled copy
    (one compilation per batch size, not two). Dropping the object releases the copies and
    the GPU memory they hold."""

    def __init__(self):
        self._copies: dict[tuple, nn.Module] = {}

    def get(self, model: nn.Module, input_size, options: BackendOptions, device: str) -> nn.Module:
        key = (id(model), device, _layout(options, device))
        if key not in self._copies:
            self._copies[key] = _compiled(model, input_size, options, device)
        return self._copies[key]


@dataclass(frozen=True)
class BackendOptions:
    """What a backend's preparation reads: CPU ``threads``, the CUDA backends' ``dtype`` and
    memory format, and the run's shared compilations."""

    threads: int = 4
    dtype: str = "fp32"
    channels_last: bool = False
    compilations: CompiledModels = field(default_factory=CompiledModels, compare=False)


@dataclass(frozen=True)
class Requirement:
    """A Python module a backend needs, and what to tell the user when it is missing."""

    module: str
    missing: str

    def is_met(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


@dataclass(frozen=True)
class OnnxExport:
    """How a backend exports a model to ONNX (TorchScript exporter): the same for every model."""

    opset: int = 18
    static_batch: bool = True  # the batch fixed in the graph: one export per batch size

    def write(self, model: nn.Module, folder: str | Path, input_size, batch: int) -> Path:
        """``model`` exported into ``folder``, for ``batch`` images when the batch is static."""
        from efficientmod.export import export_onnx

        return export_onnx(copy.deepcopy(model).float(), Path(folder) / f"model-b{batch}.onnx", input_size,
                           opset=self.opset, dynamic_batch=not self.static_batch,
                           batch=batch if self.static_batch else 1)


@dataclass(frozen=True)
class Backend:
    """One way of running a model, and everything it declares about itself."""

    name: str
    device: str  # "cpu" or "cuda"
    help: str
    prepare: Callable[[nn.Module, tuple[int, int, int], BackendOptions], StepFactory]
    requires: tuple[Requirement, ...] = ()
    min_warmup: int = 0  # untimed calls the first call's one-off work needs, whatever --warmup says
    precision: str | None = None  # a CPU backend's fixed precision (bf16, int8); None: fp32 / --dtype
    export: OnnxExport | None = None  # how the model reaches the runtime, for the ONNX-based backends

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        if self.device == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        return next((r.missing for r in self.requires if not r.is_met()), None)

    def dtype_name(self, requested: str) -> str:
        """The precision a row of this backend runs in, given the ``--dtype`` asked for."""
        return self.precision or ("fp32" if self.device == "cpu" else requested)


# --------------------------------------------------------------------------- PyTorch

def _layout(options: BackendOptions, device: str) -> tuple[torch.dtype, torch.memory_format]:
    """The dtype and memory format of the model and its inputs on ``device``: off the CPU
    ``options.dtype`` (converted, not autocast, which would re-cast every weight on every
    timed call); CPU backends stay float32."""
    dtype = torch.float32 if device == "cpu" else DTYPES[options.dtype]
    return dtype, torch.channels_last if options.channels_last else torch.contiguous_format


def converted(model: nn.Module, options: BackendOptions, device: str) -> nn.Module:
    """A copy of ``model`` in eval mode on ``device``, in :func:`_layout`'s dtype and format."""
    dtype, memory_format = _layout(options, device)
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval().to(memory_format=memory_format)


def _random_input(batch: int, input_size, options: BackendOptions, device: str) -> torch.Tensor:
    dtype, memory_format = _layout(options, device)
    return torch.randn(batch, *input_size, device=device, dtype=dtype).contiguous(memory_format=memory_format)


def _compiled(model: nn.Module, input_size, options: BackendOptions, device: str) -> nn.Module:
    """``torch.compile(dynamic=False)`` of a converted copy of ``model``, in inductor's default
    mode: each batch size compiles its own static-shape graph (not a dynamic-batch one).

    The copy runs once eagerly before it is compiled, as a server's model has run before it
    serves: state that a model builds on its first inference call then exists before
    tracing and is read as an input, instead of being created inside the compiled graph
    (timm's EfficientViT caches its gathered attention biases in a dict on the first eval
    call; created inside the graph, that tensor costs a second compilation, and with
    CUDA-graph trees it was an output of one replay read by the next:
    ``benchmarks/gpu_h200.md``)."""
    copied = converted(model, options, device)
    with torch.inference_mode():
        copied(_random_input(1, input_size, options, device))
    torch._dynamo.reset()  # fresh caches: variants of one class must not hit the recompile limit
    return torch.compile(copied, dynamic=False)


def torch_steps(model: nn.Module, input_size, options: BackendOptions, device: str,
                compiled: bool = False, graphed: bool = False) -> StepFactory:
    """Eager PyTorch, ``compiled`` (the run's shared :class:`CompiledModels` copy), or also
    ``graphed``: each batch size's compiled forward captured whole in one CUDA graph."""
    if compiled or graphed:
        model = options.compilations.get(model, input_size, options, device)
    else:
        model = converted(model, options, device)

    def make_step(batch: int):
        x = _random_input(batch, input_size, options, device)

        def step():
            with torch.inference_mode():
                return model(x)

        return _graph_replay(step) if graphed else step

    return make_step


GRAPH_WARMUP = 3  # calls before capture: compilation, cuDNN autotuning, lazy kernel loading


def _graph_replay(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` captured in one ``torch.cuda.CUDAGraph``; returns a callable replaying it.

    ``GRAPH_WARMUP`` calls run first on the capture stream, so that nothing one-off
    (compilation, cuDNN's algorithm search, cuBLAS workspaces) happens during capture. A
    forward that cannot be captured (a host synchronisation, a CPU tensor) fails here with
    PyTorch's error, reported in the row. One graph of the whole compiled forward is what
    ``mode="reduce-overhead"`` builds per graph partition, without its tree bookkeeping, and
    it reuses the compilation ``compile-cuda`` made."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(GRAPH_WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        output = step()

    def replay():
        graph.replay()
        return output

    return replay


# The CUDA math settings of every GPU figure, set explicitly (training code turns cuDNN's
# autotuner and TF32 on process-wide, so leaving them alone would make the figures depend on
# what ran earlier in the process) and recorded with the environment. PyTorch's defaults for
# TF32: off for matmuls (fp32 means fp32), on for cuDNN convolutions.
CUDA_SETTINGS = {"cudnn_benchmark": True, "matmul_tf32": False, "cudnn_tf32": True}


@contextlib.contextmanager
def cuda_settings():
    """:data:`CUDA_SETTINGS` in force for the block, the previous values restored after."""
    flags = torch.backends.cudnn, torch.backends.cuda.matmul, torch.backends.cudnn
    names = "benchmark", "allow_tf32", "allow_tf32"
    previous = [getattr(flag, name) for flag, name in zip(flags, names, strict=True)]
    for flag, name, value in zip(flags, names, CUDA_SETTINGS.values(), strict=True):
        setattr(flag, name, value)
    try:
        yield
    finally:
        for flag, name, value in zip(flags, names, previous, strict=True):
            setattr(flag, name, value)


# --------------------------------------------------------------------------- exported runtimes

CALIBRATION_IMAGES = 8  # random images calibrating the int8 backends: their speed, not their accuracy


def _random_images(count: int, input_size) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, *input_size), dtype=np.float32)


def _ort_steps(export: OnnxExport, int8: bool = False) -> Callable[..., StepFactory]:
    """ONNX Runtime (every graph optimization) on ``export`` of the model, one session per
    batch size; ``int8``: after static QDQ quantisation
    (:func:`efficientmod.export.quantize.quantize_onnx_int8`)."""
    def prepare(model: nn.Module, input_size, options: BackendOptions) -> StepFactory:
        from efficientmod.export import ort_session
        from efficientmod.export.quantize import quantize_onnx_int8

        def make_step(batch: int):
            with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
                path = export.write(model, folder, input_size, batch)
                if int8:
                    calibration = _random_images(max(CALIBRATION_IMAGES, batch), input_size)
                    path = quantize_onnx_int8(path, Path(folder) / "int8.onnx", calibration)
                session = ort_session(path, options.threads)
            x = _random_images(batch, input_size)
            return lambda: session.run(None, {"input": x})

        return make_step

    return prepare


def openvino_model(export: OnnxExport, model: nn.Module, input_size, precision: str = "fp32"):
    """``model`` as the OpenVINO backends compile it: ``export`` of it converted to an
    ``openvino.Model``; for int8, reshaped to batch 1 and quantised by NNCF on
    :data:`CALIBRATION_IMAGES` random images."""
    from efficientmod.export.openvino import convert_onnx
    from efficientmod.export.quantize import quantize_openvino_int8

    with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
        ov_model = convert_onnx(export.write(model, folder, input_size, 1))
    if precision == "int8":
        ov_model.reshape([1, *input_size])
        ov_model = quantize_openvino_int8(ov_model, _random_images(CALIBRATION_IMAGES, input_size))
    return ov_model


def _openvino_steps(export: OnnxExport, precision: str = "fp32") -> Callable[..., StepFactory]:
    """OpenVINO on the CPU from ``export`` of the model, in ``precision`` (fp32 set explicitly:
    OpenVINO's default on bf16-capable CPUs is bf16), compiled with static shapes for each
    batch size; int8 by NNCF post-training quantisation."""
    def prepare(model: nn.Module, input_size, options: BackendOptions) -> StepFactory:
        from efficientmod.export.openvino import StaticBatchModel

        runner = StaticBatchModel(openvino_model(export, model, input_size, precision), precision, options.threads)

        def make_step(batch: int):
            x = _random_images(batch, input_size)
            request = runner.request(batch)  # compiled for this batch size, static shapes
            return lambda: request.infer({0: x})

        return make_step

    return prepare


def _executorch_steps(precision: str) -> Callable[..., StepFactory]:
    """An ExecuTorch program (XNNPACK, batch 1; int8 calibrated on random images, which is
    enough for its speed) run by ExecuTorch's runtime; a batch runs image by image."""
    def prepare(model: nn.Module, input_size, options: BackendOptions) -> StepFactory:
        from efficientmod.export.executorch import ExecutorchRuntime, lower_to_executorch

        calibration = np.random.default_rng(0).standard_normal((4, *input_size), dtype=np.float32)
        program, _ = lower_to_executorch(copy.deepcopy(model).float(), input_size, None, precision, calibration)
        with tempfile.TemporaryDirectory(prefix="efficientmod-bench-") as folder:
            path = Path(folder) / "model.pte"
            path.write_bytes(program)
            runtime = ExecutorchRuntime(path, options.threads)

        def make_step(batch: int):
            x = np.random.default_rng(0).standard_normal((batch, *input_size), dtype=np.float32)
            return lambda: runtime.run(x)

        return make_step

    return prepare


# --------------------------------------------------------------------------- the table

ONNXRUNTIME = Requirement("onnxruntime", "onnxruntime is not installed (pip install 'efficientmod[deploy]')")
OPENVINO = Requirement("openvino", "OpenVINO is not installed (pip install 'efficientmod[openvino]')")
NNCF = Requirement("nncf", "NNCF is not installed (pip install 'efficientmod[openvino]')")
EXECUTORCH = Requirement("executorch", "executorch is not installed (pip install 'efficientmod[executorch]')")
TRITON = Requirement("triton", "torch.compile on CUDA needs triton, which is not installed")
ORT_EXPORT = OnnxExport(static_batch=True)  # ONNX Runtime: the batch fixed in the graph
OPENVINO_EXPORT = OnnxExport(static_batch=False)  # OpenVINO fixes the shapes when it compiles


def _torch(device: str, **mode: bool) -> Callable[..., StepFactory]:
    return lambda model, input_size, options: torch_steps(model, input_size, options, device, **mode)


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("torch-cpu", "cpu", "eager PyTorch on the CPU, --threads intra-op threads", _torch("cpu")),
    Backend("ort-cpu", "cpu", "ONNX export (static shapes) run by ONNX Runtime on the CPU, --threads intra-op "
            "threads", _ort_steps(ORT_EXPORT), (ONNXRUNTIME,), export=ORT_EXPORT),
    Backend("ort-cpu-int8", "cpu", "ONNX Runtime, static int8 QDQ (convs and matmuls, per channel)",
            _ort_steps(ORT_EXPORT, int8=True), (ONNXRUNTIME,), precision="int8", export=ORT_EXPORT),
    Backend("openvino-cpu", "cpu", "the ONNX export run by OpenVINO on the CPU, float32",
            _openvino_steps(OPENVINO_EXPORT), (OPENVINO,), export=OPENVINO_EXPORT),
    Backend("openvino-cpu-bf16", "cpu", "OpenVINO on the CPU, bf16 inference precision",
            _openvino_steps(OPENVINO_EXPORT, "bf16"), (OPENVINO,), precision="bf16", export=OPENVINO_EXPORT),
    Backend("openvino-cpu-int8", "cpu", "OpenVINO on the CPU, NNCF int8 post-training quantisation",
            _openvino_steps(OPENVINO_EXPORT, "int8"), (OPENVINO, NNCF), precision="int8", export=OPENVINO_EXPORT),
    Backend("executorch-cpu", "cpu", "ExecuTorch program (XNNPACK, batch 1) in ExecuTorch's runtime, --threads threads",
            _executorch_steps("fp32"), (EXECUTORCH,)),
    Backend("executorch-cpu-int8", "cpu", "executorch-cpu with pt2e int8 convolutions and linear layers",
            _executorch_steps("int8"), (EXECUTORCH,), precision="int8"),
    # the first CUDA call loads kernels and creates cuBLAS / cuDNN handles
    Backend("torch-cuda", "cuda", "eager PyTorch on the GPU (model and inputs in --dtype)", _torch("cuda"),
            min_warmup=1),
    # the first call at a batch size compiles (unless the other compiled backend did)
    Backend("compile-cuda", "cuda", "torch.compile (default mode, static shapes) on the GPU",
            _torch("cuda", compiled=True), (TRITON,), min_warmup=1),
    # compilation and capture happen before the first call; the first replay uploads the graph
    Backend("cudagraph-cuda", "cuda", "compile-cuda's compiled forward captured in one CUDA graph, replayed",
            _torch("cuda", graphed=True), (TRITON,), min_warmup=1),
]}
