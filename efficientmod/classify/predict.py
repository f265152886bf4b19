"""Classify image files with a deployed model or an exported ONNX file.

The straight line: :func:`load_model` (a registered name + checkpoint, or a
``save_pretrained`` folder) → :func:`~efficientmod.fuse.deploy` → :class:`Predictor`
(or :meth:`Predictor.from_file`, which reads what it needs from the file's metadata) →
:meth:`Predictor.predict_files`. Each model brings its own preprocessing (input size,
mean / std, interpolation, crop fraction from the registry) and its class names: those
saved with the weights, else ImageNet's for 1000 classes, else the class indices.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from PIL import Image

from efficientmod.classify.data import DECODE_ERRORS
from efficientmod.runtime import read_train_checkpoint

__all__ = [
    "Preprocessing", "Prediction", "Predictor", "load_model", "imagenet_class_names", "onnx_metadata",
]


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation preprocessing: resize to ``input_size / crop_pct`` (shorter side),
    centre crop ``input_size``, normalise with ``mean`` / ``std`` (timm's eval transform)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @classmethod
    def of_model(cls, model: nn.Module, input_size: Sequence[int] | None = None) -> Preprocessing:
        """The preprocessing ``model`` was trained with (recorded by ``save_pretrained`` or a
        training checkpoint, as ``model.preprocessing``), else its registry's for its input
        channels; when given, another ``input_size`` (C, H, W)."""
        from efficientmod.models import model_info

        saved = getattr(model, "preprocessing", None)
        if saved:
            size = tuple(input_size) if input_size is not None else tuple(saved["input_size"])
            return cls(size, tuple(saved["mean"]), tuple(saved["std"]), saved["interpolation"], saved["crop_pct"])
        if not getattr(model, "registry_name", ""):
            raise ValueError("the model was not built by efficientmod.create_model; its preprocessing is unknown")
        info = model_info(model.registry_name)
        chans = model.in_chans
        size = tuple(input_size) if input_size is not None else (chans, *info.input_size[1:])
        return cls(size, _per_channel(info.mean, chans), _per_channel(info.std, chans),
                   info.interpolation, info.crop_pct)

    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from timm.data import create_transform

        return create_transform(self.input_size, is_training=False, interpolation=self.interpolation,
                                crop_pct=self.crop_pct, mean=self.mean, std=self.std)

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """The image file as a (C, H, W) tensor, decoded by the loader training uses
        (:func:`efficientmod.classify.data.load_image`); Pillow's errors pass through."""
        from efficientmod.classify.data import load_image

        return self.transform(load_image(path, "L" if self.input_size[0] == 1 else "RGB"))


def _per_channel(values: Sequence[float], chans: int) -> tuple[float, ...]:
    """ImageNet's three-channel statistics cut (or repeated) to ``chans`` channels."""
    return tuple(values[i % len(values)] for i in range(chans))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1K class names, from torchvision's bundled weight metadata
    (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names_for(num_classes: int, saved: Sequence[str] | None) -> list[str]:
    if saved is not None:
        if len(saved) != num_classes:
            raise ValueError(f"{len(saved)} saved class names for a model with {num_classes} classes")
        return list(saved)
    return imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]


