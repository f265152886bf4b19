"""What a backbone looks at: context-modulation, attention and class-activation maps.

* **Context maps** — the EfficientMod paper visualises what its context branch ctx(x)
  captures (objects lit up, background suppressed). :func:`compute_maps` hooks every
  context module (EfficientMod's ``ContextBranch``, and the ablation blocks' VAN
  large-kernel attention and FocalNet focal context) and reduces its C-channel output to
  one value per position (``reduce``: channel mean, mean absolute value or L2 norm).
* **Attention maps** — per attention layer (:data:`ATTENTION_READERS`: the hybrid
  EfficientMod blocks' multi-head self-attention, EfficientViT's cascaded group attention
  in its windows, MobileViTv2's separable self-attention), the attention weights averaged
  over heads, read for one query position (``query=(y, x)`` in [0, 1]) or averaged over
  all queries (the attention each position receives). They are built from what the
  layer's own projections produced (forward hooks), never by changing its forward.
* **Class-activation map** — Grad-CAM (Selvaraju et al., 2017) on the last feature map:
  ReLU(Σ_c α_c F_c) with α_c the spatial mean of ∂logit/∂F_c; for a global-average-pool +
  linear head this is the CAM of Zhou et al. (2016) up to a positive factor.

Forward hooks only: no model's forward code changes. A model without context modules or
attention layers gets a note saying so instead of a map.

This module imports no model family: each family registers its context modules with
:func:`register_context_module` and the hooks that read its attention layers with
:func:`register_attention_reader`, in the "visualisation" section of its own file.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from efficientmod.checkpoint import atomic_write

__all__ = ["ModelMaps", "compute_maps", "CONTEXT_MODULES", "ATTENTION_READERS", "register_context_module",
           "register_attention_reader", "reduce_channels", "attention_map", "check_query", "overlay", "stage_of",
           "last_per_stage"]

REDUCTIONS = ("mean", "abs", "norm")
Query = tuple[float, float] | None  # (y, x) in [0, 1], or None for the mean over queries
Emit = Callable[..., None]  # emit(map (B, h, w), suffix="") files the map under module name + suffix
# install(module, emit, query) -> hook handles
AttentionReader = Callable[[nn.Module, Emit, Query], list]

# module type → the layout of its output ("NHWC" or "NCHW"); read by _register_hooks
CONTEXT_MODULES: dict[type[nn.Module], str] = {}
# module type → the reader that installs its attention hooks
ATTENTION_READERS: dict[type[nn.Module], AttentionReader] = {}


def register_context_module(module_type: type[nn.Module], output_fmt: str = "NHWC") -> None:
    """Make :func:`compute_maps` read the output of every ``module_type`` module as a
    context map; ``output_fmt`` is that output's layout, (B, h, w, C) or (B, C, h, w)."""
    if output_fmt not in ("NHWC", "NCHW"):
        raise ValueError(f"output_fmt must be 'NHWC' or 'NCHW', got {output_fmt!r}")
    CONTEXT_MODULES[module_type] = output_fmt


def register_attention_reader(module_type: type[nn.Module], install: AttentionReader) -> None:
    """Make :func:`compute_maps` call ``install(module, emit, query)`` on every
    ``module_type`` module before the forward pass: it registers the forward hooks that
    rebuild the layer's attention weights, passes each map (B, h, w) to
    ``emit(map, suffix="")`` (:func:`attention_map` turns (B, heads, N, N) weights into
    one) and returns the hook handles."""
    ATTENTION_READERS[module_type] = install


def reduce_channels(context: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """(B, h, w, C) → (B, h, w): the channel mean, mean absolute value or L2 norm."""
    if reduce == "mean":
        return context.mean(dim=-1)
    if reduce == "abs":
        return context.abs().mean(dim=-1)
    if reduce == "norm":
        return context.norm(dim=-1)
    raise ValueError(f"unknown reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")


def check_query(query: tuple[float, float]) -> tuple[float, float]:
    y, x = query
    if not (0 <= y <= 1 and 0 <= x <= 1):
        raise ValueError(f"the query point must be (y, x) with both in [0, 1]; got {tuple(query)}")
    return y, x


def attention_map(weights: torch.Tensor, grid: tuple[int, int], query: Query = None) -> torch.Tensor:
    """(B, heads, N, N) attention on an h×w grid → (B, h, w), averaged over heads: the row
    of the query nearest to ``query`` = (y, x) in [0, 1], or the mean over all queries."""
    height, width = grid
    weights = weights.mean(dim=1)
    if query is None:
        row = weights.mean(dim=1)
    else:
        y, x = check_query(query)
        index = round(y * (height - 1)) * width + round(x * (width - 1))
        row = weights[:, index]
    return row.reshape(-1, height, width)


@dataclass
class ModelMaps:
    """The maps of one batch; every map is (B, h, w) at its layer's own resolution."""

    context: dict[str, torch.Tensor] = field(default_factory=dict)  # block name → map
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # layer name → map
    cam: torch.Tensor | None = None
    classes: torch.Tensor | None = None  # (B,) the class each CAM explains
    logits: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)


