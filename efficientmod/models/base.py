"""What every classification backbone of the library shares: the timm-style interface
(``forward_features`` → ``forward_head``, ``forward_intermediates`` for dense tasks,
``global_pool`` / ``reset_classifier``), input checking and ``save_pretrained``.

No ``from __future__ import annotations`` here: torch.fx writes the root ``forward``'s
annotations into the code it generates, and a string annotation there breaks scripting it.
"""

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d

from efficientmod.metadata import check_class_names
from efficientmod.models.layers import check_image_input
from efficientmod.models.pretrained import save_pretrained
from efficientmod.preprocessing import Preprocessing

GLOBAL_POOLS = ("avg", "max", "avgmax", "")  # timm's pool types that keep the feature width


def global_pool_layer(pool_type: str, num_classes: int) -> SelectAdaptivePool2d:
    """timm's global pooling of an NCHW map to (B, C): ``avg`` (the papers' pooled feature,
    a plain mean over H×W), ``max``, ``avgmax``, or ``""`` for none (the map itself, which
    only a model without classifier can return)."""
    if pool_type not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {pool_type!r}")
    if not pool_type and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0: a classifier needs pooled features")
    return SelectAdaptivePool2d(pool_type=f"fast{pool_type}" if pool_type else "", flatten=bool(pool_type))


def take_indices(num_stages: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """timm's feature-index convention: ``None`` every stage, an int n the last n stages, a
    sequence those stages (negative from the end); returns them and the largest."""
    if indices is None:
        take = list(range(num_stages))
    elif isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices}: the model has {num_stages} stages")
        take = list(range(num_stages - indices, num_stages))
    else:
        take = [i + num_stages if i < 0 else i for i in indices]
        if not all(0 <= i < num_stages for i in take):
            raise ValueError(f"indices {list(indices)} out of range for {num_stages} stages")
    return take, max(take)


