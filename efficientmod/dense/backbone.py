"""Any registered backbone as a multi-scale feature extractor + FPN for torchvision.

``create_model(name, features_only=True)`` gives timm's feature wrapper (NCHW maps at the
strides listed in its ``feature_info``); :class:`BackboneFPN` puts torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` on top and exposes what
``torchvision.models.detection`` expects of a backbone: ``forward(images) ->
OrderedDict[str, Tensor]`` and ``out_channels``. Everything (channels, strides, the input
multiple) is read from ``feature_info``, so every family works the same way.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from efficientmod.models import create_model, model_info
from efficientmod.models.registry import feature_wrapper

__all__ = ["BackboneFPN", "build_backbone_fpn", "freeze_stages"]

EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, "none": 0}  # coarser levels (stride ×2 each) an option adds

class BackboneFPN(nn.Module):
    """Feature extractor + FPN; output ``{"0": P_first, ..., extra levels}`` (all
    ``out_channels`` wide), the level names and strides in :attr:`strides`.

    Attributes:
        out_channels: FPN width (torchvision's detectors read it).
        strides: the stride of every output level, extra levels included.
        size_divisible: what the input sides must be multiples of (the backbone's own
            ``input_multiple``, and the coarsest stride, so FPN levels align).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra: str = "maxpool"):
        super().__init__()
        if extra not in EXTRA_LEVELS:
            raise ValueError(f"extra FPN levels must be one of {tuple(EXTRA_LEVELS)}, got {extra!r}")
        self.body = body
        channels = body.feature_info.channels()
        reductions = body.feature_info.reduction()
        extra_block: ExtraFPNBlock | None = None
        if extra == "maxpool":
            extra_block = LastLevelMaxPool()
        elif extra == "p6p7":
            extra_block = LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        self.strides = list(reductions) + [reductions[-1] * 2 ** (i + 1) for i in range(EXTRA_LEVELS[extra])]
        self.feature_names = [str(i) for i in range(len(channels))]
        inner = getattr(body, "model", body)
        self.size_divisible = math.lcm(getattr(inner, "input_multiple", 1), max(reductions))

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict(zip(self.feature_names, features, strict=True)))


def freeze_stages(body: nn.Module, frozen_stages: int) -> None:
    """Freeze the stem (``frozen_stages >= 0``) and the first ``frozen_stages`` stages.

    The convention of mmdetection: -1 trains everything, 0 freezes the stem, k the stem
    and stages 1..k. A stage is the module named in the network's full ``feature_info``;
    the stem is every parameter registered before the first stage (families register
    their modules in forward order). Frozen parameters stop requiring gradients and the
    BatchNorms among them become ``FrozenBatchNorm2d`` (fixed statistics).
    """
    inner = getattr(body, "model", body)
    stages = [info["module"] for info in inner.feature_info]
    if not -1 <= frozen_stages <= len(stages):
        raise ValueError(f"frozen_stages must be in [-1, {len(stages)}], got {frozen_stages}")
    if frozen_stages < 0:
        return
    names = [name for name, _ in inner.named_parameters()]
    if frozen_stages == 0:
        first_stage = next(i for i, n in enumerate(names) if n.startswith(stages[0] + "."))
        frozen = set(names[:first_stage])
    else:
        last = stages[frozen_stages - 1] + "."
        end = max((i for i, n in enumerate(names) if n.startswith(last)), default=-1)
        frozen = set(names[: end + 1])
    for name, parameter in inner.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    for name, module in list(inner.named_modules()):
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
            _replace_module(inner, name, freeze_batch_norm_2d(module))


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def build_backbone_fpn(
    name: str,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    extra: str = "maxpool",
    checkpoint: str | None = None,
    frozen_stages: int = -1,
    frozen_bn: bool = False,
    drop_path_rate: float = 0.0,
    min_stride: int = 1,
) -> BackboneFPN:
    """A registered backbone (optionally with classification weights) + FPN.

    Args:
        name: a name from :func:`efficientmod.list_models`.
        out_indices: which feature maps feed the FPN (default: all those of stride
            ``min_stride`` or more).
        out_channels: FPN width.
        extra: extra coarser levels: ``maxpool`` (P6 for Mask R-CNN), ``p6p7`` (RetinaNet)
            or ``none`` (Semantic FPN).
        checkpoint: classification weights (official, timm or own layout, or a
            ``save_pretrained`` folder), loaded through :func:`efficientmod.load_checkpoint`
            before the classifier is dropped.
        frozen_stages: see :func:`freeze_stages`.
        frozen_bn: every BatchNorm of the backbone keeps its statistics and affine
            parameters fixed (``FrozenBatchNorm2d``), the usual choice for small detection
            batches. Families normalised by LayerNorm (EfficientMod) have none to freeze.
        drop_path_rate: stochastic depth of the backbone.
        min_stride: the finest stride used when ``out_indices`` is not given.
    """
    network = create_model(name, checkpoint_path=checkpoint, drop_path_rate=drop_path_rate)
    if out_indices is None:
        out_indices = [i for i in model_info(name).feature_out_indices
                       if network.feature_info[i]["reduction"] >= min_stride]
    body = feature_wrapper(network, tuple(out_indices), "getter")  # the network whole, as body.model
    if frozen_bn:
        body = freeze_batch_norm_2d(body)
    freeze_stages(body, frozen_stages)
    return BackboneFPN(body, out_channels=out_channels, extra=extra)

