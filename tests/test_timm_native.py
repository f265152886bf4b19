"""timm conventions, torch.fx, TorchScript and torch.export for every registered variant.

timm's own model test-suite runs on all our names in CI (``.ci/run``, see
``tests/timm_suite/``); these tests pin what it does not: the FX feature maps equal the
``features_only`` maps, scripting and exporting keep the outputs, for plain and deployed
models. One variant per family runs in the fast tier, every variant in the full suite.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor as torchvision_feature_extractor

import efficientmod
from efficientmod.models import model_info

SMALLEST = ("efficientmod_xxs", "efficientvit_m0", "mobilevitv2_050")
ALL_VARIANTS = [pytest.param(name, marks=() if name in SMALLEST else pytest.mark.slow)
                for name in efficientmod.list_models()]


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return efficientmod.create_model(name, **kwargs).eval()


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
def test_batch_of_zero_images(name):
    model = seeded(name)
    with torch.no_grad():
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 1000)


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
