"""Inference on image files: pictures with the boxes, masks or class colours drawn on
them (PNG) and the results as JSON. Drawing uses ``torchvision.utils``."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
from tqdm import tqdm

from efficientmod.checkpoint import atomic_write
from efficientmod.dense.coco import require_pycocotools
from efficientmod.dense.data import SkipCounter, Skipped, read_rgb, to_tensor
from efficientmod.dense.segmentation import IMAGE_SUFFIXES

__all__ = ["palette", "image_files", "draw_detections", "detections_to_json", "draw_classes", "run_on_images"]


def palette(num_colours: int) -> np.ndarray:
    """``num_colours`` distinct, fixed RGB colours (golden-angle hues)."""
    hues = (np.arange(num_colours) * 0.618033988749895) % 1.0
    rgb = np.stack([np.abs((hues * 6 + shift) % 6 - 3) - 1 for shift in (0, 4, 2)], 1).clip(0, 1)
    return (rgb * 200 + 40).astype(np.uint8)


def image_files(source: str | Path) -> list[Path]:
    """One image file, or the images of a folder (sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"no image file or folder at {source}")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in {source}")
    return files


def _colours(labels: torch.Tensor, num_classes: int) -> list[tuple[int, int, int]]:
    table = palette(num_classes + 1)
    return [tuple(int(c) for c in table[int(label)]) for label in labels]


def draw_detections(image: torch.Tensor, output: dict, class_names: Sequence[str],
                    threshold: float = 0.5) -> torch.Tensor:
    """``image`` (3×H×W in [0, 1]) with the detections scoring ``threshold`` or more:
    translucent masks, then boxes captioned "class score"; a uint8 3×H×W tensor."""
    picture = (image * 255).round().to(torch.uint8)
    keep = output["scores"] >= threshold
    labels = output["labels"][keep]
    colours = _colours(labels, len(class_names))
    if "masks" in output and keep.any():
        picture = draw_segmentation_masks(picture, output["masks"][keep][:, 0] > 0.5, alpha=0.45, colors=colours)
    captions = [f"{class_names[int(label) - 1]} {score:.2f}"
                for label, score in zip(labels, output["scores"][keep], strict=True)]
    return draw_bounding_boxes(picture, output["boxes"][keep], captions, colors=colours, width=2)


def detections_to_json(output: dict, class_names: Sequence[str], threshold: float = 0.5) -> list[dict]:
    """The detections scoring ``threshold`` or more: class, score, box ``[x0, y0, x1, y1]``
    (pixels) and, for masks, COCO RLE."""
    keep = output["scores"] >= threshold
    entries = [
        dict(label=class_names[int(label) - 1], label_id=int(label), score=round(float(score), 4),
             box=[round(float(v), 2) for v in box])
        for label, score, box in zip(output["labels"][keep], output["scores"][keep], output["boxes"][keep], strict=True)
    ]
    if "masks" in output and entries:
        mask_api = require_pycocotools()
        for entry, mask in zip(entries, output["masks"][keep][:, 0] > 0.5, strict=True):
            rle = mask_api.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            entry["mask_rle"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
    return entries


def draw_classes(image: torch.Tensor, class_map: torch.Tensor, num_classes: int, alpha: float = 0.5) -> torch.Tensor:
    """``image`` blended with one colour per class of ``class_map`` (H×W); uint8 3×H×W."""
    colours = torch.from_numpy(palette(num_classes)).float()[class_map.long()].permute(2, 0, 1)
    return ((1 - alpha) * image * 255 + alpha * colours).round().clamp(0, 255).to(torch.uint8)


def save_png(picture: torch.Tensor | np.ndarray, path: Path) -> None:
    array = picture.permute(1, 2, 0).numpy() if isinstance(picture, torch.Tensor) else picture
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def run_on_images(files: Sequence[Path], output: Path, infer: Callable[[Path, torch.Tensor], dict]) -> dict:
    """Call ``infer(path, image)`` on each readable file (it writes its pictures and returns
    its JSON record); unreadable files are skipped and counted. Writes and returns
    ``output/predictions.json``: ``{"images": [...], "skipped": {...}}``."""
    output.mkdir(parents=True, exist_ok=True)
    records, skipped = [], SkipCounter()
    for path in tqdm(files, desc="predict", file=sys.stderr, disable=len(files) < 2):
        image = read_rgb(path)
        if isinstance(image, Skipped):
            skipped[image.reason] += 1
            continue
        record = dict(image=str(path), width=image.width, height=image.height)
        record.update(infer(path, to_tensor(image)))
        records.append(record)
    result = dict(images=records, skipped=dict(skipped))
    atomic_write(output / "predictions.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"{len(records)} image(s) → {output} ({skipped})", file=sys.stderr)
    return result
