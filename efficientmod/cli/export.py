"""``efficientmod export`` (deployed model → verified ONNX) and ``efficientmod predict``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from efficientmod.cli.serve import add_batch_arguments, run_batch_predict

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a deployed model to ONNX or OpenVINO (fp32, bf16, int8) and verify it",
        description="Deploy MODEL (fold BatchNorm and layer scales, merge projections), export it to "
        "ONNX with a dynamic batch axis, then run the file in ONNX Runtime on random inputs of "
        "several batch sizes and compare with PyTorch. Prints the max abs difference; above "
        "--tolerance no file is written (an existing one is kept) and the exit status is 1. "
        "Preprocessing and class names are stored in the file's metadata (what "
        "`efficientmod predict FILE.onnx` reads). --format openvino (or -o OUT.xml) writes an OpenVINO IR "
        "through the same ONNX graph, verified the same way in OpenVINO; --format executorch (or -o OUT.pte) "
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
    export.add_argument("--static-batch", action="store_true", help="fix the batch size to 1")
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
        help="top-5 classes of image files (deployed model, ONNX or OpenVINO file)",
        description="Classify IMAGE files with the deployed MODEL (a registered name with "
        "--checkpoint, a save_pretrained folder) or a file written by `efficientmod export` "
        "(.onnx run by ONNX Runtime, .xml by OpenVINO), using the model's own preprocessing. Class names: "
        "those saved with the weights, else ImageNet's for 1000 classes. Unreadable images are reported on stderr, "
        "the others still predicted; the exit status is then 1.",
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
    from efficientmod.classify.predict import Preprocessing

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
    from efficientmod.classify.predict import Preprocessing, load_model, onnx_metadata
    from efficientmod.export import ExportVerificationError, export_verified
    from efficientmod.fuse import deploy

    fmt = _export_format(args)
    model = load_model(args.model, args.checkpoint)
    if args.checkpoint is None and not Path(args.model).is_dir():
        print(f"note: no --checkpoint, exporting {args.model} with random weights", file=sys.stderr)
    input_size = _input_size(model, args.input_size)
    model.eval() if args.no_deploy else deploy(model)
    preprocessing = Preprocessing.of_model(model, input_size)
    metadata = onnx_metadata(model, preprocessing)
    if fmt == "executorch":
        return _run_executorch_export(args, model, input_size, preprocessing, metadata)
    if fmt != "onnx" or args.precision != "fp32":
        return _run_reduced_export(args, fmt, model, input_size, preprocessing, metadata)
    try:
        worst = export_verified(model, args.output, input_size, args.opset, not args.static_batch, metadata,
                                args.verify_batch_sizes, args.tolerance, args.save_optimized)
    except ExportVerificationError as error:
        print(f"efficientmod export: verification FAILED, {args.output} not written: {error}", file=sys.stderr)
        return 1
    batches = [1] if args.static_batch else args.verify_batch_sizes
    print(f"verified: ONNX Runtime vs PyTorch max abs diff {worst:.2e} (<= {args.tolerance:g}) "
          f"on batch sizes {batches}")
    print(f"wrote {args.output} ({'undeployed' if args.no_deploy else 'deployed'} {model.registry_name}, "
          f"input {'N' if not args.static_batch else 1}x{'x'.join(map(str, input_size))}, opset {args.opset})")
    return 0


def _export_format(args: argparse.Namespace) -> str:
    """The --format, checked against the --output suffix (which picks it when not given)."""
    from efficientmod.export import FORMATS, format_of

    fmt = args.format or format_of(args.output).name
    if args.output.suffix.lower() not in FORMATS[fmt].suffixes:
        raise ValueError(f"--output of a {fmt} export ends in {' or '.join(FORMATS[fmt].suffixes)}, got {args.output}")
    if args.precision == "bf16" and fmt != "openvino":
        raise ValueError("--precision bf16 is an OpenVINO inference precision: use --format openvino (-o OUT.xml)")
    if args.precision == "int8" and args.calib is None:
        raise ValueError("--precision int8 needs calibration images: --calib DIR")
    if args.calib_samples < 1:
        raise ValueError("--calib-samples must be positive")
    if fmt == "executorch" and (args.static_batch or args.save_optimized or args.opset != 18):
        raise ValueError("--static-batch, --save-optimized and --opset apply to ONNX exports only "
                         "(an ExecuTorch program always takes one image)")
    if (fmt != "onnx" or args.precision != "fp32") and (args.static_batch or args.save_optimized):
        raise ValueError("--static-batch and --save-optimized apply to fp32 ONNX exports only")
    return fmt


def _run_reduced_export(args, fmt: str, model, input_size, preprocessing, metadata) -> int:
    """OpenVINO (any precision) or int8 ONNX: verified, and for bf16 / int8 checked by agreement."""
    from efficientmod.export import ExportVerificationError
    from efficientmod.export.calibration import read_calibration_images

    calibration = None if args.calib is None else read_calibration_images(args.calib, preprocessing, args.calib_samples)
    check = None if args.check_images is None else read_calibration_images(args.check_images, preprocessing, None)
    common = dict(input_size=input_size, metadata=metadata, check_images=check, tolerance=args.tolerance,
                  agreement_tolerance=args.agreement_tolerance, batch_sizes=args.verify_batch_sizes, opset=args.opset)
    try:
        if fmt == "openvino":
            from efficientmod.export.openvino import export_openvino

            result = export_openvino(model, args.output, precision=args.precision, calibration=calibration, **common)
        else:
            from efficientmod.export.quantize import export_onnx_int8

            result = export_onnx_int8(model, args.output, calibration, **common)
    except ExportVerificationError as error:
        print(f"efficientmod export: verification FAILED, {args.output} not written: {error}", file=sys.stderr)
        return 1
    print(f"verified: fp32 graph vs PyTorch max abs diff {result.fp32_max_abs_diff:.2e} (<= {args.tolerance:g}) "
          f"on batch sizes {args.verify_batch_sizes}")
    if result.agreement is not None:
        source = "--check-images" if check is not None else ("calibration images" if calibration is not None
                                                             else "random inputs (no --calib)")
        print(f"verified: {args.precision} vs fp32: {result.agreement} [{source}; tolerance "
              f"{args.agreement_tolerance:g} points]")
    print(f"wrote {args.output} ({fmt} {args.precision}, {'undeployed' if args.no_deploy else 'deployed'} "
          f"{model.registry_name}, "
          f"input Nx{'x'.join(map(str, input_size))})")
    return 0


def _run_executorch_export(args: argparse.Namespace, model, input_size, preprocessing, metadata) -> int:
    """ExecuTorch .pte (fp32 or int8), verified in ExecuTorch's runtime before it is written."""
    from efficientmod.export import ExportVerificationError
    from efficientmod.export.calibration import read_calibration_images
    from efficientmod.export.executorch import export_executorch, stderr_progress

    calibration = None if args.calib is None else read_calibration_images(args.calib, preprocessing, args.calib_samples)
    check = None if args.check_images is None else read_calibration_images(args.check_images, preprocessing, None)
    try:
        result = export_executorch(model, args.output, input_size, metadata, args.precision, calibration, check,
                                   args.tolerance, args.agreement_tolerance, progress=stderr_progress)
    except ExportVerificationError as error:
        print(f"efficientmod export: verification FAILED, {args.output} not written: {error}", file=sys.stderr)
        return 1
    if result.agreement is None:
        print(f"verified: ExecuTorch vs PyTorch max abs diff {result.max_abs_diff:.2e} (<= {args.tolerance:g}) "
              "on 3 random images")
    else:
        source = "--check-images" if check is not None else "calibration images"
        print(f"verified: int8 vs PyTorch fp32: {result.agreement} [{source}; tolerance "
              f"{args.agreement_tolerance:g} points]")
    print(f"delegation: {result.delegation}")
    print(f"wrote {args.output} (executorch {args.precision}, {'undeployed' if args.no_deploy else 'deployed'} "
          f"{model.registry_name}, input 1x{'x'.join(map(str, input_size))}, {result.size_bytes / 1e6:.1f} MB, "
          f"{result.seconds:.0f} s)")
    return 0


def _torch_device(name: str):
    """``torch.device(name)``, refused with a clear message when it is not usable here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def _is_exported(path: str) -> bool:
    from efficientmod.export import FORMATS

    return any(path.lower().endswith(suffix) for fmt in FORMATS.values() for suffix in fmt.suffixes)


def run_predict(args: argparse.Namespace) -> int:
    from efficientmod.classify.predict import Predictor, load_model

    if args.topk < 1 or args.batch_size < 1:
        raise ValueError("--topk and --batch-size must be positive")
    if args.engine == "ray" or args.output is not None:
        return run_batch_predict(args)
    if _is_exported(args.model):
        if args.checkpoint is not None:
            raise ValueError(f"an exported file ({args.model}) holds its weights: drop --checkpoint")
        predictor = Predictor.from_file(args.model, args.threads)
    else:
        if args.checkpoint is None and not Path(args.model).is_dir():
            raise ValueError(f"predicting with random weights makes no sense: pass --checkpoint for {args.model}")
        device = _torch_device(args.device)
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
