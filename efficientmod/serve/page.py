"""The web page at ``/`` (``static/index.html``: choose or drop images, see the top-5 with
bars) and the maps it draws over an image for artifacts that carry a torch model: the
context-modulation, attention and class-activation maps of :mod:`efficientmod.viz`."""
from __future__ import annotations

import base64
import io
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from efficientmod.classify.predict import Preprocessing
from efficientmod.viz import compute_maps, panels_for

__all__ = ["page_html", "explain", "pixels_of"]

STATIC = Path(__file__).parent / "static"


@cache
def page_html() -> str:
    return (STATIC / "index.html").read_text()


def pixels_of(tensor: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """The (H, W, 3) uint8 picture a preprocessed (C, H, W) tensor shows: the model's own
    crop, un-normalised (a one-channel image drawn in grey)."""
    mean = torch.tensor(preprocessing.mean)[:, None, None]
    std = torch.tensor(preprocessing.std)[:, None, None]
    picture = (tensor * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture


def _png_data_url(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explain(model: nn.Module, tensor: torch.Tensor, preprocessing: Preprocessing,
            class_names: list[str]) -> tuple[str, list[dict], list[str]]:
    """The predicted label of one preprocessed image, its map panels (the crop, per stage
    the deepest context and attention map, the CAM) as ``{"title", "png"}`` with PNG data
    URLs, and the notes of maps the model has none of."""
    maps = compute_maps(model, tensor[None])
    label = class_names[int(maps.classes[0])]
    panels = panels_for(pixels_of(tensor, preprocessing), maps, 0, "image", label, alpha=0.5)
    return label, [{"title": p.title, "png": _png_data_url(p.picture)} for p in panels], maps.notes
