"""ONNX export (and, in the deployment path, its verification in ONNX Runtime)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from efficientmod.checkpoint import atomic_write

__all__ = ["export_onnx"]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int] = (3, 224, 224),
    opset: int = 18,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (in eval mode, on CPU, float32) to ``path`` atomically.

    The graph has one input ``input`` (N×C×H×W, N dynamic when ``dynamic_batch``) and one
    output ``output``. Uses the TorchScript-based exporter, which handles every family of
    this library in well under a second per model.
    """
    path = Path(path)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size)
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            atomic_write(path, lambda tmp: torch.onnx.export(
                model, (example,), tmp, input_names=["input"], output_names=["output"],
                opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
            ))
    finally:
        model.train(was_training)
    return path
