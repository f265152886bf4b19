"""A COCO-format instance data set (``--images DIR --annotations FILE.json``) for
torchvision's detectors, which checks the annotation file once and keeps only what it can use.

Checked when the data set is built, each problem skipped and counted in :attr:`skipped`:
images whose file is missing, annotations of unknown images, category ids not in
``categories`` (out of range), boxes that are empty or degenerate once clipped to the image,
unusable polygons (the box is then used as the mask). Images that cannot be decoded are
skipped when loaded (:class:`~efficientmod.dense.data.Skipped`) and counted by the engine.
Crowd regions are kept for evaluation (COCO ignores detections on them) but not trained on.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from efficientmod.dense.data import SkipCounter, Skipped, read_rgb, to_tensor

__all__ = ["CocoInstances", "require_pycocotools"]


def require_pycocotools():
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError as error:
        raise ImportError("COCO masks and mAP need pycocotools: pip install 'efficientmod[dense]'") from error
    return pycocotools.mask


def _read_annotation_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON file: {error}") from error
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise ValueError(f"{path} is not a COCO instances file: no list {missing}")
    if not data["categories"]:
        raise ValueError(f"{path} lists no categories")
    return data


def _clean_box(bbox, width: int, height: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` clipped to the image, or None when empty or malformed."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def _usable_segmentation(segmentation) -> bool:
    if isinstance(segmentation, dict):
        return "counts" in segmentation and "size" in segmentation
    if isinstance(segmentation, list) and segmentation:
        return all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation)
    return False


class CocoInstances(Dataset):
    """Samples ``(image CHW float [0,1], target)`` as torchvision's detectors take them:
    ``boxes`` (xyxy), ``labels`` (1..K, 0 is background), ``masks`` (N×H×W uint8 when
    ``masks=True``), ``image_id``.

    Args:
        images: folder the ``file_name`` entries are relative to.
        annotations: the COCO instances JSON.
        train: random horizontal flips; images without a usable annotation are dropped.
        masks: decode instance masks (Mask R-CNN); off for box-only detectors.
    """

    def __init__(self, images: str | Path, annotations: str | Path, train: bool = False, masks: bool = True):
        self.root = Path(images)
        if not self.root.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.root}")
        data = _read_annotation_file(Path(annotations))
        self.train, self.with_masks = train, masks
        self.skipped = SkipCounter()
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        self.images: dict[int, dict] = {}
        for image in data["images"]:
            if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= set(image):
                self.skipped["malformed image entry"] += 1
            elif (self.root / image["file_name"]).is_file():
                self.images[image["id"]] = image
            else:
                self.skipped["missing image file"] += 1
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        for annotation in data["annotations"]:
            if not isinstance(annotation, dict):
                self.skipped["malformed annotation"] += 1
                continue
            clean = self._check_annotation(annotation)
            if clean is not None:
                self.annotations[clean["image_id"]].append(clean)
        self.ids = sorted(self.images)
        if train:
            self.ids = [i for i in self.ids if any(not a["iscrowd"] for a in self.annotations[i])]
            if len(self.ids) < len(self.images):
                self.skipped["image without a usable annotation"] = len(self.images) - len(self.ids)
        if not self.ids:
            raise ValueError(f"no usable image in {annotations} under {self.root} ({self.skipped})")

    def _check_annotation(self, annotation: dict) -> dict | None:
        image = self.images.get(annotation.get("image_id"))
        if image is None:
            self.skipped["annotation of an unknown or missing image"] += 1
            return None
        if annotation.get("category_id") not in self.label_of:
            self.skipped["category id out of range"] += 1
            return None
        box = _clean_box(annotation.get("bbox"), image["width"], image["height"])
        if box is None:
            self.skipped["empty or degenerate box"] += 1
            return None
        clean = dict(annotation, bbox=box, iscrowd=int(annotation.get("iscrowd", 0)))
        clean.setdefault("area", box[2] * box[3])
        if self.with_masks and not _usable_segmentation(annotation.get("segmentation")):
            self.skipped["unusable mask (box used)"] += 1
            x, y, w, h = box
            clean["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        return clean

    def __len__(self) -> int:
        return len(self.ids)

    def coco_ground_truth(self) -> dict:
        """The checked data set as a COCO dict (what the mAP is measured against)."""
        return dict(
            images=[self.images[i] for i in self.ids],
            annotations=[a for i in self.ids for a in self.annotations[i]],
            categories=[dict(id=c, name=n) for c, n in zip(self.category_ids, self.class_names)],
        )

    def _masks(self, annotations: list[dict], height: int, width: int) -> torch.Tensor:
        mask_api = require_pycocotools()
        masks = np.zeros((len(annotations), height, width), dtype=np.uint8)
        for k, annotation in enumerate(annotations):
            rles = mask_api.frPyObjects(annotation["segmentation"], height, width)
            masks[k] = mask_api.decode(mask_api.merge(rles) if isinstance(rles, list) else rles)
        return torch.from_numpy(masks)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.images[image_id]
        image = read_rgb(self.root / info["file_name"])
        if isinstance(image, Skipped):
            return image
        width, height = image.size
        annotations = [a for a in self.annotations[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        target = dict(
            boxes=boxes,
            labels=torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            image_id=image_id,
        )
        if self.with_masks:
            target["masks"] = self._masks(annotations, height, width)
        pixels = to_tensor(image)
        if self.train and random.random() < 0.5:
            pixels = pixels.flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return pixels, target
