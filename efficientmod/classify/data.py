"""Data for training and evaluation: folders of images, the bundled digits demo set, the
samplers that make every run reproducible, and timm's transforms.

Reproducibility is built in at the sample level: the augmentation of sample ``i`` in epoch
``e`` is seeded from ``(seed, e, i)``, whichever process or worker loads it. So a run
resumed mid-epoch, or split over several processes, sees exactly the images an
uninterrupted single-process run sees. The samplers therefore yield ``(index, epoch)``.

Bad files never stop a run: a file Pillow cannot decode (corrupt, truncated, not an image)
comes back as a :class:`BadSample`; :func:`collate_skipping_bad` drops it from the batch and
reports it, and the engine warns once per file and counts it in the epoch summary.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler

from efficientmod.images import DECODE_ERRORS, load_image
from efficientmod.preprocessing import Preprocessing

__all__ = [
    "BadSample", "ImageFolder", "DigitsDataset", "check_image_folders", "digits_datasets",
    "TrainSampler", "ShardSampler", "collate_skipping_bad", "train_transform", "digits_preprocessing", "Batch",
    "posterize", "TransformError", "SyntheticBatches", "DataBundle", "build_datasets",
]

class BadSample(NamedTuple):
    path: str
    reason: str


class Batch(NamedTuple):
    images: torch.Tensor
    targets: torch.Tensor
    bad: list  # [BadSample] dropped from this batch


# -- folders ---------------------------------------------------------------------------------
def _leads_nowhere(path: Path) -> bool:
    """A symbolic link in a loop or to a missing target (``is_file`` is False for both)."""
    return path.is_symlink() and not path.exists()


def _class_files(class_dir: Path) -> list[Path]:
    """Every non-hidden file under ``class_dir``, with the symbolic links that lead nowhere and
    the folders that cannot be listed (no permission): they are samples that fail to load,
    reported and counted as bad files, never dropped silently."""
    found, unreadable = [], []
    for folder, _, names in os.walk(class_dir, onerror=lambda error: unreadable.append(Path(error.filename))):
        found += [Path(folder) / name for name in names if not name.startswith(".")]
    return sorted([p for p in found if p.is_file() or _leads_nowhere(p)] + unreadable)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_image_folders(root: str | Path, splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    """Validate an ImageNet-style folder before any training starts; return the class names.

    All problems (missing folder, a class folder without files, class lists that differ
    between the splits) are reported together in one ``ValueError``/``FileNotFoundError`` of
    one line.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} has no {' or '.join(s + '/' for s in missing)} folder; expected "
            f"{root}/{splits[0]}/<class>/<image>" + (f" and {root}/{splits[1]}/<class>/<image>"
                                                     if len(splits) > 1 else ""))
    problems, class_lists = [], {}
    for split in splits:
        dirs = _class_dirs(root / split)
        if not dirs:
            problems.append(f"{root / split} has no class folders")
        empty = [d.name for d in dirs if not any(p.is_file() for p in _class_files(d))]
        if empty:
            problems.append(f"{root / split}: empty class folder(s): {', '.join(empty[:20])}")
        class_lists[split] = [d.name for d in dirs]
    if len(splits) > 1:
        first, *rest = splits
        for split in rest:
            only_first = sorted(set(class_lists[first]) - set(class_lists[split]))
            only_other = sorted(set(class_lists[split]) - set(class_lists[first]))
            if only_first or only_other:
                problems.append(
                    f"class folders differ between {first}/ and {split}/: only in {first}/: "
                    f"{only_first[:20] or '-'}; only in {split}/: {only_other[:20] or '-'}")
    if problems:
        raise ValueError("bad data folder: " + "; ".join(problems))
    return class_lists[splits[0]]


@contextlib.contextmanager
def seeded(*key: int):
    """Seed ``random``, NumPy and torch from ``key`` inside the block and restore the
    previous states afterwards (the main process keeps its own random stream)."""
    seed = int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1)[0])
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _split_key(key) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (key, 0)


