"""The library's own folder format: ``model.safetensors`` + ``config.json``.

:func:`save_pretrained` records what :func:`from_pretrained` needs to rebuild the same
network through the registry (architecture name, class count, input channels, the
architecture arguments it was built with) beside the preprocessing a predictor needs
(input size, mean / std, interpolation, crop) and optional class names. Writes are
atomic; weights are read back with :func:`efficientmod.checkpoint.load_checkpoint`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from efficientmod.checkpoint import atomic_write, load_checkpoint
from efficientmod.models.registry import create_model, model_info

__all__ = ["PREPROCESSING_KEYS", "save_pretrained", "from_pretrained", "read_config"]

PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, class_names: list[str] | None = None,
                    preprocessing: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (architecture, classes, input, mean/std);
    ``preprocessing`` overrides the registry's input_size / mean / std / interpolation /
    crop_pct with what the model was actually trained on."""
    if not model.registry_name:
        raise ValueError("save_pretrained needs a model built by efficientmod.create_model")
    if getattr(model, "deployed", False):  # its fused layers cannot be rebuilt by create_model
        raise ValueError("save_pretrained needs the model as built, not its deployed (fused) form: "
                         "save it before efficientmod.deploy")
    info = model_info(model.registry_name)
    directory = Path(directory)
    config = dict(
        architecture=info.name,
        num_classes=model.num_classes,
        in_chans=model.in_chans,
        model_kwargs=dict(model.build_kwargs),
        input_size=[model.in_chans, *info.input_size[1:]],
        mean=list(info.mean),
        std=list(info.std),
        interpolation=info.interpolation,
        crop_pct=info.crop_pct,
        class_names=class_names,
    )
    config.update({key: value for key, value in (preprocessing or {}).items() if key in PREPROCESSING_KEYS})
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write(directory / "config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a ``save_pretrained`` folder."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a save_pretrained folder (no config.json)")
    return json.loads(path.read_text())


def from_pretrained(directory: str | os.PathLike, **kwargs) -> nn.Module:
    """Rebuild a model written by ``save_pretrained``: same architecture arguments (e.g.
    EfficientViT's ``img_size``), same weights; extra ``kwargs`` go to the model. Another
    ``num_classes`` (fine-tuning) keeps the trunk's weights and a fresh classifier, with
    no saved class names."""
    config = read_config(directory)
    build = dict(num_classes=config["num_classes"], in_chans=config["in_chans"], **config.get("model_kwargs", {}))
    build.update(kwargs)
    new_head = build["num_classes"] != config["num_classes"]
    model = create_model(config["architecture"], **build)
    load_checkpoint(model, directory, strict=True, ignore_head=new_head)
    model.class_names = None if new_head else config.get("class_names")
    model.preprocessing = {key: config[key] for key in PREPROCESSING_KEYS if key in config}
    return model
