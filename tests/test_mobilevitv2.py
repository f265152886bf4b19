"""MobileViTv2-specific behaviour: unfolding into patches, the separable attention's
properties, the reference's resize of odd maps.
(Exactness to timm for every variant and non-square inputs: ``test_family_parity.py``;
features, bad input, save/load and the rest of the shared interface: ``test_family_contract.py``.)"""
from __future__ import annotations

import torch
from test_family_parity import timm_and_ours

import efficientmod
from efficientmod.models.mobilevitv2 import SeparableSelfAttention, fold_patches, unfold_patches


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
