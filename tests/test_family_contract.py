"""The contract every model family keeps, written once and run on every family.

What a user (or timm, torch.fx, TorchScript, torch.export, a dense head) may rely on for any
registered name: bad input is refused with the expected shape, feature maps have the family's
strides through both registries, the timm interface (``forward_features`` /
``forward_head`` / ``forward_intermediates``, ``features_only``, ``num_classes=0``,
``global_pool``, ``in_chans``, ``reset_classifier``), determinism across batches and dtypes,
placement, deployment at odd sizes, scripting, tracing, exporting and saving. A new family adds one row to
``FAMILY_CONTRACT`` and passes this file. (timm's own model test-suite also runs on every
name in CI: ``.ci/timm-suite``.)

Tests over every variant run the smallest variant of each family in the fast tier and the
others under ``slow``; tests of the shared code path run the smallest variant of each family.
What is particular to a family (exactness to the official release or to timm) stays in the
family's own file; ``efficientmod.deploy``'s folding is checked in ``test_deploy.py``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import timm
import torch
from conftest import perturb_, smallest_fast
from torchvision.models.feature_extraction import create_feature_extractor as torchvision_feature_extractor

import efficientmod
from efficientmod.checkpoint import load_checkpoint
from efficientmod.models import model_info


@dataclass(frozen=True)
class FamilyContract:
    """What a family's architecture promises: the stride of each stage's map, the multiple
    the input sides must be, a non-square input size whose maps are whole at every stride,
    and one whose maps the network pads or resizes."""

    strides: tuple[int, ...]
    input_multiple: int
    size: tuple[int, int]
    odd_size: tuple[int, int]


FAMILY_CONTRACT = {
    "efficientmod": FamilyContract(strides=(4, 8, 16, 32), input_multiple=32, size=(64, 96), odd_size=(96, 160)),
    "efficientvit": FamilyContract(strides=(16, 32, 64), input_multiple=16, size=(128, 192), odd_size=(160, 80)),
    # any positive size runs, as in ml-cvnets (odd maps are resized for the unfolding)
    "mobilevitv2": FamilyContract(strides=(2, 4, 8, 16, 32), input_multiple=1, size=(128, 192), odd_size=(96, 160)),
}
ALL_VARIANTS = smallest_fast(efficientmod.list_models())  # the registry lists each family smallest first
SMALLEST = [efficientmod.list_models(family=family)[0] for family in FAMILY_CONTRACT]


def contract(name: str) -> FamilyContract:
    return FAMILY_CONTRACT[model_info(name).family]


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return efficientmod.create_model(name, **kwargs).eval()


def perturbed(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``name`` with seeded weights whose norms and attention biases are non-trivial."""
    torch.manual_seed(seed)
    return perturb_(efficientmod.create_model(name, **kwargs), seed).eval()


def test_every_registered_family_states_its_contract():
    assert {model_info(name).family for name in efficientmod.list_models()} == set(FAMILY_CONTRACT)


# -- the registry ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALLEST)
def test_unknown_name_suggests_the_closest(name):
    with pytest.raises(ValueError, match=rf"Unknown model '{name}x'. Did you mean: {name}\b"):
        efficientmod.create_model(name + "x")


@pytest.mark.parametrize("family", FAMILY_CONTRACT)
def test_every_variant_plugs_into_timm(family):
    names = efficientmod.list_models(family=family)
    assert names
    assert {model_info(name).timm_name for name in names} <= set(timm.list_models())
    info = model_info(names[0])
    model = timm.create_model(info.timm_name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *contract(names[0]).size)).shape == (1, 3)
    assert model.pretrained_cfg["input_size"] == info.pretrained_cfg()["input_size"]


@pytest.mark.parametrize("name", efficientmod.list_models())
def test_pretrained_cfg_is_complete_and_true(name):
    info = model_info(name)
    cfg = timm.get_pretrained_cfg(info.timm_name).to_dict()
    for key in ("num_classes", "input_size", "pool_size", "crop_pct", "mean", "std", "first_conv", "classifier",
                "license", "paper_ids", "paper_name"):
        assert cfg.get(key) not in (None, "", ()), key
    with torch.device("meta"):
        model = timm.create_model(info.timm_name)
        features = model.forward_features(torch.empty(1, *cfg["input_size"]))
    assert tuple(features.shape[2:]) == cfg["pool_size"]
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    assert state[f"{cfg['classifier']}.weight"].shape[0] == cfg["num_classes"]


