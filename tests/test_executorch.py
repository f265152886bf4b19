"""ExecuTorch export (.pte): the XNNPACK rewrites are exact, every variant lowers and
reproduces PyTorch in ExecuTorch's runtime, int8 is calibrated and checked by agreement,
metadata travels inside the program, failures keep the old file, predict and bench run it.

Lowering a registered model takes tens of seconds (ExecuTorch's XNNPACK passes), so those
tests are marked slow; the rest use a tiny network. Without ``efficientmod[executorch]``
only the rewrite tests run (they need PyTorch alone).
"""
from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_deploy import ALL_MODELS, random_model

import efficientmod
from efficientmod.export import ExportVerificationError, format_of, load_runtime
from efficientmod.export.executorch import CALIBRATION_BATCH, XNNPACK_REWRITES, _calibration_batches

aten = torch.ops.aten
needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="executorch not installed: pip install 'efficientmod[executorch]'")
SMALL = (3, 64, 64)


def rewritten(op, *args, **kwargs):
    result = XNNPACK_REWRITES[op](*args, **kwargs)
    assert result is not NotImplemented
    return result


# --------------------------------------------------------------------------- rewrites (PyTorch only)

def test_rewrites_compute_what_the_ops_compute():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 7, generator=g)
    w, b = torch.randn(7, generator=g), torch.randn(7, generator=g)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewritten(aten.layer_norm.default, x, [7], w, b, 1e-6),
                               F.layer_norm(x, [7], w, b, 1e-6), **close)
    torch.testing.assert_close(rewritten(aten.layer_norm.default, x, [6, 5, 7]), F.layer_norm(x, [6, 5, 7]), **close)
    for dims in ([-1], [1], [1, 3], [0, 2, 3]):
        for keepdim in (False, True):
            torch.testing.assert_close(rewritten(aten.sum.dim_IntList, x, dims, keepdim), x.sum(dims, keepdim), **close)
            torch.testing.assert_close(rewritten(aten.mean.dim, x, dims, keepdim), x.mean(dims, keepdim), **close)
    torch.testing.assert_close(rewritten(aten.softmax.int, x, -1), x.softmax(-1), **close)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.randn(5, 5, generator=g)
    torch.testing.assert_close(rewritten(aten.scaled_dot_product_attention.default, q, k, v, mask),
                               F.scaled_dot_product_attention(q, k, v, mask), **close)
    torch.testing.assert_close(rewritten(aten.scaled_dot_product_attention.default, q, k, v, scale=1.0),
                               F.scaled_dot_product_attention(q, k, v, scale=1.0), **close)
    for a, m in [(q, k.transpose(-2, -1)), (q[0, 0], k[0, 0].T), (q, k[0, 0].T), (q[0, 0, 0], k[0, 0].T)]:
        torch.testing.assert_close(rewritten(aten.matmul.default, a, m), a @ m, **close)
    assert torch.equal(rewritten(aten.unsqueeze.default, x, 2), x.unsqueeze(2))
    assert torch.equal(rewritten(aten.unsqueeze.default, x, -1), x.unsqueeze(-1))
    for ours, theirs in zip(rewritten(aten.split_with_sizes.default, x, [2, 4], 1), x.split([2, 4], 1), strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(rewritten(aten.split.Tensor, x, 3, -1), x.split(3, -1), strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(rewritten(aten.select.int, x, 1, -2), x[:, -2])


def test_rewrites_keep_what_xnnpack_takes_as_it_is():
    x = torch.randn(1, 4, 3, 3)
    assert XNNPACK_REWRITES[aten.mean.dim](x, [2, 3], True) is NotImplemented  # global average pooling
    assert XNNPACK_REWRITES[aten.softmax.int](x.reshape(4, 9), 1) is NotImplemented
    assert XNNPACK_REWRITES[aten.softmax.int](x, 1) is NotImplemented
    with pytest.raises(NotImplementedError, match="dropout"):
        XNNPACK_REWRITES[aten.scaled_dot_product_attention.default](x, x, x, dropout_p=0.1)


def test_the_pte_suffix_selects_executorch():
    assert format_of("model.pte").name == "executorch"


# --------------------------------------------------------------------------- tiny network

class TinyNet(nn.Module):
    """A conv stem, a LayerNorm over channels, attention over pixels and a head: every
    rewrite on the path a backbone takes, in a network that lowers in seconds."""

    def __init__(self, classes: int = 5, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, classes)
        self.width, self.num_classes = width, classes

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        tokens = self.norm(x).flatten(1, 2)
        q, k, v = self.qkv(tokens).split(self.width, dim=-1)
        tokens = tokens + F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))[:, 0]
        return self.head(tokens.mean(dim=1))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().eval()


