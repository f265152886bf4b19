"""Mask R-CNN and RetinaNet (torchvision's) on any registered backbone, and COCO mAP.

The backbone + FPN comes from :mod:`efficientmod.dense.backbone`; the anchors and RoI
pools are set from its level strides (anchor of 8× the stride for Mask R-CNN's RPN, as
torchvision's 32–512 on strides 4–64; three scales from 4× the stride for RetinaNet, as its
32–813 on strides 8–128), and torchvision's transform pads batches to the backbone's
multiple. Labels are 1..K (0 is background), mapped from the COCO category ids.
"""
from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from efficientmod.dense.backbone import build_backbone_fpn
from efficientmod.dense.coco import CocoInstances, require_pycocotools
from efficientmod.dense.config import DETECTORS
from efficientmod.dense.data import SkipCounter, make_loader
from efficientmod.dense.engine import to_device
from efficientmod.models import model_info

__all__ = ["build_detector", "detection_loss", "detect", "evaluate_coco", "to_coco_results",
           "detector_meta", "build_from_meta"]

ASPECT_RATIOS = (0.5, 1.0, 2.0)


def build_detector(kind: str, backbone: str, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   fpn_channels: int = 256, out_indices: Sequence[int] | None = None, checkpoint: str | None = None,
                   frozen_stages: int = -1, frozen_bn: bool = False, drop_path_rate: float = 0.0,
                   box_head_dim: int = 1024, mask_head_channels: int = 256, **detector_kwargs) -> nn.Module:
    """torchvision's ``kind`` detector for ``num_classes`` object classes on ``backbone``.

    Args:
        kind: ``mask_rcnn`` (boxes + instance masks) or ``retinanet`` (boxes).
        min_size, max_size: torchvision's resize (shorter side, cap on the longer one);
            the papers use 800 / 1333.
        out_indices: backbone feature maps fed to the FPN (default: those of stride 4 and
            more for Mask R-CNN, 8 and more for RetinaNet).
        checkpoint, frozen_stages, frozen_bn, drop_path_rate: see
            :func:`~efficientmod.dense.backbone.build_backbone_fpn`.
        box_head_dim, mask_head_channels: widths of Mask R-CNN's RoI heads (two FC layers;
            four 3×3 convs); torchvision's and the papers' are 1024 and 256.
        detector_kwargs: passed to torchvision's ``MaskRCNN`` / ``RetinaNet``
            (``box_detections_per_img``, ``rpn_batch_size_per_image`` ...).
    """
    if kind not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    info = model_info(backbone)
    fpn = build_backbone_fpn(
        backbone, out_indices, fpn_channels, extra="maxpool" if kind == "mask_rcnn" else "p6p7",
        checkpoint=checkpoint, frozen_stages=frozen_stages, frozen_bn=frozen_bn, drop_path_rate=drop_path_rate,
        min_stride=4 if kind == "mask_rcnn" else 8,
    )
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(info.mean), image_std=list(info.std))
    if kind == "mask_rcnn":
        model = MaskRCNN(
            fpn, None,  # the class count is in the predictors
            rpn_anchor_generator=AnchorGenerator(tuple((8 * s,) for s in fpn.strides),
                                                 (ASPECT_RATIOS,) * len(fpn.strides)),
            box_roi_pool=MultiScaleRoIAlign(fpn.feature_names, output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(fpn.out_channels * 7 * 7, box_head_dim),
            box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
            mask_roi_pool=MultiScaleRoIAlign(fpn.feature_names, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(fpn.out_channels, (mask_head_channels,) * 4, dilation=1),
            mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1),
            **common, **detector_kwargs,
        )
    else:
        sizes = tuple(tuple(round(4 * s * 2 ** (i / 3)) for i in range(3)) for s in fpn.strides)
        model = RetinaNet(fpn, num_classes + 1, anchor_generator=AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes)),
                          **common, **detector_kwargs)
    model.transform.size_divisible = fpn.size_divisible
    return model


def detection_loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
    """torchvision's training losses (RPN + box + mask, or RetinaNet's focal + box)."""
    return model(images, targets)


