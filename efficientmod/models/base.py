"""What every classification backbone of the library shares: the timm-style interface
(``forward_features`` → ``forward_head``), input checking and ``save_pretrained``."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from efficientmod.models.layers import check_image_input


class Backbone(nn.Module):
    """Base class of the three families.

    Subclasses set ``in_chans``, ``num_classes``, ``num_features``, ``feature_info`` and
    ``input_multiple`` (the total stride the input sides must divide into) and implement
    ``forward_features`` (NCHW map after the last stage) and ``forward_head``.
    """

    in_chans: int
    num_classes: int
    input_multiple: int = 32
    registry_name: str = ""  # set by the registry when built through it
    build_kwargs: dict = {}  # architecture arguments it was built with (set by the registry)

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def save_pretrained(self, directory, class_names: list[str] | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` to ``directory`` (atomically);
        :func:`efficientmod.from_pretrained` restores the model exactly."""
        from efficientmod.checkpoint import save_pretrained

        save_pretrained(self, directory, class_names=class_names)


class StagedBackbone(Backbone):
    """A :class:`Backbone` that runs ``stem`` then ``stages`` on NCHW maps, every stage's
    output being a feature map (``feature_info[i]``); shared by EfficientViT and MobileViTv2.

    Subclasses build ``stem``, ``stages`` (an ``nn.Sequential``), ``feature_info`` and the
    head, and implement ``forward_head`` / ``reset_classifier``.
    """

    grad_checkpointing: bool = False

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and self.training:
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → the last stage's map."""
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs as NCHW maps, timm's interface (these networks have no final
        norm, so ``norm`` changes nothing)."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} intermediates are NCHW only")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one; the head goes too when asked or when
        the kept features are no longer the ones it was built for."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        pruned_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or pruned_end:
            self.reset_classifier(0)
        return take
