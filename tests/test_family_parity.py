"""EfficientViT and MobileViTv2 compute exactly what timm's implementations compute.

For every variant: timm's model with random weights (BatchNorm statistics and affine
parameters, norms and attention biases perturbed so that no layer is an identity) is
loaded into ours through ``load_checkpoint`` (timm layout detected and converted); logits
must agree to 1e-8 in float64 and 1e-4 in float32, parameter counts must be equal, and
one SGD step in training mode must move both to the same weights and BN statistics.

``python tests/test_family_parity.py`` prints the measured differences for every variant.
"""
from __future__ import annotations

import time

import pytest
import timm
import torch
import torch.nn.functional as F

import efficientmod
from efficientmod.checkpoint import load_checkpoint
from efficientmod.models import efficientvit, mobilevitv2

# family: (timm key converter, the second test resolution, the training-step resolution).
# 160 pads EfficientViT's attention windows; 128 keeps MobileViTv2's maps at exact strides
# (224 makes its stride-32 map 7×7, resized to 8×8). The training step needs maps of at
# least 2×2 (batch-statistics BN over fewer values is too ill-conditioned to compare).
FAMILIES = {
    "efficientvit": (efficientvit.convert_timm, 160, 128),
    "mobilevitv2": (mobilevitv2.convert_timm, 128, 64),
}
VARIANTS = [(family, name) for family in FAMILIES for name in efficientmod.list_models(family=family)]
# the two whole-network comparisons: the smallest variant of each family in the fast tier, every one in the full suite
SWEEP = [pytest.param(family, name, id=name, marks=pytest.mark.slow if index else ())
         for family in FAMILIES for index, name in enumerate(efficientmod.list_models(family=family))]


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every norm and attention bias non-trivial (timm initialises many BN scales and
    all attention biases to zero, running statistics to 0 / 1)."""
    generator = torch.Generator().manual_seed(seed)

    def noise(tensor, scale):
        return scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)

    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(noise(buffer, 0.1))
        elif name.endswith("running_var"):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype))
    for name, param in model.named_parameters():
        module_name, kind = name.rsplit(".", 1)
        is_norm = isinstance(model.get_submodule(module_name), (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d,
                                                                  torch.nn.GroupNorm))
        if is_norm:
            param.copy_((1.0 if kind == "weight" else 0.0) + noise(param, 0.2))
        elif kind == "attention_biases":
            param.copy_(noise(param, 1.0))
    return model


def timm_and_ours(name: str, dtype=torch.float64, seed: int = 0, **kwargs):
    """timm's ``name`` with random perturbed weights, and ours loaded from its state dict
    (``kwargs`` go to both constructors)."""
    torch.manual_seed(seed)
    reference = perturb_(timm.create_model(name, **kwargs), seed).to(dtype)
    ours = efficientmod.create_model(name, **kwargs).to(dtype)
    load_checkpoint(ours, reference.state_dict())
    return reference, ours


@torch.no_grad()
def max_logit_difference(reference, ours, size: int, dtype, batch: int = 2) -> float:
    reference.eval(), ours.eval()
    x = torch.randn(batch, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(size))
    return (reference(x) - ours(x)).abs().max().item()


@pytest.mark.parametrize("family,name", SWEEP)
def test_logits_equal_timm(family, name):
    reference, ours = timm_and_ours(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    other_size = FAMILIES[family][1]
    assert max_logit_difference(reference, ours, 224, torch.float64, batch=1) < 1e-8
    assert max_logit_difference(reference, ours, other_size, torch.float64) < 1e-8
    reference, ours = reference.float(), ours.float()
    assert max_logit_difference(reference, ours, other_size, torch.float32) < 1e-4


@pytest.mark.parametrize("family,name", SWEEP)
def test_one_sgd_step_equals_timm(family, name):
    """Training mode (BN batch statistics, running-stat updates, backward through the
    cascaded / separable attention): one SGD step leaves both models in the same state."""
    reference, ours = timm_and_ours(name)
    converter, _, size = FAMILIES[family]
    x = torch.randn(4, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 7, 0, 999])
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    for model in (reference, ours):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    converted = converter(reference.state_dict())
    state = ours.state_dict()
    assert set(converted) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(value, converted[key], rtol=0, atol=1e-9, msg=key)
    # Some shifts have an exactly zero gradient (e.g. EfficientViT's last BN bias, removed
    # again by the head's batch-statistics BN), but nearly all tensors must have moved.
    unchanged = [k for k, v in state.items() if torch.equal(v, before[k])]
    assert len(unchanged) < 0.02 * len(state), f"the step left {unchanged[:5]} untouched"


@pytest.mark.parametrize("name", [name for _, name in VARIANTS])
def test_pretrained_cfg_matches_timm(name):
    """Input size, normalisation, interpolation and crop of ours are timm's."""
    ours = efficientmod.models.model_info(name).pretrained_cfg()
    theirs = timm.get_pretrained_cfg(name).to_dict()
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct"):
        assert ours[key] == theirs[key], key


