"""``efficientmod train``, ``efficientmod eval`` and ``efficientmod demo``."""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from efficientmod.classify.config import (
    DEMO_PRESET,
    add_config_arguments,
    config_of,
    given_values,
    resolve_config,
    train_preset,
)
from efficientmod.runtime import AMP_CHOICES

TRAIN_EPILOG = """\
examples:
  efficientmod train --model efficientmod_s --data /data/imagenet --output runs/s
  torchrun --nproc_per_node 8 -m efficientmod train --model efficientmod_s --data /data/imagenet \\
      --output runs/s --batch-size 256 --resume auto
  efficientmod train --model efficientmod_xs --data my_classes --pretrained efficientmod_xs.pth \\
      --epochs 30 --lr 5e-4 --layer-decay 0.75 --warmup-epochs 2
  efficientmod train --model efficientmod_s --synthetic --benchmark-steps 50   # speed only
  efficientmod train --model efficientmod_s --data /data/imagenet --output runs/s --overwrite  # replace a run
  efficientmod train            # no --data: the digits demo (see `efficientmod demo`)
  efficientmod train --model efficientmod_s --data /data/imagenet --grad-accum-steps 8   # one GPU, batch 2048
  efficientmod train --qat --init-from runs/s --data /data/imagenet --epochs 2 --lr 1e-5 --output runs/s-qat
                # quantisation-aware int8 fine-tune of a trained run -> runs/s-qat/model_int8.xml (OpenVINO)
The defaults are the official EfficientMod recipe (docs/training.md); --config recipe.yaml sets any of them.
Exit status: 0 done, 1 an internal error (named: file, step), 2 bad input or an unusable run folder,
3 the loss diverged (NaN/inf; the last good checkpoint is kept)."""

DEMO_DESCRIPTION = """\
The whole life cycle on CPU in a few minutes: train efficientmod_xxs on scikit-learn's
handwritten digits (8x8, upscaled to 32x32, 1,437 train / 360 val images), evaluate it,
export it to ONNX, check the ONNX model's accuracy in ONNX Runtime, and benchmark it.
The run folder's model/ and model.onnx record the digits' preprocessing (1 channel, 32 px):
`efficientmod predict runs/demo-*/model digit.png` (or model.onnx) classifies digit images.
Every training flag of `efficientmod train` applies on top of the demo's recipe."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train or fine-tune a model (DeiT recipe; one process or torchrun)",
        description="Train or fine-tune a model on an ImageNet-style folder.", epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(train)
    train.set_defaults(func=run_train)

    demo = subparsers.add_parser("demo", help="train, evaluate, export and benchmark a model on the bundled digits",
                                 description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(demo, preset=dict(DEMO_PRESET, output="runs/demo-<date>-<time>"))
    demo.set_defaults(func=run_demo)

    evaluate = subparsers.add_parser("eval", help="top-1, top-5 and loss of a checkpoint on an image folder")
    evaluate.add_argument("--model", required=True, help="model name")
    evaluate.add_argument("--checkpoint", required=True,
                          help="a training checkpoint (last.pth/best.pth), a save_pretrained folder, an exported "
                          ".onnx / .xml / .pte file (run in its runtime, on CPU), or official EfficientMod / timm "
                          "weights; evaluated with the preprocessing it records")
    evaluate.add_argument("--data", required=True, help="folder holding <split>/<class>/<image>")
    evaluate.add_argument("--split", default="val", help="sub-folder to evaluate (default: val)")
    evaluate.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    evaluate.add_argument("--workers", type=int, default=None,
                          help="data-loader processes (default: up to 4, one CPU core fewer than this process may "
                          "use)")
    evaluate.add_argument("--img-size", type=int, default=None,
                          help="input side (default: the size the checkpoint, folder or export records, "
                          "else the model's)")
    evaluate.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto)")
    evaluate.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                          help="autocast dtype (default: auto = bf16 on GPU, none on CPU)")
    evaluate.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    given = given_values(args)
    preset = train_preset(given)  # --qat: the fine-tune recipe of a trained model, under the flags and YAML given
    cfg = config_of(given, preset)  # the one resolution of the recipe, checked before anything is said or done
    if preset is DEMO_PRESET:
        print("efficientmod train: no --data given: training the digits demo "
              "(`efficientmod demo` also evaluates, exports and benchmarks it)", file=sys.stderr)
    from efficientmod.classify.engine import train

    if cfg.qat:  # a trainer of its own (NNCF, OpenVINO)
        from efficientmod.classify.qat import QATTrainer

        train(cfg, QATTrainer)
    else:
        train(cfg)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from efficientmod.classify.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.model, args.checkpoint, args.data, split=args.split,
                                 batch_size=args.batch_size, workers=args.workers, img_size=args.img_size,
                                 device=args.device, amp=args.amp, use_ema=args.ema)
    bad = f", {result['bad_files']} unreadable file(s) skipped" if result["bad_files"] else ""
    size = "x".join(map(str, result["input_size"]))
    print(f"{args.model} on {args.data}/{args.split} ({result['count']} images{bad}) at {size}: "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from efficientmod.classify.demo import DEMO_TARGET_TOP1, demo_report
    from efficientmod.classify.engine import train

    preset = dict(DEMO_PRESET, output=f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")  # never an old run
    cfg = resolve_config(args, preset=preset)
    if cfg.data is not None:
        raise ValueError("the demo trains on the bundled digits; use `efficientmod train --data ...` for a folder")
    if cfg.qat or cfg.init_from:
        raise ValueError("the demo trains a float model; quantisation-aware fine-tuning is `efficientmod train --qat`")
    started = time.perf_counter()
    print(f"demo: training {cfg.model} on the digits at {cfg.img_size}x{cfg.img_size}, {cfg.epochs} epochs, "
          f"{cfg.threads or torch.get_num_threads()} CPU thread(s); run folder {cfg.output}", file=sys.stderr)
    result = train(cfg)
    return demo_report(cfg, result, time.perf_counter() - started, DEMO_TARGET_TOP1)
