"""Post-training int8 vs quantisation-aware int8 (``efficientmod train --qat``) on a trained model.

    python benchmarks/qat_accuracy.py --init-from runs/int8-accuracy/photo-run \\
        --data runs/int8-accuracy/photo-patches --work runs/qat-accuracy --epochs 2 --lr 1e-5

The float model of ``--init-from`` (a run folder of ``benchmarks/int8_accuracy.py``, or any
``save_pretrained`` folder) is exported as ``efficientmod export --precision int8`` does
(deployed, NNCF post-training quantisation of the OpenVINO graph, calibrated on 300
training images of ``--data``) and fine-tuned as ``efficientmod train --qat`` does (the same
argument parsing and recipe; the extra flags after ``--`` go to it). Every file then runs on
the whole ``val/`` folder in OpenVINO; the table gives top-1 and the top-1 agreement with
the float PyTorch model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from efficientmod.bench import environment
from efficientmod.checkpoint import atomic_write
from efficientmod.classify.config import QAT_PRESET, resolve_config
from efficientmod.classify.engine import train
from efficientmod.classify.qat import IR_NAME, load_float_model
from efficientmod.cli import build_parser
from efficientmod.export import load_runtime
from efficientmod.export.calibration import calibration_files, read_calibration_images, run_batched
from efficientmod.export.openvino import export_openvino
from efficientmod.fuse import deploy
from efficientmod.metadata import export_metadata
from efficientmod.preprocessing import Preprocessing


def post_training_int8(model, data: Path, path: Path) -> Path:
    """``efficientmod export MODEL -o PATH --precision int8 --calib DATA/train`` (300 images)."""
    preprocessing = Preprocessing.of_model(model)
    calibration = read_calibration_images(data / "train", preprocessing, 300)
    return export_openvino(model, path, preprocessing.input_size, "int8", export_metadata(model, preprocessing),
                           calibration, agreement_tolerance=100).path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-from", type=Path, required=True, help="the trained float model (run or model folder)")
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--work", type=Path, default=Path("runs/qat-accuracy"), help="exports and the QAT run")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args, train_flags = parser.parse_known_args()
    train_flags = [flag for flag in train_flags if flag != "--"]
    started = time.perf_counter()
    result = dict(command=" ".join([os.path.basename(sys.executable), *sys.argv]), environment=environment(1))

    model = deploy(load_float_model(args.init_from))
    files = {"openvino int8 post-training": post_training_int8(model, args.data, args.work / "ptq_int8.xml")}
    qat_argv = ["train", "--qat", "--init-from", str(args.init_from), "--data", str(args.data),
                "--output", str(args.work / "qat"), *train_flags]
    result["qat_command"] = "efficientmod " + " ".join(qat_argv)
    qat_run = train(resolve_config(build_parser().parse_args(qat_argv), preset=QAT_PRESET))
    result["qat_run"] = {key: value for key, value in qat_run.items() if isinstance(value, (int, float, str, dict))}
    files["openvino int8 after QAT"] = args.work / "qat" / IR_NAME

    class_names = list(model.class_names)
    val_files = calibration_files(args.data / "val")
    labels = np.array([class_names.index(p.parent.name) for p in val_files])
    images = read_calibration_images(args.data / "val", Preprocessing.of_model(model), None)
    with torch.no_grad():
        reference = run_batched(lambda b: model(torch.from_numpy(b)).numpy(), images)
    logits = {"pytorch fp32": reference, **{label: run_batched(load_runtime(path, threads=1).run, images)
                                            for label, path in files.items()}}
    result["rows"] = [dict(runtime=label, top1=100.0 * float((out.argmax(1) == labels).mean()),
                           agreement_with_fp32=100.0 * float((out.argmax(1) == reference.argmax(1)).mean()))
                      for label, out in logits.items()]
    result["val_images"], result["seconds"] = len(labels), time.perf_counter() - started

    print(f"\n{len(labels)} validation images\n\n| model | top-1 % | top-1 agreement with fp32 % |\n|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['runtime']} | {row['top1']:.2f} | {row['agreement_with_fp32']:.2f} |")
    if args.json:
        text = json.dumps(result, indent=1, default=str)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
