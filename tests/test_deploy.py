"""efficientmod.deploy: same outputs, fewer operations, for every variant of every family."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import efficientmod
from efficientmod.fuse import is_deployed
from efficientmod.models.efficientmod import AttentionBlock, FusedAttentionBlock, FusedModulationBlock, ModulationBlock

ALL_MODELS = efficientmod.list_models()
TOLERANCE = 1e-4  # the bound, float32
INPUT = (2, 3, 64, 64)


FLOAT32_RELATIVE = 5e-4  # float32 difference allowed, relative to the largest logit
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every parameter and BatchNorm statistic at random (fan-in scaled matrices,
    norm weights near 1 - every norm layer, found by type: BatchNorms named ``bn`` too -
    other vectors - biases, layer scales, attention biases - of size 0.1; running variances
    in [0.5, 1.5]), so no fold is trivially exact and the outputs depend on the image."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for kind, param in module.named_parameters(recurse=False):
            r = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(r / math.sqrt(param[0].numel()))
            elif isinstance(module, NORMS) and kind == "weight":
                param.copy_(1 + 0.1 * r)
            else:
                param.copy_(0.1 * r)
    for name, buffer in model.named_buffers():
        if name.endswith("running_var"):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
        elif name.endswith("running_mean"):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
    return model


def random_model(name: str, scale_head: bool = True, **kwargs) -> nn.Module:
    """A model with :func:`randomize_weights`, its classifier scaled (``scale_head``) so that
    the logits of a random image are of order 1 (random EfficientViTs otherwise reach ~1e3,
    where float32 rounding alone exceeds an absolute tolerance)."""
    model = randomize_weights(efficientmod.create_model(name, **kwargs)).eval()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if scale_head and isinstance(head, nn.Linear):
        with torch.no_grad():
            scale = model(torch.randn(1, model.in_chans, 64, 64, generator=torch.Generator().manual_seed(2)))
            head.weight.div_(scale.abs().max() / 3)
            head.bias.div_(scale.abs().max() / 3)
    return model


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deployed_outputs_match_and_norms_are_folded(name):
    model = random_model(name)
    deployed = efficientmod.deploy(copy.deepcopy(model))
    x = torch.randn(*INPUT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    assert reference.abs().max() > 0.1  # a model whose outputs vanish would prove nothing
    assert (reference[0] - reference[1]).abs().max() > 0.1  # nor one that ignores the image
    # float32: relative to the logits (random EfficientViTs carry activations of ~1e3 inside); the
    # bound leaves room for float32 rounding on every CPU (a random EfficientViT-M4 differs from its
    # own float64 run by up to 4e-4 on an AMD EPYC's AVX-512 kernels); the exactness is the float64 check
    assert max_diff(model, deployed, x) <= FLOAT32_RELATIVE * reference.abs().max().item()
    # the rewrite itself is exact: in float64 only rounding of order 1e-15 is left
    model64 = model.double()
    deployed64 = efficientmod.deploy(copy.deepcopy(model64))  # folded in float64
    x64 = x.double()
    with torch.no_grad():
        exact = model64(x64)
    assert max_diff(model64, deployed64, x64) <= 1e-12 * exact.abs().max().item()
    leftovers = [type(m).__name__ for m in deployed.modules()
                 if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, ModulationBlock, AttentionBlock))
                 or callable(getattr(m, "fuse", None))]
    assert leftovers == []
    assert count_modules(deployed) < count_modules(model)


def count_modules(model: nn.Module) -> int:
    return sum(1 for _ in model.modules())


@pytest.mark.parametrize("name", ["efficientmod_xxs", "efficientvit_m0", "mobilevitv2_050"])
def test_deploy_is_in_place_and_idempotent(name):
    model = random_model(name).train()
    assert efficientmod.deploy(model) is model
    assert is_deployed(model) and not model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    structure = repr(model)
    assert efficientmod.deploy(model) is model
    assert repr(model) == structure
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_efficientmod_block_folds_layer_scale_and_feeds_its_dwconv_a_dense_map():
    model = random_model("efficientmod_xxs")
    block = model.stages[0].blocks[1]  # expansion ratio 6
    fused = FusedModulationBlock(copy.deepcopy(block))
    assert not any("layer_scale" in name for name, _ in fused.named_parameters())
    x = torch.randn(2, 8, 8, block.proj.out_features)
    assert max_diff(block, fused, x) <= 1e-5
    # f is not stacked with v: a strided f would be copied by the convolution first (an extra kernel a GPU pays)
    seen = []
    fused.dwconv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        fused(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_attention_block_folds_the_softmax_scale_and_matches_in_export_form(monkeypatch):
    model = random_model("efficientmod_xxs")
    block = model.stages[2].blocks[-1]
    assert isinstance(block, AttentionBlock)
    fused = FusedAttentionBlock(copy.deepcopy(block))
    x = torch.randn(2, 4, 4, block.norm1.normalized_shape[0])
    assert max_diff(block, fused, x) <= 1e-5
    # the explicit matmul-softmax form written to ONNX computes the same
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert max_diff(block, fused, x) <= 1e-5


def test_channels_last_layout_keeps_outputs():
    model = random_model("efficientvit_m0")
    deployed = efficientmod.deploy(copy.deepcopy(model), channels_last=True)
    conv = next(m for m in deployed.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(*INPUT, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        scale = model(x).abs().max().item()
    assert max_diff(model, deployed, x) <= TOLERANCE * scale


def test_features_only_model_deploys():
    model = random_model("efficientmod_xxs", features_only=True)
    deployed = efficientmod.deploy(copy.deepcopy(model))
    x = torch.randn(*INPUT)
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
    assert len(expected) == len(actual) == len(model.feature_info.channels()) == 4  # a lost map would pass zip
    for a, b in zip(expected, actual, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (deployment's GPU path)")
def test_gpu_deploy_bf16_channels_last_matches_float32():
    model = random_model("efficientmod_xxs").cuda()
    deployed = efficientmod.deploy(copy.deepcopy(model)).to(torch.bfloat16)
    convs = [m for m in deployed.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(*INPUT, device="cuda")
    with torch.no_grad():
        expected = model(x)
        actual = deployed(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
    assert (expected - actual).abs().max().item() <= 0.05 * expected.abs().max().item()


def test_efficientvit_attention_caches_biases_and_folds_the_token_interaction_residual():
    from efficientmod.models.efficientvit import FusedCascadedGroupAttention, FusedInteractionFFN

    model = random_model("efficientvit_m0")
    block = model.stages[0].blocks[0]
    dim = block.attn.proj.conv.out_channels
    x = torch.randn(2, dim, 10, 9)  # not whole 7×7 windows: the padded path
    fused_attention = FusedCascadedGroupAttention(copy.deepcopy(block.attn))
    assert torch.equal(fused_attention.attention_bias, block.attn.attention_biases[:, block.attn.bias_index])
    assert max_diff(block.attn, fused_attention, x) <= 1e-5
    fused_interaction = FusedInteractionFFN(copy.deepcopy(block.pre))
    assert max_diff(block.pre, fused_interaction, x) <= 1e-5
    deployed = efficientmod.deploy(model)
    attentions = [m for m in deployed.modules() if isinstance(m, FusedCascadedGroupAttention)]
    interactions = [m for m in deployed.modules() if isinstance(m, FusedInteractionFFN)]
    assert attentions and interactions
    for attn in attentions:
        tokens = attn.window ** 2
        assert attn.attention_bias.shape == (attn.heads, tokens, tokens)
        assert not any(name.endswith("attention_biases") for name, _ in attn.named_parameters())


def test_mobilevitv2_attention_pools_keys_before_projecting_them():
    from efficientmod.models.mobilevitv2 import FusedSeparableSelfAttention

    model = random_model("mobilevitv2_050")
    original = [m.attn for m in model.modules() if type(m).__name__ == "LinearTransformerLayer"]
    deployed = efficientmod.deploy(copy.deepcopy(model))
    fused = [m for m in deployed.modules() if isinstance(m, FusedSeparableSelfAttention)]
    assert len(fused) == len(original) > 0
    for before, after in zip(original, fused, strict=True):
        dim = before.dim
        assert before.qkv.out_channels == 1 + 2 * dim
        assert after.score_value.out_channels == 1 + dim and after.key.out_channels == dim
    assert not any(isinstance(m, nn.GroupNorm) for m in deployed.modules())


def test_a_family_registers_its_own_fuser():
    """What a new family does: register the fused form of its block; deploy finds it by
    exact type, fuses inside it afterwards, and refuses a second fuser for the same type."""
    from efficientmod.fuse import register_fuser, scaled_linear
    from efficientmod.models.layers import LinearNorm

    class ScaledLinear(nn.Module):  # y = s ⊙ (W x + b), the layer scale pattern
        def __init__(self):
            super().__init__()
            self.linear, self.scale = nn.Linear(4, 4), nn.Parameter(torch.randn(4))
            self.head = LinearNorm(4, 2)

        def forward(self, x):
            return self.head(self.scale * self.linear(x))

    def fuse(block: ScaledLinear) -> nn.Module:
        return nn.Sequential(scaled_linear(block.linear, block.scale), block.head)

    register_fuser(ScaledLinear, fuse)
    with pytest.raises(ValueError, match="already registered"):
        register_fuser(ScaledLinear, lambda block: block)
    model = nn.Sequential(ScaledLinear(), nn.ReLU())
    model[0].head.bn.running_mean.uniform_(-1, 1)
    model = model.eval()
    x = torch.randn(3, 4)
    expected = model(x)
    efficientmod.deploy(model)
    assert [type(m) for m in model[0]] == [nn.Linear, nn.Linear]  # the LinearNorm inside was folded too
    assert torch.allclose(model(x), expected, atol=1e-6)
