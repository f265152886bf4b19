"""The EfficientMod ablations: every variant builds, trains a step, and has exactly the
parameters its configuration implies; the ablation benchmark runs end to end."""
from __future__ import annotations

import json

import pytest
import torch

import efficientmod
from efficientmod.bench import BenchSettings
from efficientmod.bench.ablations import format_ablation_table, run_ablations
from efficientmod.cli import main
from efficientmod.models.ablations import ABLATIONS, FocalNetBlock, MBConvBlock, VANBlock, create_ablation

BASES = ["efficientmod_xxs", "efficientmod_s_conv"]


# -- parameter counts from the block equations (written independently of the model code) --
def linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def depthwise(channels: int, kernel: int, bias: bool = True) -> int:
    return channels * kernel * kernel + (channels if bias else 0)


def norm(channels: int) -> int:  # LayerNorm / BatchNorm: weight and bias
    return 2 * channels


def efficientmod_block(c: int, r: int, k: int) -> int:
    context = linear(c, c) + depthwise(c, k) + linear(c, c)
    return norm(c) + context + linear(c, r * c) + linear(r * c, c) + c


def van_block(c: int, r: int, k: int) -> int:
    attention = linear(c, c) + depthwise(c, 5) + depthwise(c, k) + linear(c, c) + linear(c, c)
    mlp = linear(c, r * c) + depthwise(r * c, 3) + linear(r * c, c)
    return norm(c) + attention + c + norm(c) + mlp + c


def focalnet_block(c: int, r: int, k: int) -> int:
    levels = (k - 1) // 2
    modulation = linear(c, 2 * c + levels + 1) + sum(depthwise(c, 2 * level + 3, bias=False) for level in range(levels))
    modulation += linear(c, c) + linear(c, c)  # h and the projection
    return norm(c) + modulation + c + norm(c) + linear(c, r * c) + linear(r * c, c) + c


def mbconv_block(c: int, r: int, k: int) -> int:
    hidden = r * c
    expand = linear(c, hidden, bias=False) + norm(hidden) if r > 1 else 0
    return expand + depthwise(hidden, k, bias=False) + norm(hidden) + linear(hidden, c, bias=False) + norm(c)


BLOCK_PARAMS = {"efficientmod": efficientmod_block, "van": van_block, "focalnet": focalnet_block,
                "mbconv": mbconv_block}


