"""Dense prediction on the library's backbones: torchvision's Mask R-CNN and RetinaNet,
Semantic FPN, their data sets (COCO, ADE20K layout), training engine, metrics and drawing.

The path of a user's data: ``create_model(features_only=True)`` → :class:`BackboneFPN`
→ torchvision detector / :class:`SemanticFPN` → :func:`train` → ``evaluate_*`` / predict.

The names below are imported on first use, so that the command line's ``--help`` (which
reads the flags of :mod:`efficientmod.dense.config`) imports neither torchvision nor timm.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it
_PUBLIC = {
    "BackboneFPN": "efficientmod.dense.backbone",
    "build_backbone_fpn": "efficientmod.dense.backbone",
    "freeze_stages": "efficientmod.dense.backbone",
    "CocoInstances": "efficientmod.dense.coco",
    "DenseTrainConfig": "efficientmod.dense.config",
    "build_detector": "efficientmod.dense.detection",
    "evaluate_coco": "efficientmod.dense.detection",
    "train": "efficientmod.dense.engine",
    "load_trained": "efficientmod.dense.engine",
    "AdeSegmentation": "efficientmod.dense.segmentation",
    "SemanticFPN": "efficientmod.dense.segmentation",
    "SemanticFPNHead": "efficientmod.dense.segmentation",
    "build_segmenter": "efficientmod.dense.segmentation",
    "evaluate_segmentation": "efficientmod.dense.segmentation",
    "segment": "efficientmod.dense.segmentation",
}
__all__ = [
    "BackboneFPN", "build_backbone_fpn", "freeze_stages", "CocoInstances", "DenseTrainConfig", "build_detector",
    "evaluate_coco", "train", "load_trained", "AdeSegmentation", "SemanticFPN", "SemanticFPNHead",
    "build_segmenter", "evaluate_segmentation", "segment",
]

if TYPE_CHECKING:
    from efficientmod.dense.backbone import BackboneFPN, build_backbone_fpn, freeze_stages
    from efficientmod.dense.coco import CocoInstances
    from efficientmod.dense.config import DenseTrainConfig
    from efficientmod.dense.detection import build_detector, evaluate_coco
    from efficientmod.dense.engine import load_trained, train
    from efficientmod.dense.segmentation import (
        AdeSegmentation,
        SemanticFPN,
        SemanticFPNHead,
        build_segmenter,
        evaluate_segmentation,
        segment,
    )


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'efficientmod.dense' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
