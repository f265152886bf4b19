"""What every classification backbone of the library shares: the timm-style interface
(``forward_features`` → ``forward_head``), input checking and ``save_pretrained``."""
from __future__ import annotations

import torch
import torch.nn as nn

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

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.input_multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def save_pretrained(self, directory, class_names: list[str] | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` to ``directory`` (atomically);
        :func:`efficientmod.from_pretrained` restores the model exactly."""
        from efficientmod.checkpoint import save_pretrained

        save_pretrained(self, directory, class_names=class_names)
