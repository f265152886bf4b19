"""``efficientmod export`` (deployed model → a verified file of any :data:`efficientmod.export.FORMATS`) and
``efficientmod predict``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from efficientmod.cli.serve import add_batch_arguments, run_batch_predict

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a deployed model to ONNX, OpenVINO or ExecuTorch (.pte) (fp32, bf16, int8) and verify it",
        description="Deploy MODEL (fold BatchNorm and layer scales, merge projections), export it to "
        "ONNX with a dynamic batch axis, then run the file in ONNX Runtime on random inputs of "
        "several batch sizes and compare with PyTorch. Prints the max abs difference; above "
        "--tolerance no file is written (an existing one is kept) and the exit status is 1. "
        "Preprocessing and class names are stored in the file's metadata (what "
        "`efficientmod predict FILE.onnx` reads). --format openvino (or -o OUT.xml) writes an OpenVINO IR "
        "through the same ONNX graph with a batch of 1 (--dynamic-batch: any), compiled as written and verified "
        "the same way in OpenVINO; --format executorch (or -o OUT.pte) "
        "writes an ExecuTorch program for phones (XNNPACK, batch 1), verified in ExecuTorch's runtime. "
        "--precision bf16 / int8 files are checked by top-1 / top-5 agreement with fp32 on real images "
        "(--calib, --check-images).",
    )
    _add_model_args(export)
    export.add_argument("-o", "--output", required=True, type=Path,
                        help="the .onnx (or OpenVINO .xml, ExecuTorch .pte) file to write")
    export.add_argument("--input-size", type=int, nargs="+", metavar="PIXELS", default=None,
                        help="H [W] of the exported input (default: the model's, e.g. 224)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 or newer (default 18)")
    batch = export.add_mutually_exclusive_group()
    batch.add_argument("--static-batch", action="store_true",
                       help="fix the batch size to 1 (the default of OpenVINO files, which OpenVINO's tools such as "
                       "benchmark_app load as written)")
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="a dynamic batch axis (the default of ONNX files; OpenVINO on request)")
    export.add_argument("--no-deploy", action="store_true",
                        help="export the model as built, without the inference rewrites (for comparisons)")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max abs difference to PyTorch accepted (default 1e-4)")
    export.add_argument("--verify-batch-sizes", type=int, nargs="+", default=[1, 2, 3], metavar="N",
                        help="batch sizes of the random verification inputs (default 1 2 3)")
    export.add_argument("--save-optimized", type=Path, default=None, metavar="PATH",
                        help="also write ONNX Runtime's optimized graph (runs on this kind of CPU only)")
    _add_precision_args(export)
    export.set_defaults(func=run_export)

    predict = subparsers.add_parser(
        "predict",
        help="top-5 classes of image files (deployed model, ONNX, OpenVINO or ExecuTorch .pte file)",
        description="Classify IMAGE files with the deployed MODEL (a registered name with "
        "--checkpoint, a save_pretrained folder) or a file written by `efficientmod export` "
        "(.onnx run by ONNX Runtime, .xml by OpenVINO, .pte by ExecuTorch), using the model's own preprocessing. "
        "Class names: those saved with the weights, else ImageNet's for 1000 classes. Unreadable images are reported "
        "on stderr, the others still predicted; the exit status is then 1.",
    )
    _add_model_args(predict, onnx=True)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    predict.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    predict.add_argument("--device", default="cpu", help="torch device of the PyTorch path (default cpu)")
    predict.add_argument("--threads", type=int, default=None,
                         help="ONNX Runtime / OpenVINO / ExecuTorch inference threads")
    add_batch_arguments(predict)
    predict.set_defaults(func=run_predict)


def _add_precision_args(export: argparse.ArgumentParser) -> None:
    """--format / --precision and the calibration of reduced-precision exports."""
    from efficientmod.export import FORMATS

    export.add_argument("--format", choices=list(FORMATS), default=None,
                        help="file format (default: from the --output suffix: .onnx, .xml = OpenVINO IR, "
                        ".pte = ExecuTorch)")
    export.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="fp32 (default); bf16 (OpenVINO: bfloat16 inference precision); int8 (post-training "
                        "quantisation calibrated on --calib: ONNX Runtime QDQ for .onnx, NNCF for OpenVINO, pt2e "
                        "convolutions and linear layers for ExecuTorch's XNNPACK). bf16 and int8 are verified by "
                        "top-1 / top-5 agreement with fp32, printed")
    export.add_argument("--calib", type=Path, default=None, metavar="DIR",
                        help="image folder (searched recursively) for int8 calibration and the agreement check")
    export.add_argument("--calib-samples", type=int, default=300, metavar="N",
                        help="calibration images taken from --calib, spread over the folder (default 300)")
    export.add_argument("--check-images", type=Path, default=None, metavar="DIR",
                        help="image folder for the bf16 / int8 agreement check (default: the calibration images)")
    export.add_argument("--agreement-tolerance", type=float, default=1.0, metavar="POINTS",
                        help="bf16 / int8: top-1 and top-5 agreement with fp32 may fall this many percentage "
                        "points below 100 (default 1); below it nothing is written and the exit status is 1")


def _add_model_args(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a registered name (`efficientmod models`), a save_pretrained folder"
                        + (", or an exported .onnx / .xml / .pte file" if onnx else ""))
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="weights for a registered name: official / timm / own checkpoint, training "
                        "checkpoint or save_pretrained folder"
                        + ("" if onnx else " (without it the weights are random: fine for latency, "
                           "not for predictions)"))


def _input_size(model, pixels: list[int] | None) -> tuple[int, int, int]:
    from efficientmod.preprocessing import Preprocessing

    if pixels is None:  # what the model was trained on (save_pretrained / training checkpoint), else the registry's
        return Preprocessing.of_model(model).input_size
    if len(pixels) > 2 or min(pixels) <= 0:
        raise ValueError(f"--input-size takes H or H W (positive), got {pixels}")
    height, width = pixels[0], pixels[-1]
    multiple = getattr(model, "input_multiple", 1)
    if height % multiple or width % multiple:
        raise ValueError(f"--input-size {height} {width}: both sides must be multiples of {multiple}")
    return (model.in_chans, height, width)


def run_export(args: argparse.Namespace) -> int:
    """parse -> resolve the format -> ``format.write`` -> one report of the verified export."""
    from efficientmod.classify.predict import load_model
    from efficientmod.export import ExportVerificationError, resolve_format
    from efficientmod.fuse import deploy
    from efficientmod.metadata import export_metadata
    from efficientmod.preprocessing import Preprocessing

    options = _export_options(args)
    fmt = resolve_format(args.output, options, args.format)
    model = load_model(args.model, args.checkpoint)
    if args.checkpoint is None and not Path(args.model).is_dir():
        print(f"note: no --checkpoint, exporting {args.model} with random weights", file=sys.stderr)
    input_size = _input_size(model, args.input_size)
    model.eval() if args.no_deploy else deploy(model)
    preprocessing = Preprocessing.of_model(model, input_size)
    options = _with_images(options, args, preprocessing)
    try:
        result = fmt.write(model, args.output, input_size, export_metadata(model, preprocessing), options)
    except ExportVerificationError as error:
        print(f"efficientmod export: verification FAILED, {args.output} not written: {error}", file=sys.stderr)
        return 1
    _report(result, options, _agreement_source(options),
            f"{'undeployed' if args.no_deploy else 'deployed'} {model.registry_name}")
    return 0


def _export_options(args: argparse.Namespace):
    """The export's :class:`~efficientmod.export.ExportOptions` from the flags (images not read yet)."""
    from efficientmod.export import ExportOptions

    if args.precision == "int8" and args.calib is None:
        raise ValueError("--precision int8 needs calibration images: --calib DIR")
    if args.calib_samples < 1:
        raise ValueError("--calib-samples must be positive")
    return ExportOptions(
        precision=args.precision, tolerance=args.tolerance, agreement_tolerance=args.agreement_tolerance,
        batch_sizes=tuple(args.verify_batch_sizes), opset=args.opset, optimized_path=args.save_optimized,
        dynamic_batch=True if args.dynamic_batch else (False if args.static_batch else None),
        progress=lambda line: print(f"efficientmod export: {line}", file=sys.stderr, flush=True),
    )


