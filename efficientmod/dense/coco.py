"""A COCO-format instance data set (``--images DIR --annotations FILE.json``) for
torchvision's detectors, which checks the annotation file once and keeps only what it can use.

Checked when the data set is built, each problem skipped and counted in :attr:`skipped`
(whose report names the file and the first record skipped for each reason): image entries
without an integer id, a file name or positive integer sizes, images whose ``file_name``
leads outside the images folder (an absolute path, or ``..`` climbing out of it), images
whose file is missing, annotations without an integer id or with one already taken,
annotations of unknown images, category ids not in ``categories`` (out of range),
``iscrowd`` other than 0 / 1, an ``area`` that is not a finite non-negative number, boxes
that are empty or degenerate once clipped to the image; an unusable mask (a malformed
polygon, or an RLE whose ``size`` is not the image's or whose ``counts`` do not cover it
exactly) is replaced by the box and counted. What would change the meaning of the rest is
refused with a ``ValueError`` naming the file and the record: a category without an
integer id, a category id or an image id listed twice. Images that cannot be decoded, or
whose size is not their record's, are skipped when loaded
(:class:`~efficientmod.dense.data.Skipped`) and counted by the engine. Crowd regions are kept
for evaluation (COCO ignores detections on them) but not trained on.
"""
from __future__ import annotations

import json
import math
import os
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
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO instances file: its top level is a JSON {type(data).__name__}, "
                         "not an object of images, annotations and categories")
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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``: each
    count in 5-bit groups offset by 48, 0x20 = more groups follow, 0x10 in the last group =
    negative; from the third count on, a count is stored as the difference to the one two
    before it), or None when the string is not one."""
    counts, value, shift = [], 0, 0
    for char in text:
        group = ord(char) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    return None if shift else counts


def _usable_segmentation(segmentation, height: int, width: int) -> bool:
    """A polygon list (finite coordinates, at least three points each) or an RLE of the
    image's ``size`` whose runs (a list, or a compressed string) cover its pixels exactly."""
    if isinstance(segmentation, dict):
        if segmentation.get("size") != [height, width]:
            return False
        counts = segmentation.get("counts")
        if isinstance(counts, str):
            counts = _rle_string_counts(counts)
        return (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts)
                and sum(counts) == height * width)
    if isinstance(segmentation, list) and segmentation:
        return all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
                   for p in segmentation)
    return False


def _check_categories(path: Path, categories: list) -> list[dict]:
    """The categories sorted by id; a category without an integer id, or an id listed twice
    (which would shift every label after it), is refused naming the record."""
    where: dict[int, int] = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ValueError(f"{path}: categories[{index}] has no integer 'id': {category!r:.80}")
        if category["id"] in where:
            raise ValueError(f"{path}: category id {category['id']} is listed twice "
                             f"(categories[{where[category['id']]}] and categories[{index}])")
        where[category["id"]] = index
    return sorted(categories, key=lambda c: c["id"])


def _usable_image_entry(image) -> bool:
    """An image record with an integer id, a file name and positive integer sizes."""
    return (isinstance(image, dict) and {"id", "file_name", "width", "height"} <= set(image)
            and _is_int(image["id"]) and isinstance(image["file_name"], str)
            and all(_is_int(image[k]) and image[k] > 0 for k in ("width", "height")))


def _stays_inside(file_name: str) -> bool:
    """Whether ``file_name`` names a path under the images folder: not absolute, no ``..``
    that climbs out of it (checked on the name; symbolic links inside the folder are the
    user's and are followed)."""
    relative = Path(os.path.normpath(file_name))
    return not relative.is_absolute() and relative.parts[:1] != ("..",)


