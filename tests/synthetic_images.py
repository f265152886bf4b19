"""Tiny ImageNet-style folders for the training and data tests, drawn with Pillow: every
image is a few random colour blocks whose layout depends on the class, so a small model
can learn them; ``make_bad_files`` adds the files a real data set breaks with."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    half = size // 2
    corner = (label % 2 * half, label // 2 % 2 * half)
    pixels[corner[0]:corner[0] + half, corner[1]:corner[1] + half, label % 3] = 230
    return Image.fromarray(pixels)


def make_image_folder(root: Path, classes=("ant", "bee"), train_per_class: int = 8, val_per_class: int = 4,
                      size: int = 40) -> Path:
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            offset = 0 if split == "train" else 10_000
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                class_image(label, offset + 100 * label + i, size).save(folder / f"{i:03d}.jpg", quality=95)
    return root


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_bad_files(folder: Path) -> dict[str, list[Path]]:
    """Files to convert (grayscale, palette with transparency, RGBA, CMYK) and files to
    skip (corrupt, truncated, not an image) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = class_image(0, 1234)
    convert = {
        "gray.png": base.convert("L"),
        "palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": base.convert("RGBA"),
        "cmyk.jpg": base.convert("CMYK"),
    }
    convert["palette.png"].info["transparency"] = 0
    for name, image in convert.items():
        image.save(folder / name)
    whole = jpeg_bytes(base)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    return dict(convert=[folder / n for n in convert],
                skip=[folder / n for n in ("corrupt.jpg", "truncated.jpg", "notes.txt")])
