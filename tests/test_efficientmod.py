"""EfficientMod: exactness to the official release, and what is particular to it (the interface
every family shares: ``test_family_contract.py``)."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import EFFICIENTMOD_VARIANTS, draw_reference_weights, reference_input

import efficientmod

OFFICIAL_PARAMS = {
    "efficientmod_xxs": 4_736_264,  # the official code's count (the paper rounds it to 4.7 M)
    "efficientmod_xs": 6_627_544,
    "efficientmod_s": 12_897_184,
    "efficientmod_s_conv": 12_872_336,
}


def official_model(variant: str, reference, seed: int = 0, **kwargs) -> torch.nn.Module:
    """Our model, float64, loaded through load_checkpoint with official-layout weights."""
    model = efficientmod.create_model(variant, **kwargs).double().eval()
    state = draw_reference_weights(reference(variant)["layout"], seed)
    efficientmod.load_checkpoint(model, state, ignore_head=kwargs.get("num_classes", 1000) != 1000)
    return model


@pytest.mark.parametrize("variant", EFFICIENTMOD_VARIANTS)
def test_reproduces_official_logits_and_pooled_features(variant, reference):
    ref = reference(variant)
    model = official_model(variant, reference, seed=ref["weight_seed"])
    x = reference_input(ref["input_shape"], ref["input_seed"])
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() < 1e-8
    assert (pooled - ref["pooled_features"]).abs().max().item() < 1e-8
    assert torch.equal(model(x), logits)


@pytest.mark.parametrize("variant", EFFICIENTMOD_VARIANTS)
def test_layout_and_parameter_count_match_the_official_release(variant, reference):
    model = efficientmod.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[variant]
    official_shapes = {tuple(shape) for _, shape in reference(variant)["layout"]}
    own_shapes = {tuple(t.shape) for t in model.state_dict().values()}
    assert own_shapes == official_shapes
    assert len(model.state_dict()) == len(reference(variant)["layout"])


def test_ten_class_head_replaces_the_classifier_and_keeps_the_trunk(reference):
    full = official_model("efficientmod_xxs", reference)
    with pytest.warns(UserWarning, match="classifier ignored"):
        small = official_model("efficientmod_xxs", reference, num_classes=10)
    x = reference_input((2, 3, 64, 64), 5)
    with torch.no_grad():
        pooled_full = full.forward_head(full.forward_features(x), pre_logits=True)
        pooled_small = small.forward_head(small.forward_features(x), pre_logits=True)
        logits = small(x)
    assert logits.shape == (2, 10)
    assert torch.equal(pooled_full, pooled_small)
    assert torch.allclose(logits, small.head(pooled_small))


def test_feature_maps_equal_the_network_stages(reference):
    model = official_model("efficientmod_s", reference)
    x = reference_input((1, 3, 64, 64), 2)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    assert torch.equal(final, model.forward_features(x))
    assert torch.equal(normed[0], final)
    assert not torch.equal(intermediates[-1], final)  # the raw stage output is before the norm
    assert [t.shape[1] for t in intermediates] == [32, 64, 144, 312]


def test_feature_width_and_one_drop_path_per_block_but_the_first():
    model = efficientmod.create_model("efficientmod_xxs", num_classes=0, drop_path_rate=0.1)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 256)  # no classifier: the pooled features
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert len(drop_paths) == sum(model.cfg.depths) + sum(model.cfg.attention_depths) - 1  # first is 0


def test_initialisation_follows_the_official_code():
    model = efficientmod.create_model("efficientmod_s")
    assert all(torch.all(b.layer_scale == 1e-4) for b in model.modules() if hasattr(b, "layer_scale"))
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    # timm's trunc_normal_(std=0.02) cuts at ±2 (absolute), so the law is N(0, 0.02²)
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(weights.mean().item()) < 1e-3
    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert all(torch.all(b == 0) for b in biases)


def test_training_step_runs_with_stochastic_depth():
    model = efficientmod.create_model("efficientmod_xxs", num_classes=5, drop_path_rate=0.2).train()
    plain = efficientmod.create_model("efficientmod_xxs", num_classes=5, drop_path_rate=0.0).train()
    plain.load_state_dict(model.state_dict())
    x, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])

    def forward(net: torch.nn.Module, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return net(x)

    def step(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
        net.zero_grad()
        torch.nn.functional.cross_entropy(forward(net, seed), targets).backward()
        return {name: p.grad for name, p in net.named_parameters()}

    # residual branches are dropped at random in training: the output depends on the draw
    with torch.no_grad():
        assert torch.equal(forward(model, 1), forward(model, 1))
        assert not torch.equal(forward(model, 1), forward(model, 2))
        assert torch.equal(forward(plain, 1), forward(plain, 2))  # without stochastic depth it does not
    # every parameter gets a finite gradient; without stochastic depth none is zero, with it only
    # those of branches dropped for the whole batch are, never the stem's, the head's or the first block's
    with_drops, without = step(model, 1), step(plain, 1)
    assert all(g is not None and torch.isfinite(g).all() for g in [*with_drops.values(), *without.values()])
    assert all(g.any() for g in without.values())
    zero = [name for name, g in with_drops.items() if not g.any()]
    assert zero and all(".blocks." in name and not name.startswith("stages.0.blocks.0.") for name in zero)


def test_pretrained_without_released_weights_asks_for_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint_path"):
        efficientmod.create_model("efficientmod_s", pretrained=True)


def test_registry_lists_every_variant_at_the_papers_resolution():
    assert set(EFFICIENTMOD_VARIANTS) <= set(efficientmod.list_models())
    assert efficientmod.list_models("efficientmod_s*") == ["efficientmod_s", "efficientmod_s_conv"]
    assert set(EFFICIENTMOD_VARIANTS) <= set(timm.list_models("efficientmod_*"))
    assert timm.create_model("efficientmod_xxs").pretrained_cfg["input_size"] == (3, 224, 224)
