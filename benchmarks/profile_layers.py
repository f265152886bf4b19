"""Where the time goes: per-layer profiles of our deployed models and their references in
OpenVINO (f32, bf16, int8) and ONNX Runtime (fp32), beside a roofline bound of each op group.

    OMP_NUM_THREADS=1 python benchmarks/profile_layers.py --markdown benchmarks/results/profile_layers.md \\
        --json benchmarks/results/profile_layers.json

Each pair is ours (``NAME@deploy``) and its reference (``NAME``: our undeployed model, the
official architecture; ``timm:NAME`` for the peers), batch 1, ``--threads`` (default 1) threads.

* **Profiles.** OpenVINO: the model as the bench's ``openvino-cpu`` / ``-bf16`` / ``-int8``
  backends prepare it (:func:`efficientmod.bench.backends.openvino_model`: NNCF int8 as
  shipped), compiled with ``PERF_COUNT``; after ``--warmup`` calls, each layer's median
  ``real_time`` over ``--runs`` calls (``get_profiling_info()`` after each), summed by node
  type and the precision of its kernel (``FullyConnected [f32]``, ``Reorder [f32]``...).
  ONNX Runtime: the ``ort-cpu`` export run with ``enable_profiling``, each node's median
  kernel time over the same calls, summed by op type. Ours and the reference run
  interleaved (each round calls both, in a rotating order), so load from other processes
  hits both alike; "ms a call" is the median wall time of a profiled call.
* **Roofline.** From the ONNX graph (``onnx.shape_inference``), per node: FLOPs (2 x MACs for
  Conv / Gemm / MatMul, one per output element otherwise) and bytes moved (every input, weight
  and output once: 4 bytes an element in f32, 2 in bf16; in int8 1 byte for the inputs and
  weights of Conv / Gemm / MatMul, 4 for the rest, NNCF's float islands). The bound of a node
  is max(FLOPs / peak, memory time), with this CPU's measured peaks: one
  ``--peak-size``-cubed MatMul compiled by OpenVINO in f32, bf16 and NNCF int8 (best of 20
  calls); memory time: the weights at the one-thread streaming bandwidth (numpy ``a + b`` on
  32 MB arrays: tens of MB of weights do not stay in cache from one call to the next), the
  activations at the in-cache bandwidth (128 KB arrays: at batch 1 a layer's output is read
  back at once). The limits are measured at the start and at the end of the run and the
  best of each is used (under load the higher figure is the nearer to the machine's); both
  measurements are in the JSON. Nodes and profile rows fall into the same op
  groups (matmul, conv, dwconv, norm, elementwise, softmax, pool, layout, quantize); each
  group's measured time against its bound is "x of the bound". Runtimes fuse element-wise
  ops into matmuls and convolutions (their time is then in the matmul group), and add
  Reorders of their own (in the layout group), so the model totals are the firm comparison.

Prints markdown (``--markdown FILE`` too) and writes every figure, the machine (CPU model,
its AVX-512 / VNNI / BF16 / AMX flags), the load before and after, versions and the command
to ``--json FILE``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from efficientmod.bench import environment, resolve_models
from efficientmod.bench.backends import OPENVINO_EXPORT, ORT_EXPORT, openvino_model
from efficientmod.checkpoint import atomic_write

PAIRS = {  # ours -> its reference
    "efficientmod_s@deploy": "efficientmod_s",
    "efficientvit_m4@deploy": "timm:efficientvit_m4",
    "mobilevitv2_100@deploy": "timm:mobilevitv2_100",
}
RUNTIMES = {"openvino-f32": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8", "ort-fp32": "fp32"}
GROUPS = ("matmul", "conv", "dwconv", "norm", "elementwise", "softmax", "pool", "layout", "quantize")
MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat"}
CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"}
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "ReduceMean",
            "BatchNormalization", "GroupNormalization", "InstanceNormalization", "GroupNorm", "ReduceL2"}
POOL_OPS = {"GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool"}
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}  # no data moved
LAYOUT_OPS = VIEW_OPS | {"Transpose", "ReorderInput", "ReorderOutput", "Concat", "Split", "Slice", "Gather",
                         "Expand", "Tile", "Pad", "Shape"}
QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
OV_GROUPS = {"FullyConnected": "matmul", "MatMul": "matmul", "Gemm": "matmul", "Convolution": "conv",
             "Deconvolution": "conv", "GroupConvolution": "dwconv", "MVN": "norm", "RMS": "norm",
             "ReduceMean": "norm", "Reduce": "norm", "NormalizeL2": "norm", "Softmax": "softmax",
             "SoftMax": "softmax", "Pooling": "pool", "AdaptivePooling": "pool", "FakeQuantize": "quantize"}
OV_LAYOUT = {"Transpose", "Reorder", "Reshape", "Concatenation", "Concat", "Split", "Gather", "StridedSlice",
             "Broadcast", "Tile", "Pad", "Squeeze", "Unsqueeze", "ShapeOf"}
INT8_OPS = {"Conv", "Gemm", "MatMul"}  # their inputs and weights are int8 in the int8 roofline
DTYPE_BYTES = {"fp32": 4, "bf16": 2}


# --------------------------------------------------------------------------- op groups

def onnx_group(op_type: str, weight_shape=None) -> str:
    """The op group of an ONNX node (or an ONNX Runtime kernel: its op types are ONNX's and
    its contrib ops'); a convolution by its weight's (Cout, Cin / group, k...) shape: one
    input channel per group (and more than one output channel) is depthwise, a 1x1 kernel a matmul."""
    if op_type in MATMUL_OPS:
        return "matmul"
    if op_type in CONV_OPS:
        shape = list(weight_shape or [])
        if len(shape) >= 3 and shape[1] == 1 and shape[0] > 1:
            return "dwconv"
        return "matmul" if len(shape) >= 3 and all(k == 1 for k in shape[2:]) else "conv"
    for group, ops in (("norm", NORM_OPS), ("pool", POOL_OPS), ("layout", LAYOUT_OPS), ("quantize", QUANTIZE_OPS)):
        if op_type in ops:
            return group
    return "softmax" if op_type == "Softmax" else "elementwise"


def ov_precision(exec_type: str) -> str:
    """The precision suffix of an OpenVINO CPU kernel name (``brgemm_avx512_amx_bf16`` -> bf16)."""
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return tail if tail in {"f32", "bf16", "f16", "i8", "u8", "i32"} else "?"


def ov_group(node_type: str, exec_type: str, weight_shape=None) -> str:
    """The op group of an executed OpenVINO CPU node: a convolution with a ``dw`` kernel is
    depthwise, one with a 1x1 kernel (its ``weight_shape``, or a ``1x1`` kernel name) a matmul."""
    if node_type == "Convolution":
        if "_dw" in exec_type:
            return "dwconv"
        one_by_one = weight_shape is not None and len(weight_shape) >= 3 and all(k == 1 for k in weight_shape[2:])
        return "matmul" if one_by_one or "1x1" in exec_type else "conv"
    if node_type.startswith("FullyConnected"):  # FullyConnectedQuantizedLegacy: the int8 one
        return "matmul"
    if node_type in OV_GROUPS:
        return OV_GROUPS[node_type]
    return "layout" if node_type in OV_LAYOUT else "elementwise"


def summarise(samples: dict[str, list[float]], kinds: dict[str, tuple[str, str]]) -> dict:
    """Per-node times (node -> seconds of each call) as profile rows (kind -> ms, count) and op
    groups (group -> ms): each node's median, summed; ``kinds``: node -> (row key, group)."""
    rows: dict[str, dict] = {}
    groups: dict[str, float] = defaultdict(float)
    for node, seconds in samples.items():
        key, group = kinds[node]
        ms = 1e3 * float(np.median(seconds))
        row = rows.setdefault(key, dict(ms=0.0, count=0, group=group))
        row["ms"] += ms
        row["count"] += 1
        groups[group] += ms
    return dict(rows=rows, groups=dict(groups), total_ms=sum(groups.values()))


def _row_key(op: str, group: str) -> str:
    """A profile row's name: the op type, and for a convolution the group it falls in."""
    return f"{op} ({group})" if "Conv" in op else op


def group_ov_profile(calls: list[list], weight_shapes: dict[str, list[int]] | None = None) -> dict:
    """:func:`summarise` of OpenVINO ``get_profiling_info()`` lists, one per call (executed
    nodes only), rows by node type and kernel precision; ``weight_shapes``: node -> the shape
    of its second input (the weights of a convolution), from the compiled runtime model."""
    samples: dict[str, list[float]] = defaultdict(list)
    kinds = {}
    for info in calls:
        for p in info:
            if p.status.name != "EXECUTED":
                continue
            samples[p.node_name].append(p.real_time.total_seconds())
            group = ov_group(p.node_type, p.exec_type, (weight_shapes or {}).get(p.node_name))
            kinds[p.node_name] = (f"{_row_key(p.node_type, group)} [{ov_precision(p.exec_type)}]", group)
    return summarise(samples, kinds)


def group_ort_profile(events: list[dict], skip_runs: int) -> dict:
    """:func:`summarise` of an ONNX Runtime profile (its JSON events), leaving out the node
    events of the first ``skip_runs`` ``model_run`` calls (the warm-up)."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first = starts[skip_runs] if len(starts) > skip_runs else 0
    samples: dict[str, list[float]] = defaultdict(list)
    kinds = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first:
            continue
        args = e["args"]
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        samples[e["name"]].append(e["dur"] * 1e-6)
        group = onnx_group(args["op_name"], shapes[1] if len(shapes) > 1 else None)
        kinds[e["name"]] = (_row_key(args["op_name"], group), group)
    return summarise(samples, kinds)


# --------------------------------------------------------------------------- roofline

def _shapes(model) -> tuple[dict[str, list[int]], set[str]]:
    """Tensor name -> static shape (after ONNX shape inference), and the names of weights
    (initializers and Constant outputs)."""
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.input, *graph.value_info, *graph.output]}
    weights = {t.name for t in graph.initializer}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            weights.update(node.output)
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = list(numpy_helper.to_array(value).shape)
    unknown = [o for node in graph.node for o in node.output if o and (o not in shapes or 0 in shapes[o])]
    if unknown:
        shapes.update(_run_shapes(model, unknown))
    return shapes, weights


def _run_shapes(model, names: list[str]) -> dict[str, list[int]]:
    """The shapes of the tensors ``names`` of ``model`` (shapes ONNX's inference leaves open,
    behind a computed Pad or Reshape), from one ONNX Runtime run of the graph (no
    optimizations) on zeros with those tensors as outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    outputs = session.run(None, {source.name: np.zeros(source.shape, dtype=np.float32)})
    return {name: list(np.shape(value)) for name, value in zip(names, outputs, strict=True)}


def node_costs(model, precision: str) -> list[dict]:
    """FLOPs, bytes moved and the peak that bounds it ("f32", "bf16" or "int8") of every node
    of the ONNX ``model`` that computes (Constant nodes left out; views move nothing), in
    ``precision`` (see the module docstring); each with its op group."""
    shapes, weights = _shapes(model)
    size = lambda name: int(np.prod(shapes.get(name, [0]))) if name else 0  # noqa: E731
    costs = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        out = sum(size(o) for o in node.output)
        flops = _flops(node, shapes, out)
        int8 = precision == "int8" and node.op_type in INT8_OPS
        in_bytes, out_bytes = (1, 4) if int8 else (DTYPE_BYTES.get(precision, 4),) * 2
        moved = 0 if node.op_type in VIEW_OPS else sum(size(i) for i in node.input) * in_bytes + out * out_bytes
        peak = "int8" if int8 else ("bf16" if precision == "bf16" else "f32")
        held = sum(size(i) for i in node.input if i in weights)
        costs.append(dict(name=node.name, op=node.op_type, group=onnx_group(node.op_type, weight), flops=flops,
                          bytes=moved, weight_bytes=0 if node.op_type in VIEW_OPS else held * in_bytes, peak=peak,
                          weights=held))
    return costs


def _flops(node, shapes: dict[str, list[int]], out: int) -> int:
    """2 x MACs of a Conv / Gemm / MatMul (bias and activation left out), else one per output
    element (a reduction: one per input element)."""
    if node.op_type == "Conv":
        weight = shapes[node.input[1]]
        return 2 * out * int(np.prod(weight[1:]))
    if node.op_type in ("MatMul", "Gemm"):
        a = shapes[node.input[0]]
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return 2 * out * (a[-2] if trans_a else a[-1])
    if node.op_type.startswith("Reduce"):
        return int(np.prod(shapes.get(node.input[0], [0])))
    return 0 if node.op_type in VIEW_OPS else out


def roofline(costs: list[dict], peaks: dict[str, float], bandwidth: float,
             cache_bandwidth: float | None = None) -> dict:
    """Per op group and in total: FLOPs, bytes, and the bound (seconds): the sum over the
    nodes of max(FLOPs / peak, memory time), with which side binds. Memory time: weights at
    the streaming ``bandwidth`` (tens of MB: they do not stay in cache between calls),
    activations at ``cache_bandwidth`` (at batch 1 they are written and read back at once;
    default: ``bandwidth`` too)."""
    groups: dict[str, dict] = {}
    for c in costs:
        activations = c["bytes"] - c["weight_bytes"]
        memory = c["weight_bytes"] / bandwidth + activations / (cache_bandwidth or bandwidth)
        compute = c["flops"] / peaks[c["peak"]]
        g = groups.setdefault(c["group"], dict(flops=0, bytes=0, bound_s=0.0, compute_s=0.0, memory_s=0.0))
        g["flops"] += c["flops"]
        g["bytes"] += c["bytes"]
        g["bound_s"] += max(compute, memory)
        g["compute_s" if compute >= memory else "memory_s"] += max(compute, memory)
    total = {k: sum(g[k] for g in groups.values()) for k in ("flops", "bytes", "bound_s", "compute_s", "memory_s")}
    return dict(groups=groups, total=total)


# --------------------------------------------------------------------------- this CPU's limits

def matmul_peak(precision: str, size: int, threads: int) -> dict:
    """FLOP/s of one (size x size) @ (size x size) MatMul with constant weights in OpenVINO
    (``precision`` as the bench compiles it; int8 quantised by NNCF as the bench's int8
    backend does), best of 20 calls after 2, and the kernel OpenVINO ran it with."""
    import openvino as ov
    from openvino import opset13 as ops

    from efficientmod.export.openvino import compile_openvino
    from efficientmod.export.quantize import quantize_openvino_int8

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, size, size), dtype=np.float32)
    source = ops.parameter([1, 1, size, size], ov.Type.f32, name="input")
    weight = ops.constant(rng.standard_normal((size, size), dtype=np.float32) / size ** 0.5)
    model = ov.Model([ops.matmul(source, weight, False, False)], [source], "peak")
    if precision == "int8":
        model = quantize_openvino_int8(model, x)
    request = compile_openvino(model, precision, threads, profile=True).create_infer_request()
    seconds = []
    for call in range(22):
        start = time.perf_counter()
        request.infer({0: x})
        if call >= 2:
            seconds.append(time.perf_counter() - start)
    kernels = sorted({f"{p.node_type}:{p.exec_type}" for p in request.get_profiling_info()
                      if p.status.name == "EXECUTED" and ov_group(p.node_type, p.exec_type) == "matmul"})
    return dict(flops_per_s=2 * size ** 3 / min(seconds), size=size, kernels=kernels)


