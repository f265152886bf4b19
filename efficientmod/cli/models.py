"""``efficientmod models`` and ``efficientmod info NAME``."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models", help="list the models with parameters, MACs (at their input size) and paper top-1")
    models.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'efficientvit_m*'")
    models.add_argument("--family", default=None, help="only this family (efficientmod, efficientvit, mobilevitv2)")
    models.add_argument("--no-macs", action="store_true", help="skip counting MACs (faster)")
    models.set_defaults(func=run_models)

    info = subparsers.add_parser("info", help="architecture, sizes and paper facts of one model")
    info.add_argument("name")
    info.set_defaults(func=run_info)


def run_models(args: argparse.Namespace) -> int:
    """One row per model, printed as soon as it is measured."""
    from efficientmod.bench import count_macs, count_params
    from efficientmod.models import create_model, list_models, model_info

    families = sorted({model_info(name).family for name in list_models()})
    if args.family is not None and args.family not in families:
        raise ValueError(f"unknown family {args.family!r}; choose from {', '.join(families)}")
    names = list_models(args.pattern, family=args.family)
    if not names:
        family = f" in family {args.family}" if args.family else ""
        raise ValueError(f"no model matches {args.pattern!r}{family}; `efficientmod models` lists them all")
    print(f"{'model':<24} {'family':<14} {'params (M)':>10} {'GMACs':>10} {'input':>7} {'top-1 (paper)':>14}",
          flush=True)
    for name in names:
        info = model_info(name)
        model = create_model(name)
        macs = "-" if args.no_macs else f"{count_macs(model, info.input_size) / 1e9:.3f}"
        top1 = f"{info.top1:.1f}" if info.top1 is not None else "-"
        side = f"{info.input_size[1]}²"
        print(f"{name:<24} {info.family:<14} {count_params(model) / 1e6:>10.3f} {macs:>10} {side:>7} {top1:>14}",
              flush=True)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from efficientmod.bench import count_macs, count_params
    from efficientmod.models import create_model, model_info

    info = model_info(args.name)
    model = create_model(args.name)
    print(f"name:          {info.name}")
    print(f"family:        {info.family}")
    print(f"timm name:     {info.timm_name}  (timm.create_model after `import efficientmod`)")
    print(f"parameters:    {count_params(model) / 1e6:.3f} M")
    print(f"MACs:          {count_macs(model, info.input_size) / 1e9:.3f} G at {info.input_size}")
    print(f"input:         {info.input_size}, mean {info.mean}, std {info.std}, {info.interpolation}")
    print("features:      " + ", ".join(
        f"stride {f['reduction']}: {f['num_chs']} ch" for f in model.feature_info))
    if info.top1 is not None:
        print(f"top-1 (paper): {info.top1:.1f}%  [{info.top1_source}]")
    print(f"config:        {info.cfg}")
    return 0
