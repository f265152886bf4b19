"""benchmarks/profile_layers.py: the FLOP / byte counter of its roofline on a hand-built ONNX
graph with known numbers, and the grouping of (fake) OpenVINO and ONNX Runtime profiles."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from benchmark_scripts import load_script

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _profile_layers():
    return load_script("profile_layers")


def _tiny_graph():
    """x (1,3,8,8) -> 3x3 Conv to 4 channels -> 3x3 depthwise Conv -> GlobalAveragePool ->
    Reshape (1,4) -> Gemm to 2 outputs."""
    weights = {"w_conv": np.ones((4, 3, 3, 3), np.float32), "w_dw": np.ones((4, 1, 3, 3), np.float32),
               "shape": np.array([1, 4], np.int64), "w_fc": np.ones((4, 2), np.float32),
               "b_fc": np.zeros(2, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["y1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y1", "w_dw"], ["y2"], name="dw", pads=[1, 1, 1, 1], group=4),
        helper.make_node("GlobalAveragePool", ["y2"], ["y3"], name="pool"),
        helper.make_node("Reshape", ["y3", "shape"], ["y4"], name="flat"),
        helper.make_node("Gemm", ["y4", "w_fc", "b_fc"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_flops_and_bytes_of_a_conv_a_depthwise_conv_and_a_gemm():
    costs = {c["name"]: c for c in _profile_layers().node_costs(_tiny_graph(), "fp32")}
    assert {n: c["group"] for n, c in costs.items()} == dict(conv="conv", dw="dwconv", pool="pool", flat="layout",
                                                            fc="matmul")
    # conv: 4x8x8 outputs x 3x3x3 MACs; bytes: input 192 + weights 108 + output 256 elements, f32
    assert (costs["conv"]["flops"], costs["conv"]["bytes"]) == (2 * 256 * 27, 4 * (192 + 108 + 256))
    # depthwise: one input channel per output channel: 3x3 MACs an output
    assert (costs["dw"]["flops"], costs["dw"]["bytes"]) == (2 * 256 * 9, 4 * (256 + 36 + 256))
    # gemm: (1x4) @ (4x2) + bias: 8 MACs; bytes: 4 + 8 + 2 inputs, 2 outputs
    assert (costs["fc"]["flops"], costs["fc"]["bytes"]) == (16, 4 * (4 + 8 + 2 + 2))
    assert (costs["flat"]["flops"], costs["flat"]["bytes"]) == (0, 0)  # a view moves nothing
    assert costs["pool"]["bytes"] == 4 * (256 + 4)
    assert costs["conv"]["weights"] == 108 and costs["fc"]["weights"] == 10
    assert costs["conv"]["weight_bytes"] == 4 * 108 and costs["flat"]["weight_bytes"] == 0
    assert {c["peak"] for c in costs.values()} == {"f32"}


def test_bytes_in_bf16_and_int8_and_the_peak_each_node_is_bound_by():
    profile_layers = _profile_layers()
    bf16 = {c["name"]: c for c in profile_layers.node_costs(_tiny_graph(), "bf16")}
    int8 = {c["name"]: c for c in profile_layers.node_costs(_tiny_graph(), "int8")}
    assert bf16["fc"]["bytes"] == 2 * 16 and bf16["fc"]["peak"] == "bf16"
    # int8: the inputs and weights of Conv / Gemm / MatMul in 1 byte, their outputs and the rest in 4
    assert int8["fc"]["bytes"] == 1 * 14 + 4 * 2 and int8["fc"]["peak"] == "int8"
    assert int8["fc"]["weight_bytes"] == 10 and bf16["fc"]["weight_bytes"] == 20
    assert int8["dw"]["bytes"] == 1 * (256 + 36) + 4 * 256
    assert int8["pool"]["bytes"] == 4 * 260 and int8["pool"]["peak"] == "f32"
    assert int8["conv"]["flops"] == bf16["conv"]["flops"] == 2 * 256 * 27


def test_the_roofline_bound_is_the_slower_side_of_each_node_summed():
    costs = [dict(group="matmul", flops=1000, bytes=10, weight_bytes=10, peak="f32"),  # compute-bound: 1 s
             dict(group="matmul", flops=10, bytes=300, weight_bytes=0, peak="f32"),  # memory-bound: 3 s
             dict(group="layout", flops=0, bytes=100, weight_bytes=0, peak="f32")]  # memory-bound: 1 s
    roofline = _profile_layers().roofline
    bound = roofline(costs, {"f32": 1000.0}, bandwidth=100.0)
    assert bound["groups"]["matmul"] == dict(flops=1010, bytes=310, bound_s=4.0, compute_s=1.0, memory_s=3.0)
    assert bound["total"]["bound_s"] == 5.0 and bound["total"]["memory_s"] == 4.0
    # weights stream at the first bandwidth, activations at the in-cache one
    cached = roofline([dict(group="matmul", flops=0, bytes=500, weight_bytes=200, peak="f32")], {"f32": 1.0},
                      bandwidth=100.0, cache_bandwidth=300.0)
    assert cached["total"]["bound_s"] == pytest.approx(200 / 100 + 300 / 300)


def _info(name, node_type, exec_type, microseconds, status="EXECUTED"):
    return SimpleNamespace(node_name=name, node_type=node_type, exec_type=exec_type,
                           status=SimpleNamespace(name=status), real_time=timedelta(microseconds=microseconds))


def test_an_openvino_profile_grouped_by_node_type_kernel_precision_and_op_group():
    def call(scale):
        return [_info("input", "Parameter", "unknown_f32", 0, "NOT_RUN"),
                _info("fc1", "FullyConnected", "brgemm_avx512_amx_bf16", 1000 * scale),
                _info("fc2", "FullyConnectedQuantizedLegacy", "brgemm_avx512_i8", 500),
                _info("pw", "Convolution", "brgconv_avx512_f32", 300),  # a 1x1 kernel by its weights
                _info("stem", "Convolution", "brgconv_avx512_I8", 200),
                _info("dw", "Convolution", "brgconv_avx512_dw_f32", 100),
                _info("gdw", "GroupConvolution", "brgconv_avx512_dw_f32", 100),
                _info("re1", "Reorder", "jit_uni_f32", 40), _info("re2", "Reorder", "reorder_f32", 60),
                _info("sub", "Subgraph", "jit_avx512_f32", 50), _info("ln", "MVN", "jit_avx512_f32", 20)]

    summary = _profile_layers().group_ov_profile([call(1), call(3), call(2)], {"pw": [8, 4, 1, 1],
                                                                               "stem": [4, 3, 3, 3]})
    rows = summary["rows"]
    assert "Parameter [f32]" not in rows and "Parameter" not in str(rows)  # not run: not counted
    assert rows["FullyConnected [bf16]"] == dict(ms=2.0, count=1, group="matmul")  # the median of 1, 3, 2 ms
    assert rows["FullyConnectedQuantizedLegacy [i8]"]["group"] == "matmul"
    assert rows["Convolution (matmul) [f32]"]["ms"] == pytest.approx(0.3)
    assert rows["Convolution (conv) [i8]"]["ms"] == pytest.approx(0.2)
    assert rows["Convolution (dwconv) [f32]"]["group"] == rows["GroupConvolution (dwconv) [f32]"]["group"] == "dwconv"
    assert rows["Reorder [f32]"] == dict(ms=pytest.approx(0.1), count=2, group="layout")
    assert summary["groups"] == pytest.approx(dict(matmul=2.8, conv=0.2, dwconv=0.2, layout=0.1, elementwise=0.05,
                                                   norm=0.02))
    assert summary["total_ms"] == pytest.approx(3.37)


def _event(name, op, ts, dur, shapes=()):
    return dict(cat="Node", name=f"{name}_kernel_time", ts=ts, dur=dur,
                args=dict(op_name=op, input_type_shape=[{"float": list(s)} for s in shapes]))


def test_an_onnx_runtime_profile_without_its_warm_up_calls():
    events = [dict(cat="Session", name="model_run", ts=0, dur=90),
              dict(cat="Session", name="model_run", ts=100, dur=90),
              dict(cat="Session", name="session_initialization", ts=-50, dur=10)]
    for start, scale in ((0, 100), (100, 1)):  # the first call (the warm-up) is 100x slower
        events += [_event("dw", "Conv", start + 1, 10 * scale, [(1, 8, 4, 4), (8, 1, 3, 3), (8,)]),
                   _event("pw", "Conv", start + 2, 20 * scale, [(1, 8, 4, 4), (16, 8, 1, 1)]),
                   _event("stem", "Conv", start + 3, 30 * scale, [(1, 3, 8, 8), (8, 3, 3, 3)]),
                   _event("mm", "FusedMatMul", start + 4, 40 * scale, [(1, 16, 8), (8, 8)]),
                   _event("ln", "LayerNormalization", start + 5, 5 * scale, [(1, 16, 8)]),
                   _event("reorder", "ReorderOutput", start + 6, 7 * scale, [(1, 16, 4, 4)]),
                   _event("gelu", "Gelu", start + 7, 3 * scale, [(1, 16, 8)])]
    summary = _profile_layers().group_ort_profile(events, skip_runs=1)
    assert summary["rows"]["Conv (dwconv)"] == dict(ms=pytest.approx(0.010), count=1, group="dwconv")
    assert summary["rows"]["Conv (matmul)"]["ms"] == pytest.approx(0.020)
    assert summary["rows"]["Conv (conv)"]["ms"] == pytest.approx(0.030)
    assert summary["groups"] == pytest.approx(dict(dwconv=0.01, matmul=0.06, conv=0.03, norm=0.005, layout=0.007,
                                                   elementwise=0.003))