# -- input ----------------------------------------------------------------------------------
def bad_shapes(multiple: int) -> list[tuple[int, ...]]:
    side = 2 * max(multiple, 16)
    off_multiple = [(1, 3, side, multiple + multiple // 2)] if multiple > 1 else []
    return [(3, side, side), (1, 1, side, side), (1, 4, side, side), *off_multiple, (1, 3, 0, side)]


@pytest.mark.parametrize("name", SMALLEST)
def test_bad_input_states_the_expected_shape(name):
    multiple = contract(name).input_multiple
    model = efficientmod.create_model(name).eval()
    assert model.input_multiple == multiple
    sides = f"positive multiples of {multiple}" if multiple > 1 else r"positive \("
    for shape in bad_shapes(multiple):
        with pytest.raises(ValueError, match=rf"N x 3 x H x W with H and W {sides}"):
            model(torch.zeros(shape))


@pytest.mark.parametrize("name", SMALLEST)
def test_batch_of_zero_images(name):
    model = seeded(name)
    with torch.no_grad():
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 1000)


@pytest.mark.parametrize("name", SMALLEST)
def test_deterministic_batch_independent_and_agree_across_dtypes(name):
    """A non-square batch of 3: the same output twice, each image's logits those it gets
    alone, float32 within 1e-4 of float64, and other weights give other logits."""
    model64 = perturbed(name).double()
    model32 = copy.deepcopy(model64).float()
    x = torch.randn(3, 3, *contract(name).size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = model64(x), model64(x)
        c = model32(x.float())
        single = model64(x[1:2])
        other_seed = perturbed(name, seed=8).double()(x)
    assert a.shape == (3, 1000)
    assert (a[0] - a[1]).abs().max().item() > 1e-5  # a model deaf to its input would prove nothing here
    assert torch.equal(a, b)
    assert (a - c.double()).abs().max().item() < 1e-4
    assert (single - a[1:2]).abs().max().item() < 1e-10  # batch-independent
    assert (other_seed - a).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", SMALLEST)
def test_deployed_model_keeps_the_logits_at_an_odd_size(name):
    """``efficientmod.deploy`` on maps the network pads or resizes (EfficientViT's windows,
    MobileViTv2's patches, EfficientMod's odd final map); ``test_deploy.py`` checks every
    variant's folding at 64²."""
    model = perturbed(name)
    x = torch.randn(2, 3, *contract(name).odd_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
        deployed = efficientmod.deploy(copy.deepcopy(model))(x)
    assert (expected[0] - expected[1]).abs().max().item() > 1e-5  # the logits depend on the image
    torch.testing.assert_close(deployed, expected, rtol=0, atol=1e-4)


# -- feature maps ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_feature_maps_have_the_family_strides_through_both_registries(name):
    strides, (height, width) = list(contract(name).strides), contract(name).size
    x = torch.randn(2, 3, height, width)
    for model in (efficientmod.create_model(name, features_only=True),
                  timm.create_model(model_info(name).timm_name, features_only=True)):
        model.eval()
        channels = model.feature_info.channels()
        assert model.feature_info.reduction() == strides
        with torch.no_grad():
            shapes = [tuple(f.shape) for f in model(x)]
        assert shapes == [(2, c, height // s, width // s) for c, s in zip(channels, strides, strict=True)]
    last = len(strides) - 1
    subset = efficientmod.create_model(name, features_only=True, out_indices=(1, last)).eval()
    with torch.no_grad():
        assert [f.shape[2:] for f in subset(x)] == [(height // s, width // s) for s in (strides[1], strides[last])]


@pytest.mark.parametrize("name", SMALLEST)
def test_features_only_prunes_unused_stages(name):
    strides, size = contract(name).strides, contract(name).size
    model = efficientmod.create_model(name, features_only=True, out_indices=(1,)).eval()
    assert [child for child in model if child.startswith("stages_")] == ["stages_0", "stages_1"]
    with torch.no_grad():
        (feature,) = model(torch.randn(1, 3, *size))
    assert feature.shape[-2:] == (size[0] // strides[1], size[1] // strides[1])


@pytest.mark.parametrize("name", SMALLEST)
def test_intermediates_are_the_stage_maps(name):
    """``forward_intermediates``: the final map is ``forward_features``', every stage's map
    is the ``features_only`` map, ``norm=True`` gives the last one after the final norm."""
    from efficientmod.models.registry import feature_wrapper

    model = perturbed(name)
    features_only = feature_wrapper(copy.deepcopy(model), model_info(name).feature_out_indices).eval()  # same weights
    x = torch.randn(1, 3, *contract(name).size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        early = model.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
        maps = features_only(x)
        assert torch.equal(final, model.forward_features(x))
    assert len(intermediates) == len(model.stages) == len(contract(name).strides)
    assert torch.equal(normed[0], final)
    kept = model_info(name).feature_out_indices
    assert len(maps) == len(kept)
    for index, feature in zip(kept, maps, strict=True):
        assert torch.equal(intermediates[index], feature), index
    assert len(early) == 2 and all(torch.equal(a, b) for a, b in zip(early, intermediates[-2:], strict=True))


# -- the classifier -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALLEST)
def test_in_chans_num_classes_and_drop_path_rate(name):
    x = torch.randn(2, 1, *contract(name).size)
    model = efficientmod.create_model(name, in_chans=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    without_head = efficientmod.create_model(name, num_classes=0, in_chans=1, drop_path_rate=0.1).eval()
    with torch.no_grad():
        assert without_head(x).shape == (2, without_head.num_features)  # no classifier: pooled features
    drop_paths = [m.drop_prob for m in without_head.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and drop_paths == sorted(drop_paths) and drop_paths[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("name", SMALLEST)
def test_a_checkpoint_with_another_class_count_keeps_the_trunk(name):
    full = perturbed(name)
    small = efficientmod.create_model(name, num_classes=10).eval()
    with pytest.warns(UserWarning, match="classifier ignored"):
        load_checkpoint(small, full.state_dict(), ignore_head=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled_full = full.forward_head(full.forward_features(x), pre_logits=True)
        pooled_small = small.forward_head(small.forward_features(x), pre_logits=True)
        logits = small(x)
        assert torch.allclose(logits, small.head(pooled_small))
    assert logits.shape == (2, 10)
    assert torch.equal(pooled_full, pooled_small)


@pytest.mark.parametrize("name", SMALLEST)
def test_global_pool_at_creation_and_in_reset_classifier(name):
    x = torch.randn(2, 3, 64, 64)
    model = seeded(name)
    with torch.no_grad():
        features = model.forward_features(x)
        unpooled = efficientmod.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape
        model.reset_classifier(0, "max")
        torch.testing.assert_close(model(x), features.amax(dim=(2, 3)))
        model.reset_classifier(5)  # keeps the max pooling
        assert model.global_pool_type == "max" and model(x).shape == (2, 5)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        efficientmod.create_model(name, global_pool="")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        efficientmod.create_model(name, global_pool="catavgmax")  # would double the feature width


@pytest.mark.parametrize("name", SMALLEST)
def test_factory_placement_and_a_new_classifier_follow_the_model(name):
    info = model_info(name)
    model = timm.create_model(info.timm_name, device="meta", dtype=torch.float64)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model.eval().reset_classifier(3)
    assert {(p.device.type, p.dtype) for p in model.get_classifier().parameters()} == {("meta", torch.float64)}
    assert not any(m.training for m in model.modules())
    with pytest.raises(TypeError):  # an unknown argument is not silently ignored
        timm.create_model(info.timm_name, not_a_model_arg=1)


# -- training and saving ----------------------------------------------------------------------
@pytest.mark.parametrize("name", SMALLEST)
def test_grad_checkpointing_gives_the_same_gradients(name, monkeypatch):
    model = perturbed(name).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    checkpoint, checkpointed = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(function, *args, **kwargs):
        checkpointed.append(function)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append(next(model.stem.parameters()).grad.clone())  # the first layer's
    assert checkpointed == list(model.stages)  # only the second pass, every stage once
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SMALLEST)
def test_save_pretrained_round_trip(name, tmp_path):
    model = perturbed(name, num_classes=5)
    model.save_pretrained(tmp_path, class_names=list("abcde"))
    restored = efficientmod.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    assert restored.class_names == list("abcde")


# -- graph capture: torch.fx, TorchScript, torch.export -----------------------------------------
@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_fx_feature_extractors_give_the_features_only_maps(name):
    model = seeded(name)
    features_only = seeded(name, features_only=True)
    x = torch.randn(2, 3, 64, 64)
    stages = [f"stages.{i}" for i in model_info(name).feature_out_indices]
    with torch.no_grad():
        expected = features_only(x)
        for extractor in (timm.models.create_feature_extractor, torchvision_feature_extractor):
            maps = extractor(model, return_nodes=stages)(x)
            assert len(maps) == len(expected)
            for stage, reference in zip(stages, expected, strict=True):
                assert torch.equal(maps[stage], reference), stage  # NCHW, as features_only


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_torchscript_plain_traced_and_deployed(name):
    model = seeded(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-5, atol=1e-5)
        traced_then_scripted = torch.jit.script(torch.fx.symbolic_trace(model))
        torch.testing.assert_close(traced_then_scripted(x), model(x), rtol=1e-5, atol=1e-5)
        deployed = efficientmod.deploy(model)
        torch.testing.assert_close(torch.jit.script(deployed)(x), deployed(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_torch_export(name):
    model = seeded(name)
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)
