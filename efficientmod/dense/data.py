"""What the dense data sets share: reading an image, skipping a sample that cannot be read
(the batch goes on without it, the reason is counted), and the data loaders."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from efficientmod.images import DECODE_ERRORS, load_rgb

__all__ = ["Skipped", "SkipCounter", "read_rgb", "to_tensor", "collate", "make_loader", "fixed_input_shapes"]


@dataclass(frozen=True)
class Skipped:
    """Returned by a data set in place of a sample it cannot use; ``reason`` is the count key."""

    reason: str
    path: str = ""


class SkipCounter(Counter):
    """Counts skipped samples or annotations by reason; ``str()`` gives a one-line report
    that names, for each reason, the first file or record skipped for it (see :meth:`add`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first: dict[str, str] = dict(getattr(args[0], "first", {})) if args else {}

    def add(self, reason: str, where: str = "") -> None:
        """Count one skip for ``reason``; ``where`` names the file / record (the first one is kept)."""
        self[reason] += 1
        if where:
            self.first.setdefault(reason, where)

    def __str__(self) -> str:
        if not self:
            return "nothing skipped"
        return "skipped: " + ", ".join(
            f"{n} × {reason}" + (f" (first: {self.first[reason]})" if reason in self.first else "")
            for reason, n in sorted(self.items()))


def read_rgb(path: str | Path) -> Image.Image | Skipped:
    """The image as RGB (decoded as :func:`efficientmod.images.load_rgb` decodes it), or
    :class:`Skipped` when the file is missing or cannot be decoded."""
    try:
        return load_rgb(path)
    except FileNotFoundError:
        return Skipped("missing image file", str(path))
    except DECODE_ERRORS:
        return Skipped("unreadable image file", str(path))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 → CHW float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def collate(batch: list) -> tuple[list, list, list[Skipped]]:
    """(inputs, targets, skipped): the usable samples of ``batch`` and the reasons of the others."""
    kept = [sample for sample in batch if not isinstance(sample, Skipped)]
    skipped = [sample for sample in batch if isinstance(sample, Skipped)]
    return [s[0] for s in kept], [s[1] for s in kept], skipped


def fixed_input_shapes(task: str) -> bool:
    """Whether every training step of ``task`` ("det" or "seg") runs on tensors of one shape,
    which is when cuDNN's autotuner (``cudnn.benchmark``) pays: it times every convolution
    algorithm once per new shape. Semantic FPN trains on fixed square crops. Detection does
    not: images are resized keeping their aspect ratio and padded per batch, and the mask
    head of Mask R-CNN sees a different number of proposals at every step, so the autotuner
    would search again at nearly every step."""
    return task == "seg"


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int = 2, seed: int = 0,
                device: torch.device | None = None) -> DataLoader:
    """A loader of :func:`collate` batches. For training, a ``DistributedSampler`` (one
    replica when ``torch.distributed`` is not initialised) shuffles by ``seed + epoch`` —
    call ``loader.sampler.set_epoch(epoch)`` — and shards across ranks, so a resumed run
    draws the epoch order an uninterrupted one draws. For a CUDA ``device`` the batches
    come in pinned memory, so that ``to(device, non_blocking=True)`` overlaps the copy
    with the GPU's work (from pageable memory it would wait)."""
    sampler = None
    if train:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas = dict(num_replicas=1, rank=0) if not distributed else {}
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, **replicas)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=device is not None and torch.device(device).type == "cuda",
    )