class ImageFolder(Dataset):
    """``root/<class>/**/<file>`` with the given class order; every non-hidden file is a
    sample (a non-image is reported as bad when loaded, not silently ignored), decoded as
    Pillow ``mode`` ("RGB", or "L" for a one-channel model: :attr:`Preprocessing.image_mode`)."""

    def __init__(self, root: str | Path, class_names: list[str], transform: Callable | None = None,
                 seed: int = 0, mode: str = "RGB"):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.transform = transform
        self.seed = seed
        self.mode = mode
        self.samples = [(str(path), label) for label, name in enumerate(self.class_names)
                        for path in _class_files(self.root / name)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch = _split_key(key)
        path, label = self.samples[index]
        try:
            image = load_image(path, self.mode)
        except DECODE_ERRORS as error:
            return BadSample(path, f"{type(error).__name__}: {error}")
        if self.transform is not None:
            with seeded(self.seed, epoch, index):
                image = apply_transform(self.transform, image, path)
        return image, label


def collate_skipping_bad(samples: list) -> Batch:
    """Stack the good samples; list the bad ones."""
    bad = [s for s in samples if isinstance(s, BadSample)]
    good = [s for s in samples if not isinstance(s, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
    images = torch.stack([image for image, _ in good])
    targets = torch.tensor([label for _, label in good], dtype=torch.long)
    return Batch(images, targets, bad)


def posterize(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (0 gives a black
    image, 8 the image itself). This is what ``ImageOps.posterize`` computed for 0..8 bits
    before Pillow 13, which refuses 0 — and RandAugment's ``PosterizeIncreasing`` asks for 0
    bits whenever it draws the top magnitude (about once in 650 images at m9, mstd 0.5)."""
    bits = max(0, min(8, int(bits_to_keep)))
    mask = (0xFF << (8 - bits)) & 0xFF
    return image.point([value & mask for value in range(256)] * len(image.getbands()))


def _augment_ops(transform) -> Iterator:
    """Every timm ``AugmentOp`` inside ``transform`` (Compose, RandAugment, AutoAugment)."""
    from timm.data.auto_augment import AugmentOp

    if isinstance(transform, AugmentOp):
        yield transform
    for name in ("transforms", "ops", "policy"):
        for child in getattr(transform, name, None) or []:
            for item in child if isinstance(child, (list, tuple)) else [child]:
                yield from _augment_ops(item)


def _with_own_posterize(transform):
    """``transform`` with timm's posterize ops replaced by :func:`posterize` (same meaning
    on every Pillow version)."""
    from timm.data import auto_augment

    for op in _augment_ops(transform):
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize
    return transform


class TransformError(RuntimeError):
    """A transform failed on an image that decoded fine: a bug in the pipeline (ours or a
    dependency's), not bad input. The message names the file, the step and where it broke."""


def apply_transform(transform: Callable, image, path: str):
    """``transform(image)``, step by step for a ``Compose``, so that a failure names its step."""
    for step in getattr(transform, "transforms", None) or [transform]:
        try:
            image = step(image)
        except Exception as error:
            frame = traceback.extract_tb(error.__traceback__)[-1]
            raise TransformError(
                f"transform {type(step).__name__} failed on {path}: {type(error).__name__}: {error} "
                f"(in {frame.name}, {Path(frame.filename).name}:{frame.lineno})") from error
    return image


def train_transform(cfg, img_size: int, mean, std):
    """timm's training transform: random resized crop, flip, RandAugment (or colour
    jitter), normalisation, random erasing — as set by the recipe ``cfg``; its posterize
    keeps the pre-Pillow-13 meaning of 0 bits (see :func:`posterize`)."""
    from timm.data import create_transform

    return _with_own_posterize(create_transform(
        img_size, is_training=True, auto_augment=cfg.aa, color_jitter=cfg.color_jitter, hflip=cfg.hflip,
        re_prob=cfg.reprob, re_mode="pixel", re_count=1, interpolation=cfg.train_interpolation,
        mean=mean, std=std,
    ))


# -- the bundled demo set ----------------------------------------------------------------
class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits (values 0..16) upscaled to ``img_size``,
    normalised to [-1, 1], one channel. ``max_shift`` > 0 adds a random translation of up
    to that many output pixels (the demo's only augmentation)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, img_size: int, max_shift: int = 0, seed: int = 0):
        small = torch.from_numpy(images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        big = F.interpolate(small, size=(img_size, img_size), mode="bilinear", align_corners=False)
        self.images = (big - 0.5) / 0.5
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.max_shift = max_shift
        self.seed = seed
        self.class_names = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index, epoch = _split_key(key)
        image = self.images[index]
        if self.max_shift:
            with seeded(self.seed, epoch, index):
                dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))  # digits sit on a black border
        return image, int(self.labels[index])


def digits_preprocessing(img_size: int) -> Preprocessing:
    """The digits' preprocessing as an image file needs it (a dark-background digit, any
    size): resize to ``img_size`` (bilinear, as the 8x8 digits are upscaled here), one
    channel, (x - 0.5) / 0.5 — what ``save_pretrained`` and export metadata record."""
    return Preprocessing((1, img_size, img_size), (0.5,), (0.5,), interpolation="bilinear", crop_pct=1.0)


def digits_datasets(img_size: int = 32, val_fraction: float = 0.2, max_shift: int = 2, seed: int = 0):
    """(train, val) split of the 1,797 digits, stratified, fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data, digits.target, test_size=val_fraction, stratify=digits.target, random_state=seed)
    return (DigitsDataset(x_train, y_train, img_size, max_shift, seed),
            DigitsDataset(x_val, y_val, img_size, 0, seed))


# -- samplers ----------------------------------------------------------------------------------
@dataclass
class TrainSampler(Sampler):
    """Shuffled epoch order from ``seed + epoch``, padded to a multiple of ``world`` and
    dealt out rank by rank (as ``DistributedSampler``), so the ranks' batches together are
    exactly the batch one process would draw. ``set_epoch(e, skip)`` starts epoch ``e``
    after its first ``skip`` samples of this rank (resuming mid-epoch)."""

    size: int
    rank: int = 0
    world: int = 1
    seed: int = 0
    epoch: int = 0
    skip: int = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def per_rank(self) -> int:
        return math.ceil(self.size / self.world)

    def __len__(self) -> int:
        return self.per_rank() - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank() * self.world - self.size]
        for index in order[self.rank::self.world][self.skip:]:
            yield index, self.epoch


@dataclass
class ShardSampler(Sampler):
    """Evaluation: every sample exactly once over all ranks (no padding, no duplicates)."""

    size: int
    rank: int = 0
    world: int = 1

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))


class SyntheticBatches:
    """The same random batch over and over, already on the device: training speed
    without any input pipeline."""

    def __init__(self, batch_size: int, in_chans: int, img_size: int, num_classes: int, device, steps: int):
        self.images = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
        self.targets = torch.randint(0, num_classes, (batch_size,), device=device)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([(self.images, self.targets, [])] * self.steps)


# -- what a run trains and validates on ----------------------------------------------------------
@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    class_names: list[str]
    in_chans: int
    preprocessing: Preprocessing  # what evaluation feeds the model (its transform is val's)


def build_datasets(cfg, img_size: int, info) -> DataBundle:
    """The folder given by ``--data`` (a :class:`~efficientmod.classify.config.TrainConfig`'s)
    with timm's transforms and the variant ``info``'s statistics, or the bundled digits."""
    if cfg.data is None:
        train, val = digits_datasets(img_size, max_shift=img_size // 16, seed=cfg.seed)
        return DataBundle(train, val, train.class_names, 1, digits_preprocessing(img_size))
    if cfg.in_chans not in (None, 3):
        raise ValueError("image folders are read as RGB; --in-chans must be 3 with --data")
    class_names = check_image_folders(cfg.data)
    root = Path(cfg.data)
    preprocessing = Preprocessing.of_timm_cfg(info.pretrained_cfg(), 3).with_input_size((3, img_size, img_size))
    train = ImageFolder(root / "train", class_names, train_transform(cfg, img_size, info.mean, info.std), cfg.seed)
    val = ImageFolder(root / "val", class_names, preprocessing.transform)
    return DataBundle(train, val, class_names, 3, preprocessing)
