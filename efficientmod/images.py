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


def _nominal_range(mode: str, low: float, high: float) -> tuple[float, float] | None:
    """The range ``mode``'s values are meant in, given the image's ``low`` and ``high`` values:
    16-bit modes 0..65535; 32-bit integers ("I") 0..255 when they fit, else 0..65535; floats
    ("F") 0..1. None when the image leaves that range (a 32-bit or float image of any scale)."""
    if mode in _WIDE_MODES:
        return 0, _WIDE_MODES[mode]
    if mode == "I":
        full = next((full for full in (255, 65535) if high <= full), None)
        return (0, full) if full is not None and low >= 0 else None
    return (0, 1.0) if low >= 0 and high <= 1.0 else None  # "F"


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grayscale image scaled to 8 bits (Pillow's own conversion clips
    every value above 255, so a 16-bit photo comes out nearly white). The rule: values in the
    mode's nominal range (:func:`_nominal_range`) are scaled from that range, so a dark image
    stays dark; an image that leaves it (a float image above 1.0 or below 0, 32-bit integers
    above 65535 or negative) is scaled from its own minimum..maximum to 0..255 (a constant one
    is black). Non-finite float values (NaN, inf) count as 0."""
    values = np.asarray(image, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    low, high = _nominal_range(image.mode, low, high) or (low, max(high, low + 1e-12))
    scaled = (values - low) * 255 / (high - low)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


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
    - 16-bit, 32-bit and float images scaled to 8 bits, not clipped (:func:`_to_8bit`);
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