def _with_images(options, args: argparse.Namespace, preprocessing):
    """``options`` with the --calib and --check-images folders read through ``preprocessing``."""
    from dataclasses import replace

    from efficientmod.export.calibration import read_calibration_images

    calibration = None if args.calib is None else read_calibration_images(args.calib, preprocessing, args.calib_samples)
    check = None if args.check_images is None else read_calibration_images(args.check_images, preprocessing, None)
    return replace(options, calibration=calibration, check_images=check)


def _agreement_source(options) -> str:
    """Which images the bf16 / int8 agreement was measured on."""
    if options.check_images is not None:
        return "--check-images"
    return "calibration images" if options.calibration is not None else "random inputs (no --calib)"


def _report(result, options, source: str, model: str) -> None:
    """What a verified export checked and wrote (any format)."""
    if result.max_abs_diff is not None:
        print(f"verified: {result.compared} vs PyTorch max abs diff {result.max_abs_diff:.2e} "
              f"(<= {options.tolerance:g}) on {result.checked_on}")
    if result.agreement is not None:
        print(f"verified: {result.precision} vs {result.agreement_reference}: {result.agreement} [{source}; "
              f"tolerance {options.agreement_tolerance:g} points]")
    for note in result.notes:
        print(note)
    batch = "N" if result.batch is None else str(result.batch)
    print(f"wrote {result.path} ({result.format} {result.precision}, {model}, "
          f"input {batch}x{'x'.join(map(str, result.input_size))}{''.join(', ' + d for d in result.details)})")


def run_predict(args: argparse.Namespace) -> int:
    from efficientmod.classify.predict import Predictor, check_model_argument, load_model
    from efficientmod.export import find_format
    from efficientmod.runtime import resolve_device

    if args.topk < 1 or args.batch_size < 1:
        raise ValueError("--topk and --batch-size must be positive")
    if args.engine == "ray" or args.output is not None:
        return run_batch_predict(args)
    if find_format(args.model) is not None:
        if args.checkpoint is not None:
            raise ValueError(f"an exported file ({args.model}) holds its weights: drop --checkpoint")
        predictor = Predictor.from_file(args.model, args.threads)
    else:
        check_model_argument(args.model)  # a missing folder is not found, before weights are asked for
        if args.checkpoint is None and not Path(args.model).is_dir():
            raise ValueError(f"predicting with random weights makes no sense: pass --checkpoint for {args.model}")
        device = resolve_device(args.device)
        model = load_model(args.model, args.checkpoint).to(device)
        predictor = Predictor.from_model(model)
    failed = []

    def report(path: str, reason: str) -> None:
        failed.append(path)
        print(f"efficientmod predict: cannot read {path}: {reason}", file=sys.stderr)

    for prediction in predictor.predict_files(args.images, args.topk, args.batch_size, on_error=report):
        print(prediction.path)
        for rank, (name, prob) in enumerate(prediction.top, 1):
            print(f"  {rank}. {100 * prob:6.2f}%  {name}")
    if failed:
        print(f"efficientmod predict: {len(failed)} of {len(args.images)} image(s) unreadable", file=sys.stderr)
    return 1 if failed else 0
