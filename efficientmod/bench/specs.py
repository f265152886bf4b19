"""Command-line model specs turned into :class:`~efficientmod.bench.protocol.Candidate`:
``efficientmod_s`` (a registered model), ``'efficientvit_m*'`` (a glob over the registry),
``timm:mobilevit_xxs`` (timm's own implementation), ``efficientmod_s@deploy`` (after
:func:`efficientmod.deploy`, inference-time fusion)."""
from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch.nn as nn

from efficientmod.bench.protocol import Candidate
from efficientmod.fuse import deploy

__all__ = ["PAPER_RESULTS", "paper_results", "expand_specs", "resolve_models"]

PAPER_RESULTS = Path(__file__).parents[1] / "assets" / "paper_results.json"


def paper_results() -> dict:
    """The papers' top-1 of the timm peers and their speed claims (``assets/paper_results.json``)."""
    return json.loads(PAPER_RESULTS.read_text())


def _timm_candidate(name: str, img_size: int | None) -> Candidate:
    import timm

    from efficientmod.models import list_models, model_info

    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}.{hint}")
    model = _create_at_size(timm.create_model, name, img_size)
    input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    peer = paper_results()["peers"].get(f"timm:{name}")
    if peer is not None:
        family, top1, source = peer["family"], peer["top1"], peer["top1_source"]
    elif name in list_models():  # timm's implementation of a variant we also register
        info = model_info(name)
        family, top1, source = info.family, info.top1, info.top1_source
    else:
        family, top1, source = "timm", None, ""
    return Candidate(f"timm:{name}", family, model, _sized(input_size, img_size), top1, source)


def _registry_candidate(name: str, img_size: int | None) -> Candidate:
    from efficientmod.models import create_model, model_info

    info = model_info(name)
    return Candidate(name, info.family, _create_at_size(create_model, name, img_size),
                     _sized(info.input_size, img_size), info.top1, info.top1_source)


def _create_at_size(create: Callable[..., nn.Module], name: str, img_size: int | None) -> nn.Module:
    """``create(name)``, rebuilt for ``img_size`` when its class takes one (architectures with
    resolution-dependent parts, such as attention biases, need it)."""
    model = create(name)
    if img_size is not None and "img_size" in inspect.signature(type(model)).parameters:
        model = create(name, img_size=img_size)
    return model


def _sized(input_size, img_size: int | None) -> tuple[int, int, int]:
    return tuple(input_size) if img_size is None else (input_size[0], img_size, img_size)


def expand_specs(specs: Iterable[str]) -> list[str]:
    """Expand glob patterns over the registry (``efficientvit_m*``), keeping order, no repeats."""
    from efficientmod.models import list_models

    expanded = []
    for spec in specs:
        name, at, suffix = spec.partition("@")
        if not name.startswith("timm:") and any(ch in name for ch in "*?["):
            matches = list_models(name)
            if not matches:
                raise ValueError(f"no model matches {name!r}; `efficientmod models` lists them")
            expanded += [m + at + suffix for m in matches]
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded))


def resolve_models(specs: Iterable[str], img_size: int | None = None) -> list[Candidate]:
    """Build the candidates named by ``specs``.

    A spec is a registered name or glob (``efficientmod_s``, ``efficientvit_m*``), or
    ``timm:NAME`` for timm's own implementation; a ``@deploy`` suffix applies
    :func:`efficientmod.deploy` (inference-time fusion) before measuring. ``img_size``
    replaces every model's own input resolution. Unknown names raise ``ValueError`` with
    the closest known names.
    """
    candidates = []
    for spec in expand_specs(specs):
        name, _, suffix = spec.partition("@")
        if suffix not in ("", "deploy"):
            raise ValueError(f"{spec!r}: unknown suffix '@{suffix}' (only '@deploy' exists)")
        if name.startswith("timm:"):
            candidate = _timm_candidate(name.removeprefix("timm:"), img_size)
        else:
            candidate = _registry_candidate(name, img_size)
        if suffix:
            candidate.model = deploy(candidate.model.eval())
            candidate.label = spec
        candidates.append(candidate)
    return candidates
