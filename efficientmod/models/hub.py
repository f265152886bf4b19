"""Released weights, loaded the way timm loads weights.

``pretrained=True`` goes through timm's own loader (``build_model_with_cfg`` →
``load_pretrained``), which reads a variant's ``pretrained_cfg``: EfficientViT and
MobileViTv2 name timm's Hugging Face hub repositories, fetched by ``huggingface_hub``
(its cache, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` apply); EfficientMod's official
checkpoints sit in Google Drive folders with no stable URL, so their ``pretrained_cfg``
records where, and the file comes in through timm's ``pretrained_cfg_overlay=dict(file=...)``.
Whatever the layout of the weights (timm's, the official release's, this library's), the
loader's filter converts them with the converters each family registers.

This module also writes the model card of a ``save_pretrained`` folder
(:mod:`efficientmod.models.pretrained`), which is a hub repository as it stands
(``config.json`` in timm's format, ``model.safetensors``, ``README.md``). It knows variants
through :class:`~efficientmod.models.info.ModelInfo`, not the registry (which imports it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn
from timm.models import resolve_pretrained_cfg

from efficientmod.metadata import MAX_CLASSES, check_class_names
from efficientmod.models.info import ModelInfo
from efficientmod.preprocessing import MAX_INPUT_CHANNELS, MAX_INPUT_SIDE, Preprocessing

__all__ = ["WeightsNotAvailableError", "convert_pretrained", "source_overlay", "model_card", "check_config",
           "check_build_arguments"]


class WeightsNotAvailableError(FileNotFoundError):
    """Released weights that are neither cached nor downloadable here; the message names
    them, the cache searched and what to do."""


def convert_pretrained(state_dict: dict, model: nn.Module) -> dict:
    """timm's ``pretrained_filter_fn``: unwrap (``model`` / ``state_dict`` dicts,
    ``module.`` prefixes), convert ``state_dict`` to ``model``'s own layout and check that it
    fits (a :class:`~efficientmod.checkpoint.CheckpointError` naming the keys, not timm's
    ``load_state_dict`` traceback) - except what timm itself adapts next: the classifier
    when the class count differs, the first conv when the model has another ``in_chans``."""
    from efficientmod.checkpoint import check_fits, read_state_dict, to_own_layout

    state, layout = to_own_layout(model, read_state_dict(state_dict))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    adapted = []
    if model.num_classes != cfg.get("num_classes", model.num_classes):
        adapted.append(cfg.get("classifier"))
    if getattr(model, "in_chans", 3) != 3:
        adapted.append(cfg.get("first_conv"))
    own = model.state_dict()
    ignored = {k for k in set(own) | set(state) for prefix in adapted if prefix and k.startswith(prefix + ".")}
    check_fits(own, state, layout, ignored=ignored)
    return state


def _hub_cache(cache_dir) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _not_available(repo_id: str, cache_dir, model_name: str = "") -> WeightsNotAvailableError:
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face hub cannot be reached"
    of = f" of {model_name}" if model_name else ""
    return WeightsNotAvailableError(
        f"pretrained weights{of} ({repo_id} on the Hugging Face hub) are not in the cache {_hub_cache(cache_dir)} "
        f"and {why}. On a machine with network run `hf download {repo_id}` and copy its cache folder here, "
        "point HF_HUB_CACHE at a cache that holds them, or pass pretrained=PATH to a local checkpoint file"
    )


def _is_hub_unreachable(error: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled))


def check_source(info: ModelInfo, kwargs: dict) -> None:
    """Raise a ``FileNotFoundError`` naming a weights file that is not there, or a
    ``ValueError`` saying where weights are when ``pretrained=True`` has no source for
    ``info`` (EfficientMod: the official Google Drive folders)."""
    cfg = resolve_pretrained_cfg(info.timm_name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")).to_dict()
    file = cfg.get("file")
    if file and cfg.get("source") in (None, "", "timm") and not cfg.get("state_dict") and not Path(file).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {file}")  # (timm's own message is empty)
    if any(cfg.get(k) for k in ("hf_hub_id", "url", "file", "state_dict")):
        return
    weights = info.weights
    where = ""
    if weights is not None and weights.origin_url:
        files = " or ".join(weights.file_names) or "the checkpoint"
        where = f" The authors share them at {weights.origin_url} ({files}); download it, then"
    raise ValueError(
        f"{info.name}: its weights have no stable download URL.{where} pass the file: "
        f"efficientmod.create_model({info.name!r}, pretrained=PATH) (or checkpoint_path=PATH), or "
        f"timm.create_model({info.timm_name!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))"
    )


def build_error(info: ModelInfo, error: BaseException, kwargs: dict) -> Exception | None:
    """The one clear error that replaces ``error`` (raised while loading weights), or None."""
    from urllib.error import URLError

    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if isinstance(error, URLError) and overlay.get("url"):
        return WeightsNotAvailableError(
            f"cannot download pretrained weights from {overlay['url']}: {getattr(error, 'reason', error)}. "
            "Download the file where the address can be reached and pass pretrained=PATH")
    if _is_hub_unreachable(error):
        cfg = resolve_pretrained_cfg(info.timm_name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        return _not_available(cfg.hf_hub_id, kwargs.get("cache_dir"), info.name)
    return None


def check_config(config, source: str) -> dict:
    """``config`` (a ``config.json`` read by ``source``) with every value the rebuild uses
    checked and bounded - architecture, classes, ``model_args``, class names and the
    ``pretrained_cfg`` preprocessing - so a bad file is one ``ValueError`` naming the key,
    before any model is allocated (the registry maps the architecture name)."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: must hold a JSON object, got a {type(config).__name__}")
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"{source}: architecture must be a model name, got {architecture!r}")
    num_classes = config.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"{source}: num_classes must be an integer from 0 to {MAX_CLASSES}, got {num_classes!r}")
    model_args = config.get("model_args", {})
    if not isinstance(model_args, dict):
        raise ValueError(f"{source}: model_args must be a JSON object, got a {type(model_args).__name__}")
    for key, value in model_args.items():
        _check_model_arg(f"model_args.{key}", value, source)
    check_class_names(config.get("label_names"), num_classes, f"{source}: label_names")
    if "pretrained_cfg" in config:
        Preprocessing.from_dict(config["pretrained_cfg"], f"{source}: pretrained_cfg")
    return config