def _record(kind: str, index: int, entry) -> str:
    """``annotations[12] (id 7)``: where a record sits in the file, for the reports."""
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{index}]" + (f" (id {ident!r:.40})" if ident is not None else "")


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
        self.file = Path(annotations)
        data = _read_annotation_file(self.file)
        self.train, self.with_masks = train, masks
        self.skipped = SkipCounter()
        categories = _check_categories(self.file, data["categories"])
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

        self.images: dict[int, dict] = {}
        listed: dict[int, int] = {}
        for index, image in enumerate(data["images"]):
            if not _usable_image_entry(image):
                self._skip("malformed image entry", _record("images", index, image))
                continue
            if image["id"] in listed:
                raise ValueError(f"{self.file}: image id {image['id']} is listed twice "
                                 f"(images[{listed[image['id']]}] and images[{index}])")
            listed[image["id"]] = index
            if not _stays_inside(image["file_name"]):
                self._skip("file_name outside the images folder", _record("images", index, image))
            elif (self.root / image["file_name"]).is_file():
                self.images[image["id"]] = image
            else:
                self._skip("missing image file", _record("images", index, image))
        self.annotations: dict[int, list[dict]] = {image_id: [] for image_id in self.images}
        annotation_ids: set[int] = set()
        for index, annotation in enumerate(data["annotations"]):
            clean, problem = self._check_annotation(annotation, annotation_ids)
            if problem is not None:
                self._skip(problem, _record("annotations", index, annotation))
            if clean is not None:
                self.annotations[clean["image_id"]].append(clean)
        self.ids = sorted(self.images)
        if train:
            self.ids = [i for i in self.ids if any(not a["iscrowd"] for a in self.annotations[i])]
            if len(self.ids) < len(self.images):
                self.skipped["image without a usable annotation"] = len(self.images) - len(self.ids)
        if not self.ids:
            raise ValueError(f"no usable image in {annotations} under {self.root} ({self.skipped})")

    def _skip(self, reason: str, record: str) -> None:
        self.skipped.add(reason, f"{self.file.name} {record}")

    def _check_annotation(self, annotation, taken_ids: set[int]) -> tuple[dict | None, str | None]:
        """(the annotation as used, or None; why it was skipped or changed, or None)."""
        if not isinstance(annotation, dict):
            return None, "malformed annotation"
        if not _is_int(annotation.get("id")):
            return None, "annotation without an integer id"
        if annotation["id"] in taken_ids:
            return None, "annotation id listed twice"
        taken_ids.add(annotation["id"])
        image_id = annotation.get("image_id")
        image = self.images.get(image_id) if _is_int(image_id) else None
        if image is None:
            return None, "annotation of an unknown or missing image"
        if not _is_int(annotation.get("category_id")) or annotation["category_id"] not in self.label_of:
            return None, "category id out of range"
        iscrowd = annotation.get("iscrowd", 0)
        if iscrowd not in (0, 1) or not isinstance(iscrowd, (int, bool)):
            return None, "iscrowd is not 0 or 1"
        if "area" in annotation and not (_is_number(annotation["area"]) and annotation["area"] >= 0):
            return None, "area is not a non-negative number"
        box = _clean_box(annotation.get("bbox"), image["width"], image["height"])
        if box is None:
            return None, "empty or degenerate box"
        clean = dict(annotation, bbox=box, iscrowd=int(iscrowd))
        clean.setdefault("area", box[2] * box[3])
        if self.with_masks and not _usable_segmentation(annotation.get("segmentation"), image["height"],
                                                         image["width"]):
            x, y, w, h = box
            clean["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            return clean, "unusable mask (box used)"
        return clean, None

    def __len__(self) -> int:
        return len(self.ids)

    def coco_ground_truth(self) -> dict:
        """The checked data set as a COCO dict (what the mAP is measured against)."""
        return dict(
            images=[self.images[i] for i in self.ids],
            annotations=[a for i in self.ids for a in self.annotations[i]],
            categories=[dict(id=c, name=n) for c, n in zip(self.category_ids, self.class_names, strict=True)],
        )

    def _masks(self, annotations: list[dict], height: int, width: int) -> torch.Tensor:
        mask_api = require_pycocotools()
        masks = np.zeros((len(annotations), height, width), dtype=np.uint8)
        for k, annotation in enumerate(annotations):
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):  # polygons
                rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):  # an uncompressed RLE
                rle = mask_api.frPyObjects(segmentation, height, width)
            else:  # a compressed RLE, as is
                rle = segmentation
            masks[k] = mask_api.decode(rle)
        return torch.from_numpy(masks)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.images[image_id]
        image = read_rgb(self.root / info["file_name"])
        if isinstance(image, Skipped):
            return image
        width, height = image.size
        if (width, height) != (info["width"], info["height"]):
            return Skipped("image size differs from its record", str(self.root / info["file_name"]))
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
