"""MobileViTv2-specific behaviour: unfolding into patches, the separable attention's
properties, the reference's resize of odd maps and width rounding, ml-cvnets' layout.
(Exactness to timm for every variant and non-square inputs: ``test_family_parity.py``;
features, bad input, save/load and the rest of the shared interface: ``test_family_contract.py``.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from test_family_parity import timm_and_ours

import efficientmod
from efficientmod.checkpoint import read_state_dict
from efficientmod.models.mobilevitv2 import (
    MobileViTv2,
    MobileViTv2Cfg,
    SeparableSelfAttention,
    convert_official,
    fold_patches,
    is_official_layout,
    is_timm_layout,
    unfold_patches,
)


def test_fold_inverts_unfold_and_groups_pixels_by_position():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = unfold_patches(x, 2)
    assert patches.shape == (2, 3, 4, 6)  # P = 2×2 positions, N = 2×3 patches
    assert torch.equal(fold_patches(patches, 2, 4, 6), x)
    # position 0 of every patch: the top-left pixel of each 2×2 patch
    assert torch.equal(patches[:, :, 0], x[:, :, 0::2, 0::2].flatten(2))


def test_separable_attention_mixes_patches_globally_and_in_order():
    """Permuting the N patches permutes the output the same way (attention over a set);
    every output token depends on every input token (one global context vector)."""
    attention = SeparableSelfAttention(8).eval()
    x = torch.randn(1, 8, 4, 10, requires_grad=True)
    order = torch.randperm(10)
    out = attention(x)
    torch.testing.assert_close(attention(x[..., order]), out[..., order])
    out[:, :, 0, 0].sum().backward()  # pixel position 0 of patch 0
    assert (x.grad[:, :, 0].abs().sum(dim=(0, 1)) > 0).all()  # depends on every patch
    assert torch.equal(x.grad[:, :, 1:], torch.zeros_like(x.grad[:, :, 1:]))  # not on other positions


def test_224_input_resizes_the_odd_stride32_map_like_the_reference():
    reference, ours = timm_and_ours("mobilevitv2_050")
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        features = ours.eval().forward_features(x)
        assert features.shape[-2:] == (8, 8)  # 7×7 resized to whole 2×2 patches
        torch.testing.assert_close(features, reference.eval().forward_features(x), rtol=0, atol=1e-10)


def test_widths_scale_with_the_multiplier():
    for name, expected in (("mobilevitv2_050", (32, 64, 128, 192, 256)),
                           ("mobilevitv2_175", (112, 224, 448, 672, 896))):
        model = efficientmod.create_model(name)
        assert tuple(info["num_chs"] for info in model.feature_info) == expected


def test_custom_widths_round_as_the_reference():
    """ml-cvnets rounds α·w with make_divisible (never 10 % below) and bounds the stem to
    [16, 64]: α = 0.6 gives [24, 48, 80, 152, 232, 304] (int(α·w) would be 19, 38, 76 ...)."""
    cfg = MobileViTv2Cfg(width_multiplier=0.6)
    assert (cfg.stem_width, *cfg.widths) == (24, 48, 80, 152, 232, 304)
    assert [cfg.attention_width(i) for i in (2, 3, 4)] == [80, 112, 152]
    model = MobileViTv2(cfg, num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 304)


@pytest.mark.parametrize("alpha", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
def test_released_widths_are_the_plain_products(alpha):
    cfg = MobileViTv2Cfg(width_multiplier=alpha)
    assert (cfg.stem_width, *cfg.widths) == (int(32 * alpha), *(int(w * alpha) for w in cfg.base_widths))
    assert [cfg.attention_width(i) for i in (2, 3, 4)] == [int(w * alpha / 2) for w in (256, 384, 512)]


@pytest.mark.parametrize("size,sides", [(240, [120, 60, 30, 16, 8]), (200, [100, 50, 26, 14, 8]),
                                        (33, [17, 9, 6, 4, 2])])
def test_any_input_size_runs_as_in_the_reference(size, sides):
    """Not a multiple of 32: strided convs round up, and a MobileViTv2 block first resizes an
    odd map to even sides (15 → 16 at 240², 25 → 26 at 200²), as ml-cvnets does."""
    model = efficientmod.create_model("mobilevitv2_050").eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, size, size), intermediates_only=True)
        assert [f.shape[-1] for f in features] == sides
        assert model(torch.randn(2, 3, size, size + 8)).shape == (2, 1000)


def test_official_ml_cvnets_layout_is_not_taken_for_timms():
    official = read_state_dict(Path(__file__).parent / "reference" / "mobilevitv2_050_official_layout.pt")
    timm_state = timm.create_model("mobilevitv2_050").state_dict()
    assert is_official_layout(official) and not is_timm_layout(official)
    assert is_timm_layout(timm_state) and not is_official_layout(timm_state)
    assert set(convert_official(official)) == set(efficientmod.create_model("mobilevitv2_050").state_dict())
