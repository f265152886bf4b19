"""Semantic FPN (the segmenter of the EfficientMod paper's ADE20K results) on any registered
backbone, the ADE20K folder layout, mIoU / pixel accuracy, whole-image and sliding-window
inference.

Semantic FPN is the semantic branch of Panoptic FPN (Kirillov et al., CVPR 2019, Fig. 3):
every FPN level P_i of stride s_i is brought to the finest stride s_0 by
max(1, log2(s_i / s_0)) stages of [3×3 conv → norm → ReLU → 2× bilinear upsampling (the
last stage of P_0 excepted)], the levels are summed, and a 1×1 conv gives the class logits
at stride s_0, upsampled bilinearly to the input. As in mmsegmentation's FPNHead (the
implementation the papers' numbers come from): 128 channels, BatchNorm, dropout 0.1.
"""
from __future__ import annotations

import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from efficientmod.dense.backbone import BackboneFPN, build_backbone_fpn
from efficientmod.dense.data import SkipCounter, Skipped, make_loader, read_rgb, to_tensor
from efficientmod.images import DECODE_ERRORS, load_label_map
from efficientmod.models import model_info

__all__ = [
    "IGNORE_INDEX", "SemanticFPNHead", "SemanticFPN", "build_segmenter", "AdeSegmentation",
    "rescale_factor", "resize_image", "segmentation_loss", "segment", "ConfusionMatrix", "evaluate_segmentation",
    "segmenter_meta", "build_from_meta",
]

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: levels at strides ``strides`` → logits at ``strides[0]``."""

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            upsamplings = int(round(math.log2(stride / strides[0])))
            layers: list[nn.Module] = []
            for k in range(max(1, upsamplings)):
                layers += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                if upsamplings:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = self.scale_heads[0](levels[0])
        for head, level in zip(self.scale_heads[1:], levels[1:], strict=True):
            fused = fused + F.interpolate(head(level), size=fused.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(fused))


class SemanticFPN(nn.Module):
    """Backbone + FPN + :class:`SemanticFPNHead`; takes RGB images in [0, 1] (normalised
    inside with the backbone's mean/std), returns logits at the input resolution. Input
    sides must be multiples of :attr:`size_divisible` (:func:`segment` pads for you)."""

    def __init__(self, backbone: BackboneFPN, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 head_channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.head = SemanticFPNHead(backbone.out_channels, backbone.strides, num_classes, head_channels)
        self.num_classes = num_classes
        self.size_divisible = backbone.size_divisible
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = list(self.backbone((images - self.mean) / self.std).values())
        return F.interpolate(self.head(levels), size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(backbone: str, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                    checkpoint: str | None = None, frozen_stages: int = -1, frozen_bn: bool = False,
                    drop_path_rate: float = 0.0, out_indices: Sequence[int] | None = None) -> SemanticFPN:
    """Semantic FPN for ``num_classes`` classes on ``backbone`` (its feature maps of stride 4
    and more, no extra FPN level); ``checkpoint`` etc. as in :func:`~efficientmod.dense.backbone.build_backbone_fpn`."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    fpn = build_backbone_fpn(backbone, out_indices, fpn_channels, extra="none", checkpoint=checkpoint,
                             frozen_stages=frozen_stages, frozen_bn=frozen_bn, drop_path_rate=drop_path_rate,
                             min_stride=4)
    info = model_info(backbone)
    return SemanticFPN(fpn, num_classes, info.mean, info.std, head_channels)


SEGMENTER_SETTINGS = ("fpn_channels", "head_channels", "out_indices", "frozen_stages", "frozen_bn")


def segmenter_meta(backbone: str, num_classes: int, reduce_zero_label: bool, resize: Sequence[int],
                   **settings) -> dict:
    """What a training checkpoint records to rebuild the segmenter and read data as trained."""
    unknown = set(settings) - set(SEGMENTER_SETTINGS)
    if unknown:
        raise ValueError(f"not segmenter settings: {sorted(unknown)}")
    return dict(task="seg", backbone=backbone, num_classes=num_classes, reduce_zero_label=reduce_zero_label,
                resize=list(resize), **settings)


def build_from_meta(meta: dict) -> SemanticFPN:
    """The segmenter :func:`segmenter_meta` describes (fresh weights)."""
    settings = {k: meta[k] for k in SEGMENTER_SETTINGS if k in meta}
    return build_segmenter(meta["backbone"], meta["num_classes"], **settings)