def bandwidth(megabytes: float, calls: int) -> float:
    """Bytes per second of numpy's one-thread ``a + b`` into ``out`` on ``megabytes`` arrays
    (each read once, the result written once), best of ``calls``."""
    n = int(megabytes * 2 ** 20) // 4
    a, b, out = (np.full(n, v, dtype=np.float32) for v in (1.0, 2.0, 0.0))
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        np.add(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 3 * 4 * n / best


def limits(args, before: dict | None = None) -> dict:
    """The matmul peaks and the bandwidths; with ``before`` (the same measured earlier in
    the run), the best of both, each measurement kept (``measured``): under load the higher
    figure is the nearer to the machine's."""
    peaks = {p: matmul_peak(p, args.peak_size, args.threads) for p in ("fp32", "bf16", "int8")}
    print("peaks: " + ", ".join(f"{p} {v['flops_per_s'] / 1e9:.0f} GFLOP/s {v['kernels']}" for p, v in peaks.items()),
          file=sys.stderr, flush=True)
    now = dict(peak_flops={"f32": peaks["fp32"]["flops_per_s"], "bf16": peaks["bf16"]["flops_per_s"],
                           "int8": peaks["int8"]["flops_per_s"]},
               peak_detail=peaks, bandwidth=bandwidth(32, 10), bandwidth_in_cache=bandwidth(0.125, 2000))
    if before is None:
        return now | dict(measured=[{k: now[k] for k in ("peak_flops", "bandwidth", "bandwidth_in_cache")}])
    best = dict(now, peak_flops={k: max(v, before["peak_flops"][k]) for k, v in now["peak_flops"].items()},
                bandwidth=max(now["bandwidth"], before["bandwidth"]),
                bandwidth_in_cache=max(now["bandwidth_in_cache"], before["bandwidth_in_cache"]))
    return best | dict(measured=[*before["measured"], {k: now[k] for k in ("peak_flops", "bandwidth",
                                                                         "bandwidth_in_cache")}])


def cpu_flags() -> list[str]:
    """The CPU's AVX-512, VNNI, BF16 and AMX flags (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((li for li in text.splitlines() if li.startswith("flags")), "")
    return sorted({f for f in line.split(":", 1)[-1].split()
                   if f.startswith(("avx512", "amx")) or "vnni" in f or "bf16" in f})


# --------------------------------------------------------------------------- profiling runs

def openvino_runner(ov_model, precision: str, args):
    """``(call, summary)``: ``call(record)`` runs ``ov_model`` (compiled with ``PERF_COUNT``)
    once, keeping its profile and wall time when ``record``; ``summary()`` groups them."""
    from efficientmod.export.openvino import compile_openvino

    x = np.random.default_rng(0).standard_normal(tuple(ov_model.input(0).get_shape()), dtype=np.float32)
    compiled = compile_openvino(ov_model, precision, args.threads, profile=True)
    request = compiled.create_infer_request()
    weight_shapes = {op.get_friendly_name(): list(op.input(1).get_shape())
                     for op in compiled.get_runtime_model().get_ordered_ops()
                     if op.get_input_size() > 1 and op.input(1).get_partial_shape().is_static}
    calls, wall = [], []

    def call(record: bool) -> None:
        start = time.perf_counter()
        request.infer({0: x})
        if record:
            wall.append(time.perf_counter() - start)
            calls.append(request.get_profiling_info())

    return call, lambda: group_ov_profile(calls, weight_shapes) | dict(wall_ms=1e3 * float(np.median(wall)))


def ort_runner(path: Path, folder: str, args):
    """``(call, summary)`` of the ONNX file ``path`` in ONNX Runtime (every optimization, its
    profiler on); the profile leaves out the first ``--warmup`` calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.enable_profiling, options.profile_file_prefix = True, str(Path(folder) / f"{path.stem}-profile")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(tuple(session.get_inputs()[0].shape), dtype=np.float32)
    wall = []

    def call(record: bool) -> None:
        start = time.perf_counter()
        session.run(None, {"input": x})
        if record:
            wall.append(time.perf_counter() - start)

    def summary() -> dict:
        events = json.loads(Path(session.end_profiling()).read_text())
        return group_ort_profile(events, args.warmup) | dict(wall_ms=1e3 * float(np.median(wall)))

    return call, summary


def interleave(calls: list, args) -> None:
    """``--warmup`` + ``--runs`` rounds, each calling every runner once in a rotating order
    (load from other processes hits both models alike); the last ``--runs`` rounds recorded."""
    for round_ in range(args.warmup + args.runs):
        for i in np.roll(np.arange(len(calls)), round_):
            calls[i](round_ >= args.warmup)


def profile_pair(ours: str, ref: str, args) -> dict:
    """Both models in every runtime, interleaved, each with the per-node costs of its ONNX
    graph (``costs``, turned into a roofline by :func:`add_rooflines`)."""
    import onnx

    candidates = resolve_models([ours, ref])
    sides = [dict(spec=spec, label=c.label, runtimes={}) for spec, c in zip((ours, ref), candidates, strict=True)]
    with tempfile.TemporaryDirectory(prefix="profile-layers-") as folder:
        paths = []
        for i, c in enumerate(candidates):
            (Path(folder) / str(i)).mkdir()
            paths.append(ORT_EXPORT.write(c.model.eval(), Path(folder) / str(i), c.input_size, 1))
        graphs = [onnx.load(str(path)) for path in paths]
        for runtime, precision in RUNTIMES.items():
            start = time.perf_counter()
            runners = []
            for c, path in zip(candidates, paths, strict=True):
                if runtime == "ort-fp32":
                    runners.append(ort_runner(path, folder, args))
                    continue
                ov_model = openvino_model(OPENVINO_EXPORT, c.model, c.input_size, precision)
                ov_model.reshape([1, *c.input_size])
                runners.append(openvino_runner(ov_model, precision, args))
            interleave([call for call, _ in runners], args)
            for side, graph, (_, summary) in zip(sides, graphs, runners, strict=True):
                side["runtimes"][runtime] = summary() | dict(costs=node_costs(graph, precision))
            a, b = (side["runtimes"][runtime]["wall_ms"] for side in sides)
            print(f"  {ours} vs {ref}, {runtime}: {a:.2f} vs {b:.2f} ms a call "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return dict(ours=ours, reference=ref, models=sides)


def add_rooflines(pairs: list[dict], machine: dict) -> None:
    """Each profile's ``costs`` replaced by its :func:`roofline` on ``machine``'s limits."""
    for pair in pairs:
        for side in pair["models"]:
            for profile in side["runtimes"].values():
                profile["roofline"] = roofline(profile.pop("costs"), machine["peak_flops"], machine["bandwidth"],
                                               machine["bandwidth_in_cache"])


# --------------------------------------------------------------------------- report

def _times(bound_s: float, measured_ms: float) -> str:
    return f"{measured_ms / (1e3 * bound_s):.1f}x" if bound_s > 0 else "-"


def summary_table(pairs: list[dict]) -> list[str]:
    lines = ["| model | runtime | GFLOP | MB moved | ms a call | profiled ms | bound ms (compute + memory) "
             "| x of the bound |", "|---|---|---|---|---|---|---|---|"]
    for pair in pairs:
        for side in pair["models"]:
            for runtime, r in side["runtimes"].items():
                t = r["roofline"]["total"]
                lines.append(f"| {side['label']} | {runtime} | {t['flops'] / 1e9:.2f} | {t['bytes'] / 2 ** 20:.1f} | "
                             f"{r['wall_ms']:.2f} | {r['total_ms']:.2f} | {1e3 * t['bound_s']:.2f} "
                             f"({1e3 * t['compute_s']:.2f} + {1e3 * t['memory_s']:.2f}) | "
                             f"{_times(t['bound_s'], r['total_ms'])} |")
    return lines


def group_table(ours: dict, ref: dict) -> list[str]:
    """Op groups of one runtime: each side's ms (% of its profile), bound and x of the bound."""
    lines = ["| op group | ours ms (%) | ours bound ms | ours x | ref ms (%) | ref bound ms | ref x |",
             "|---|---|---|---|---|---|---|"]
    for group in GROUPS:
        cells = []
        for side in (ours, ref):
            ms = side["groups"].get(group, 0.0)
            bound = side["roofline"]["groups"].get(group, {}).get("bound_s", 0.0)
            cells += [f"{ms:.2f} ({100 * ms / side['total_ms']:.0f}%)", f"{1e3 * bound:.3f}", _times(bound, ms)]
        if any(side["groups"].get(group) for side in (ours, ref)):
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    totals = [(side["total_ms"], side["roofline"]["total"]["bound_s"]) for side in (ours, ref)]
    cells = [f"{ms:.2f} | {1e3 * b:.3f} | {_times(b, ms)}" for ms, b in totals]
    lines.append("| **total** | " + " | ".join(cells) + " |")
    return lines


def kind_table(ours: dict, ref: dict, top: int) -> list[str]:
    """The ``top`` profile rows (node type [kernel precision], or ORT op type) by ours + ref time."""
    keys = sorted(set(ours["rows"]) | set(ref["rows"]),
                  key=lambda k: -(ours["rows"].get(k, {}).get("ms", 0) + ref["rows"].get(k, {}).get("ms", 0)))
    lines = ["| node type | group | ours ms (%, nodes) | ref ms (%, nodes) |", "|---|---|---|---|"]
    for key in keys[:top]:
        cells = []
        for side in (ours, ref):
            row = side["rows"].get(key)
            cells.append(f"{row['ms']:.2f} ({100 * row['ms'] / side['total_ms']:.0f}%, {row['count']})" if row else "-")
        group = (ours["rows"].get(key) or ref["rows"][key])["group"]
        lines.append(f"| {key} | {group} | {cells[0]} | {cells[1]} |")
    return lines


def markdown(result: dict, top: int = 12) -> str:
    machine, env = result["machine"], result["environment"]
    peaks = machine["peak_flops"]
    lines = [f"Command: `{result['command']}`", "",
             f"Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, flags {' '.join(machine['flags']) or '-'}; "
             f"OpenVINO {env['openvino']}, ONNX Runtime {env['onnxruntime']}, torch {env['torch']}; "
             f"{result['settings']['threads']} thread(s), batch 1; load (1 min) {result['load_before'][0]:.2f} before, "
             f"{result['load_after'][0]:.2f} after.", "",
             f"Measured limits (1 thread): MatMul {result['settings']['peak_size']}³ peak f32 "
             f"{peaks['f32'] / 1e9:.1f}, bf16 {peaks['bf16'] / 1e9:.1f}, int8 {peaks['int8'] / 1e9:.1f} GFLOP/s "
             f"(kernels: {'; '.join(', '.join(v['kernels']) for v in machine['peak_detail'].values())}); "
             f"bandwidth {machine['bandwidth'] / 1e9:.1f} GB/s streaming (32 MB; the weights' bound), "
             f"{machine['bandwidth_in_cache'] / 1e9:.1f} GB/s in cache (128 KB; the activations'). "
             f"Best of {len(machine['measured'])} measurements (the run's start and end).", "",
             "## Summary", "", *summary_table(result["pairs"])]
    for pair in result["pairs"]:
        ours, ref = pair["models"]
        lines += ["", f"## {ours['label']} (ours) vs {ref['label']} (reference)"]
        for runtime in RUNTIMES:
            a, b = ours["runtimes"][runtime], ref["runtimes"][runtime]
            lines += ["", f"### {runtime}: {a['wall_ms']:.2f} vs {b['wall_ms']:.2f} ms a call "
                      f"(ours / ref {a['wall_ms'] / b['wall_ms']:.2f})", "", *group_table(a, b), "",
                      *kind_table(a, b, top)]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(PAIRS),
                        help="ours as NAME@deploy, each profiled beside its reference (default: "
                        f"{' '.join(PAIRS)}); OURS=REF sets the reference")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    parser.add_argument("--runs", type=int, default=20, help="profiled calls per runtime (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="unprofiled calls first (default 5)")
    parser.add_argument("--peak-size", type=int, default=1024, help="side of the peak MatMul (default 1024)")
    parser.add_argument("--top", type=int, default=12, help="node types listed per runtime (default 12)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the report here too")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    pairs = [m.split("=", 1) if "=" in m else [m, PAIRS.get(m)] for m in args.models]
    unknown = [ours for ours, ref in pairs if ref is None]
    if unknown:
        parser.error(f"no reference known for {unknown}: give it as OURS=REF (known: {list(PAIRS)})")
    if args.runs < 1 or args.warmup < 0 or args.peak_size < 16:
        parser.error("--runs must be >= 1, --warmup >= 0 and --peak-size >= 16")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    first = limits(args)
    result = dict(command=" ".join([os.path.basename(sys.executable), *sys.argv]),
                  environment=environment(args.threads), settings=vars(args) | {
                      "markdown": str(args.markdown), "json": str(args.json)},
                  load_before=load_before, pairs=[])
    for ours, ref in pairs:
        result["pairs"].append(profile_pair(ours, ref, args))
    result["machine"] = dict(flags=cpu_flags(), **limits(args, first))
    add_rooflines(result["pairs"], result["machine"])
    result["load_after"] = os.getloadavg()
    text = markdown(result, args.top)
    print(text, flush=True)
    if args.markdown:
        _write(args.markdown, text)
    if args.json:
        _write(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
