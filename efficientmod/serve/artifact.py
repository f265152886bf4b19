"""One artifact, loaded for serving: the predictor that runs it, what ``GET /v1/model``
tells about it, and (for artifacts that carry a torch model) the model the web page's
maps are drawn from.

An artifact is anything ``efficientmod predict`` takes: a ``save_pretrained`` folder (a
run's ``model/``), a training checkpoint (``best.pth``, whose config names the
architecture), or a file written by ``efficientmod export`` (.onnx, OpenVINO .xml, .pte).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from efficientmod.classify.predict import Predictor, load_model
from efficientmod.export import format_of
from efficientmod.runtime import read_train_checkpoint

__all__ = ["ServedModel", "load_artifact"]

# the runtime each exported format runs in
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}
# a replica shares its cores with the HTTP proxy and the other replicas: ONNX Runtime's idle
# threads sleep rather than spin (half the replica's CPU per model run under load, benchmarks/serve.md)
RUNTIME_OPTIONS = {"onnx": {"spinning": False}}


@dataclass
class ServedModel:
    predictor: Predictor
    info: dict  # GET /v1/model: name, artifact, runtime, precision, preprocessing, classes
    explainable: nn.Module | None  # the undeployed torch model the maps are computed on, when there is one


def _exported_format(path: Path) -> str | None:
    """The export format ``path``'s suffix names, or None (a torch artifact)."""
    try:
        return format_of(path).name
    except ValueError:
        return None


def _torch_model(path: Path, checkpoint: str | os.PathLike | None) -> nn.Module:
    """A ``save_pretrained`` folder, a classification training checkpoint, or a registered
    name with its ``checkpoint``, loaded."""
    if checkpoint is not None or path.is_dir():
        return load_model(path, checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact {path}")
    state = read_train_checkpoint(path, task="classification")
    name = ((state or {}).get("config") or {}).get("model")
    if not name:
        raise ValueError(f"{path} is not a model/ folder, a training checkpoint of `efficientmod train` or an "
                         "exported file (.onnx, .xml, .pte)")
    return load_model(name, path)


def load_artifact(path: str | os.PathLike, threads: int | None = None,
                  checkpoint: str | os.PathLike | None = None) -> ServedModel:
    """The artifact at ``path`` ready to serve (or, with a ``checkpoint``, the registered
    name ``path`` with those weights, as ``predict`` takes them); ``threads`` sets the
    runtime's intra-op threads."""
    path = Path(path)
    fmt = _exported_format(path)
    if fmt is not None:
        if checkpoint is not None:
            raise ValueError(f"an exported file ({path}) holds its weights: drop --checkpoint")
        predictor = Predictor.from_file(path, threads, **RUNTIME_OPTIONS.get(fmt, {}))
        meta = predictor.metadata
        name = str(meta.get("architecture", path.stem))
        runtime, precision, explainable = RUNTIMES[fmt], str(meta.get("precision", "fp32")), None
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        model = _torch_model(path, checkpoint).eval()
        explainable = copy.deepcopy(model)
        predictor = Predictor.from_model(model)
        name, runtime, precision = model.registry_name, "torch", "fp32"
    info = dict(name=name, artifact=str(path), runtime=runtime, precision=precision,
                preprocessing=predictor.preprocessing.to_dict(), classes=predictor.class_names)
    return ServedModel(predictor, info, explainable)