def _parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _register_hooks(model: nn.Module, maps: ModelMaps, reduce: str, query) -> list:
    handles = []
    for name, module in model.named_modules():
        output_fmt = CONTEXT_MODULES.get(type(module))
        if output_fmt is not None:
            # the key and layout are bound per module as default values
            def save_context(_module, _inputs, output, key=_parent_name(name), nchw=output_fmt == "NCHW"):  # noqa: B008
                context = output.detach()
                maps.context[key] = reduce_channels(context.permute(0, 2, 3, 1) if nchw else context, reduce)

            handles.append(module.register_forward_hook(save_context))
        install = ATTENTION_READERS.get(type(module))
        if install is not None:
            def save_attention(heat, suffix="", key=name):
                maps.attention[key + suffix] = heat

            handles += install(module, save_attention, query)
    return handles


def _cam_classes(logits: torch.Tensor, target_class: int | None) -> torch.Tensor:
    if target_class is None:
        return logits.argmax(dim=1)
    if not 0 <= target_class < logits.shape[1]:
        raise ValueError(f"class {target_class} does not exist: the model has {logits.shape[1]} classes")
    return torch.full((logits.shape[0],), target_class, dtype=torch.long, device=logits.device)


def compute_maps(model: nn.Module, images: torch.Tensor, query: Query = None,
                 reduce: str = "mean", target_class: int | None = None) -> ModelMaps:
    """Context, attention and class-activation maps of ``images`` (B, 3, H, W, normalised
    as the model expects): one forward pass of ``model`` in eval mode, then a backward
    pass through its head only (the gradient Grad-CAM needs is w.r.t. the final map).

    ``target_class`` fixes the class of the CAM (default: each image's predicted class).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")
    if query is not None:
        check_query(query)
    name = getattr(model, "registry_name", "") or type(model).__name__
    maps = ModelMaps()
    handles = _register_hooks(model, maps, reduce, query)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.forward_features(images)
        features.requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(features)
            classes = _cam_classes(logits, target_class)
            (gradient,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), features)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    maps.cam = F.relu((weights * features).sum(dim=1)).detach()
    maps.classes, maps.logits = classes, logits.detach()
    if not maps.context:
        maps.notes.append(f"{name} has no context-modulation branch: no context maps")
    if not maps.attention:
        maps.notes.append(f"{name} has no self-attention layer with a readable map: no attention maps")
    return maps


def stage_of(name: str) -> str:
    """The stage a block belongs to (``stages.2.blocks.5`` → ``stages.2``)."""
    match = re.match(r"^(.*?stages\.\d+)", name)
    return match[1] if match else _parent_name(name)


def last_per_stage(named_maps: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """stage → (name, map) of the deepest map of each stage (maps are in forward order)."""
    stages: dict[str, tuple[str, torch.Tensor]] = {}
    for name, tensor in named_maps.items():
        stages[stage_of(name)] = (name, tensor)
    return stages


def is_flat(heat: np.ndarray) -> bool:
    """Whether a map is constant up to float rounding (relative spread under 1e-5, e.g. the
    uniform attention of an untrained layer): it carries no signal to draw."""
    span = heat.max() - heat.min()
    return bool(span == 0 or span <= 1e-5 * max(abs(heat.max()), abs(heat.min())))


def normalise(heat: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a flat map (:func:`is_flat`) becomes zeros rather than
    amplified rounding noise."""
    if is_flat(heat):
        return np.zeros_like(heat)
    return (heat - heat.min()) / (heat.max() - heat.min())


COLORMAP = "jet"  # of every map drawn; the contact sheet's colour bar shows it
SCALE_LABEL = "map value (min-max scaled per map)"


