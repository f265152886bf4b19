"""The library's own folder format, which is a Hugging Face hub repository as it stands.

:func:`save_pretrained` writes ``model.safetensors``, ``config.json`` in timm's format
(architecture, classes, the architecture arguments the model was built with as
``model_args``, and a ``pretrained_cfg`` with the preprocessing a predictor needs: input
size, mean / std, interpolation, crop) and a ``README.md`` model card. :func:`from_pretrained`
rebuilds the same network through the registry; the folder also loads with
``efficientmod.create_model(name, pretrained=FOLDER_OR_HUB_ID)`` and
``timm.create_model("local-dir:FOLDER" / "hf-hub:USER/REPO", pretrained=True)``. Writes are
atomic; weights are read back with :func:`efficientmod.checkpoint.load_checkpoint`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn
from safetensors.torch import save_file

from efficientmod.checkpoint import atomic_write, load_checkpoint
from efficientmod.metadata import check_class_names, class_names_of
from efficientmod.models.hub import check_config, model_card
from efficientmod.models.registry import create_model, model_info
from efficientmod.preprocessing import Preprocessing

__all__ = ["save_pretrained", "from_pretrained", "read_config"]

# pretrained_cfg entries that describe the released weights, not a saved model
_RELEASE_KEYS = ("tag", "hf_hub_id", "origin_url", "notes", "architecture")


def save_pretrained(model: nn.Module, directory: str | os.PathLike, class_names: list[str] | None = None,
                    preprocessing: Preprocessing | None = None) -> None:
    """Write ``model`` to ``directory`` (see the module's docstring). ``class_names`` and
    ``preprocessing`` (what the model was trained on) default to what the model declares
    (:meth:`~efficientmod.models.base.Backbone.declare`; the registry's preprocessing for
    ``model.in_chans`` channels when it declares none)."""
    if not model.registry_name:
        raise ValueError("save_pretrained needs a model built by efficientmod.create_model")
    if getattr(model, "deployed", False):  # its fused layers cannot be rebuilt by create_model
        raise ValueError("save_pretrained needs the model as built, not its deployed (fused) form: "
                         "save it before efficientmod.deploy")
    info = model_info(model.registry_name)
    preprocessing = preprocessing or Preprocessing.of_model(model)
    if preprocessing.channels != model.in_chans:
        raise ValueError(f"save_pretrained: preprocessing for {preprocessing.channels} channel(s), the model takes "
                         f"{model.in_chans}")
    class_names = check_class_names(class_names if class_names is not None else class_names_of(model),
                                    model.num_classes, "save_pretrained")
    pretrained_cfg = dict(info.pretrained_cfg(), num_classes=model.num_classes, **preprocessing.to_dict())
    for key in _RELEASE_KEYS:
        pretrained_cfg.pop(key, None)
    if tuple(preprocessing.input_size[1:]) != tuple(info.input_size[1:]):  # as timm: the variant's no longer holds
        pretrained_cfg.pop("pool_size", None)
    config = dict(
        architecture=info.timm_name,
        num_classes=model.num_classes,
        num_features=model.num_features,
        model_args=dict(model.build_kwargs, in_chans=model.in_chans,
                        **({} if model.global_pool_type == "avg" else {"global_pool": model.global_pool_type})),
        pretrained_cfg=pretrained_cfg,
    )
    if class_names is not None:  # where timm reads them, into the model's pretrained_cfg["label_names"]
        config["label_names"] = pretrained_cfg["label_names"] = class_names
    directory = Path(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write(directory / "config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    card = model_card(info, model, class_names, preprocessing)
    atomic_write(directory / "README.md", lambda tmp: Path(tmp).write_text(card))


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a ``save_pretrained`` folder, checked before anything is built
    from it (:func:`efficientmod.models.hub.check_config`), its ``architecture`` given as this library's name
    (``efficientvit_m0`` for timm's ``em_efficientvit_m0``)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a save_pretrained folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file: {error}") from None
    check_config(config, str(path))
    try:
        return dict(config, architecture=model_info(config["architecture"]).name)
    except ValueError as error:
        raise ValueError(f"{path}: architecture: {error}") from None


def from_pretrained(directory: str | os.PathLike, **kwargs) -> nn.Module:
    """Rebuild a model written by ``save_pretrained``: same architecture arguments (e.g.
    EfficientViT's ``img_size``), same weights, its preprocessing and class names declared
    (``model.preprocessing``, ``model.class_names``); extra ``kwargs`` go to the model.
    Another ``num_classes`` (fine-tuning) keeps the trunk's weights and a fresh classifier,
    with no saved class names."""
    config = read_config(directory)
    source = str(Path(directory) / "config.json")
    if "pretrained_cfg" not in config:
        raise ValueError(f"{source}: no pretrained_cfg (the model's preprocessing)")
    build = dict(config["model_args"], num_classes=config["num_classes"])
    build.update(kwargs)
    new_head = build["num_classes"] != config["num_classes"]
    try:
        model = create_model(config["architecture"], **build)
    except TypeError as error:  # an argument the architecture does not take
        raise ValueError(f"{source}: model_args do not fit {config['architecture']}: {error}") from None
    load_checkpoint(model, directory, strict=True, ignore_head=new_head)
    preprocessing = Preprocessing.from_dict(config["pretrained_cfg"], f"{source}: pretrained_cfg")
    model.declare(preprocessing, None if new_head else config.get("label_names"))
    return model
