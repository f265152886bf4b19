"""What every exported file stores beside its graph: :func:`export_metadata`.

ONNX keeps it in ``metadata_props``, OpenVINO in the IR's ``rt_info``, ExecuTorch in a
constant method; ``efficientmod predict FILE`` and :func:`efficientmod.load_runtime` read it
back (the preprocessing through :meth:`efficientmod.preprocessing.Preprocessing.from_dict`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

    from efficientmod.preprocessing import Preprocessing

__all__ = ["export_metadata"]


def export_metadata(model: nn.Module, preprocessing: Preprocessing) -> dict[str, object]:
    """The producer, architecture, classes, whether the model was deployed, and
    ``preprocessing`` (input size, mean / std, interpolation, crop fraction), JSON-ready."""
    return dict(
        producer="efficientmod",
        architecture=getattr(model, "registry_name", "") or type(model).__name__,
        num_classes=model.num_classes,
        class_names=getattr(model, "class_names", None),
        deployed=bool(getattr(model, "deployed", False)),
        **preprocessing.to_dict(),
    )
