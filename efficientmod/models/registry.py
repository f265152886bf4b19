"""One registry for every model family, plugged into timm's.

A family file describes each variant once with :func:`register_variant`: the model class,
its architecture config, the input it expects and the ImageNet-1K top-1 its paper reports.
From that single entry the variant becomes available three ways:

* ``efficientmod.create_model(name)`` / ``efficientmod.list_models()``;
* ``timm.create_model(timm_name)`` (same name for EfficientMod; a ``em_`` prefix for the
  families timm already ships, so that timm's own ``efficientvit_m2`` stays timm's);
* ``features_only=True`` through timm's feature wrapper (models implement
  ``forward_intermediates``), so dense-prediction code gets NCHW maps from either API.
"""
from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._features import FeatureGetterNet
from timm.models import register_model as timm_register_model

__all__ = ["ModelInfo", "register_variant", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the library knows about one registered variant."""

    name: str
    family: str
    model_cls: type[nn.Module]
    cfg: Any  # the family's architecture config (a frozen dataclass)
    timm_name: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    feature_out_indices: tuple[int, ...] = (0, 1, 2, 3)  # every feature map it has
    top1: float | None = None  # ImageNet-1K top-1 (%) reported by the paper
    top1_source: str = ""
    extra: dict = field(default_factory=dict)

    def pretrained_cfg(self) -> dict:
        """The timm ``pretrained_cfg`` of this variant (no downloadable weights)."""
        return dict(
            architecture=self.timm_name,
            num_classes=1000,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            first_conv=self.extra.get("first_conv", ""),
            classifier=self.extra.get("classifier", "head"),
        )


_REGISTRY: dict[str, ModelInfo] = {}
# timm's register_model reads the pretrained cfgs from the entry point's module.
default_cfgs: dict[str, dict] = {}


def register_variant(info: ModelInfo) -> ModelInfo:
    """Register ``info`` in this library and in timm's registry."""
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    default_cfgs[info.timm_name] = info.pretrained_cfg()

    def entrypoint(pretrained: bool = False, **kwargs):
        kwargs.pop("pretrained_cfg", None)  # timm passes its own copy of info.pretrained_cfg()
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return _build(info, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = info.timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{info.family} variant {info.name} (efficientmod library)."
    setattr(sys.modules[__name__], info.timm_name, entrypoint)
    timm_register_model(entrypoint)
    return info


_NOT_ARCHITECTURE = {"num_classes", "in_chans", "features_only", "out_indices", "feature_cls"}


def _build(info: ModelInfo, pretrained: bool = False, **kwargs) -> nn.Module:
    if pretrained:
        raise ValueError(
            f"{info.name}: no weights can be downloaded; pass checkpoint_path= (a released "
            "official/timm checkpoint or a save_pretrained folder) instead of pretrained=True"
        )
    model = build_model_with_cfg(
        info.model_cls,
        info.name,
        pretrained=False,
        pretrained_cfg=info.pretrained_cfg(),
        feature_cfg=dict(feature_cls="getter", out_indices=info.feature_out_indices),
        cfg=info.cfg,
        **kwargs,
    )
    inner = getattr(model, "model", model)  # the features_only wrapper holds the network
    inner.registry_name = info.name
    # what save_pretrained must record to rebuild the same architecture
    inner.build_kwargs = {k: v for k, v in kwargs.items()
                          if k not in _NOT_ARCHITECTURE and isinstance(v, (int, float, str, bool, list, tuple))}
    return model


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; an unknown name lists the closest ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} `efficientmod models` lists all {len(_REGISTRY)} names."
        ) from None


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a glob ``pattern`` and/or ``family``."""
    names = [n for n, i in _REGISTRY.items() if family is None or i.family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int = 1000,
    checkpoint_path: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: weights are never downloaded; use ``checkpoint_path``.
        num_classes: classifier width (0 for no classifier).
        checkpoint_path: a checkpoint file (official EfficientMod, timm or own layout; see
            :func:`efficientmod.load_checkpoint`) or a ``save_pretrained`` folder, loaded
            with ``ignore_head`` when its classifier has another class count.
        **kwargs: passed to the model (``in_chans``, ``drop_path_rate``, ...) or to timm's
            feature wrapper (``features_only=True, out_indices=(...)``).
    """
    info = model_info(name)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", info.feature_out_indices)
    model = _build(info, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if checkpoint_path is not None:
        from efficientmod.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path, ignore_head=True)
    if features_only:
        model = FeatureGetterNet(model, out_indices=out_indices)
    return model
