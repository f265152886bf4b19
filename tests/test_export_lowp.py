"""Reduced-precision exports: ONNX Runtime int8 (QDQ) and OpenVINO fp32 / bf16 / int8, their
verification by agreement, ``load_runtime`` / ``predict`` on them, and the CLI.

The OpenVINO tests skip (with the reason) when ``efficientmod[openvino]`` is not installed;
the ONNX Runtime ones need only the ``deploy`` extra. Models are tiny (efficientmod_xxs at
32×32) to keep every test within seconds.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from synthetic_images import make_image_folder
from test_deploy import random_model

import efficientmod
from efficientmod.cli import main
from efficientmod.export import ExportVerificationError, load_runtime, read_onnx_metadata
from efficientmod.export.calibration import read_calibration_images
from efficientmod.export.onnx import export_onnx_int8
from efficientmod.export.quantize import ORT_INT8_OPS, quantize_onnx_int8
from efficientmod.metadata import export_metadata
from efficientmod.preprocessing import Preprocessing

SIZE = (3, 32, 32)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO / NNCF not installed: "
                                    "pip install 'efficientmod[openvino]'")


@pytest.fixture(scope="module")
def model():
    return efficientmod.deploy(random_model("efficientmod_xxs", num_classes=4))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("calib"), classes=("ant", "bee", "cow", "dog"),
                             train_per_class=4, val_per_class=2, size=40)


@pytest.fixture(scope="module")
def calibration(model, images):
    return read_calibration_images(images / "train", Preprocessing.of_model(model, SIZE), None)


def metadata_of(model):
    return export_metadata(model, Preprocessing.of_model(model, SIZE))


# --------------------------------------------------------------------------- ONNX Runtime int8

def test_ort_int8_places_int8_on_convs_and_matmuls_only(model, calibration, tmp_path):
    result = export_onnx_int8(model, tmp_path / "m.onnx", calibration, SIZE, metadata_of(model),
                              agreement_tolerance=100)
    graph = onnx.load(str(result.path)).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    dequantized = [consumers.get(n.output[0], []) for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dequantized and all(set(ops) <= set(ORT_INT8_OPS) for ops in dequantized)
    heavy = [n for n in graph.node if n.op_type in ORT_INT8_OPS]
    producers = {out: n.op_type for n in graph.node for out in n.output}
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in heavy)  # every weight int8
    kept_float = {n.op_type for n in graph.node} & {"LayerNormalization", "Softmax", "Erf"}
    assert kept_float  # the norms, softmax and GELU are still there, in float
    assert result.precision == "int8" and result.max_abs_diff <= 1e-4 and result.agreement.samples == 16
    assert read_onnx_metadata(result.path)["precision"] == "int8"
    assert read_onnx_metadata(result.path)["architecture"] == "efficientmod_xxs"


def test_ort_int8_failed_agreement_keeps_the_previous_file(model, calibration, tmp_path, monkeypatch):
    import efficientmod.export.onnx as onnx_format

    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    monkeypatch.setattr(onnx_format, "check_agreement", _always_fail)
    with pytest.raises(ExportVerificationError, match="too far"):
        export_onnx_int8(model, path, calibration, SIZE)
    assert path.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_ort_int8_with_a_static_batch_runs_images_one_at_a_time(model, calibration, tmp_path):
    result = export_onnx_int8(model, tmp_path / "m.onnx", calibration[:4], SIZE, agreement_tolerance=100,
                              dynamic_batch=False)
    assert result.batch == 1 and result.checked_on == "batch sizes [1]" and result.agreement.samples == 4
    runtime = load_runtime(result.path, threads=1)
    assert runtime.batch == 1 and runtime.run(calibration[:3]).shape == (3, 4)


def _always_fail(*_):
    raise ExportVerificationError("too far")


def test_quantize_rejects_bad_calibration(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        quantize_onnx_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", np.zeros((0, 3, 8, 8), np.float32))


def test_cli_int8_onnx_export_and_predict(images, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    argv = ["export", "efficientmod_xxs", "-o", str(path), "--input-size", "32", "--precision", "int8",
            "--calib", str(images / "train"), "--calib-samples", "6", "--check-images", str(images / "val"),
            "--agreement-tolerance", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verified: int8 vs fp32: top-1 agreement" in out and "on 8 image(s)" in out and "--check-images" in out
    assert "wrote" in out and "onnx int8" in out
    assert main(["predict", str(path), str(images / "val" / "ant" / "000.jpg"), "--topk", "2"]) == 0
    assert "1. " in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["-o", "m.onnx", "--precision", "bf16"], "use --format openvino"),
    (["-o", "m.onnx", "--precision", "int8"], "needs calibration images"),
    (["-o", "m.onnx", "--format", "openvino"], "ends in .xml"),
    (["-o", "m.txt"], "not an exported model"),
    (["-o", "m.xml", "--save-optimized", "o.onnx"], "fp32 ONNX exports only"),
    (["-o", "m.onnx", "--precision", "int8", "--calib", ".", "--save-optimized", "o.onnx"], "fp32 ONNX exports only"),
    (["-o", "m.xml", "--opset", "16"], "too old"),
    (["-o", "m.onnx", "--precision", "int8", "--calib", "missing-folder"], "calibration folder not found"),
    (["-o", "m.onnx", "--precision", "int8", "--calib", ".", "--calib-samples", "0"], "must be positive"),
])
def test_cli_reduced_precision_bad_arguments(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "efficientmod_xxs", "--input-size", "32", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- OpenVINO

@needs_openvino
def test_openvino_fp32_matches_pytorch_and_carries_metadata(model, tmp_path):
    from efficientmod.export.openvino import export_openvino

    path = tmp_path / "m.xml"
    result = export_openvino(model, path, SIZE, "fp32", metadata_of(model))
    assert result.max_abs_diff <= 1e-4 and result.agreement is None
    runtime = load_runtime(path, threads=1)
    assert runtime.metadata["precision"] == "fp32" and runtime.metadata["num_classes"] == 4
    assert runtime.metadata["input_size"] == list(SIZE) and runtime.metadata["producer"] == "efficientmod"
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runtime.run(x.numpy()), expected, atol=1e-4)
    np.testing.assert_allclose(runtime.run(x[:1].numpy()), expected[:1], atol=1e-4)  # another batch size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # nothing temporary left


@needs_openvino
def test_openvino_int8_quantises_conv_and_matmul_inputs_only(model, calibration, tmp_path):
    from efficientmod.export import export_onnx
    from efficientmod.export.openvino import convert_onnx
    from efficientmod.export.quantize import OPENVINO_FLOAT_OPS, quantize_openvino_int8

    ov_model = convert_onnx(export_onnx(model, tmp_path / "m.onnx", SIZE))
    ov_model.reshape([1, *SIZE])
    quantised = quantize_openvino_int8(ov_model, calibration[:4])
    fed = {}  # op type -> how many activation FakeQuantize outputs feed it
    for op in quantised.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            for target in op.output(0).get_target_inputs():
                kind = target.get_node().get_type_name()
                fed[kind] = fed.get(kind, 0) + 1
    assert fed.get("MatMul", 0) > 0 and fed.get("Convolution", 0) > 0
    assert not set(fed) & set(OPENVINO_FLOAT_OPS), fed


@needs_openvino
@pytest.mark.slow  # NNCF's calibration: about a minute on a loaded 2-core machine
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_openvino_reduced_precisions_agree_and_run_any_batch(precision, model, calibration, tmp_path):
    from efficientmod.export.openvino import export_openvino

    path = tmp_path / f"m_{precision}.xml"
    result = export_openvino(model, path, SIZE, precision, metadata_of(model), calibration, agreement_tolerance=100)
    assert result.agreement.samples == len(calibration) and result.agreement.max_abs_diff > 0
    runtime = load_runtime(path, threads=1)
    assert runtime.precision == precision and runtime.metadata["precision"] == precision
    logits = [runtime.run(calibration[:n]) for n in (1, 3)]
    assert logits[0].shape == (1, 4) and logits[1].shape == (3, 4) and np.isfinite(logits[1]).all()
    if precision == "bf16":  # int8 kernels may differ by batch size (OpenVINO picks them per shape)
        np.testing.assert_allclose(logits[0], logits[1][:1], atol=0.05)
    else:
        assert any(op.get_type_name() == "FakeQuantize" for op in runtime.ov_model.get_ops())


@needs_openvino
@pytest.mark.slow
def test_openvino_failed_agreement_keeps_the_previous_files(model, calibration, tmp_path, monkeypatch):
    import efficientmod.export.openvino as openvino

    (tmp_path / "m.xml").write_text("previous")
    (tmp_path / "m.bin").write_bytes(b"previous")
    monkeypatch.setattr(openvino, "check_agreement", _always_fail)
    with pytest.raises(ExportVerificationError, match="too far"):
        openvino.export_openvino(model, tmp_path / "m.xml", SIZE, "int8", None, calibration)
    assert (tmp_path / "m.xml").read_text() == "previous" and (tmp_path / "m.bin").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


@needs_openvino
@pytest.mark.slow
def test_cli_openvino_export_and_predict(images, tmp_path, capsys):
    path = tmp_path / "m.xml"
    assert main(["export", "efficientmod_xxs", "-o", str(path), "--input-size", "32", "--precision", "bf16",
                 "--calib", str(images / "train"), "--agreement-tolerance", "100"]) == 0
    out = capsys.readouterr().out
    assert "verified: bf16 vs fp32" in out and "calibration images" in out and "openvino bf16" in out
    assert main(["predict", str(path), str(images / "val" / "bee" / "000.jpg"), "--topk", "3"]) == 0
    assert "3. " in capsys.readouterr().out


@needs_openvino
def test_openvino_runtime_errors(tmp_path, model):
    from efficientmod.export.openvino import export_openvino

    with pytest.raises(FileNotFoundError):
        load_runtime(tmp_path / "missing.xml")
    path = export_openvino(model, tmp_path / "m.xml", SIZE).path
    path.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match="weights file"):
        load_runtime(path)
    (tmp_path / "bad.xml").write_text("not xml")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read"):
        load_runtime(tmp_path / "bad.xml")


def test_quantize_calibrates_a_static_batch_graph_in_batches_of_its_size(model, tmp_path):
    """A static batch-2 export (the bench's ort-cpu-int8 at batch 2) is calibrated two images at
    a time; fewer images than its batch are refused with the reason."""
    from efficientmod.export import export_onnx, ort_session

    source = export_onnx(model, tmp_path / "b2.onnx", SIZE, dynamic_batch=False, batch=2)
    images = np.random.default_rng(0).standard_normal((5, *SIZE), dtype=np.float32)
    target = quantize_onnx_int8(source, tmp_path / "b2_int8.onnx", images)
    (output,) = ort_session(target).run(None, {"input": images[:2]})
    assert output.shape == (2, 4)
    assert [d.dim_value for d in onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim] == [2, *SIZE]
    with pytest.raises(ValueError, match="static batch 2 needs at least 2 calibration images"):
        quantize_onnx_int8(source, tmp_path / "none.onnx", images[:1])
