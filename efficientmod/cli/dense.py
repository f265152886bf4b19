"""``efficientmod det train|eval|predict`` (Mask R-CNN / RetinaNet on COCO-format data) and
``efficientmod seg train|eval|predict`` (Semantic FPN on ADE20K-layout data)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from efficientmod.checkpoint import atomic_write
from efficientmod.runtime import AMP_CHOICES, LAST_CHECKPOINT

DET_DEFAULT_MODEL = "efficientmod_s"


HELP = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    det = subparsers.add_parser(
        "det", help="object detection / instance segmentation (torchvision Mask R-CNN, RetinaNet)")
    det_commands = det.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_det_train(det_commands.add_parser("train", help="train on COCO-format data (1x schedule by default)", **HELP))
    _add_det_eval(det_commands.add_parser("eval", help="COCO box / mask mAP of a trained detector", **HELP))
    _add_det_predict(det_commands.add_parser("predict", help="draw detections on images (PNG) + JSON", **HELP))

    seg = subparsers.add_parser("seg", help="semantic segmentation (Semantic FPN)")
    seg_commands = seg.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_seg_train(seg_commands.add_parser(
        "train", help="train on ADE20K-layout data (40k-iteration poly schedule by default)", **HELP))
    _add_seg_eval(seg_commands.add_parser("eval", help="mIoU / pixel accuracy of a trained segmenter", **HELP))
    _add_seg_predict(seg_commands.add_parser("predict", help="colour-coded class maps on images (PNG) + JSON", **HELP))


# -- shared options ------------------------------------------------------------------------
def _add_backbone_options(parser: argparse.ArgumentParser, default_fpn: int = 256) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", default=DET_DEFAULT_MODEL, help="backbone name (`efficientmod models` lists them)")
    group.add_argument("--backbone-checkpoint", default=None, metavar="PATH",
                       help="classification weights for the backbone (official, timm or own layout, or a "
                            "save_pretrained folder)")
    group.add_argument("--frozen-stages", type=int, default=-1,
                       help="-1 trains all, 0 freezes the stem, k the stem and the first k stages")
    group.add_argument("--frozen-bn", action="store_true", help="freeze every BatchNorm of the backbone")
    group.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate of the backbone")
    group.add_argument("--fpn-channels", type=int, default=default_fpn, help="FPN width")


def _add_optim_options(parser: argparse.ArgumentParser, epochs: int | None, schedule: str, lr: float,
                       batch_size: int, warmup: int) -> None:
    group = parser.add_argument_group("optimisation (AdamW)")
    group.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    group.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per step and process")
    group.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    group.add_argument("--schedule", choices=("step", "cosine", "poly"), default=schedule, help="learning-rate decay")
    group.add_argument("--milestones", type=int, nargs="+", default=[8, 11],
                       help="epochs after which the step schedule multiplies the rate by --gamma")
    group.add_argument("--gamma", type=float, default=0.1, help="step schedule factor")
    group.add_argument("--warmup-steps", type=int, default=warmup, help="linear warm-up steps")
    group.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    group.add_argument("--amp", choices=AMP_CHOICES, nargs="?", const="bf16", default="none",
                       help="mixed precision: auto (bf16 on GPU, none on CPU), bf16 (also a bare --amp), "
                       "fp16 (with loss scaling) or none")
    group.add_argument("--seed", type=int, default=0, help="random seed")
    group.add_argument("--workers", type=int, default=2, help="data-loading processes")
    group.add_argument("--output", required=True, type=Path,
                       help=f"run folder ({LAST_CHECKPOINT}, log.jsonl, eval.json)")
    group.add_argument("--resume", action="store_true",
                       help=f"continue the run in --output from its {LAST_CHECKPOINT}")


def _add_checkpoint_option(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help=f"{LAST_CHECKPOINT} of `{task} train` (or its run folder)")


def _add_eval_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--output", type=Path, default=None, help="also write the metrics to this JSON file")


def _add_predict_io(parser: argparse.ArgumentParser, written: str) -> None:
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help=f"folder for {written} and predictions.json")


def _train_config(args: argparse.Namespace, meta: dict):
    from efficientmod.dense.engine import DenseTrainConfig

    return DenseTrainConfig(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, milestones=tuple(args.milestones), gamma=args.gamma,
        warmup_steps=args.warmup_steps, clip_grad=args.clip_grad, workers=args.workers, seed=args.seed,
        amp=args.amp, meta=meta,
    )


def _resume_path(args: argparse.Namespace) -> Path | None:
    if not args.resume:
        return None
    path = args.output / LAST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    return path


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def _print_metrics(report: dict, keys: list[str]) -> None:
    shown = ", ".join(f"{k} {100 * report[k]:.2f}" for k in keys if k in report)
    print(f"{shown} on {report['images']} image(s); skipped: {report['skipped'] or 'none'}")
    for reason, where in report.get("skipped_first", {}).items():
        print(f"first skipped for {reason}: {where}", file=sys.stderr)


# -- det ----------------------------------------------------------------------------------
def _add_det_data(parser: argparse.ArgumentParser, prefix: str = "", required: bool = True) -> None:
    parser.add_argument(f"--{prefix}images", required=required, type=Path, help="image folder (COCO file_name root)")
    parser.add_argument(f"--{prefix}annotations", required=required, type=Path, help="COCO instances JSON")


def _add_det_train(parser: argparse.ArgumentParser) -> None:
    _add_det_data(parser)
    _add_det_data(parser, "val-", required=False)
    parser.add_argument("--detector", choices=("mask_rcnn", "retinanet"), default="mask_rcnn")
    _add_backbone_options(parser)
    group = parser.add_argument_group("detector")
    group.add_argument("--min-size", type=int, default=800, help="shorter image side after resizing")
    group.add_argument("--max-size", type=int, default=1333, help="cap on the longer side")
    group.add_argument("--box-head-dim", type=int, default=1024, help="Mask R-CNN box head width")
    group.add_argument("--mask-head-channels", type=int, default=256, help="Mask R-CNN mask head width")
    _add_optim_options(parser, epochs=12, schedule="step", lr=2e-4, batch_size=2, warmup=500)
    parser.set_defaults(func=run_det_train)


def _add_det_eval(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "det")
    _add_det_data(parser)
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    _add_eval_outputs(parser)
    parser.set_defaults(func=run_det_eval)


def _add_det_predict(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "det")
    _add_predict_io(parser, "NAME.png (the image with its detections)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw and list detections above this")
    parser.set_defaults(func=run_det_predict)


def run_det_train(args: argparse.Namespace) -> int:
    from efficientmod.dense.coco import CocoInstances
    from efficientmod.dense.data import fixed_input_shapes
    from efficientmod.dense.detection import build_detector, detection_loss, detector_meta
    from efficientmod.dense.engine import train
    from efficientmod.runtime import init_runtime, seed_everything

    runtime = init_runtime(cudnn_benchmark=fixed_input_shapes("det"))
    dataset = CocoInstances(args.images, args.annotations, train=True, masks=args.detector == "mask_rcnn")
    print(f"training on {len(dataset)} image(s), {len(dataset.class_names)} classes; {dataset.skipped}",
          file=sys.stderr)
    settings = dict(min_size=args.min_size, max_size=args.max_size, fpn_channels=args.fpn_channels,
                    frozen_stages=args.frozen_stages, frozen_bn=args.frozen_bn, box_head_dim=args.box_head_dim,
                    mask_head_channels=args.mask_head_channels)
    meta = detector_meta(args.detector, args.model, dataset.class_names, dataset.category_ids, **settings)
    if (args.val_images is None) != (args.val_annotations is None):
        raise ValueError("give both --val-images and --val-annotations, or neither")
    validation = _det_dataset(meta, args.val_images, args.val_annotations) if args.val_images else None
    seed_everything(args.seed)  # the same initial weights in every run of this seed (torch seeds itself at random)
    model = build_detector(args.detector, args.model, len(dataset.class_names), checkpoint=args.backbone_checkpoint,
                           drop_path_rate=args.drop_path, **settings)
    summary = train(model, dataset, _train_config(args, meta), detection_loss, args.output,
                    resume=_resume_path(args), runtime=runtime)
    if validation is not None and runtime.main:
        _det_evaluate(model, validation, args.batch_size, args.workers, args.output / "eval.json")
    if runtime.main:
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


def _det_dataset(meta: dict, images: Path, annotations: Path):
    """Evaluation data, checked to have the categories the detector was trained on."""
    from efficientmod.dense.coco import CocoInstances

    dataset = CocoInstances(images, annotations, masks=meta["detector"] == "mask_rcnn")
    if dataset.category_ids != meta["category_ids"]:
        raise ValueError(f"{annotations} has category ids {dataset.category_ids[:10]}..., the detector was trained "
                         f"on {meta['category_ids'][:10]}...: evaluate on data with the same categories")
    return dataset


def _det_evaluate(model, dataset, batch_size: int, workers: int, output: Path | None) -> dict:
    from efficientmod.dense.detection import evaluate_coco

    report = evaluate_coco(model, dataset, batch_size, workers)
    print(report.pop("summary"), file=sys.stderr)
    _print_metrics(report, ["bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50"])
    if output is not None:
        _write_json(output, report)
    return report


def run_det_eval(args: argparse.Namespace) -> int:
    from efficientmod.dense.detection import build_from_meta
    from efficientmod.dense.engine import load_trained

    model, meta = load_trained(args.checkpoint, "det", build_from_meta)
    _det_evaluate(model, _det_dataset(meta, args.images, args.annotations), args.batch_size, args.workers,
                  args.output)
    return 0


def run_det_predict(args: argparse.Namespace) -> int:
    from efficientmod.dense.detection import build_from_meta, detect
    from efficientmod.dense.engine import load_trained
    from efficientmod.dense.predict import detections_to_json, draw_detections, image_files, run_on_images, save_png

    model, meta = load_trained(args.checkpoint, "det", build_from_meta)
    names = meta["class_names"]

    def infer(path: Path, image):
        output = detect(model, [image])[0]
        save_png(draw_detections(image, output, names, args.score_threshold), args.output / f"{path.stem}.png")
        return dict(drawing=f"{path.stem}.png", detections=detections_to_json(output, names, args.score_threshold))

    run_on_images(image_files(args.input), args.output, infer)
    return 0


# -- seg ----------------------------------------------------------------------------------
def _add_seg_data(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="ADE20K-layout root: DATA/images/SPLIT/*.jpg and DATA/annotations/SPLIT/*.png")
    parser.add_argument("--split", default=split, help="sub-folder of images/ and annotations/")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole image or sliding windows")
    group.add_argument("--window", type=int, default=512, help="sliding-window size")
    group.add_argument("--stride", type=int, default=341, help="sliding-window stride")


def _add_seg_train(parser: argparse.ArgumentParser) -> None:
    _add_seg_data(parser, "training")
    parser.add_argument("--val-split", default=None, help="evaluate on this split after training (e.g. validation)")
    parser.add_argument("--num-classes", type=int, default=150, help="classes after reduce_zero_label (ADE20K: 150)")
    parser.add_argument("--no-reduce-zero-label", dest="reduce_zero_label", action="store_false",
                        help="label 0 is a class (by default 0 is ignored and ids 1.. become 0..)")
    parser.add_argument("--resize", type=int, nargs=2, default=[2048, 512], metavar=("LONG", "SHORT"),
                        help="keep-ratio rescale bounds")
    parser.add_argument("--crop-size", type=int, default=512, help="training crop")
    _add_backbone_options(parser)
    parser.add_argument("--head-channels", type=int, default=128, help="Semantic FPN head width")
    _add_inference_options(parser)
    _add_optim_options(parser, epochs=None, schedule="poly", lr=2e-4, batch_size=4, warmup=0)
    parser.set_defaults(max_steps=40000)
    parser.set_defaults(func=run_seg_train)


def _add_seg_eval(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "seg")
    _add_seg_data(parser, "validation")
    _add_inference_options(parser)
    _add_eval_outputs(parser)
    parser.set_defaults(func=run_seg_eval)


def _add_seg_predict(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "seg")
    _add_predict_io(parser, "NAME.png (class colours), NAME_labels.png (class ids)")
    _add_inference_options(parser)
    parser.set_defaults(func=run_seg_predict)


def _seg_dataset(meta: dict, data: Path, split: str, train: bool = False, crop_size: int = 512):
    from efficientmod.dense.segmentation import AdeSegmentation

    return AdeSegmentation(data, split, meta["num_classes"], train=train, reduce_zero_label=meta["reduce_zero_label"],
                           resize=meta["resize"], crop_size=crop_size)


def _seg_evaluate(model, dataset, args: argparse.Namespace, output: Path | None) -> dict:
    from efficientmod.dense.segmentation import evaluate_segmentation

    report = evaluate_segmentation(model, dataset, args.mode, args.window, args.stride, args.workers)
    _print_metrics(report, ["mIoU", "mAcc", "aAcc"])
    if output is not None:
        _write_json(output, report)
    return report


def run_seg_train(args: argparse.Namespace) -> int:
    from efficientmod.dense.data import fixed_input_shapes
    from efficientmod.dense.engine import train
    from efficientmod.dense.segmentation import build_segmenter, segmentation_loss, segmenter_meta
    from efficientmod.runtime import init_runtime, seed_everything

    runtime = init_runtime(cudnn_benchmark=fixed_input_shapes("seg"))
    meta = segmenter_meta(args.model, args.num_classes, args.reduce_zero_label, args.resize,
                          fpn_channels=args.fpn_channels, head_channels=args.head_channels,
                          frozen_stages=args.frozen_stages, frozen_bn=args.frozen_bn)
    dataset = _seg_dataset(meta, args.data, args.split, train=True, crop_size=args.crop_size)
    print(f"training on {len(dataset)} image(s), {args.num_classes} classes; {dataset.skipped}", file=sys.stderr)
    seed_everything(args.seed)  # the same initial weights in every run of this seed (torch seeds itself at random)
    model = build_segmenter(args.model, args.num_classes, args.fpn_channels, args.head_channels,
                            checkpoint=args.backbone_checkpoint, frozen_stages=args.frozen_stages,
                            frozen_bn=args.frozen_bn, drop_path_rate=args.drop_path)
    validation = _seg_dataset(meta, args.data, args.val_split) if args.val_split else None
    for option, size in (("--crop-size", args.crop_size), ("--window", args.window)):
        if size % model.size_divisible:
            raise ValueError(f"{option} {size} must be a multiple of {model.size_divisible} for {args.model}")
    summary = train(model, dataset, _train_config(args, meta), segmentation_loss, args.output,
                    resume=_resume_path(args), runtime=runtime)
    if validation is not None and runtime.main:
        _seg_evaluate(model, validation, args, args.output / "eval.json")
    if runtime.main:
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


def run_seg_eval(args: argparse.Namespace) -> int:
    from efficientmod.dense.engine import load_trained
    from efficientmod.dense.segmentation import build_from_meta

    model, meta = load_trained(args.checkpoint, "seg", build_from_meta)
    _seg_evaluate(model, _seg_dataset(meta, args.data, args.split), args, args.output)
    return 0


def run_seg_predict(args: argparse.Namespace) -> int:
    import torch

    from efficientmod.dense.engine import load_trained
    from efficientmod.dense.predict import draw_classes, image_files, run_on_images, save_png
    from efficientmod.dense.segmentation import build_from_meta, rescale_factor, resize_image, segment

    model, meta = load_trained(args.checkpoint, "seg", build_from_meta)

    def infer(path: Path, image: torch.Tensor) -> dict:
        height, width = image.shape[-2:]
        resized = resize_image(image, rescale_factor(width, height, meta["resize"]))
        classes = segment(model, resized, args.mode, args.window, args.stride, output_size=(height, width)).argmax(0)
        save_png(draw_classes(image, classes, model.num_classes), args.output / f"{path.stem}.png")
        save_png(classes.to(torch.uint8).numpy(), args.output / f"{path.stem}_labels.png")
        counts = classes.flatten().bincount(minlength=model.num_classes)
        fractions = {str(k): round(float(v) / classes.numel(), 4) for k, v in enumerate(counts.tolist()) if v}
        return dict(drawing=f"{path.stem}.png", labels=f"{path.stem}_labels.png", class_fractions=fractions)

    run_on_images(image_files(args.input), args.output, infer)
    return 0
