"""``import efficientmod`` registers every variant in timm, without importing timm itself.

Importing timm costs more than importing torch, and the command line's ``--help`` must
stay as cheap as ``import torch``. So the registration waits for timm: if timm is already
imported, the model families are imported (and register themselves) now; otherwise an
import hook runs them right after timm's own package has been imported, whoever imports
it - a user's ``import timm``, timm's scripts, transformers' ``TimmWrapper`` or this
library's own modules. Either way ``timm.create_model("efficientmod_s")`` works after
``import efficientmod``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys

__all__ = ["register_when_timm_is_imported"]


def _register() -> None:
    importlib.import_module("efficientmod.models")  # each family registers its variants


class _RegisteringLoader(importlib.abc.Loader):
    """timm's own loader, then the registration."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register()


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds ``timm`` the normal way and wraps its loader; removes itself once used."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:  # the finders that would have found it without this hook
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def register_when_timm_is_imported() -> None:
    """Register the variants in timm now if timm is imported, else as soon as it is."""
    timm = sys.modules.get("timm")
    if timm is not None and hasattr(timm, "create_model"):  # fully imported
        _register()
    elif not any(isinstance(finder, _TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