def check_build_arguments(kwargs: dict) -> None:
    """Sizes a model is about to be built with - ``num_classes``, ``in_chans``, ``img_size`` and
    those of a ``pretrained_cfg`` (which timm reads from a ``local-dir:`` / ``hf-hub:``
    config.json) - bounded before anything is allocated: a ``ValueError`` naming the value."""
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg if isinstance(cfg, dict) else {}
    size = cfg.get("input_size")
    sides = list(size[1:]) if isinstance(size, (list, tuple)) and len(size) == 3 else []
    checked = [("num_classes", [kwargs.get("num_classes")], MAX_CLASSES, 0),
               ("in_chans", [kwargs.get("in_chans")], MAX_INPUT_CHANNELS, 1),
               ("img_size", _as_list(kwargs.get("img_size")), MAX_INPUT_SIDE, 1),
               ("pretrained_cfg num_classes", [cfg.get("num_classes")], MAX_CLASSES, 0),
               ("pretrained_cfg input_size", sides, MAX_INPUT_SIDE, 1)]
    for key, values, high, low in checked:
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
                raise ValueError(f"{key} {value} is outside {low} to {high}")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_model_arg(key: str, value, source: str) -> None:
    """An architecture argument: a bool, string, number or list of them, every integer from 0 to
    MAX_INPUT_SIDE (the largest a file may ask a model to allocate along one axis)."""
    values = value if isinstance(value, list) and len(value) <= 64 else [value]
    for item in values:
        if isinstance(item, int) and not isinstance(item, bool) and not 0 <= item <= MAX_INPUT_SIDE:
            raise ValueError(f"{source}: {key} = {item} is outside 0 to {MAX_INPUT_SIDE}")
        if not isinstance(item, (bool, int, float, str, type(None))):
            raise ValueError(f"{source}: {key} must be a number, string or short list of them, got {value!r:.80}")