TINY_INPUT = (3, 16, 16)
META = {"producer": "efficientmod", "architecture": "tiny", "num_classes": 5, "class_names": list("abcde"),
        "input_size": list(TINY_INPUT), "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
        "crop_pct": 1.0}


@needs_executorch
def test_tiny_network_lowers_entirely_to_xnnpack_and_carries_its_metadata(tmp_path):
    from efficientmod.export.executorch import export_executorch

    model = tiny()
    result = export_executorch(model, tmp_path / "tiny.pte", TINY_INPUT, META)
    assert 0 <= result.max_abs_diff <= 1e-4 and result.agreement is None
    assert result.delegation.partitions == 1 and not result.delegation.portable_ops, result.delegation
    runtime = load_runtime(tmp_path / "tiny.pte", threads=1)
    assert runtime.metadata == json.loads(json.dumps(META))
    x = torch.randn(4, *TINY_INPUT)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(runtime.run(x.numpy()), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="takes"):
        runtime.run(np.zeros((1, 3, 8, 8), np.float32))


@needs_executorch
def test_failed_verification_keeps_the_old_file(tmp_path):
    from efficientmod.export.executorch import export_executorch

    path = tmp_path / "tiny.pte"
    path.write_bytes(b"old")
    with pytest.raises(ExportVerificationError, match="max abs"):
        export_executorch(tiny(), path, TINY_INPUT, META, tolerance=-1.0)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pte"]  # no temporary file left


@pytest.mark.slow
@needs_executorch
def test_int8_is_calibrated_quantised_and_checked_by_agreement(tmp_path):
    from efficientmod.export.executorch import export_executorch

    model = tiny()
    images = torch.randn(16, *TINY_INPUT, generator=torch.Generator().manual_seed(1)).numpy()
    fp32 = export_executorch(model, tmp_path / "fp32.pte", TINY_INPUT, META)
    int8 = export_executorch(model, tmp_path / "int8.pte", TINY_INPUT, META, "int8", calibration=images,
                             agreement_tolerance=100)
    assert int8.max_abs_diff is None and int8.agreement.samples == 16
    assert 0 <= int8.agreement.top1 <= int8.agreement.top5 <= 100
    assert int8.agreement.max_abs_diff > 0  # int8 cannot be bit-exact: the graph really is quantised
    assert int8.size_bytes < 0.5 * fp32.size_bytes  # int8 weights: a quarter of the bytes, plus scales
    with pytest.raises(ExportVerificationError, match="agreement"):  # a bar no int8 model meets: nothing written
        export_executorch(model, tmp_path / "strict.pte", TINY_INPUT, META, "int8", calibration=images,
                          agreement_tolerance=0, check_images=images + 10 * np.sign(images))
    assert not (tmp_path / "strict.pte").exists()
    with pytest.raises(ValueError, match="calibration"):
        export_executorch(model, tmp_path / "x.pte", TINY_INPUT, META, "int8")