class Backbone(nn.Module):
    """Base class of the three families: a ``stem`` then ``stages`` (an ``nn.Sequential``),
    each stage's output being a feature map described by ``feature_info[i]``, then a head.

    Subclasses build ``stem`` and ``stages`` (each stage's output an NCHW map), then
    ``feature_info`` and the head (:meth:`_attach_head`), and set ``input_multiple`` (what
    the input sides must divide into). Modules are registered in forward order - stem,
    stages, final norm, pooling, head - which timm's ``FeatureListNet`` / ``FeatureDictNet``
    and torchvision's ``IntermediateLayerGetter`` (``BackboneWithFPN``) rely on. A family
    with a final norm on another layout overrides :meth:`final_map`.

    Every model also declares what its weights were trained for (:meth:`declare` sets both,
    ``from_pretrained`` and the checkpoint loaders call it): ``preprocessing``, the input it
    expects (None: the variant's, from timm's ``pretrained_cfg``, see
    :meth:`Preprocessing.of_model`), and ``class_names``, one per class (None: unnamed;
    also timm's ``pretrained_cfg["label_names"]``).
    """

    input_multiple: int = 32
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    __jit_ignored_attributes__ = ["preprocessing", "class_names"]  # not TorchScript types; never in forward

    def __init__(self, cfg, num_classes: int, in_chans: int, num_features: int, global_pool: str = "avg"):
        """Record what every family's network is built from: its variant ``cfg``, the
        classifier width, the input channels and the width of the final feature map."""
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = num_features
        self.global_pool_type = global_pool
        self.grad_checkpointing = False
        self.registry_name = ""  # set by the registry when built through it
        self.build_kwargs: dict = {}  # architecture arguments it was built with (set by the registry)

    def _attach_head(self, head_drop: nn.Module, head: nn.Module) -> None:
        """Register the global pooling, the head's dropout and the classifier, after the
        stages (forward order)."""
        self.global_pool = global_pool_layer(self.global_pool_type, self.num_classes)
        self.head_drop = head_drop
        self.head = head

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The family's initialisation of one module (applied to the whole network and to a
        new classifier); by default PyTorch's own."""

    def _make_head(self, num_classes: int) -> nn.Module:
        """The classifier on the pooled features (a linear layer, initialised as the
        family's), or ``nn.Identity`` for ``num_classes=0``."""
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        self._init_weights(head)
        return head

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple)

    def final_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's (NCHW) output as the map ``forward_features`` returns (after the
        final norm where the network has one)."""
        return x

    # -- forward --------------------------------------------------------------------
    @torch.jit.unused
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → the last stage's map (B, C, H/s, W/s); with gradient
        checkpointing (training), each stage's activations are recomputed in the backward."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            for stage in self.stages:
                x = self._run_stage(stage, x)
        else:
            x = self.stages(x)
        return self.final_map(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool (average: the pooled features), dropout, classifier."""
        x = self.global_pool(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs as NCHW maps, timm's interface; ``norm=True`` gives the last
        stage's map after the final norm (for networks that have one)."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} intermediates are NCHW only")
        self.check_input(x)
        take, max_index = take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(self.final_map(x) if norm and i == last else x)
        return intermediates if intermediates_only else (self.final_map(x), intermediates)

    # -- timm interface -------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier of ``num_classes`` (0: none), on the device and dtype of the
        network and in its train/eval mode; ``global_pool`` replaces the pooling (None keeps it,
        except that a classifier on a model built without pooling gets the average)."""
        pool_type = self.global_pool_type if global_pool is None else global_pool
        if global_pool is None and not pool_type and num_classes > 0:
            pool_type = "avg"
        pool = global_pool_layer(pool_type, num_classes)
        reference = next(self.parameters())
        head = self._make_head(num_classes).to(device=reference.device, dtype=reference.dtype)
        names_go = self.class_names is not None and num_classes != self.num_classes
        self.global_pool, self.global_pool_type, self.num_classes = pool.train(self.training), pool_type, num_classes
        self.head = head.train(self.training)
        if names_go:  # a new classifier has no class names
            self.declare(self.preprocessing, None)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one; the final norm and the head go too
        when asked or when the kept features are no longer the ones they were built for."""
        take, max_index = take_indices(len(self.stages), indices)
        pruned_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if hasattr(self, "norm") and (prune_norm or pruned_end):
            self.norm = nn.Identity()
        if prune_head or pruned_end:
            self.reset_classifier(0)
        return take

    # -- what the weights were trained for -------------------------------------------
    @torch.jit.ignore
    def declare(self, preprocessing: Preprocessing | None = None, class_names: list[str] | None = None) -> None:
        """Record the input the weights expect and the names of their classes (checked:
        ``preprocessing`` for ``in_chans`` channels, one string per class), also in timm's
        ``pretrained_cfg`` (its preprocessing keys and ``label_names``), so timm's
        ``resolve_data_config`` and the hub format see the same."""
        if preprocessing is not None and preprocessing.channels != self.in_chans:
            raise ValueError(f"preprocessing for {preprocessing.channels} channel(s) declared on a model with "
                             f"{self.in_chans} input channel(s)")
        self.preprocessing = preprocessing
        self.class_names = check_class_names(class_names, self.num_classes)
        cfg = dict(getattr(self, "pretrained_cfg", None) or {})
        if preprocessing is not None:
            cfg.update(preprocessing.to_dict())
        if self.class_names is None:
            cfg.pop("label_names", None)
        else:
            cfg["label_names"] = list(self.class_names)
        self.pretrained_cfg = self.default_cfg = cfg  # timm's alias

    def save_pretrained(self, directory, class_names: list[str] | None = None,
                        preprocessing: Preprocessing | None = None) -> None:
        """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` to
        ``directory`` (atomically); :func:`efficientmod.from_pretrained` restores the model
        exactly. ``class_names`` and ``preprocessing`` (what the model was trained on)
        default to what the model declares."""
        save_pretrained(self, directory, class_names=class_names, preprocessing=preprocessing)
