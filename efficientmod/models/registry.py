"""One registry for every model family, plugged into timm's.

A family file describes each variant once with :func:`register_variant`: the model class,
its architecture config, the input it expects, the ImageNet-1K top-1 its paper reports and
where released weights are. From that single entry the variant becomes available three ways:

* ``efficientmod.create_model(name)`` / ``efficientmod.list_models()``;
* ``timm.create_model(timm_name)`` (same name for EfficientMod; a ``em_`` prefix for the
  families timm already ships, so that timm's own ``efficientvit_m2`` stays timm's), with
  a complete timm ``pretrained_cfg`` and timm's own weight loading (``pretrained=True``,
  ``pretrained_cfg_overlay=dict(file=...)``, ``hf-hub:`` / ``local-dir:`` repositories);
* ``features_only=True`` through timm's feature wrappers, as timm's own models: by
  default ``FeatureListNet`` (the stem and the stages as named children: ``stages_0`` ...,
  which torchvision's ``BackboneWithFPN`` takes as ``return_layers``); ``feature_cls=``
  ``'dict'``, ``'hook'``, ``'fx'`` or ``'getter'`` (``forward_intermediates``) give timm's
  others. Every stage outputs an NCHW map, so all of them (and torchvision's
  ``create_feature_extractor``) give NCHW maps.
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import sys
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model

from efficientmod.models.info import ModelInfo

__all__ = [
    "register_variant", "create_model", "list_models", "model_info", "feature_wrapper",
]


_REGISTRY: dict[str, ModelInfo] = {}
_BY_TIMM_NAME: dict[str, ModelInfo] = {}
# timm's register_model reads the pretrained cfgs from the entry point's module.
default_cfgs: dict[str, Any] = {}


def register_variant(info: ModelInfo) -> ModelInfo:
    """Register ``info`` in this library and in timm's registry."""
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is registered twice")
    _REGISTRY[info.name] = _BY_TIMM_NAME[info.timm_name] = info
    default_cfgs.update(generate_default_cfgs({info.timm_tagged_name: info.pretrained_cfg()}))

    def entrypoint(pretrained: bool = False, **kwargs):
        return _build(info, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = info.timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{info.family} variant {info.name} (efficientmod library)."
    setattr(sys.modules[__name__], info.timm_name, entrypoint)
    timm_register_model(entrypoint)
    return info


_NOT_ARCHITECTURE = {"num_classes", "in_chans", "global_pool", "features_only", "out_indices", "feature_cls",
                     "feature_cfg", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "device", "dtype",
                     "pretrained_model_args"}


def _build(info: ModelInfo, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for ``info``: pretrained weights in any layout our
    converters know (timm's, the official release's, ours) are read by timm's loader and
    converted on the way in."""
    from efficientmod.models.hub import build_error, check_build_arguments, check_source, convert_pretrained

    check_build_arguments(kwargs)
    if pretrained:
        check_source(info, kwargs)
    kwargs.setdefault("feature_cfg", dict(flatten_sequential=True, out_indices=info.feature_out_indices))
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)  # timm's factory placement
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = build_model_with_cfg(
                info.model_cls, info.timm_name, pretrained=pretrained,
                pretrained_filter_fn=convert_pretrained,
                cfg=info.cfg, **kwargs,
            )
        if dtype is not None:
            model.to(dtype=dtype)
    except Exception as error:
        clear = build_error(info, error, kwargs) if pretrained else None
        if clear is None:
            raise
        raise clear from None
    model.registry_name = info.name
    # what save_pretrained must record to rebuild the same architecture
    model.build_kwargs = {k: v for k, v in kwargs.items()
                          if k not in _NOT_ARCHITECTURE and isinstance(v, (int, float, str, bool, list, tuple))}
    return model


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name`` (or of its timm name, e.g. ``em_efficientvit_m0``);
    an unknown name lists the closest ones."""
    if name in _REGISTRY or name in _BY_TIMM_NAME:
        return _REGISTRY.get(name) or _BY_TIMM_NAME[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} `efficientmod models` lists all {len(_REGISTRY)} names.")


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a glob ``pattern`` and/or ``family``."""
    names = [n for n, i in _REGISTRY.items() if family is None or i.family == family]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def create_model(
    name: str,
    pretrained: bool | str = False,
    num_classes: int = 1000,
    checkpoint_path: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: ``True`` loads the variant's released weights the way timm does
            (EfficientViT, MobileViTv2: timm's Hugging Face hub repositories, cached); a
            string loads another source: a checkpoint file (an official EfficientMod
            release file, a timm or own checkpoint), a ``save_pretrained`` folder, an
            ``http(s)://`` URL or a Hugging Face hub repository id (``user/repo``).
            Weights are converted from whatever layout they use; a classifier of another
            class count is dropped (the model keeps a fresh one).
        num_classes: classifier width (0 for no classifier).
        checkpoint_path: a checkpoint file or ``save_pretrained`` folder loaded after
            building (see :func:`efficientmod.load_checkpoint`), with ``ignore_head``.
        **kwargs: passed to the model (``in_chans``, ``drop_path_rate``, ``global_pool``,
            ...) or to timm's feature wrapper (``features_only=True, out_indices=(...)``,
            ``feature_cls=`` ``"list"`` (default), ``"dict"``, ``"hook"``, ``"fx"``, ``"getter"``).
    """
    info = model_info(name)
    if isinstance(pretrained, str):
        from efficientmod.models.hub import source_overlay

        kwargs["pretrained_cfg_overlay"], saved_args = source_overlay(info, pretrained, kwargs.get("cache_dir"))
        kwargs = {**saved_args, **kwargs}  # the architecture it was saved with, unless overridden
        pretrained = True
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", info.feature_out_indices)
    feature_cls = kwargs.pop("feature_cls", "list")
    model = _build(info, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if checkpoint_path is not None:
        from efficientmod.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path, ignore_head=True)
    if features_only:
        model = feature_wrapper(model, out_indices, feature_cls)
    return model


def feature_wrapper(model: nn.Module, out_indices, feature_cls: str = "list") -> nn.Module:
    """timm's ``features_only`` wrapper around a built ``model`` (after its checkpoint is in),
    what ``timm.create_model(..., features_only=True, feature_cls=...)`` returns: ``list``
    (default), ``dict``, ``hook``, ``fx`` or ``getter``. The wrapper keeps the network's
    ``registry_name`` and ``input_multiple``. (timm 1.0.31 exports the classes from no public
    module; pyproject pins the timm range this is tested with.)"""
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
    from timm.models._features_fx import FeatureGraphNet

    classes = dict(list=FeatureListNet, dict=FeatureDictNet, hook=FeatureHookNet, fx=FeatureGraphNet,
                   getter=FeatureGetterNet)
    if feature_cls not in classes:
        raise ValueError(f"feature_cls must be one of {tuple(classes)}, got {feature_cls!r}")
    options = dict(flatten_sequential=True) if feature_cls in ("list", "dict", "hook") else {}
    wrapper = classes[feature_cls](model, out_indices=out_indices, **options)
    wrapper.registry_name = getattr(model, "registry_name", "")
    wrapper.input_multiple = getattr(model, "input_multiple", 1)
    return wrapper
