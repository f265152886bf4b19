"""The settings of ``efficientmod det train`` and ``seg train``, one dataclass per group of
flags: each field is a flag with its help text (:func:`efficientmod.config_flags.option`),
and the command line is generated from them (:mod:`efficientmod.cli.dense`).
:class:`DenseTrainConfig` is what the training engine takes; the others describe the data,
the backbone and the detector / segmenter the commands build. Light to import (no
torchvision, no timm), so that ``--help`` stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from efficientmod.config_flags import option
from efficientmod.runtime import AMP_CHOICES, LAST_CHECKPOINT

__all__ = [
    "DenseTrainConfig", "RunFolder", "BackboneSettings", "CocoData", "CocoValidationData", "DetectorSettings",
    "AdeData", "SegmenterSettings", "SegmentationInference", "SEG_SCHEDULE", "SCHEDULES", "DETECTORS", "RUN_LOG",
]

SCHEDULES = ("step", "cosine", "poly")
DETECTORS = ("mask_rcnn", "retinanet")
RUN_LOG = "log.jsonl"  # one line per epoch, in the run folder

OPTIMISATION, BACKBONE, DETECTOR, INFERENCE = "optimisation (AdamW)", "backbone", "detector", "inference"


@dataclass
class DenseTrainConfig:
    """Optimisation settings; the defaults are the 1× detection schedule of the papers
    (12 epochs, learning rate ×0.1 after epochs 8 and 11, linear warm-up)."""

    epochs: int | None = option(12, "training epochs", int, group=OPTIMISATION)  # None: as many as max_steps needs
    max_steps: int | None = option(None, "stop after this many steps in all", int, group=OPTIMISATION)
    batch_size: int = option(2, "images per step and process", int, group=OPTIMISATION)
    lr: float = option(2e-4, "peak learning rate", float, group=OPTIMISATION)
    weight_decay: float = option(1e-4, "AdamW weight decay", float, group=OPTIMISATION)
    schedule: str = option("step", "learning-rate decay", str, SCHEDULES, group=OPTIMISATION)
    milestones: tuple[int, ...] = option((8, 11), "epochs after which the step schedule multiplies the rate by "
                                         "--gamma", int, group=OPTIMISATION, nargs="+")
    gamma: float = option(0.1, "step schedule factor", float, group=OPTIMISATION)
    poly_power: float = 0.9
    warmup_steps: int = option(500, "linear warm-up steps", int, group=OPTIMISATION)
    warmup_ratio: float = 1e-3
    clip_grad: float | None = option(None, "clip the gradient norm to this value", float, group=OPTIMISATION)
    amp: str = option("none", "mixed precision: auto (bf16 on GPU, none on CPU), bf16 (also a bare --amp), fp16 "
                      "(with loss scaling) or none", str, AMP_CHOICES, group=OPTIMISATION, nargs="?", const="bf16")
    seed: int = option(0, "random seed", int, group=OPTIMISATION)
    workers: int = option(2, "data-loading processes", int, group=OPTIMISATION)
    meta: dict = field(default_factory=dict)  # saved with the checkpoint to rebuild the model

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.epochs is None and not self.max_steps:
            raise ValueError("give a number of epochs or of steps")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be >= 1 and the learning rate > 0")
        self.milestones = tuple(self.milestones)


# `seg train`: mmsegmentation's 40k-iteration poly schedule of the papers' ADE20K results
SEG_SCHEDULE = dict(epochs=None, max_steps=40000, schedule="poly", batch_size=4, warmup_steps=0)


@dataclass(frozen=True)
class RunFolder:
    output: Path = option(None, f"run folder ({LAST_CHECKPOINT}, {RUN_LOG}, eval.json)", Path, group=OPTIMISATION,
                          required=True)
    resume: bool = option(False, f"continue the run in --output from its {LAST_CHECKPOINT}", bool,
                          group=OPTIMISATION, action="store_true")


@dataclass(frozen=True)
class BackboneSettings:
    model: str = option("efficientmod_s", "backbone name (`efficientmod models` lists them)", str, group=BACKBONE)
    backbone_checkpoint: str | None = option(None, "classification weights for the backbone (official, timm or own "
                                             "layout, or a save_pretrained folder)", str, group=BACKBONE,
                                             metavar="PATH")
    frozen_stages: int = option(-1, "-1 trains all, 0 freezes the stem, k the stem and the first k stages", int,
                                group=BACKBONE)
    frozen_bn: bool = option(False, "freeze every BatchNorm of the backbone", bool, group=BACKBONE,
                             action="store_true")
    drop_path: float = option(0.0, "stochastic depth rate of the backbone", float, group=BACKBONE)
    fpn_channels: int = option(256, "FPN width", int, group=BACKBONE)


@dataclass(frozen=True)
class CocoData:
    images: Path = option(None, "image folder (COCO file_name root)", Path, required=True)
    annotations: Path = option(None, "COCO instances JSON", Path, required=True)


@dataclass(frozen=True)
class CocoValidationData:
    val_images: Path | None = option(None, "image folder (COCO file_name root)", Path)
    val_annotations: Path | None = option(None, "COCO instances JSON", Path)


@dataclass(frozen=True)
class DetectorSettings:
    detector: str = option("mask_rcnn", "torchvision detector: Mask R-CNN (boxes and instance masks) or RetinaNet "
                           "(boxes)", str, DETECTORS)
    min_size: int = option(800, "shorter image side after resizing", int, group=DETECTOR)
    max_size: int = option(1333, "cap on the longer side", int, group=DETECTOR)
    box_head_dim: int = option(1024, "Mask R-CNN box head width", int, group=DETECTOR)
    mask_head_channels: int = option(256, "Mask R-CNN mask head width", int, group=DETECTOR)


@dataclass(frozen=True)
class AdeData:
    data: Path = option(None, "ADE20K-layout root: DATA/images/SPLIT/*.jpg and DATA/annotations/SPLIT/*.png", Path,
                        required=True)
    split: str = option("training", "sub-folder of images/ and annotations/", str)


@dataclass(frozen=True)
class SegmenterSettings:
    val_split: str | None = option(None, "evaluate on this split after training (e.g. validation)", str)
    num_classes: int = option(150, "classes after reduce_zero_label (ADE20K: 150)", int)
    reduce_zero_label: bool = option(True, "label 0 is a class (without the flag, reduce_zero_label=%(default)s: 0 is "
                                     "ignored and ids 1.. become 0..)",
                                     bool, flag="--no-reduce-zero-label", action="store_false")
    resize: tuple[int, int] = option((2048, 512), "keep-ratio rescale bounds", int, nargs=2,
                                     metavar=("LONG", "SHORT"))
    crop_size: int = option(512, "training crop", int)
    head_channels: int = option(128, "Semantic FPN head width", int)


@dataclass(frozen=True)
class SegmentationInference:
    mode: str = option("whole", "whole image or sliding windows", str, ("whole", "slide"), group=INFERENCE)
    window: int = option(512, "sliding-window size", int, group=INFERENCE)
    stride: int = option(341, "sliding-window stride", int, group=INFERENCE)
