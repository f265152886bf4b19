"""What every classification backbone of the library shares: the timm-style interface
(``forward_features`` → ``forward_head``, ``forward_intermediates`` for dense tasks),
input checking and ``save_pretrained``."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from efficientmod.models.layers import check_image_input
from efficientmod.models.pretrained import save_pretrained


class Backbone(nn.Module):
    """Base class of the three families: a ``stem`` then ``stages`` (an ``nn.Sequential``),
    each stage's output being a feature map described by ``feature_info[i]``, then a head.

    Subclasses build ``stem``, ``stages``, ``feature_info``, ``head`` (and ``head_drop``)
    and set ``in_chans``, ``num_classes``, ``num_features`` and ``input_multiple`` (what the
    input sides must divide into). A family that keeps its maps in another layout than NCHW
    (EfficientMod runs channels-last) overrides :meth:`stage_map` and :meth:`final_map`.
    """

    in_chans: int
    num_classes: int
    num_features: int
    input_multiple: int = 32
    grad_checkpointing: bool = False
    registry_name: str = ""  # set by the registry when built through it
    build_kwargs: dict = {}  # architecture arguments it was built with (set by the registry)

    def __init__(self, cfg, num_classes: int, in_chans: int, num_features: int):
        """Record what every family's network is built from: its variant ``cfg``, the
        classifier width, the input channels and the width of the final feature map."""
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = num_features

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple)

    def stage_map(self, x: torch.Tensor) -> torch.Tensor:
        """A stage's output as an NCHW feature map."""
        return x

    def final_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output as the NCHW map ``forward_features`` returns (after the
        final norm where the network has one)."""
        return self.stage_map(x)

    # -- forward --------------------------------------------------------------------
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and self.training:
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → the last stage's map (B, C, H/s, W/s)."""
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.final_map(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool (the pooled features), dropout, linear classifier."""
        x = x.mean(dim=(2, 3))
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
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(self.final_map(x) if norm and i == last else self.stage_map(x))
        return intermediates if intermediates_only else (self.final_map(x), intermediates)

    # -- timm interface -------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one; the final norm and the head go too
        when asked or when the kept features are no longer the ones they were built for."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        pruned_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if hasattr(self, "norm") and (prune_norm or pruned_end):
            self.norm = nn.Identity()
        if prune_head or pruned_end:
            self.reset_classifier(0)
        return take

    def save_pretrained(self, directory, class_names: list[str] | None = None,
                        preprocessing: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` to ``directory`` (atomically);
        :func:`efficientmod.from_pretrained` restores the model exactly. ``preprocessing``
        (input_size, mean, std, interpolation, crop_pct) records what the model was trained
        on when it differs from the registry's."""
        save_pretrained(self, directory, class_names=class_names, preprocessing=preprocessing)
