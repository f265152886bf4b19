"""A small synthetic data set of coloured shapes, in the two on-disk formats the dense
pipelines read: COCO (images + one JSON of boxes and polygon masks) and ADE20K (images +
PNG label maps). Tests and the README's quick start use it; it needs no download.

Each image shows 1–3 shapes on a noisy dark background; the class is the shape (square,
circle, triangle), each drawn in its own hue, so a detector learns it in a few hundred steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "make_shapes_coco", "make_shapes_ade"]

SHAPES = ("square", "circle", "triangle")
_HUES = ((220, 60, 50), (60, 200, 70), (60, 90, 230))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def _draw_scene(rng: np.random.Generator, size: int):
    """An RGB image, a class-index map (0 = background, k = SHAPES[k-1]) and the shapes'
    polygons with their classes; later shapes occlude earlier ones (and overlap is kept small)."""
    background = rng.integers(20, 70, size=3)
    pixels = np.clip(background + rng.normal(0, 8, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    labels = Image.new("L", (size, size), 0)
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    objects = []
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(len(SHAPES)))
        r = float(rng.uniform(0.1, 0.2) * size)
        cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
        if any(math.hypot(cx - ox, cy - oy) < r + orad for ox, oy, orad, _, _ in objects):
            continue
        polygon = _polygon(SHAPES[cls], float(cx), float(cy), r)
        colour = tuple(int(c) for c in np.clip(np.array(_HUES[cls]) + rng.integers(-25, 26, 3), 0, 255))
        draw.polygon(polygon, fill=colour)
        draw_labels.polygon(polygon, fill=cls + 1)
        objects.append((float(cx), float(cy), r, cls, polygon))
    return image, np.asarray(labels), [(cls, polygon) for *_, cls, polygon in objects]


def make_shapes_coco(root: str | Path, num_images: int = 32, size: int = 128, seed: int = 0,
                     split: str = "train") -> tuple[Path, Path]:
    """Write ``root/<split>/*.jpg`` and ``root/<split>.json`` (COCO instances, polygon
    masks, category ids 1..3); returns (images folder, annotation file)."""
    root = Path(root)
    images_dir = root / split
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, _, objects = _draw_scene(rng, size)
        file_name = f"{image_id:05d}.jpg"
        image.save(images_dir / file_name, quality=95)
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for cls, polygon in objects:
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            flat = [round(v, 2) for point in polygon for v in point]
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cls + 1,
                                    bbox=box, area=box[2] * box[3], iscrowd=0, segmentation=[flat]))
    categories = [dict(id=i + 1, name=name, supercategory="shape") for i, name in enumerate(SHAPES)]
    annotation_file = root / f"{split}.json"
    annotation_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return images_dir, annotation_file


def make_shapes_ade(root: str | Path, num_images: int = 32, size: int = 128, seed: int = 0,
                    split: str = "training") -> Path:
    """Write the ADE20K layout ``root/images/<split>/*.jpg`` + ``root/annotations/<split>/*.png``.

    Label maps follow ADE20K's convention: 0 = unlabeled (a 2-pixel frame here), 1 =
    background, 2.. = the shapes; read with ``reduce_zero_label`` they become 0..3 with 255
    ignored. Returns ``root``.
    """
    root = Path(root)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        image, labels, _ = _draw_scene(rng, size)
        ade = labels.astype(np.uint8) + 1
        ade[:2, :] = ade[-2:, :] = ade[:, :2] = ade[:, -2:] = 0
        image.save(root / "images" / split / f"{index:05d}.jpg", quality=95)
        Image.fromarray(ade).save(root / "annotations" / split / f"{index:05d}.png")
    return root
