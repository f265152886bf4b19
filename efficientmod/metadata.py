"""What an exported file says about the model inside it: :class:`ExportMetadata`.

``efficientmod export`` (every format), the demo and QAT store :func:`export_metadata` beside
the graph (ONNX ``metadata_props``, OpenVINO ``rt_info``, an ExecuTorch constant method);
``predict``, ``eval`` and ``serve`` read it back with :meth:`ExportMetadata.from_dict`, which
checks every value it uses: the producer, the architecture name, a bounded class count, class
names that are strings and as many as the classes, and the :class:`~efficientmod.preprocessing.
Preprocessing` (validated by its own ``from_dict``).

This module reads the model's attributes only (``registry_name``, ``num_classes``,
``class_names``, ``deployed``, timm's ``pretrained_cfg``): it imports neither the model
families nor the export formats, so both export and predict can import it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from efficientmod.preprocessing import Preprocessing

__all__ = ["ExportMetadata", "export_metadata", "class_names_of", "check_class_names", "MAX_CLASSES"]

PRODUCER = "efficientmod"
MAX_CLASSES = 100_000  # classifier outputs a file may declare (ImageNet-21K has 21,841)


def check_class_names(class_names: Sequence[str] | None, num_classes: int, source: str = "") -> list[str] | None:
    """``class_names`` as a list, checked: strings, one per class (None stays None)."""
    if class_names is None:
        return None
    where = f"{source}: " if source else ""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ValueError(f"{where}class_names must be a list of strings, got {type(class_names).__name__}")
    if len(class_names) != num_classes:
        raise ValueError(f"{where}{len(class_names)} class names for a model with {num_classes} classes")
    if not all(isinstance(name, str) for name in class_names):
        raise ValueError(f"{where}class_names must all be strings")
    return list(class_names)


def class_names_of(model) -> list[str] | None:
    """The class names ``model`` declares (``model.class_names``), else those of its timm
    ``pretrained_cfg`` (``label_names``, as timm reads a hub folder's config.json)."""
    names = getattr(model, "class_names", None)
    if names is None:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return None if names is None else list(names)


@dataclass(frozen=True)
class ExportMetadata:
    """The model of an exported file: its architecture, classes, whether it was deployed
    (fused) and its preprocessing."""

    architecture: str
    num_classes: int
    class_names: tuple[str, ...] | None
    deployed: bool
    preprocessing: Preprocessing

    @classmethod
    def of_model(cls, model, preprocessing: Preprocessing) -> ExportMetadata:
        names = check_class_names(class_names_of(model), model.num_classes, "the model")
        return cls(getattr(model, "registry_name", "") or type(model).__name__, int(model.num_classes),
                   None if names is None else tuple(names), bool(getattr(model, "deployed", False)), preprocessing)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, flat (the preprocessing's keys beside the others)."""
        return dict(producer=PRODUCER, architecture=self.architecture, num_classes=self.num_classes,
                    class_names=None if self.class_names is None else list(self.class_names),
                    deployed=self.deployed, **self.preprocessing.to_dict())

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "") -> ExportMetadata:
        """Read what :meth:`to_dict` wrote (``source`` names the file in errors); other keys
        (an export's ``precision``) are ignored."""
        where = f"{source}: " if source else ""
        if not isinstance(values, Mapping) or values.get("producer") != PRODUCER:
            raise ValueError(f"{where}no efficientmod metadata (its preprocessing is unknown): "
                             "export it with `efficientmod export`")
        num_classes, architecture = values.get("num_classes"), values.get("architecture")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"{where}num_classes must be an integer from 1 to {MAX_CLASSES}, got {num_classes!r}")
        if not isinstance(architecture, str) or not architecture:
            raise ValueError(f"{where}architecture must be a name, got {architecture!r}")
        names = check_class_names(values.get("class_names"), num_classes, source)
        return cls(architecture, num_classes, None if names is None else tuple(names),
                   bool(values.get("deployed", False)), Preprocessing.from_dict(values, source))


def export_metadata(model, preprocessing: Preprocessing) -> dict[str, object]:
    """What an exported file stores about ``model`` run on ``preprocessing`` (see
    :class:`ExportMetadata`)."""
    return ExportMetadata.of_model(model, preprocessing).to_dict()