def load_model(model: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """A model with its weights and ``class_names`` (None when none were saved).

    ``model`` is a registered name or a ``save_pretrained`` folder. ``checkpoint`` (with a
    name) is anything :func:`efficientmod.load_checkpoint` reads; a training checkpoint's
    ``class_names`` set the classifier width. Without a checkpoint the weights are random.
    """
    from efficientmod.checkpoint import load_checkpoint
    from efficientmod.models import create_model, model_info
    from efficientmod.models.pretrained import from_pretrained, read_config

    if Path(model).is_dir():
        if checkpoint is not None:
            raise ValueError(f"{model} is a save_pretrained folder: it holds the weights, drop --checkpoint")
        return from_pretrained(model)
    model_info(str(model))  # an unknown name fails before any file is read
    if checkpoint is not None and Path(checkpoint).is_dir():
        saved = read_config(checkpoint)["architecture"]
        if saved != str(model):
            raise ValueError(f"the folder {checkpoint} holds a {saved}, not a {model}")
        return from_pretrained(checkpoint)
    own = None if checkpoint is None else read_train_checkpoint(checkpoint, task="classification")
    class_names, kwargs = None, {}
    if own is not None:
        class_names = own.get("class_names")
        in_chans = (own.get("config") or {}).get("in_chans")
        if isinstance(in_chans, int):
            kwargs["in_chans"] = in_chans
    if class_names is not None:
        kwargs["num_classes"] = len(class_names)
    net = create_model(str(model), **kwargs)
    if checkpoint is not None:
        load_checkpoint(net, own if own is not None else checkpoint, strict=True)
    net.class_names = list(class_names) if class_names is not None else None
    if own is not None and own.get("preprocessing"):
        net.preprocessing = own["preprocessing"]
    return net


def onnx_metadata(model: nn.Module, preprocessing: Preprocessing) -> dict[str, object]:
    """What :meth:`Predictor.from_file` needs, stored in an exported file's metadata."""
    return dict(
        producer="efficientmod",
        architecture=getattr(model, "registry_name", "") or type(model).__name__,
        num_classes=model.num_classes,
        class_names=getattr(model, "class_names", None),
        deployed=bool(getattr(model, "deployed", False)),
        **asdict(preprocessing),
    )


class Prediction(NamedTuple):
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first


class Predictor:
    """Top-k classification of image files by a function from a (B, C, H, W) float32
    batch to (B, classes) logits."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], preprocessing: Preprocessing,
                 class_names: Sequence[str], metadata: dict | None = None):
        self.run = run
        self.preprocessing = preprocessing
        self.class_names = list(class_names)
        self.metadata = metadata or {}  # an exported file's (architecture, precision, ...); empty for a torch model

    @classmethod
    def from_model(cls, model: nn.Module, input_size: Sequence[int] | None = None) -> Predictor:
        """Deploy ``model`` (in place) and run it on its registry's preprocessing."""
        from efficientmod.fuse import deploy

        deploy(model)
        device = next(model.parameters()).device

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(batch.to(device)).float().cpu()

        names = _class_names_for(model.num_classes, getattr(model, "class_names", None))
        return cls(run, Preprocessing.of_model(model, input_size), names)

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int | None = None) -> Predictor:
        """An exported file (ONNX, or any format of :data:`efficientmod.export.FORMATS`) run
        in its runtime, preprocessing and classes from its metadata (written by
        ``efficientmod export``)."""
        from efficientmod.export import load_runtime

        runtime = load_runtime(path, threads)
        meta = runtime.metadata
        if meta.get("producer") != "efficientmod":
            raise ValueError(f"{path} has no efficientmod metadata (its preprocessing is unknown): "
                             "export it with `efficientmod export`")
        preprocessing = Preprocessing(tuple(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                                      meta["interpolation"], meta["crop_pct"])

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(runtime.run(batch.numpy()))

        return cls(run, preprocessing, _class_names_for(meta["num_classes"], meta.get("class_names")), meta)

    def predict(self, images: torch.Tensor, topk: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``topk`` (class name, probability) of each image of a preprocessed batch."""
        probs = self.run(images.float()).softmax(dim=-1)
        values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        return [[(self.class_names[i], p) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)]
                for row_i, row_p in zip(indices, values, strict=True)]

    def predict_files(self, paths: Iterable[str | os.PathLike], topk: int = 5, batch_size: int = 16,
                      on_error: Callable[[str, str], None] | None = None):
        """Yield a :class:`Prediction` per readable file, in order; an unreadable one is
        reported to ``on_error(path, reason)`` and skipped."""
        batch: list[tuple[str, torch.Tensor]] = []

        def flush():
            tensors = torch.stack([t for _, t in batch])
            for (path, _), top in zip(batch, self.predict(tensors, topk), strict=True):
                yield Prediction(path, top)
            batch.clear()

        for path in map(str, paths):
            try:
                batch.append((path, self.preprocessing.load(path)))
            except DECODE_ERRORS as error:
                if on_error is not None:
                    on_error(path, f"{type(error).__name__}: {error}")
                continue
            if len(batch) == batch_size:
                yield from flush()
        if batch:
            yield from flush()