def test_calibration_batches_cover_every_image_once_and_never_leave_one_alone():
    for count in (1, 2, 3, CALIBRATION_BATCH, CALIBRATION_BATCH + 1, 300):
        images = torch.arange(count, dtype=torch.float32).reshape(count, 1, 1, 1)
        batches = _calibration_batches(images, CALIBRATION_BATCH)
        assert torch.equal(torch.cat(batches), images)
        assert all(len(batch) <= CALIBRATION_BATCH for batch in batches)
        assert count == 1 or min(len(batch) for batch in batches) >= 2  # the captured batch axis starts at 2
        assert len(batches) == -(-count // CALIBRATION_BATCH)


@pytest.mark.slow
@needs_executorch
def test_int8_export_reports_its_stages_and_is_still_verified(tmp_path):
    from efficientmod.export.executorch import export_executorch

    lines: list[str] = []
    count = CALIBRATION_BATCH + 1  # two batches
    images = torch.randn(count, *TINY_INPUT, generator=torch.Generator().manual_seed(3)).numpy()
    result = export_executorch(tiny(), tmp_path / "int8.pte", TINY_INPUT, META, "int8", calibration=images,
                               agreement_tolerance=100, progress=lines.append)
    assert all(re.match(r"\[ *\d+ s\] ", line) for line in lines), lines
    stages = [line.split("] ", 1)[1] for line in lines]
    expected = ["lowering int8 program", "int8: capturing the graph", f"int8: calibrating on {count} images in 2 batch",
                f"int8: calibration {-(-count // 2)}/{count} images", f"int8: calibration {count}/{count} images",
                "int8: converting", "exporting the int8 graph at batch 1", "lowering to XNNPACK", "serialising",
                "delegation: ", f"verifying in ExecuTorch's runtime on {count} images", "verified"]
    assert len(stages) == len(expected) and all(map(str.startswith, stages, expected)), stages
    assert result.agreement.samples == count and result.agreement.max_abs_diff > 0  # checked, and really int8
    assert load_runtime(tmp_path / "int8.pte").run(images[:2]).shape == (2, 5)


@pytest.mark.slow
@needs_executorch
def test_bench_measures_executorch_backends():
    from efficientmod.bench import BenchSettings, Candidate, benchmark

    settings = BenchSettings(backends=("executorch-cpu", "executorch-cpu-int8"), threads=1, runs=2, warmup=1, batch=2,
                             throughput_runs=1)
    report = benchmark([Candidate("tiny", "test", tiny(), TINY_INPUT)], settings)
    assert [r.backend for r in report.rows] == ["executorch-cpu", "executorch-cpu-int8"]
    for row in report.rows:
        assert not row.error and row.latency_ms_median > 0 and row.throughput_img_s > 0


# --------------------------------------------------------------------------- registered variants (slow)

@needs_executorch
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_deployed_variant_exports_and_verifies(name, tmp_path):
    from efficientmod.export.executorch import export_executorch

    model = efficientmod.deploy(random_model(name))
    result = export_executorch(model, tmp_path / f"{name}.pte", SMALL, {"architecture": name})
    assert 0 <= result.max_abs_diff <= 1e-4
    assert result.delegation.partitions >= 1
    assert not result.delegation.portable_ops, result.delegation  # the rewrites leave nothing outside XNNPACK


@needs_executorch
@pytest.mark.slow
def test_cli_export_int8_then_predict_the_pte(tmp_path, capsys):
    from PIL import Image

    from efficientmod.cli import main

    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    path = tmp_path / "m.pte"
    argv = ["export", "efficientmod_xxs", "-o", str(path), "--input-size", "64", "--precision", "int8",
            "--calib", str(folder), "--agreement-tolerance", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "delegation:" in out and f"wrote {path}" in out
    assert main(["predict", str(path), str(folder / "0.png"), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("0.png") and len(lines) == 4 and "%" in lines[1]


@pytest.mark.parametrize("argv, message", [
    (["-o", "m.onnx", "--format", "executorch"], "ends in .pte"),
    (["-o", "m.pte", "--precision", "int8"], "--calib"),
    (["-o", "m.pte", "--precision", "bf16"], "use --format openvino"),
    (["-o", "m.pte", "--static-batch"], "ONNX and OpenVINO exports only"),
    (["-o", "m.pte", "--dynamic-batch"], "always takes one image"),
])
def test_cli_export_rejects_bad_executorch_arguments(tmp_path, capsys, monkeypatch, argv, message):
    from efficientmod.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["export", "efficientmod_xxs", *argv]) == 2
    assert message in capsys.readouterr().err
