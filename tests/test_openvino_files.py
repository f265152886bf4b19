"""OpenVINO files as OpenVINO's own tools load them: every IR we write compiles as written in
stock OpenVINO (``openvino.Core().compile_model(path, "CPU")``) and runs in
``benchmark_app -m FILE -d CPU`` without shape flags (a batch of 1 by default), a dynamic
batch on request; ``load_runtime`` / ``predict`` run both kinds as written.

A tiny model (efficientmod_xxs at 32×32, 4 classes) keeps each test within seconds; the
tests skip (with the reason) without ``efficientmod[openvino]``.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_deploy import random_model

import efficientmod
from efficientmod.cli import main
from efficientmod.export import FORMATS, ExportVerificationError, load_runtime
from efficientmod.metadata import export_metadata
from efficientmod.preprocessing import Preprocessing

SIZE = (3, 32, 32)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="OpenVINO / NNCF not installed: pip install 'efficientmod[openvino]'")


@pytest.fixture(scope="module")
def model():
    return efficientmod.deploy(random_model("efficientmod_xxs", num_classes=4))


def metadata_of(model):
    return export_metadata(model, Preprocessing.of_model(model, SIZE))


def benchmark_app() -> str:
    """OpenVINO's benchmark_app, installed with the openvino pip package beside this Python."""
    beside = Path(sys.executable).parent / "benchmark_app"
    found = str(beside) if beside.is_file() else shutil.which("benchmark_app")
    if found is None:
        pytest.skip("benchmark_app (installed with the openvino pip package) is not on this machine")
    return found


def run_benchmark_app(path: Path) -> str:
    """``benchmark_app -m PATH -d CPU`` for 5 iterations, no shape flags: its output; fails the test otherwise."""
    result = subprocess.run([benchmark_app(), "-m", str(path), "-d", "CPU", "-niter", "5"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def compiles_as_written(path: Path) -> list:
    """The input shape of ``path`` compiled as written in stock OpenVINO (no reshape, no config)."""
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU")
    return [str(d) for d in compiled.input(0).get_partial_shape()]


def test_fp32_ir_has_batch_one_and_runs_in_openvinos_own_tools(model, tmp_path):
    from efficientmod.export.openvino import export_openvino

    path = tmp_path / "m.xml"
    result = export_openvino(model, path, SIZE, "fp32", metadata_of(model))
    assert result.batch == 1 and result.checked_on == "batch sizes [1]" and result.max_abs_diff <= 1e-4
    assert compiles_as_written(path) == ["1", "3", "32", "32"]
    assert "Throughput" in run_benchmark_app(path)


def test_int8_ir_compiles_as_written_and_runs_in_benchmark_app(model, tmp_path):
    from efficientmod.export import export_onnx
    from efficientmod.export.openvino import convert_onnx, save_openvino
    from efficientmod.export.quantize import quantize_openvino_int8

    ov_model = convert_onnx(export_onnx(model, tmp_path / "m.onnx", SIZE))
    ov_model.reshape([1, *SIZE])
    calibration = np.random.default_rng(0).standard_normal((4, *SIZE), dtype=np.float32)
    path = save_openvino(quantize_openvino_int8(ov_model, calibration), tmp_path / "m_int8.xml",
                         {**metadata_of(model), "precision": "int8"})
    assert compiles_as_written(path) == ["1", "3", "32", "32"]
    assert "Throughput" in run_benchmark_app(path)
    runtime = load_runtime(path, threads=1)
    assert any(op.get_type_name() == "FakeQuantize" for op in runtime.ov_model.get_ops())
    assert runtime.run(calibration).shape == (4, 4)  # four images through a batch-1 file


@pytest.mark.slow  # NNCF's calibration through the command line: tens of seconds on a loaded 2-core machine
def test_cli_int8_ir_runs_in_benchmark_app(tmp_path, capsys):
    from synthetic_images import make_image_folder

    images = make_image_folder(tmp_path / "photos", classes=("ant", "bee"), train_per_class=3, val_per_class=1,
                               size=40)
    path = tmp_path / "s_int8.xml"
    assert main(["export", "efficientmod_xxs", "-o", str(path), "--input-size", "32", "--precision", "int8",
                 "--calib", str(images / "train"), "--agreement-tolerance", "100"]) == 0
    assert "input 1x3x32x32" in capsys.readouterr().out
    assert compiles_as_written(path) == ["1", "3", "32", "32"]
    assert "Throughput" in run_benchmark_app(path)


def test_dynamic_batch_on_request_runs_every_batch_size_as_written(model, tmp_path):
    from efficientmod.export.openvino import export_openvino

    path = tmp_path / "m.xml"
    result = export_openvino(model, path, SIZE, "fp32", metadata_of(model), batch_sizes=(1, 3), dynamic_batch=True)
    assert result.batch is None and result.checked_on == "batch sizes [1, 3]"
    assert compiles_as_written(path) == ["?", "3", "32", "32"]
    runtime = load_runtime(path, threads=1)
    assert runtime.batch is None
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runtime.run(x.numpy()), expected, atol=1e-4)


def test_a_static_file_runs_a_batch_image_by_image(model, tmp_path):
    from efficientmod.export.openvino import export_openvino

    path = export_openvino(model, tmp_path / "m.xml", SIZE, "fp32", metadata_of(model)).path
    runtime = load_runtime(path, threads=1)
    assert runtime.batch == 1
    x = torch.randn(5, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runtime.run(x.numpy()), expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"takes \(B, 3, 32, 32\) images"):
        runtime.run(np.zeros((1, 3, 16, 16), np.float32))
    assert FORMATS["openvino"].verify(model, path, SIZE, batch_sizes=(1, 2)) <= 1e-4  # the registry's check


def test_an_ir_that_does_not_compile_as_written_is_not_written(model, tmp_path, monkeypatch):
    import efficientmod.export.openvino as openvino_format

    def refuse(*_args, **_kwargs):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n"
                           "[ReshapeTransformation] END: node: opset1::Reshape\nmore")

    (tmp_path / "m.xml").write_text("previous")
    monkeypatch.setattr(openvino_format, "compile_openvino", refuse)
    reason = r"\(\[ReshapeTransformation\] END: node: opset1::Reshape\)"  # the line that says something
    with pytest.raises(ExportVerificationError, match=rf"cannot compile m\.xml as written {reason}: .*static batch"):
        openvino_format.export_openvino(model, tmp_path / "m.xml", SIZE, dynamic_batch=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xml"] and (tmp_path / "m.xml").read_text() == "previous"


def test_cli_openvino_batch_flags(tmp_path, capsys):
    static, dynamic = tmp_path / "static.xml", tmp_path / "dynamic.xml"
    assert main(["export", "efficientmod_xxs", "-o", str(static), "--input-size", "32", "--static-batch"]) == 0
    out = capsys.readouterr().out
    assert "verified: OpenVINO vs PyTorch max abs diff" in out and "on batch sizes [1]" in out
    assert "openvino fp32, deployed efficientmod_xxs, input 1x3x32x32, opset 18" in out
    assert main(["export", "efficientmod_xxs", "-o", str(dynamic), "--input-size", "32", "--dynamic-batch"]) == 0
    assert "input Nx3x32x32" in capsys.readouterr().out
    assert compiles_as_written(static) == ["1", "3", "32", "32"] and compiles_as_written(dynamic)[0] == "?"
    with pytest.raises(SystemExit) as done:  # one or the other
        main(["export", "efficientmod_xxs", "-o", str(static), "--static-batch", "--dynamic-batch"])
    assert done.value.code == 2
