"""EfficientViT-specific behaviour: attention windows, relative-position biases, timm's
older checkpoint keys.
(Exactness to timm for every variant and non-square inputs: ``test_family_parity.py``;
features, bad input, save/load and the rest of the shared interface: ``test_family_contract.py``.)"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from test_family_parity import timm_and_ours

import efficientmod
from efficientmod.checkpoint import load_checkpoint, read_state_dict
from efficientmod.models.efficientvit import (
    CascadedGroupAttention,
    convert_official,
    convert_timm,
    is_official_layout,
    is_timm_layout,
    relative_offset_index,
)


def attention_windows(model) -> list[int]:
    return [block.attn.window for stage in model.stages for block in stage.blocks]


def test_windows_follow_the_construction_size():
    """7×7 windows, shrunk to the map where the map (at ``img_size``) is smaller: the
    stride-64 map of a 224² input is 4×4."""
    assert attention_windows(efficientmod.create_model("efficientvit_m0")) == [7, 7, 7, 4, 4, 4]
    assert attention_windows(efficientmod.create_model("efficientvit_m0", img_size=448)) == [7] * 6


def test_bias_index_is_timms():
    reference = timm.create_model("efficientvit_m0")
    for window, attention in ((7, reference.stages[0].blocks[0].mixer.m.attn),
                              (4, reference.stages[2].blocks[0].mixer.m.attn)):
        assert torch.equal(relative_offset_index(window), attention.attention_bias_idxs)


def test_bias_index_is_symmetric_in_offsets():
    index = relative_offset_index(3)
    assert torch.equal(index, index.T)
    assert index.diagonal().eq(0).all()  # a token to itself: offset (0, 0)
    assert index[0, 8] == 2 * 3 + 2  # corner to corner: offset (2, 2)


def test_other_img_size_matches_timm():
    reference, ours = timm_and_ours("efficientvit_m0", img_size=448)
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-8)


def test_older_timm_checkpoints_with_bias_index_load():
    """timm releases before 1.0 saved ``attention_bias_idxs``; it is dropped (recomputed)."""
    reference = timm.create_model("efficientvit_m0")
    state = dict(reference.state_dict())
    for name, module in reference.named_modules():
        if hasattr(module, "attention_bias_idxs"):
            state[f"{name}.attention_bias_idxs"] = module.attention_bias_idxs
    assert any(k.endswith("attention_bias_idxs") for k in state)
    assert not any(k.endswith("attention_bias_idxs") for k in convert_timm(state))
    load_checkpoint(efficientmod.create_model("efficientvit_m0"), state)  # strict


def test_cascade_feeds_each_head_the_previous_output():
    """Head j's input is its own channel split plus head j−1's output (the cascade)."""
    attention = CascadedGroupAttention(dim=32, key_dim=4, heads=4, window=3, query_kernels=(3, 3, 3, 3)).eval()
    head_inputs = []
    for qkv in attention.qkv:
        qkv.register_forward_hook(lambda module, args, out: head_inputs.append(args[0]))

    def inputs_of_heads(x):
        head_inputs.clear()
        with torch.no_grad():
            attention.attend(x)
        return list(head_inputs)

    x = torch.randn(1, 32, 3, 3)
    base = inputs_of_heads(x)
    last_changed, first_changed = x.clone(), x.clone()
    last_changed[:, 24:] += 1.0  # the last head's split only
    first_changed[:, :8] += 1.0  # the first head's split only
    after_last = inputs_of_heads(last_changed)
    for j in range(3):
        assert torch.equal(after_last[j], base[j])
    torch.testing.assert_close(after_last[3] - base[3], torch.ones_like(base[3]))
    after_first = inputs_of_heads(first_changed)
    assert all(not torch.equal(after_first[j], base[j]) for j in range(4))  # it reaches every head


def test_official_cream_layout_is_not_taken_for_timms():
    """Both name their attention ``mixer.m.attn``; only timm's sit under ``stages.i.blocks.j``."""
    official = read_state_dict(Path(__file__).parent / "reference" / "efficientvit_m0_official_layout.pth")
    timm_state = timm.create_model("efficientvit_m0").state_dict()
    assert is_official_layout(official) and not is_timm_layout(official)
    assert is_timm_layout(timm_state) and not is_official_layout(timm_state)
    converted = convert_official(official)
    assert set(converted) == set(efficientmod.create_model("efficientvit_m0").state_dict())
    assert not any(k.endswith("attention_bias_idxs") for k in converted)  # recomputed, not loaded
