"""efficientmod: efficient vision backbones (EfficientMod, EfficientViT, MobileViTv2),
from paper to deployment.

The public API is imported on first use, so that ``import efficientmod`` (and the
command line's ``--help``) stays as cheap as importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "create_model": "efficientmod.models",
    "list_models": "efficientmod.models",
    "model_info": "efficientmod.models",
    "load_checkpoint": "efficientmod.checkpoint",
    "from_pretrained": "efficientmod.checkpoint",
    "load_runtime": "efficientmod.export",
}
__all__ = [
    "create_model", "list_models", "model_info", "load_checkpoint", "from_pretrained", "deploy", "load_runtime",
]

# eager: the function shadows its own module's name, which a later `import
# efficientmod.deploy` would otherwise bind here
from efficientmod.deploy import deploy  # noqa: E402

if TYPE_CHECKING:
    from efficientmod.checkpoint import from_pretrained, load_checkpoint
    from efficientmod.export import load_runtime
    from efficientmod.models import create_model, list_models, model_info


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'efficientmod' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
