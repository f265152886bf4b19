"""``efficientmod viz``: context, attention and class-activation maps as PNGs (see :mod:`efficientmod.viz`)."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from efficientmod.viz import REDUCTIONS, check_query, compute_maps, contact_sheet, load_image, panels_for, save_panels

RANDOM_WEIGHTS_NOTE = ("no --checkpoint: the weights are random, so the maps show the architecture's "
                       "receptive fields, not what a trained model attends to")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="draw context-modulation, attention and class-activation maps over images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each image: per stage the context map ctx(x) of the deepest "
        "modulation block (reduced over channels) and the attention map of the deepest "
        "attention layer, and the Grad-CAM of the predicted class, overlaid on the model's "
        "evaluation crop. Writes one PNG per map, DIR/MODEL_IMAGE_KIND.png, and "
        "DIR/MODEL_contact_sheet.png, so that several models can share one folder. With --query "
        "the attention panels mark the query point; a map with no signal (constant) is noted.",
        epilog="examples:\n"
        "  efficientmod viz efficientmod_xxs cat.jpg --checkpoint efficientmod_xxs.pth -o maps/\n"
        "  efficientmod viz efficientmod_xs a.jpg b.jpg --checkpoint run/ --query 0.4,0.6 -o maps/\n"
        "  efficientmod viz efficientmod_xxs cat.jpg --ablation focalnet -o maps/",
    )
    parser.add_argument("model", metavar="MODEL", help="a registered model name (`efficientmod models`)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the PNGs (created)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="weights: a checkpoint file (official, timm or own layout) or a save_pretrained "
                        "folder; without it the weights are random and the maps not meaningful")
    parser.add_argument("--num-classes", type=int, default=1000, metavar="N",
                        help="classifier width of a checkpoint file (default 1000; folders say it themselves)")
    parser.add_argument("--ablation", default=None, metavar="NAME",
                        help="draw an ablation variant of an EfficientMod MODEL: van, focalnet, mbconv, kernel3, "
                        "... (docs/ablations.md lists them)")
    parser.add_argument("--img-size", type=int, default=None, metavar="N",
                        help="square input side, a multiple of the model's total stride (32 for EfficientMod "
                        "and MobileViTv2, 16 for EfficientViT; default: the model's own, 224 or 256 for MobileViTv2)")
    parser.add_argument("--query", default="mean", metavar="Y,X",
                        help="attention of the query at (y, x), fractions of the height and width, "
                        "e.g. 0.5,0.5; 'mean' (default) averages over all queries")
    parser.add_argument("--reduce", choices=REDUCTIONS, default="mean",
                        help="how a context map's channels become one value: mean (default), abs (mean |ctx|), "
                        "norm (L2)")
    parser.add_argument("--class", dest="target_class", type=int, default=None, metavar="N",
                        help="class whose activation map is drawn (default: the predicted class)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the random initialisation (what remains random after --checkpoint; default 0)")
    parser.add_argument("--alpha", type=float, default=0.5, metavar="A",
                        help="opacity of the maps over the image, in [0, 1] (default 0.5)")
    parser.set_defaults(func=run_viz)


def parse_query(text: str) -> tuple[float, float] | None:
    if text == "mean":
        return None
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--query must be 'mean' or Y,X fractions such as 0.5,0.5; got {text!r}") from None
    return check_query((y, x))


def load_model(args: argparse.Namespace) -> tuple[nn.Module, list[str] | None]:
    """The model with its weights, and its class names when the checkpoint has them."""
    from efficientmod.models import create_model, model_info
    from efficientmod.models.ablations import ABLATIONS
    from efficientmod.models.pretrained import from_pretrained, read_config

    if args.ablation is not None and args.ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {args.ablation!r}; choose from {', '.join(ABLATIONS)}")
    overrides = ABLATIONS[args.ablation] if args.ablation else {}
    if overrides and model_info(args.model).family != "efficientmod":
        raise ValueError(f"--ablation applies to EfficientMod models; {args.model} is not one")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and checkpoint.is_dir():
        architecture = read_config(checkpoint)["architecture"]
        if architecture != args.model:
            raise ValueError(f"{checkpoint} holds a {architecture}, not a {args.model}")
        model = from_pretrained(checkpoint, **overrides)
        return model, getattr(model, "class_names", None)
    model = create_model(args.model, num_classes=args.num_classes, checkpoint_path=args.checkpoint, **overrides)
    return model, None


def _stems(images: list[str], prefix: str) -> list[str]:
    """``prefix`` + file stem, numbered where two images share one."""
    counts = Counter(Path(p).stem for p in images)
    return [prefix + (f"{i:02d}_{Path(p).stem}" if counts[Path(p).stem] > 1 else Path(p).stem)
            for i, p in enumerate(images)]


def run_viz(args: argparse.Namespace) -> int:
    query = parse_query(args.query)
    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1]; got {args.alpha}")
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:  # before any work, so that no image's maps are left half written
        raise FileNotFoundError(f"no image file {', '.join(missing)}")
    from efficientmod.models import model_info

    info = model_info(args.model)
    torch.manual_seed(args.seed)
    model, class_names = load_model(args)
    size, multiple = args.img_size or info.input_size[1], getattr(model, "input_multiple", 32)
    if size % multiple:
        raise ValueError(f"--img-size must be a multiple of {multiple} for {args.model}; got {size}")
    if args.checkpoint is None:
        print(f"efficientmod viz: note: {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows, notes, written, has_context, flat = [], [], [], False, []
    prefix = args.model + (f"-{args.ablation}" if args.ablation else "") + "_"  # one folder, several models
    for path, stem in tqdm(list(zip(args.images, _stems(args.images, prefix), strict=True)), desc="viz", unit="image",
                           file=sys.stderr):
        pixels, tensor = load_image(path, size, info.crop_pct, info.mean, info.std)
        maps = compute_maps(model, tensor[None], query=query, reduce=args.reduce, target_class=args.target_class)
        predicted = int(maps.classes[0])
        label = class_names[predicted] if class_names else f"class {predicted}"
        print(f"{path}: predicted {label}")
        panels = panels_for(pixels, maps, 0, stem, label, args.alpha, query)
        flat += [panel.file for panel in panels if panel.flat]
        written += save_panels(panels, output)
        rows.append(panels)
        notes, has_context = maps.notes, bool(maps.context)
    variant = args.model + (f" ({args.ablation} ablation)" if args.ablation else "")
    weights = Path(args.checkpoint).name if args.checkpoint else "random weights"
    attention = "mean over queries" if query is None else f"query (y, x) = {query}, ringed"
    described = [variant, weights] + ([f"context: channel {args.reduce}"] if has_context else [])
    described.append(f"attention: {attention}")
    sheet = contact_sheet(rows, output / f"{prefix}contact_sheet.png", "; ".join(described))
    if flat:
        notes = [*notes, f"{', '.join(flat)}: constant map, no signal (e.g. the uniform weights of an untrained "
                         "attention layer, or a 1×1 map); drawn in one colour"]
    for note in notes:
        print(f"efficientmod viz: note: {note}", file=sys.stderr)
    print(f"wrote {len(written)} maps and {sheet}")
    return 0
