"""The one description of what a model expects as input: :class:`Preprocessing`.

Data loading builds it, the training checkpoint and the ``model/`` folder's ``config.json``
record it, the model card is written from it, every export stores it in its metadata, and
``predict``, ``eval`` and ``serve`` read it back, so a model trained at 128 px on one
channel is evaluated, exported and served at 128 px on one channel.

Evaluation preprocessing is timm's: resize the shorter side to ``size / crop_pct``
(``interpolation``), centre-crop ``size``, scale to [0, 1], normalise with ``mean`` / ``std``.

Values read from files (``config.json``, ONNX / OpenVINO / ExecuTorch metadata, a checkpoint)
go through :meth:`Preprocessing.from_dict`, which checks each one and names the key and the
file in a ``ValueError``: sizes are bounded before anything is allocated, statistics must be
finite with ``std > 0``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["Preprocessing", "PREPROCESSING_KEYS", "MAX_INPUT_SIDE", "MAX_INPUT_CHANNELS"]

PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
MAX_INPUT_SIDE = 4096  # pixels per side of a model input that a file may ask for
MAX_INPUT_CHANNELS = 16
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _per_channel(values: Sequence[float], chans: int) -> tuple[float, ...]:
    """Three-channel statistics cut (or repeated) to ``chans`` channels."""
    return tuple(values[i % len(values)] for i in range(chans))


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation preprocessing. ``input_size`` is (channels, height, width);
    ``mean`` and ``std`` have one value per channel."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    _transform: list = field(default_factory=list, init=False, repr=False, compare=False)  # the built transform

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        problem = self._problem()
        if problem:
            raise ValueError(f"preprocessing: {problem}")

    def _problem(self) -> str:
        size = self.input_size
        if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
            return f"input_size must be three integers (channels, height, width), got {list(size)}"
        chans, height, width = size
        if not 1 <= chans <= MAX_INPUT_CHANNELS:
            return f"input_size has {chans} channels (1 to {MAX_INPUT_CHANNELS} are possible)"
        if not (1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
            return f"input_size {height}x{width} is outside 1 to {MAX_INPUT_SIDE} pixels per side"
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != chans:
                return f"{name} has {len(values)} values for {chans} channel(s)"
            if not all(math.isfinite(v) for v in values):
                return f"{name} {list(values)} is not finite"
        if not all(v > 0 for v in self.std):
            return f"std {list(self.std)} must be > 0"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        if not (math.isfinite(self.crop_pct) and 0 < self.crop_pct <= 1):
            return f"crop_pct {self.crop_pct} must be in (0, 1]"
        return ""

    # -- reading and writing ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping, source: str = "") -> Preprocessing:
        """Read what :meth:`to_dict` wrote (``source`` names the file in errors). Every key
        must be present and of the right type; nothing is allocated from it."""
        where = f"{source}: " if source else ""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}preprocessing must be a mapping, got {type(values).__name__}")
        missing = [key for key in PREPROCESSING_KEYS if key not in values]
        if missing:
            raise ValueError(f"{where}preprocessing lacks {', '.join(missing)}")
        size, mean, std = values["input_size"], values["mean"], values["std"]
        for name, value in (("input_size", size), ("mean", mean), ("std", std)):
            if not isinstance(value, (list, tuple)) or len(value) > MAX_INPUT_CHANNELS + 3:
                raise ValueError(f"{where}{name} must be a short list, got {str(value)[:80]!r}")
        if not all(_is_number(v) for v in (*mean, *std, values["crop_pct"])):
            raise ValueError(f"{where}mean, std and crop_pct must be numbers")
        if not isinstance(values["interpolation"], str):
            raise ValueError(f"{where}interpolation must be a string, got {values['interpolation']!r}")
        try:
            return cls(tuple(size), tuple(mean), tuple(std), values["interpolation"], values["crop_pct"])
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None

    def to_dict(self) -> dict:
        """JSON-ready: what checkpoints, ``config.json`` and export metadata store."""
        return dict(input_size=list(self.input_size), mean=list(self.mean), std=list(self.std),
                    interpolation=self.interpolation, crop_pct=self.crop_pct)

    @classmethod
    def of_timm_cfg(cls, cfg: Mapping, chans: int | None = None) -> Preprocessing:
        """The preprocessing of a timm ``pretrained_cfg`` (a registered variant's, or the one
        timm read from a hub folder's config.json), for ``chans`` input channels (default:
        the cfg's)."""
        chans = int(cfg["input_size"][0] if chans is None else chans)
        return cls((chans, *cfg["input_size"][1:]), _per_channel(cfg["mean"], chans),
                   _per_channel(cfg["std"], chans), cfg.get("interpolation", "bicubic"), cfg.get("crop_pct", 0.875))

    @classmethod
    def of_model(cls, model, input_size: Sequence[int] | None = None) -> Preprocessing:
        """The preprocessing ``model`` declares: ``model.preprocessing`` (set by training,
        ``from_pretrained`` and the checkpoint loaders), else its timm ``pretrained_cfg``
        (the variant's, for ``model.in_chans`` channels); another ``input_size`` (C, H, W)
        when given."""
        saved = getattr(model, "preprocessing", None)
        if saved is None:
            cfg = getattr(model, "pretrained_cfg", None)
            if not cfg:
                raise ValueError("the model declares no preprocessing (it was not built by "
                                 "efficientmod.create_model or timm.create_model)")
            saved = cls.of_timm_cfg(cfg, getattr(model, "in_chans", None))
        return saved if input_size is None else saved.with_input_size(input_size)

    def with_input_size(self, input_size: Sequence[int]) -> Preprocessing:
        """The same statistics for another (C, H, W) input."""
        return Preprocessing(tuple(input_size), self.mean, self.std, self.interpolation, self.crop_pct)

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def image_mode(self) -> str:
        """The Pillow mode images are decoded in: "L" for one channel, else "RGB"."""
        return "L" if self.channels == 1 else "RGB"

    # -- applying it ------------------------------------------------------------------------
    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's evaluation transform for this preprocessing (built once)."""
        if not self._transform:
            from timm.data import create_transform

            self._transform.append(create_transform(
                self.input_size, is_training=False, interpolation=self.interpolation,
                crop_pct=self.crop_pct, mean=self.mean, std=self.std))
        return self._transform[0]

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """The image file as a (C, H, W) tensor, decoded by :func:`efficientmod.images.load_image`
        (Pillow's errors pass through: :data:`efficientmod.images.DECODE_ERRORS`)."""
        from efficientmod.images import load_image

        return self.transform(load_image(path, self.image_mode))
