"""efficientmod: efficient vision backbones (EfficientMod, EfficientViT, MobileViTv2),
from paper to deployment.

The public API is imported on first use, so that ``import efficientmod`` (and the
command line's ``--help``) stays as cheap as importing torch; importing it registers every
variant in timm as soon as timm is imported (:mod:`efficientmod.timm_registration`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from efficientmod.timm_registration import register_when_timm_is_imported

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "create_model": "efficientmod.models",
    "list_models": "efficientmod.models",
    "model_info": "efficientmod.models",
    "load_checkpoint": "efficientmod.checkpoint",
    "from_pretrained": "efficientmod.models.pretrained",
    "load_runtime": "efficientmod.export",
    "deploy": "efficientmod.fuse",
}
__all__ = [
    "create_model", "list_models", "model_info", "load_checkpoint", "from_pretrained", "deploy", "load_runtime",
]

if TYPE_CHECKING:
    from efficientmod.checkpoint import load_checkpoint
    from efficientmod.export import load_runtime
    from efficientmod.fuse import deploy
    from efficientmod.models import create_model, list_models, model_info
    from efficientmod.models.pretrained import from_pretrained


register_when_timm_is_imported()


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'efficientmod' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