# -- data -------------------------------------------------------------------------------
def rescale_factor(width: int, height: int, resize: Sequence[int]) -> float:
    """mmseg's keep-ratio rescale to ``(long, short)``: the largest factor that keeps the
    long side <= resize[0] and the short side <= resize[1]."""
    long_side, short_side = max(resize), min(resize)
    return min(long_side / max(width, height), short_side / min(width, height))


def resize_image(pixels: torch.Tensor, factor: float) -> torch.Tensor:
    """3×H×W image scaled by ``factor`` (bilinear, antialiased)."""
    size = [max(1, round(side * factor)) for side in pixels.shape[-2:]]
    return F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


class AdeSegmentation(Dataset):
    """Images + PNG label maps in the ADE20K layout: ``root/images/<split>/NAME.jpg`` and
    ``root/annotations/<split>/NAME.png`` (pixel value = class id).

    Args:
        reduce_zero_label: ADE20K's convention: 0 is "unlabeled" → ignored (255), classes
            1..150 → 0..149.
        train: rescale by a random ratio in ``ratio_range``, random crop (padding with
            the ignore index) to ``crop_size`` and random flip; otherwise the image is
            rescaled once and the full-resolution label map is kept for the metric.
        resize: ``(long, short)`` bounds of the keep-ratio rescale, ADE20K's (2048, 512).

    Images without a label map are counted in :attr:`skipped` at once; a label map whose
    size differs from its image, with class ids out of range, or of more pixels than images
    may have (:data:`efficientmod.images.MAX_DECODE_PIXELS`, checked before decoding), is
    skipped when loaded.
    """

    def __init__(self, root: str | Path, split: str, num_classes: int, train: bool = False,
                 reduce_zero_label: bool = True, resize: Sequence[int] = (2048, 512),
                 crop_size: int = 512, ratio_range: tuple[float, float] = (0.5, 2.0)):
        root = Path(root)
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} not found: expected ROOT/images/{split} and "
                                        f"ROOT/annotations/{split} (the ADE20K layout)")
        self.num_classes, self.train, self.reduce_zero_label = num_classes, train, reduce_zero_label
        self.resize, self.crop_size, self.ratio_range = tuple(resize), crop_size, ratio_range
        self.skipped = SkipCounter()
        labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.pairs = [(p, labels[p.stem]) for p in images if p.stem in labels]
        for image in images:
            if image.stem not in labels:
                self.skipped.add("image without a label map", str(image))
        image_stems = {p.stem for p in images}
        for stem in sorted(set(labels) - image_stems):
            self.skipped.add("label map without an image", str(labels[stem]))
        if not self.pairs:
            raise ValueError(f"no image with a label map in {image_dir} / {label_dir} ({self.skipped})")

    def __len__(self) -> int:
        return len(self.pairs)

    def _read_label(self, path: Path) -> np.ndarray | Skipped:
        try:
            array = load_label_map(path)
        except Image.DecompressionBombError:
            return Skipped("label map over the decode limit", str(path))
        except DECODE_ERRORS:
            return Skipped("unreadable label map", str(path))
        if array.ndim != 2:
            return Skipped("label map is not single-channel", str(path))
        array = array.astype(np.int64)
        if self.reduce_zero_label:
            array = np.where(array == 0, IGNORE_INDEX, array - 1)
        if ((array >= self.num_classes) & (array != IGNORE_INDEX)).any() or (array < 0).any():
            return Skipped("class id out of range", str(path))
        return array

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        if isinstance(image, Skipped):
            return image
        label = self._read_label(label_path)
        if isinstance(label, Skipped):
            return label
        if label.shape != (image.height, image.width):
            return Skipped("label map size differs from the image", str(label_path))
        factor = rescale_factor(image.width, image.height, self.resize)
        if self.train:
            factor *= random.uniform(*self.ratio_range)
        pixels, target = resize_image(to_tensor(image), factor), torch.from_numpy(label)
        if self.train:
            target = F.interpolate(target[None, None].float(), size=pixels.shape[-2:], mode="nearest")[0, 0].long()
            pixels, target = self._random_crop(pixels, target)
            if random.random() < 0.5:
                pixels, target = pixels.flip(-1), target.flip(-1)
        return pixels, target

    def _random_crop(self, pixels: torch.Tensor, target: torch.Tensor):
        """A ``crop_size`` square, the image padded (zeros, labels ignored) when smaller."""
        crop = self.crop_size
        height, width = target.shape
        pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        target = F.pad(target, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = random.randint(0, target.shape[0] - crop)
        left = random.randint(0, target.shape[1] - crop)
        return pixels[:, top:top + crop, left:left + crop], target[top:top + crop, left:left + crop]


# -- training and inference -----------------------------------------------------------------
def segmentation_loss(model: nn.Module, images: list[torch.Tensor], targets: list[torch.Tensor]) -> dict:
    """Pixel-wise cross-entropy, the ignore index left out."""
    logits = model(torch.stack(images))
    return dict(loss_ce=F.cross_entropy(logits, torch.stack(targets), ignore_index=IGNORE_INDEX))


def _pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(images, (0, width - images.shape[-1], 0, height - images.shape[-2]))


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` pixels, the last one flush with the end."""
    count = math.ceil(max(length - crop, 0) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


@torch.no_grad()
def segment(model: SemanticFPN, image: torch.Tensor, mode: str = "whole", crop_size: int = 512,
            stride: int = 341, output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class probabilities (K×H×W) of one image (3×H×W in [0, 1]).

    ``whole`` runs the image once (padded to the model's multiple); ``slide`` runs
    ``crop_size`` windows every ``stride`` pixels and averages where they overlap (mmseg's
    ADE20K test: 512 windows, stride 341). ``output_size`` resizes the scores (e.g. to the
    label map's size).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    model.eval()
    device = next(model.parameters()).device
    image = image.to(device)[None]
    height, width = image.shape[-2:]
    multiple = model.size_divisible
    if mode == "whole":
        padded = _pad_to(image, math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
        logits = model(padded)[..., :height, :width]
    else:
        if crop_size % multiple:
            raise ValueError(f"crop size {crop_size} must be a multiple of {multiple} for this backbone")
        image = _pad_to(image, max(height, crop_size), max(width, crop_size))
        logits = image.new_zeros(1, model.num_classes, *image.shape[-2:])
        counts = image.new_zeros(1, 1, *image.shape[-2:])
        for top in _window_starts(image.shape[-2], crop_size, stride):
            for left in _window_starts(image.shape[-1], crop_size, stride):
                window = (..., slice(top, top + crop_size), slice(left, left + crop_size))
                logits[window] += model(image[window])
                counts[window] += 1
        logits = (logits / counts)[..., :height, :width]
    if output_size is not None and tuple(output_size) != (height, width):
        logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
    return logits.softmax(1)[0].cpu()


class ConfusionMatrix:
    """Pixel counts ``matrix[true, predicted]`` over the non-ignored pixels."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != IGNORE_INDEX
        index = target[valid] * self.num_classes + prediction[valid]
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def metrics(self) -> dict:
        """``mIoU`` and ``mAcc`` (means over the classes present in labels or predictions,
        as mmseg), ``aAcc`` (pixel accuracy) and the per-class IoU (NaN when absent)."""
        matrix = self.matrix.double()
        true_positive = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - true_positive
        iou = true_positive / union  # NaN where a class is neither labelled nor predicted
        accuracy = true_positive / matrix.sum(1)
        return dict(
            mIoU=float(iou.nanmean()), mAcc=float(accuracy.nanmean()),
            aAcc=float(true_positive.sum() / matrix.sum().clamp(min=1)),
            IoU=[None if math.isnan(v) else round(v, 4) for v in iou.tolist()],
        )


def evaluate_segmentation(model: SemanticFPN, dataset: AdeSegmentation, mode: str = "whole",
                          crop_size: int = 512, stride: int = 341, workers: int = 2) -> dict:
    """mIoU, mAcc, aAcc on ``dataset`` (scores resized to each label map's full size),
    with the number of images evaluated and the skip counts."""
    confusion, skipped, evaluated = ConfusionMatrix(model.num_classes), SkipCounter(dataset.skipped), 0
    loader = make_loader(dataset, 1, train=False, workers=workers, device=next(model.parameters()).device)
    for images, targets, skipped_now in tqdm(loader, desc="evaluate", file=sys.stderr, leave=False):
        for sample in skipped_now:
            skipped.add(sample.reason, sample.path)
        for image, target in zip(images, targets, strict=True):
            scores = segment(model, image, mode, crop_size, stride, output_size=tuple(target.shape))
            confusion.update(scores.argmax(0), target)
            evaluated += 1
    return dict(confusion.metrics(), images=evaluated, skipped=dict(skipped), skipped_first=skipped.first)
