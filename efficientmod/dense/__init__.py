"""Dense prediction on the library's backbones: torchvision's Mask R-CNN and RetinaNet,
Semantic FPN, their data sets (COCO, ADE20K layout), training engine, metrics and drawing.

The path of a user's data: ``create_model(features_only=True)`` → :class:`BackboneFPN`
→ torchvision detector / :class:`SemanticFPN` → :func:`train` → ``evaluate_*`` / predict.
"""
from efficientmod.dense.backbone import BackboneFPN, build_backbone_fpn, freeze_stages
from efficientmod.dense.coco import CocoInstances
from efficientmod.dense.detection import build_detector, evaluate_coco
from efficientmod.dense.engine import DenseTrainConfig, load_trained, train
from efficientmod.dense.segmentation import (
    AdeSegmentation,
    SemanticFPN,
    SemanticFPNHead,
    build_segmenter,
    evaluate_segmentation,
    segment,
)

__all__ = [
    "BackboneFPN", "build_backbone_fpn", "freeze_stages", "CocoInstances", "build_detector", "evaluate_coco",
    "DenseTrainConfig", "train", "load_trained", "AdeSegmentation", "SemanticFPN", "SemanticFPNHead",
    "build_segmenter", "evaluate_segmentation", "segment",
]