@torch.no_grad()
def detect(model: nn.Module, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Detections per image (``boxes`` xyxy in input pixels, ``labels``, ``scores``,
    ``masks`` N×1×H×W probabilities for Mask R-CNN)."""
    model.eval()
    device = next(model.parameters()).device
    return [to_device(o, torch.device("cpu")) for o in model(to_device(images, device))]


def to_coco_results(output: dict, image_id: int, category_ids: Sequence[int],
                    mask_threshold: float = 0.5) -> list[dict]:
    """One image's detections as COCO result entries (xywh boxes, RLE masks)."""
    boxes = output["boxes"].clone()
    boxes[:, 2:] -= boxes[:, :2]
    results = [
        dict(image_id=image_id, category_id=category_ids[int(label) - 1], bbox=[round(float(v), 2) for v in box],
             score=round(float(score), 4))
        for box, label, score in zip(boxes, output["labels"], output["scores"], strict=True)
    ]
    if "masks" in output and results:
        mask_api = require_pycocotools()
        binary = (output["masks"][:, 0] > mask_threshold).numpy().astype(np.uint8)
        for result, mask in zip(results, binary, strict=True):
            rle = mask_api.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            result["segmentation"] = rle
    return results


def evaluate_coco(model: nn.Module, dataset: CocoInstances, batch_size: int = 2, workers: int = 2) -> dict:
    """COCO mAP of ``model`` on ``dataset`` (box, and mask for Mask R-CNN), via pycocotools.

    Returns ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75`` (and ``segm_*``) in [0, 1], the
    number of images evaluated, the skip counts and COCOeval's printed summary.
    """
    require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    skipped, results, evaluated = SkipCounter(dataset.skipped), [], []
    loader = make_loader(dataset, batch_size, train=False, workers=workers, device=next(model.parameters()).device)
    for images, targets, skipped_now in tqdm(loader, desc="evaluate", file=sys.stderr, leave=False):
        for sample in skipped_now:
            skipped.add(sample.reason, sample.path)
        if not images:
            continue
        for output, target in zip(detect(model, images), targets, strict=True):
            results += to_coco_results(output, target["image_id"], dataset.category_ids)
            evaluated.append(target["image_id"])
    kinds = ["bbox"] + (["segm"] if isinstance(model, MaskRCNN) else [])
    report = dict(images=len(evaluated), detections=len(results), skipped=dict(skipped),
                  skipped_first=skipped.first, summary="")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        ground_truth = COCO()
        ground_truth.dataset = dataset.coco_ground_truth()
        ground_truth.createIndex()
        for kind in kinds:
            stats = np.zeros(12)
            if results:
                evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), kind)
                evaluator.params.imgIds = evaluated
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
                stats = np.maximum(evaluator.stats, 0)  # COCOeval writes -1 where there is no ground truth
            report.update({f"{kind}_mAP": float(stats[0]), f"{kind}_mAP_50": float(stats[1]),
                           f"{kind}_mAP_75": float(stats[2])})
    report["summary"] = printed.getvalue()
    return report


META_KEYS = ("min_size", "max_size", "fpn_channels", "out_indices", "frozen_stages", "frozen_bn",
             "box_head_dim", "mask_head_channels")


def detector_meta(kind: str, backbone: str, class_names: Sequence[str], category_ids: Sequence[int],
                  **settings) -> dict:
    """What a training checkpoint records to rebuild the detector (plain values only)."""
    unknown = set(settings) - set(META_KEYS)
    if unknown:
        raise ValueError(f"not detector settings: {sorted(unknown)}")
    return dict(task="det", detector=kind, backbone=backbone, class_names=list(class_names),
                category_ids=list(category_ids), **settings)


def build_from_meta(meta: dict) -> nn.Module:
    """The detector :func:`detector_meta` describes (fresh weights)."""
    settings = {k: meta[k] for k in META_KEYS if k in meta}
    return build_detector(meta["detector"], meta["backbone"], len(meta["class_names"]), **settings)
