"""Classify image files with a deployed model or an exported ONNX file.

The straight line: :func:`load_model` (a registered name + checkpoint, or a
``save_pretrained`` folder) → :func:`~efficientmod.fuse.deploy` → :class:`Predictor`
(or :meth:`Predictor.from_file`, which reads what it needs from the file's metadata) →
:meth:`Predictor.predict_files`. Each model brings the :class:`~efficientmod.preprocessing.
Preprocessing` it declares (saved with its weights or in an export's metadata, else its
variant's) and its class names: those saved with the weights, else ImageNet's for 1000
classes, else the class indices.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from efficientmod.images import DECODE_ERRORS
from efficientmod.metadata import check_class_names, class_names_of
from efficientmod.preprocessing import Preprocessing
from efficientmod.runtime import read_train_checkpoint

__all__ = ["Prediction", "Predictor", "check_model_argument", "load_model", "imagenet_class_names"]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1K class names, from torchvision's bundled weight metadata
    (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names_for(num_classes: int, saved: Sequence[str] | None) -> list[str]:
    if saved is not None:
        return check_class_names(saved, num_classes)
    return imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]


def _from_folder(model: str, folder: str | os.PathLike) -> nn.Module:
    from efficientmod.models.pretrained import from_pretrained, read_config

    saved = read_config(folder)["architecture"]
    if saved != model:
        raise ValueError(f"the folder {folder} holds a {saved}, not a {model}")
    return from_pretrained(folder)


def check_model_argument(model: str | os.PathLike) -> None:
    """``model`` must be a ``save_pretrained`` folder or a registered name: a path that is
    no folder is a ``FileNotFoundError`` (or a ``ValueError`` for a file), another name a
    ``ValueError`` listing the closest names."""
    from efficientmod.models import model_info

    path = Path(model)
    if path.is_dir():
        return
    if path.is_file():
        raise ValueError(f"{model} is a file, not a save_pretrained folder: pass it as --checkpoint "
                         "of a registered model name (or an exported .onnx / .xml / .pte file)")
    if any(separator in str(model) for separator in "/\\"):  # no registered name holds one
        raise FileNotFoundError(f"model folder not found: {model}")
    model_info(str(model))


def load_model(model: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
               num_classes: int | None = None, use_ema: bool = False) -> nn.Module:
    """A model with its weights, declaring its preprocessing and class names (those saved
    with the weights; see :meth:`~efficientmod.models.base.Backbone.declare`).

    ``model`` is a registered name or a ``save_pretrained`` folder. ``checkpoint`` (with a
    name) is a ``save_pretrained`` folder or anything :func:`efficientmod.load_checkpoint`
    reads; a training checkpoint sets the classes, the input channels and the preprocessing
    (its EMA weights with ``use_ema``); other weights get a classifier of ``num_classes``
    (default 1000). Without a checkpoint the weights are random.
    """
    from efficientmod.checkpoint import load_checkpoint
    from efficientmod.models import create_model, model_info
    from efficientmod.models.pretrained import from_pretrained

    check_model_argument(model)  # an unknown name or a missing folder fails before any file is read
    if use_ema and (checkpoint is None or Path(checkpoint).is_dir()):
        raise ValueError("EMA weights are in a training checkpoint (last.pth, best.pth), not in a model folder")
    if Path(model).is_dir():
        if checkpoint is not None:
            raise ValueError(f"{model} is a save_pretrained folder: it holds the weights, drop --checkpoint")
        return from_pretrained(model)
    name = model_info(str(model)).name
    if checkpoint is not None and Path(checkpoint).is_dir():
        return _from_folder(name, checkpoint)
    own = None if checkpoint is None else read_train_checkpoint(checkpoint, task="classification")
    if use_ema and (own is None or own.get("ema") is None):
        raise ValueError(f"{checkpoint} holds no EMA weights")
    if own is None:
        net = create_model(name, num_classes=1000 if num_classes is None else num_classes)
        if checkpoint is not None:
            load_checkpoint(net, checkpoint, strict=True)
        return net
    class_names, in_chans = own.get("class_names"), (own.get("config") or {}).get("in_chans")
    kwargs = dict(in_chans=in_chans) if isinstance(in_chans, int) else {}
    net = create_model(name, num_classes=len(class_names) if class_names is not None else 1000, **kwargs)
    load_checkpoint(net, own["ema"] if use_ema else own["model"], strict=True)
    saved = own.get("preprocessing")
    net.declare(None if saved is None else Preprocessing.from_dict(saved, str(checkpoint)), class_names)
    return net


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
        """Deploy ``model`` (in place) and run it on the preprocessing it declares (another
        ``input_size`` when given)."""
        from efficientmod.fuse import deploy

        deploy(model)
        device = next(model.parameters()).device

        @torch.no_grad()
        def run(batch: torch.Tensor) -> torch.Tensor:
            return model(batch.to(device)).float().cpu()

        names = _class_names_for(model.num_classes, class_names_of(model))
        return cls(run, Preprocessing.of_model(model, input_size), names)

    @classmethod
    def from_file(cls, path: str | os.PathLike, threads: int | None = None, **options) -> Predictor:
        """An exported file (ONNX, or any format of :data:`efficientmod.export.FORMATS`) run
        in its runtime (``options``: see :func:`efficientmod.load_runtime`), preprocessing and
        classes from its metadata (written by ``efficientmod export``)."""
        from efficientmod.export import load_classifier

        runtime, meta = load_classifier(path, threads, **options)

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(runtime.run(batch.numpy()))

        return cls(run, meta.preprocessing, _class_names_for(meta.num_classes, meta.class_names), runtime.metadata)

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