def test_timm_names_do_not_clash():
    assert type(timm.create_model("efficientvit_m0")).__module__.startswith("timm.")
    assert isinstance(timm.create_model("em_efficientvit_m0"), efficientvit.EfficientViT)
    assert isinstance(timm.create_model("em_mobilevitv2_050"), mobilevitv2.MobileViTv2)
    assert isinstance(efficientmod.create_model("mobilevitv2_050"), mobilevitv2.MobileViTv2)


def main() -> None:
    """Print the max |Δ logits| of every variant (batch 2, float64 and float32)."""
    torch.set_num_threads(1)
    print("| model | float64 224² | float64 other | float32 224² | float32 other |")
    print("|---|---|---|---|---|")
    for family, name in VARIANTS:
        start = time.perf_counter()
        other = FAMILIES[family][1]
        reference, ours = timm_and_ours(name)
        row = [max_logit_difference(reference, ours, s, torch.float64) for s in (224, other)]
        reference, ours = reference.float(), ours.float()
        row += [max_logit_difference(reference, ours, s, torch.float32) for s in (224, other)]
        cells = " | ".join(f"{d:.1e}" for d in row)
        print(f"| {name} (other = {other}²) | {cells} |  ({time.perf_counter() - start:.1f} s)")


# -- the library interface, the same for both families ---------------------------------------
# (name, input side, the stage strides the architecture has)
INTERFACE_CASES = [("efficientvit_m1", 256, [16, 32, 64]), ("mobilevitv2_050", 128, [2, 4, 8, 16, 32])]


@pytest.mark.parametrize("name,size,strides", INTERFACE_CASES)
def test_features_only_through_both_registries(name, size, strides):
    info = efficientmod.models.model_info(name)
    x = torch.randn(2, 3, size, size)
    for model in (efficientmod.create_model(name, features_only=True),
                  timm.create_model(info.timm_name, features_only=True)):
        model.eval()
        channels = model.feature_info.channels()
        assert model.feature_info.reduction() == strides
        with torch.no_grad():
            shapes = [tuple(f.shape) for f in model(x)]
        assert shapes == [(2, c, size // s, size // s) for c, s in zip(channels, strides, strict=True)]


@pytest.mark.parametrize("name,size,strides", INTERFACE_CASES)
def test_intermediates_equal_timm(name, size, strides):
    reference, ours = timm_and_ours(name)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        theirs = reference.eval().forward_intermediates(x, intermediates_only=True)
        mine = ours.eval().forward_intermediates(x, intermediates_only=True)
    assert len(mine) == len(theirs) == len(strides)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,height,width", [("efficientvit_m2", 160, 256), ("mobilevitv2_075", 128, 192)])
def test_non_square_input_matches_timm(name, height, width):
    reference, ours = timm_and_ours(name)
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name,size,strides", INTERFACE_CASES)
def test_features_only_prunes_unused_stages(name, size, strides):
    model = efficientmod.create_model(name, features_only=True, out_indices=(1,)).eval()
    assert [child for child in model if child.startswith("stages_")] == ["stages_0", "stages_1"]
    with torch.no_grad():
        (feature,) = model(torch.randn(1, 3, size, size))
    assert feature.shape[-1] == size // strides[1]


@pytest.mark.parametrize("name,shape,sides", [
    ("efficientvit_m0", (1, 1, 224, 224), "positive multiples of 16"),
    ("efficientvit_m0", (1, 3, 200, 224), "positive multiples of 16"),
    ("efficientvit_m0", (3, 224, 224), "positive multiples of 16"),
    ("mobilevitv2_050", (1, 3, 0, 256), r"positive \("),  # any positive size runs, as in ml-cvnets
    ("mobilevitv2_050", (1, 4, 256, 256), r"positive \("),
])
def test_bad_input_names_the_expected_shape(name, shape, sides):
    model = efficientmod.create_model(name).eval()
    with pytest.raises(ValueError, match=rf"N x 3 x H x W with H and W {sides}"):
        model(torch.zeros(shape))


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050"])
def test_in_chans_and_num_classes(name):
    model = efficientmod.create_model(name, in_chans=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050"])
def test_save_pretrained_round_trip(name, tmp_path):
    model = perturb_(efficientmod.create_model(name, num_classes=5)).eval()
    model.save_pretrained(tmp_path, class_names=list("abcde"))
    restored = efficientmod.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    assert restored.class_names == list("abcde")


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050"])
def test_deploy_folds_every_batchnorm(name):
    from efficientmod.fuse import deploy

    model = perturb_(efficientmod.create_model(name)).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
        torch.testing.assert_close(deployed(x), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,size", [("efficientvit_m0", 160), ("mobilevitv2_050", 224)])
def test_onnx_export_matches(name, size, tmp_path):
    """Window padding (EfficientViT at 160²) and the odd-map resize (MobileViTv2 at 224²)
    survive export: ONNX Runtime gives our logits at batch 1 and 2."""
    import onnxruntime

    from efficientmod.export import export_onnx

    model = perturb_(efficientmod.create_model(name)).eval()
    path = export_onnx(model, tmp_path / "model.onnx", input_size=(3, size, size))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        x = torch.randn(batch, 3, size, size)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050"])
def test_grad_checkpointing_gives_the_same_gradients(name, monkeypatch):
    model = perturb_(efficientmod.create_model(name)).double().train()
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


if __name__ == "__main__":
    main()
