"""Inference-time rewrites: the same function, fewer and larger operations.

:func:`deploy` walks a model once and replaces every block that has a cheaper
inference form:

* any module with a ``fuse()`` method (``ConvNorm``, ``LinearNorm`` and whatever a model
  family defines) is replaced by what ``fuse()`` returns — BatchNorm folded into the
  conv / linear before or after it;
* a block whose type a model family registered with :func:`register_fuser` is replaced
  by the fused form the family defines, in the "deployment" section of its own file
  (``models/efficientmod.py``: layer scales folded, the attention scale folded into the
  queries; ``models/efficientvit.py``: relative-position biases gathered
  once, the token-interaction residual folded into its kernel; ``models/mobilevitv2.py``:
  GroupNorm affines folded, keys pooled before their projection).

This module imports no model family: it holds the walk, the registry and the small
exact rewrites of linear maps (:func:`scaled_linear`, :func:`stacked_outputs`, ...) that
fusers are built from. The rewrites are exact up to float rounding (outputs agree to
~1e-6 in float32; the tests hold every variant to 1e-4). Deployed modules keep plain
``nn.Linear`` / ``nn.Conv2d`` parameters, so ``.to(device / dtype)``, ``torch.compile``
and ONNX export work as before; they are for inference only (no BatchNorm statistics,
no drop path).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "deploy", "is_deployed", "register_fuser", "linear_from", "conv1x1_from", "scaled_linear", "stacked_outputs",
    "static_hwc",
]

_FUSERS: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {}


def register_fuser(block_type: type[nn.Module], fuse: Callable[[nn.Module], nn.Module]) -> None:
    """Make ``fuse(block) -> module`` the inference form of every block of exactly
    ``block_type`` (subclasses are not matched, so a fused class may derive from its
    block). Called by the model family that defines the block, next to it."""
    if block_type in _FUSERS and _FUSERS[block_type] is not fuse:
        raise ValueError(f"a fuser for {block_type.__qualname__} is already registered")
    _FUSERS[block_type] = fuse


def _fuser_of(module: nn.Module) -> Callable[[], nn.Module] | None:
    if type(module) in _FUSERS:
        return lambda: _FUSERS[type(module)](module)
    fuse = getattr(module, "fuse", None)
    return fuse if callable(fuse) else None


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        fuser = _fuser_of(child)
        if fuser is not None:
            child = fuser()
            setattr(module, name, child)
        _fuse_children(child)  # a fused block may still hold fusable parts


@torch.no_grad()
def deploy(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """Rewrite ``model`` in place for inference (and return it); idempotent.

    The model is put in eval mode (BatchNorm statistics are folded, dropout and drop path
    become identities). ``channels_last`` stores 4-D conv weights in channels-last memory
    format (what cuDNN's fastest kernels want; feed channels-last inputs too); by default
    it is on when the model lives on a GPU and off on CPU.
    """
    model.eval()
    if not is_deployed(model):
        _fuse_children(model)
        model.deployed = True
    first = next(model.parameters(), None)
    if channels_last is None:
        channels_last = first is not None and first.is_cuda
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def is_deployed(model: nn.Module) -> bool:
    return bool(getattr(model, "deployed", False))


@torch.no_grad()
def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return linear


@torch.no_grad()
def conv1x1_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def scaled_linear(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """``scale ⊙ linear(x)`` as one linear layer: rows of W and b times ``scale``."""
    bias = linear.bias * scale if linear.bias is not None else None
    return linear_from(linear.weight * scale[:, None], bias)


def stacked_outputs(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor,
                    sizes: list[int]) -> list[torch.Tensor]:
    """``linear(x).split(sizes, -1)`` for a linear layer (``weight``, ``bias``) that stacks
    several projections.

    PyTorch runs one matrix multiply and returns views. An ONNX export gets one Gemm per
    part, on the matching rows of the weight (constant-folded): ONNX Runtime's Split copies
    its outputs, which costs a CPU more than the merged multiply saves (efficientmod_s:
    1.6 of 34 ms).
    """
    if not torch.jit.is_scripting():  # (TorchScript compiles only the split)
        if torch.onnx.is_in_onnx_export():
            parts, start = [], 0
            for size in sizes:
                rows = slice(start, start + size)
                parts.append(F.linear(x, weight[rows], None if bias is None else bias[rows]))
                start += size
            return parts
    return list(F.linear(x, weight, bias).split(sizes, dim=-1))


def static_hwc(x: torch.Tensor) -> tuple[int, int, int]:
    """H, W and C of a (B, H, W, C) map as Python ints.

    Reshapes written with them (and -1 for the batch) export to ONNX as constant shapes
    instead of Shape → Gather → Concat chains: a dozen fewer nodes per block in ONNX
    Runtime, where each node costs a few microseconds at batch 1.
    """
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
