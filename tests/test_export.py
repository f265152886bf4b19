"""ONNX export of deployed models, verified in ONNX Runtime; ``efficientmod export``."""
from __future__ import annotations

import re

import onnx
import pytest
import torch
import torch.nn as nn
from conftest import smallest_fast
from test_deploy import ALL_MODELS, random_model

import efficientmod
from efficientmod.cli import main
from efficientmod.export import (
    ExportVerificationError,
    export_onnx,
    export_verified,
    read_onnx_metadata,
    verify_onnx,
)
from efficientmod.models.efficientmod import FusedModulationBlock

SMALL = (3, 64, 64)


@pytest.mark.parametrize("name", smallest_fast(ALL_MODELS))
def test_every_deployed_variant_exports_and_verifies(name, tmp_path):
    model = efficientmod.deploy(random_model(name))
    path = tmp_path / f"{name}.onnx"
    with torch.no_grad():  # relative to the logits' scale (of order 3: random_model scales the head)
        logits = model(torch.randn(2, *SMALL, generator=torch.Generator().manual_seed(0)))
    tolerance = 1e-4 * max(1.0, logits.abs().max().item())
    worst = export_verified(model, path, SMALL, batch_sizes=(1, 3), tolerance=tolerance)
    assert 0 <= worst <= tolerance
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis


