"""``efficientmod det train|eval|predict`` (Mask R-CNN / RetinaNet on COCO-format data) and
``efficientmod seg train|eval|predict`` (Semantic FPN on ADE20K-layout data)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from efficientmod.checkpoint import atomic_write
from efficientmod.config_flags import add_flags, values_from
from efficientmod.dense.config import (
    SEG_SCHEDULE,
    AdeData,
    BackboneSettings,
    CocoData,
    CocoValidationData,
    DenseTrainConfig,
    DetectorSettings,
    RunFolder,
    SegmentationInference,
    SegmenterSettings,
)
from efficientmod.runtime import LAST_CHECKPOINT

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
def _add_training_flags(parser: argparse.ArgumentParser, schedule: dict | None = None) -> None:
    """The optimisation and run-folder flags of `det train` / `seg train` (``schedule``: the
    task's defaults where they are not :class:`DenseTrainConfig`'s)."""
    add_flags(parser, DenseTrainConfig, defaults=schedule)
    add_flags(parser, RunFolder)


def _add_checkpoint_option(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help=f"{LAST_CHECKPOINT} of `{task} train` (or its run folder)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto: the GPU when there is one")


def _load_trained(args: argparse.Namespace, task: str, build_from_meta) -> tuple:
    """The trained model of ``--checkpoint`` on ``--device`` (checked before the checkpoint
    is read), and its description."""
    from efficientmod.dense.engine import load_trained
    from efficientmod.runtime import resolve_device

    device = resolve_device(args.device)
    model, meta = load_trained(args.checkpoint, task, build_from_meta)
    return model.to(device), meta


def _add_eval_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--output", type=Path, default=None, help="also write the metrics to this JSON file")


def _add_predict_io(parser: argparse.ArgumentParser, written: str) -> None:
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help=f"folder for {written} and predictions.json")


def _train_config(args: argparse.Namespace, meta: dict) -> DenseTrainConfig:
    return DenseTrainConfig(**values_from(args, DenseTrainConfig), meta=meta)


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
def _add_det_train(parser: argparse.ArgumentParser) -> None:
    for settings in (CocoData, CocoValidationData, BackboneSettings, DetectorSettings):
        add_flags(parser, settings)
    _add_training_flags(parser)
    parser.set_defaults(func=run_det_train)


def _add_det_eval(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "det")
    add_flags(parser, CocoData)
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

    model, meta = _load_trained(args, "det", build_from_meta)
    _det_evaluate(model, _det_dataset(meta, args.images, args.annotations), args.batch_size, args.workers,
                  args.output)
    return 0


def run_det_predict(args: argparse.Namespace) -> int:
    from efficientmod.dense.detection import build_from_meta, detect
    from efficientmod.dense.predict import detections_to_json, draw_detections, image_files, run_on_images, save_png

    model, meta = _load_trained(args, "det", build_from_meta)
    names = meta["class_names"]

    def infer(path: Path, image):
        output = detect(model, [image])[0]
        save_png(draw_detections(image, output, names, args.score_threshold), args.output / f"{path.stem}.png")
        return dict(drawing=f"{path.stem}.png", detections=detections_to_json(output, names, args.score_threshold))

    run_on_images(image_files(args.input), args.output, infer)
    return 0


# -- seg ----------------------------------------------------------------------------------
def _add_seg_train(parser: argparse.ArgumentParser) -> None:
    for settings in (AdeData, SegmenterSettings, BackboneSettings, SegmentationInference):
        add_flags(parser, settings)
    _add_training_flags(parser, SEG_SCHEDULE)
    parser.set_defaults(func=run_seg_train)


def _add_seg_eval(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "seg")
    add_flags(parser, AdeData, defaults=dict(split="validation"))
    add_flags(parser, SegmentationInference)
    _add_eval_outputs(parser)
    parser.set_defaults(func=run_seg_eval)


def _add_seg_predict(parser: argparse.ArgumentParser) -> None:
    _add_checkpoint_option(parser, "seg")
    _add_predict_io(parser, "NAME.png (class colours), NAME_labels.png (class ids)")
    add_flags(parser, SegmentationInference)
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
    from efficientmod.dense.segmentation import build_from_meta

    model, meta = _load_trained(args, "seg", build_from_meta)
    _seg_evaluate(model, _seg_dataset(meta, args.data, args.split), args, args.output)
    return 0


def run_seg_predict(args: argparse.Namespace) -> int:
    import torch

    from efficientmod.dense.predict import draw_classes, image_files, run_on_images, save_png
    from efficientmod.dense.segmentation import build_from_meta, rescale_factor, resize_image, segment

    model, meta = _load_trained(args, "seg", build_from_meta)

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