def attention_block(c: int, mlp_ratio: float, heads: int, min_head_dim: int) -> int:
    inner = heads * max(c // heads, min_head_dim)
    hidden = int(c * mlp_ratio)
    attention = norm(c) + linear(c, 3 * inner, bias=False) + linear(inner, c)
    return attention + norm(c) + linear(c, hidden) + linear(hidden, c)


def network_params(cfg, num_classes: int = 1000) -> int:
    dims = cfg.dims
    total = 3 * dims[0] * cfg.stem_kernel**2 + dims[0] + norm(dims[0])
    for i, c in enumerate(dims):
        if i:
            total += dims[i - 1] * c * 9 + c + norm(c)
        total += sum(BLOCK_PARAMS[cfg.block](c, r, cfg.context_kernel) for r in cfg.expansion_ratios[i])
        total += cfg.attention_depths[i] * attention_block(c, cfg.attention_mlp_ratios[i], cfg.attention_heads,
                                                           cfg.attention_min_head_dim)
    return total + norm(dims[-1]) + linear(dims[-1], num_classes)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_formula_reproduces_the_official_parameter_count():
    # 4.736 M: the official release's count (tests/reference/ holds its layout), so the formula itself is right
    assert network_params(efficientmod.model_info("efficientmod_xxs").cfg) == 4_736_264


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", list(ABLATIONS))
def test_parameter_count_follows_from_the_configuration(name, base):
    model = create_ablation(name, base)
    assert model.cfg.block == ABLATIONS[name].get("block", "efficientmod")
    assert count(model) == network_params(model.cfg)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_trains_a_step(name):
    torch.manual_seed(0)
    model = create_ablation(name, "efficientmod_xxs", num_classes=10, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    # the swapped block is really in the network, at every modulation position
    block_type = {"van": VANBlock, "focalnet": FocalNetBlock, "mbconv": MBConvBlock}.get(model.cfg.block)
    if block_type is not None:
        assert sum(isinstance(m, block_type) for m in model.modules()) == sum(model.cfg.depths)


def test_reshape_computes_exactly_what_repeat_computes():
    torch.manual_seed(0)
    repeat = efficientmod.create_model("efficientmod_xxs").eval()
    reshape = create_ablation("reshape", "efficientmod_xxs").eval()
    reshape.load_state_dict(repeat.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(repeat(x), reshape(x))


def test_kwargs_reach_the_config_and_the_defaults_keep_the_official_network():
    official = efficientmod.model_info("efficientmod_xs").cfg
    assert efficientmod.create_model("efficientmod_xs").cfg == official
    model = efficientmod.create_model("efficientmod_xs", context_kernel=5, attention_depths=(0, 0, 1, 1))
    assert model.cfg.context_kernel == 5 and model.cfg.attention_depths == (0, 0, 1, 1)
    assert model.stages[0].blocks[0].ctx.dwconv.kernel_size == (5, 5)
    assert len(model.stages[3].blocks) == len(official.expansion_ratios[3]) + 1


def test_mbconv_runs_its_depthwise_conv_on_the_expanded_width():
    block = create_ablation("mbconv", "efficientmod_xxs").stages[2].blocks[1]  # r = 6 at C = 128
    depthwise_conv = block.conv[2].conv
    assert depthwise_conv.groups == depthwise_conv.in_channels == 6 * 128


def test_focalnet_levels_follow_the_context_kernel():
    block = efficientmod.create_model("efficientmod_xxs", block="focalnet", context_kernel=9).stages[0].blocks[0]
    assert [level[0].kernel_size for level in block.ctx.levels] == [(3, 3), (5, 5), (7, 7), (9, 9)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(block="swin"), "unknown block"),
    (dict(kernel=5), "unknown EfficientMod option"),
    (dict(block="focalnet", context_kernel=4), "odd context_kernel"),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        efficientmod.create_model("efficientmod_xxs", **kwargs)


def test_ablations_of_another_family_are_refused():
    with pytest.raises(ValueError, match="EfficientMod family"):
        create_ablation("van", "efficientvit_m0")
    with pytest.raises(ValueError, match="unknown ablation"):
        create_ablation("swin")


def test_ablation_bench_runs_end_to_end_on_cpu():
    settings = BenchSettings(backends=("torch-cpu", "ort-cpu"), threads=1, runs=2, warmup=1, batch=0)
    report = run_ablations("efficientmod_xxs", ["efficientmod", "reshape", "mbconv"], settings, img_size=64)
    assert [r.error for r in report.rows] == [""] * 6
    assert all(0 < r.latency_ms_min <= r.latency_ms_median <= r.latency_ms_p90 for r in report.rows)
    assert [(r.latency_runs, r.warmup_runs, r.threads) for r in report.rows] == [(2, 1, 1)] * 6
    params = {r.model: r.params for r in report.rows}
    assert params["reshape"] == params["efficientmod"] != params["mbconv"]
    table = format_ablation_table(report, "efficientmod_xxs").splitlines()
    assert table[0].startswith("| ablation | changes | params M | GMACs | torch-cpu ms (median) | × ref | ort-cpu ms")
    reference_row = next(line for line in table if line.startswith("| efficientmod |"))
    assert reference_row.count("| 1.00 |") == 2  # the reference is 1.00× itself on both backends
    assert len([line for line in table if line.startswith("| ")]) == 1 + 3  # header + one row each
    fastest = format_ablation_table(report, "efficientmod_xxs", statistic="min")
    mbconv_min = report.row("mbconv", "torch-cpu").latency_ms_min
    assert f"| {mbconv_min:.2f} |" in fastest and "torch-cpu ms (min)" in fastest


def test_bench_cli_ablation_flag_writes_the_figures(tmp_path, capsys):
    path = tmp_path / "ablation.json"
    status = main(["bench", "--ablation", "efficientmod_xxs", "efficientmod", "kernel3", "--img-size", "64",
                   "--runs", "2", "--warmup", "1", "--batch", "0", "--threads", "1", "-b", "torch-cpu",
                   "--no-progress", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "| kernel3 | context_kernel=3 |" in out
    rows = json.loads(path.read_text())["rows"]
    assert [r["model"] for r in rows] == ["efficientmod", "kernel3"]
    assert main(["bench", "--ablation", "efficientmod_xxs", "no_such_ablation", "-b", "torch-cpu"]) == 2
    assert main(["bench", "--ablation", "--paper", "-b", "torch-cpu"]) == 2
    assert "--ablation measures the ablations only; drop --paper" in capsys.readouterr().err
    assert main(["bench", "--ablation", "van", "mbconv", "-b", "torch-cpu"]) == 2  # 'van' is not a BASE
    assert "--ablation efficientmod_xxs van mbconv" in capsys.readouterr().err


def test_ablation_candidates_start_with_the_reference_and_repeat_nothing():
    from efficientmod.bench.ablations import ablation_candidates

    candidates = ablation_candidates("efficientmod_xxs", ["van", "efficientmod", "van"], img_size=64)
    assert [c.label for c in candidates] == ["efficientmod", "van"]
    assert candidates[1].model.cfg.block == "van" and candidates[1].input_size == (3, 64, 64)
