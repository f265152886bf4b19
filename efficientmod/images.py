"""Image decoding shared by every task: one loader for training, evaluation, prediction,
serving and dense prediction, bounded in the pixels it decodes.

Pillow's own conversions clip 16-bit and float images, ignore EXIF orientation and decode
any size; :func:`load_image` does none of that.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DECODE_ERRORS", "MAX_DECODE_PIXELS", "load_image", "load_rgb", "load_label_map"]

# What Pillow raises for a file it cannot read: UnidentifiedImageError (an OSError) for a
# non-image, OSError for a truncated file, ValueError/SyntaxError for broken headers.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# Pixels above which an image is not decoded at full size: a JPEG is decoded at 1/2, 1/4 or
# 1/8 scale (DCT scaling, Image.draft), any other format is skipped as a bad file. A
# 12,000 x 12,000 photo would otherwise cost about 2 GB per loader worker.
MAX_DECODE_PIXELS = 50_000_000

# Pillow's modes of more than 8 bits per sample, and the value that is full scale in each.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grayscale image scaled to 8 bits (Pillow's own conversion clips
    every value above 255, so a 16-bit photo comes out nearly white). Integer images
    ("I") are taken as 16-bit when they exceed 255; float images ("F") as [0, 1]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode in _WIDE_MODES:
        full = _WIDE_MODES[image.mode]
    elif image.mode == "I":
        full = 65535 if values.max(initial=0) > 255 else 255
    else:  # "F"
        full = 1.0 if values.max(initial=0) <= 1.0 else 255
    return Image.fromarray(np.clip(np.rint(values * (255 / full)), 0, 255).astype(np.uint8), "L")


def _bounded_open(path: str | Path, reduce: bool = True) -> Image.Image:
    """``Image.open`` that refuses to decode more than :data:`MAX_DECODE_PIXELS` pixels:
    a JPEG is decoded at the smallest reduction that fits (with a warning naming the file)
    when ``reduce``, anything else raises ``Image.DecompressionBombError`` (a bad file,
    skipped)."""
    image = Image.open(path)
    width, height = image.size
    if width * height <= MAX_DECODE_PIXELS:
        return image
    if reduce and image.format == "JPEG":
        scale = next(s for s in (2, 4, 8, 16) if width * height / s**2 <= MAX_DECODE_PIXELS or s == 16)
        image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))
        warnings.warn(f"{path}: {width}x{height} pixels, decoded at {image.size[0]}x{image.size[1]} "
                      f"(over the {MAX_DECODE_PIXELS:,}-pixel decode limit)", stacklevel=2)
        if image.size[0] * image.size[1] <= MAX_DECODE_PIXELS:
            return image
    image.close()
    raise Image.DecompressionBombError(f"{width}x{height} pixels is over the {MAX_DECODE_PIXELS:,}-pixel "
                                       "decode limit (efficientmod.images.MAX_DECODE_PIXELS)")


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Decode an image file as ``mode`` ("RGB" or "L", 8 bits), as it is meant to be seen —
    the one loader of training, evaluation and prediction:

    - decoded fully here, so a truncated file fails here (and is skipped as bad);
    - EXIF orientation applied (a portrait photo from a phone stands upright);
    - 16-bit and float images scaled to 8 bits, not clipped;
    - palette transparency, alpha and CMYK converted (transparency dropped);
    - never more than :data:`MAX_DECODE_PIXELS` decoded.
    """
    with _bounded_open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_MODES or image.mode in ("I", "F"):
            image = _to_8bit(image)
        elif image.mode in ("P", "PA", "LA", "RGBA"):
            image = image.convert("RGBA")  # palette transparency → alpha, then drop it
        return image.convert(mode) if image.mode != mode else image.copy()


def load_rgb(path: str | Path) -> Image.Image:
    """:func:`load_image` as 8-bit RGB."""
    return load_image(path, "RGB")


def load_label_map(path: str | Path) -> np.ndarray:
    """A label map (one class id per pixel: a grayscale, palette or 16-bit image) as the
    array of its stored values, never rescaled or converted, under the same
    :data:`MAX_DECODE_PIXELS` bound as images: a larger one raises
    ``Image.DecompressionBombError`` before anything is decoded (a label map cannot be
    decoded reduced)."""
    with _bounded_open(path, reduce=False) as label:
        return np.asarray(label)
