"""Top-1 of the trained models of ``int8_accuracy.py`` in OpenVINO int8 with each NNCF
placement of ``openvino_int8_forms.py``, beside PyTorch fp32.

    python benchmarks/int8_accuracy.py --work runs/int8-accuracy          # trains the two models once
    python benchmarks/int8_placements_accuracy.py --work runs/int8-accuracy

The same models, calibration images (300 training images) and validation images as
``int8_accuracy.py``; each placement quantises the deployed model's OpenVINO graph (the ONNX
export at batch 1) and runs it image by image. Prints top-1 and the top-1 agreement with PyTorch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from int8_accuracy import PATCH, digits_data, folder_data
from openvino_int8_forms import PLACEMENTS, nncf_int8

from efficientmod.classify.config import DEMO_PRESET, TrainConfig
from efficientmod.export import export_onnx
from efficientmod.export.calibration import run_batched
from efficientmod.export.openvino import compile_openvino, convert_onnx
from efficientmod.fuse import deploy
from efficientmod.models.pretrained import from_pretrained
from efficientmod.preprocessing import Preprocessing


def model_and_data(work: Path, name: str):
    """The deployed model ``name`` ("digits" or "photo_patches") of ``work`` and its calibration
    images, validation images and labels, as ``int8_accuracy.py`` reads them."""
    folder = work / ("digits" if name == "digits" else "photo-run") / "model"
    if not folder.is_dir():
        raise SystemExit(f"error: no trained model in {folder}: run benchmarks/int8_accuracy.py --work {work} first")
    model = deploy(from_pretrained(folder).eval())
    if name == "digits":
        return model, *digits_data(TrainConfig(**DEMO_PRESET).img_size)
    preprocessing = Preprocessing.of_model(model, (3, PATCH, PATCH))
    return model, *folder_data(work / "photo-patches", preprocessing, list(model.class_names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/int8-accuracy"), help="int8_accuracy.py's --work")
    args = parser.parse_args()
    for name in ("digits", "photo_patches"):
        model, calibration, images, labels = model_and_data(args.work, name)
        input_size = tuple(images.shape[1:])
        with tempfile.TemporaryDirectory(prefix="efficientmod-placements-") as folder:
            ov_model = convert_onnx(export_onnx(model, Path(folder) / "model.onnx", input_size, batch=1))
        ov_model.reshape([1, *input_size])
        with torch.no_grad():
            reference = run_batched(lambda b, model=model: model(torch.from_numpy(b)).numpy(), images).argmax(axis=1)
        print(f"\n**{name}** ({len(labels)} validation images)\n\n| OpenVINO | top-1 % | agreement with PyTorch % |\n"
              f"|---|---|---|\n| PyTorch fp32 | {100 * (reference == labels).mean():.2f} | 100 |")
        for placement in PLACEMENTS:
            request = compile_openvino(nncf_int8(ov_model.clone(), calibration, placement), "int8", 1)
            request = request.create_infer_request()
            predicted = np.array([request.infer({0: image[None]})[0].argmax() for image in images])
            print(f"| int8 {placement} | {100 * (predicted == labels).mean():.2f} | "
                  f"{100 * (predicted == reference).mean():.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