class ExportsSomethingElse(nn.Module):
    """Agrees with PyTorch except inside the ONNX exporter — verification must notice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + (1e-3 if torch.onnx.is_in_onnx_export() else 0.0)


def test_verification_failure_raises_and_removes_the_file(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportVerificationError, match="differs from PyTorch by 0.001"):
        export_verified(ExportsSomethingElse(), path, SMALL)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_verify_reports_the_difference_and_honours_the_tolerance(tmp_path):
    model = ExportsSomethingElse()
    path = export_onnx(model, tmp_path / "m.onnx", SMALL)
    assert verify_onnx(model, path, SMALL, tolerance=1e-2) == pytest.approx(1e-3, rel=1e-3)


def test_export_rejects_old_opsets(tmp_path):
    with pytest.raises(ValueError, match="opset 16 is too old"):
        export_onnx(ExportsSomethingElse(), tmp_path / "m.onnx", SMALL, opset=16)


def test_cli_export_prints_the_difference_and_stores_metadata(tmp_path, capsys):
    path = tmp_path / "xxs.onnx"
    assert main(["export", "efficientmod_xxs", "-o", str(path), "--input-size", "64", "96"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "deployed efficientmod_xxs" in out
    meta = read_onnx_metadata(path)
    info = efficientmod.model_info("efficientmod_xxs")
    assert meta["architecture"] == "efficientmod_xxs" and meta["deployed"] is True
    assert meta["input_size"] == [3, 64, 96]
    assert tuple(meta["mean"]) == info.mean and meta["interpolation"] == info.interpolation
    assert meta["num_classes"] == 1000 and meta["class_names"] is None


def test_cli_export_fails_removes_file_when_outputs_differ(tmp_path, capsys, monkeypatch):
    forward = FusedModulationBlock.forward
    monkeypatch.setattr(FusedModulationBlock, "forward", lambda self, x: forward(self, x) + (
        1e-2 if torch.onnx.is_in_onnx_export() else 0.0))
    path = tmp_path / "xxs.onnx"
    assert main(["export", "efficientmod_xxs", "-o", str(path), "--input-size", "64"]) == 1
    assert "verification FAILED" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "70"], "multiples of 32"),
    (["--opset", "13"], "too old"),
    (["--checkpoint", "missing.pth"], "not found"),
])
def test_cli_export_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["export", "efficientmod_xxs", "-o", str(tmp_path / "m.onnx"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_failed_verification_keeps_an_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous, good export")
    with pytest.raises(ExportVerificationError, match=r"model\.onnx: ONNX Runtime differs"):
        export_verified(ExportsSomethingElse(), path, SMALL)
    assert path.read_bytes() == b"the previous, good export"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_export_verified_writes_the_optimized_graph(tmp_path):
    model = efficientmod.deploy(random_model("efficientmod_xxs"))
    optimized = tmp_path / "optimized.onnx"
    export_verified(model, tmp_path / "m.onnx", SMALL, batch_sizes=(2,), optimized_path=optimized)
    assert len(onnx.load(str(optimized)).graph.node) < len(onnx.load(str(tmp_path / "m.onnx")).graph.node)


def test_export_verified_rejects_empty_batches(tmp_path):
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        export_verified(ExportsSomethingElse(), tmp_path / "m.onnx", SMALL, batch_sizes=(0, 2))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the format registry

def test_every_format_declares_itself_once_in_its_own_module():
    import importlib

    from efficientmod.export import FORMATS, find_format, format_of

    assert list(FORMATS) == ["onnx", "openvino", "executorch"]
    for name, fmt in FORMATS.items():
        assert importlib.import_module(f"efficientmod.export.{name}").FORMAT is fmt
        assert fmt.precisions[0] == "fp32" and fmt.batch_modes and fmt.extra and fmt.runtime
        for suffix in fmt.suffixes:
            assert format_of(f"model{suffix.upper()}") is fmt and find_format(f"a/b{suffix}") is fmt
    assert find_format("model.pth") is None
    with pytest.raises(ValueError, match=r"not an exported model \(known suffixes: .onnx, .xml, .pte\)"):
        format_of("model.pth")


@pytest.mark.parametrize("output, name, options, message", [
    ("m.onnx", "openvino", {}, "ends in .xml"),
    ("m.onnx", None, {"precision": "bf16"}, "not written by onnx exports (fp32, int8): use --format openvino"),
    ("m.onnx", None, {"opset": 16}, "too old"),
    ("m.pte", None, {"dynamic_batch": False}, "always takes one image"),
])
def test_resolve_format_refuses_what_a_format_does_not_write(output, name, options, message):
    from efficientmod.export import ExportOptions, resolve_format

    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_format(output, ExportOptions(**options), name)


def test_resolve_format_picks_the_batch_axis_of_each_format():
    from efficientmod.export import FORMATS, ExportOptions, resolve_format

    assert resolve_format("m.onnx", ExportOptions()) is FORMATS["onnx"]
    assert FORMATS["onnx"].dynamic_batch(ExportOptions()) and not FORMATS["openvino"].dynamic_batch(ExportOptions())
    assert FORMATS["openvino"].dynamic_batch(ExportOptions(dynamic_batch=True))
    assert not FORMATS["onnx"].dynamic_batch(ExportOptions(dynamic_batch=False))
    with pytest.raises(ValueError, match="static batch axis, not a dynamic one"):
        FORMATS["executorch"].dynamic_batch(ExportOptions(dynamic_batch=True))


def test_format_write_verify_and_load_a_static_onnx_file(tmp_path):
    from efficientmod.export import FORMATS, ExportOptions, load_runtime

    model = efficientmod.deploy(random_model("efficientmod_xxs", num_classes=3))
    fmt = FORMATS["onnx"]
    result = fmt.write(model, tmp_path / "m.onnx", SMALL, {"producer": "efficientmod"},
                       ExportOptions(dynamic_batch=False))
    assert (result.format, result.precision, result.batch, result.compared) == ("onnx", "fp32", 1, "ONNX Runtime")
    assert result.checked_on == "batch sizes [1]" and result.details == ("opset 18",) and result.max_abs_diff <= 1e-4
    assert not onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch fixed
    assert fmt.verify(model, result.path, SMALL) <= 1e-4
    runtime = load_runtime(result.path)
    assert runtime.metadata == {"producer": "efficientmod"} and runtime.batch == 1
    x = torch.randn(3, *SMALL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    torch.testing.assert_close(runtime.run(x.numpy()), expected, atol=1e-4, rtol=0)  # three images, one at a time
    with pytest.raises(ExportVerificationError, match="ONNX Runtime differs from PyTorch"):
        fmt.verify(ExportsSomethingElse(), export_onnx(ExportsSomethingElse(), tmp_path / "x.onnx", SMALL), SMALL)


def test_export_and_predict_do_not_import_each_other():
    from test_layout import import_graph

    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    exporters = [m for m in graph if m == "efficientmod.export" or m.startswith("efficientmod.export.")]
    assert exporters and not any(m.startswith("efficientmod.classify") for e in exporters for m in reach(e))
    assert "efficientmod.metadata" in graph["efficientmod.cli.export"]  # the metadata comes from the core module
