"""Shared test fixtures. Tests run on CPU, one thread per worker (CI uses pytest-xdist)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REFERENCE_DIR = Path(__file__).parent / "reference"
EFFICIENTMOD_VARIANTS = ["efficientmod_xxs", "efficientmod_xs", "efficientmod_s", "efficientmod_s_conv"]


def draw_reference_weights(layout, seed: int) -> dict[str, torch.Tensor]:
    """The weights the reference figures were computed with (``tests/reference/README.md``):
    one float64 normal draw per ``[key, shape]`` in layout order, scaled by 1/sqrt(fan-in)
    for matrices, 1 + 0.1·r for norm weights and 0.1·r otherwise."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout:
        r = torch.randn(list(shape), generator=generator, dtype=torch.float64)
        if len(shape) >= 2:
            r = r / math.sqrt(math.prod(shape[1:]))
        elif "norm" in key and key.endswith(".weight"):
            r = 1 + 0.1 * r
        else:
            r = 0.1 * r
        state[key] = r
    return state


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


def smallest_fast(names) -> list:
    """``names`` as pytest parameters, all but the first (smallest: the registry lists each
    family smallest first) variant of each family marked ``slow``: the fast tier sees every
    family once, the full suite every variant."""
    from efficientmod import model_info

    seen, params = set(), []
    for name in names:
        family = model_info(name).family
        params.append(pytest.param(name, marks=() if family not in seen else pytest.mark.slow))
        seen.add(family)
    return params


def reference_input(shape, seed: int) -> torch.Tensor:
    return torch.randn(list(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="session")
def reference():
    """``reference(variant)`` → the official figures of that variant."""
    cache = {}

    def load(variant: str) -> dict:
        if variant not in cache:
            cache[variant] = torch.load(REFERENCE_DIR / f"{variant}_official_seed0.pt", weights_only=True)
        return cache[variant]

    return load