def overlay(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.5, cmap: str = COLORMAP) -> np.ndarray:
    """``heat`` (h, w) upsampled bilinearly to ``image`` (H, W, 3, uint8), min-max
    normalised, coloured and blended: an (H, W, 3) float image in [0, 1]."""
    from matplotlib import colormaps

    size = image.shape[:2]
    upsampled = F.interpolate(heat[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    coloured = colormaps[cmap](normalise(upsampled.numpy()))[..., :3]
    return (1 - alpha) * image.astype(np.float32) / 255 + alpha * coloured


# -- images and files ----------------------------------------------------------------------
def load_image(path: str | Path, size: int, crop_pct: float, mean, std) -> tuple[np.ndarray, torch.Tensor]:
    """The evaluation crop of an image file: (H, W, 3) uint8 for display and the
    normalised (3, H, W) tensor the model takes."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {path}")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image PIL can read") from None
    image = TF.center_crop(TF.resize(image, int(size / crop_pct), antialias=True), [size, size])
    pixels = np.asarray(image)
    tensor = TF.normalize(TF.to_dtype(TF.to_image(image), torch.float32, scale=True), list(mean), list(std))
    return pixels, tensor


FLAT_NOTE = "flat: no signal"


@dataclass
class Panel:
    title: str
    picture: np.ndarray  # (H, W, 3) float in [0, 1]
    file: str
    flat: bool = False  # the map is constant (:func:`is_flat`): drawn, but it shows nothing


def query_pixel(query: tuple[float, float], grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Where, on an image of ``size`` (H, W), the centre of the token that
    :func:`attention_map` reads for ``query`` on an h×w ``grid`` lies (the map is stretched
    over the image as :func:`overlay` stretches it)."""
    (y, x), (height, width) = check_query(query), grid
    row, col = round(y * (height - 1)), round(x * (width - 1))
    return (row + 0.5) * size[0] / height - 0.5, (col + 0.5) * size[1] / width - 0.5


def mark_point(picture: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """``picture`` (H, W, 3) in [0, 1] with a white ring outlined in black around ``centre``
    (y, x in pixels) and a white dot on it: the query point, visible over any colour."""
    height, width = picture.shape[:2]
    radius = max(3.0, min(height, width) / 24)
    rows, cols = np.ogrid[:height, :width]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    marked = picture.copy()
    marked[(distance >= radius + 1.5) & (distance < radius + 2.5)] = 0.0
    marked[((distance >= radius) & (distance < radius + 1.5)) | (distance < 1.5)] = 1.0
    return marked


def panels_for(pixels: np.ndarray, maps: ModelMaps, index: int, stem: str, class_label: str,
               alpha: float, query: Query = None) -> list[Panel]:
    """The pictures of image ``index`` of a batch: the crop, one context and one attention
    map per stage (the stage's deepest), the CAM. With a ``query``, the attention panels
    mark the query token; a flat map's panel says so in its title (and :attr:`Panel.flat`)."""
    panels = [Panel("input", pixels.astype(np.float32) / 255, f"{stem}_input.png")]
    for kind, named in (("context", maps.context), ("attention", maps.attention)):
        for stage, (_name, heat) in last_per_stage(named).items():
            picture = overlay(pixels, heat[index], alpha)
            if kind == "attention" and query is not None:
                picture = mark_point(picture, query_pixel(query, tuple(heat.shape[1:]), pixels.shape[:2]))
            panels.append(_map_panel(f"{kind} {stage}", heat[index], picture,
                                     f"{stem}_{kind}_{stage.replace('.', '')}.png"))
    cam = maps.cam[index]
    panels.append(_map_panel(f"CAM: {class_label}", cam, overlay(pixels, cam, alpha), f"{stem}_cam.png"))
    return panels


def _map_panel(title: str, heat: torch.Tensor, picture: np.ndarray, file: str) -> Panel:
    """The panel of one map; a flat one says so under its title."""
    flat = is_flat(heat.numpy())
    return Panel(title + (f"\n({FLAT_NOTE})" if flat else ""), picture, file, flat)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _image_format(path: Path) -> str:
    """The format matplotlib writes for ``path`` (its suffix; PNG without one): the temporary
    file of an atomic write has another suffix."""
    return path.suffix.lstrip(".").lower() or "png"


def save_panels(panels: list[Panel], directory: Path) -> list[Path]:
    """Each panel's picture as its own image file in ``directory``, each written atomically."""
    plt = _pyplot()
    paths = []
    for panel in panels:
        path = directory / panel.file
        picture = np.clip(panel.picture, 0, 1)
        atomic_write(path, lambda tmp, picture=picture, path=path: plt.imsave(tmp, picture, format=_image_format(path)))
        paths.append(path)
    return paths


def contact_sheet_figure(rows: list[list[Panel]], title: str):
    """One figure: a row of panels per image, and a colour bar of the maps' scale (each map
    is min-max scaled on its own, so the bar reads as the same relative scale on every panel)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = _pyplot()
    columns = max(len(r) for r in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns + 0.9, 2.6 * len(rows) + 0.4),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            axes[r, c].imshow(np.clip(panel.picture, 0, 1))
            axes[r, c].set_title(panel.title, fontsize=8)
    figure.suptitle(title, fontsize=9)
    width = figure.get_figwidth()  # inches; the colour bar takes the last 0.9 (bar, ticks, label)
    figure.tight_layout(rect=(0, 0, 1 - 0.9 / width, 1))
    scale_axes = figure.add_axes((1 - 0.8 / width, 0.15, 0.12 / width, 0.7))
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), COLORMAP), cax=scale_axes)
    bar.set_label(SCALE_LABEL, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return figure


def contact_sheet(rows: list[list[Panel]], path: Path, title: str) -> Path:
    """:func:`contact_sheet_figure` saved to ``path`` (atomically: a failed write keeps the old file)."""
    figure = contact_sheet_figure(rows, title)
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format=_image_format(Path(path))))
    finally:
        _pyplot().close(figure)
    return path