def _read_repo_config(info: ModelInfo, source: str, cache_dir) -> dict:
    """The ``config.json`` of a local folder or hub repository ``source`` ({} if it has
    none); its architecture must be ``info``'s."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.exists():
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(source, "config.json", cache_dir=cache_dir))
        except Exception as error:
            if _is_hub_unreachable(error):
                raise _not_available(source, cache_dir) from None
            if isinstance(error, EntryNotFoundError):
                return {}
            raise
    try:
        config = check_config(json.loads(Path(path).read_text()), str(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file: {error}") from None
    architecture = config["architecture"]
    if architecture and architecture not in (info.name, info.timm_name):
        raise ValueError(f"{source} holds weights of {architecture}, not of {info.name}")
    return config


def source_overlay(info: ModelInfo, source: str | os.PathLike, cache_dir=None) -> tuple[dict, dict]:
    """The timm ``pretrained_cfg_overlay`` that loads ``info``'s weights from ``source`` (a
    checkpoint file, a ``save_pretrained`` folder, an ``http(s)://`` URL or a hub id), and
    the architecture arguments the source was saved with (``model_args`` of its config)."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        return dict(url=source, hf_hub_id=None, file=None), {}
    path = Path(source).expanduser()
    if path.is_file():
        return dict(file=str(path)), {}
    if path.is_dir() or "/" not in source or source.startswith((".", "/", "~")):
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {source} is neither a checkpoint file nor a "
                                    "save_pretrained folder (with model.safetensors)")
        config = _read_repo_config(info, source, cache_dir)
        overlay = dict(file=str(weights))
    else:  # a hub repository: user/name
        _check_hub_id(source)
        config = _read_repo_config(info, source, cache_dir)
        overlay = dict(source="hf-hub", hf_hub_id=source)
    overlay["num_classes"] = config.get("num_classes", 1000)  # timm drops a classifier of another width
    return overlay, dict(config.get("model_args", {}))


def _check_hub_id(source: str) -> None:
    """A ``ValueError`` for a ``pretrained`` string that is neither a path that exists nor a
    Hugging Face repository id (``user/name``: letters, digits, ``-``, ``_``, ``.``; no ``..``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(f"pretrained={source!r}: no such checkpoint file or save_pretrained folder, and not a "
                         "Hugging Face hub id (user/name)") from None


def model_card(info: ModelInfo, model: nn.Module, class_names: list[str] | None,
               preprocessing: Preprocessing) -> str:
    """``README.md`` of a ``save_pretrained`` folder: hub metadata, what the model is, the
    input it expects (``preprocessing``, as config.json records it), the paper's figures for
    the variant and how to load it with timm and with this library."""
    channels, height, width = preprocessing.input_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    license_ = info.license if info.license in ("mit", "apache-2.0") else "other"
    top1 = f"{info.top1:.1f}" if info.top1 is not None else "n/a"
    lines = [
        "---",
        "tags: [image-classification, timm, efficientmod]",
        "library_name: timm",
        f"license: {license_}",
        "---",
        f"# {info.name}",
        "",
        f"An image classifier of the {info.family} family ({info.paper_name}, {info.paper_ids}), saved by the "
        "`efficientmod` library; it loads with timm once `efficientmod` is imported (which registers the "
        "architecture).",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{info.timm_name}` |",
        f"| classes | {model.num_classes} |",
        f"| parameters (this model) | {params:.2f} M |",
        f"| input | {channels} × {height} × {width}, crop {preprocessing.crop_pct}, mean {list(preprocessing.mean)}, "
        f"std {list(preprocessing.std)}, {preprocessing.interpolation} |",
        f"| paper's ImageNet-1K top-1 of the variant | {top1} % ({info.top1_source}) |",
        f"| weights license | {info.license} |",
        "",
        "```python",
        "import efficientmod, timm",
        'model = timm.create_model("hf-hub:USER/REPO", pretrained=True)  # or "local-dir:PATH"',
        f'model = efficientmod.create_model("{info.name}", pretrained="USER/REPO", num_classes={model.num_classes})',
        "```",
        "",
        "Upload this folder as it stands: `hf upload USER/REPO PATH`.",
    ]
    if class_names:
        lines += ["", f"Classes: {', '.join(class_names[:20])}{' ...' if len(class_names) > 20 else ''}"]
    return "\n".join(lines) + "\n"
