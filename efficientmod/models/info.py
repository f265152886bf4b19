"""What the library knows about each variant: :class:`ModelInfo` (and the
:class:`ReleasedWeights` it may name), written once per variant in its family's file and
registered with :func:`efficientmod.models.registry.register_variant`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["ReleasedWeights", "ModelInfo"]


@dataclass(frozen=True, kw_only=True)
class ReleasedWeights:
    """Published ImageNet weights of one variant, under a timm pretrained tag.

    ``hf_hub_id`` names a Hugging Face hub repository that ``pretrained=True`` downloads
    (through timm and ``huggingface_hub``: its cache, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``
    apply); without one, the weights have no stable URL and ``origin_url`` / ``file_names``
    say where to fetch them by hand, to pass as a file.
    """

    tag: str
    hf_hub_id: str = ""
    origin_url: str = ""
    file_names: tuple[str, ...] = ()
    top1: float | None = None  # ImageNet-1K top-1 (%) of these weights, as their publisher reports
    notes: str = ""


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """Everything the library knows about one registered variant."""

    name: str
    family: str
    model_cls: type[nn.Module]
    cfg: Any  # the family's architecture config (a frozen dataclass)
    timm_name: str
    first_conv: str  # the input convolution (timm adapts its weights to another in_chans)
    classifier: str  # the classifier's linear layer
    pool_size: tuple[int, int]  # the final feature map's size at input_size
    paper_name: str
    paper_ids: str  # e.g. "arXiv:2403.19963"
    license: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    feature_out_indices: tuple[int, ...] = (0, 1, 2, 3)  # every feature map it has
    top1: float | None = None  # ImageNet-1K top-1 (%) reported by the paper
    top1_source: str = ""
    drop_path_rate: float = 0.0  # stochastic depth of the paper's ImageNet training recipe
    weights: ReleasedWeights | None = None

    @property
    def timm_tagged_name(self) -> str:
        """The timm name with the pretrained tag of the released weights, if any."""
        return f"{self.timm_name}.{self.weights.tag}" if self.weights else self.timm_name

    def pretrained_cfg(self) -> dict:
        """The timm ``pretrained_cfg`` of this variant (its released weights, if any)."""
        cfg = dict(
            architecture=self.timm_name,
            num_classes=1000,
            input_size=self.input_size,
            pool_size=self.pool_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            first_conv=self.first_conv,
            classifier=self.classifier,
            license=self.license,
            paper_name=self.paper_name,
            paper_ids=self.paper_ids,
        )
        if self.weights is not None:
            weights = self.weights
            cfg.update(tag=weights.tag, hf_hub_id=weights.hf_hub_id or None, origin_url=weights.origin_url or None,
                       notes=weights.notes or None)
        return {k: v for k, v in cfg.items() if v is not None}
