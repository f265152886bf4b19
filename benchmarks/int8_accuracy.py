"""Top-1 of trained models in fp32, bf16 and int8 (OpenVINO / NNCF, ONNX Runtime QDQ).

    python benchmarks/int8_accuracy.py --work runs/int8-accuracy --json benchmarks/results/int8_accuracy.json

Two small models are trained on the CPU with ``efficientmod.classify.engine`` (the same engine as
``efficientmod train``) and exported with the same functions as ``efficientmod export``:

* **digits**: the ``efficientmod demo`` recipe (efficientmod_xxs, scikit-learn's digits at
  32×32, 1 channel); calibrated on 300 training digits, evaluated on the 360 held-out ones.
* **photo patches**: efficientmod_xxs at 64×64 on patches of 12 real photographs of
  scikit-image (each photo a class: astronaut, cat, coffee, rocket, Hubble deep field,
  immunohistochemistry, retina, brick, grass, gravel, camera, coins). Training patches come
  from the top 70% of each photo, validation patches from the bottom 30%, so no pixel is
  shared; calibrated on 300 training patches read from the folder like ``--calib``.

Each model's validation set is run through PyTorch (fp32), OpenVINO fp32 / bf16 / int8 and
ONNX Runtime fp32 / int8; the table gives top-1 and the top-1 agreement with PyTorch.
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
from PIL import Image

from efficientmod.bench import environment
from efficientmod.checkpoint import atomic_write
from efficientmod.classify.config import DEMO_PRESET, TrainConfig
from efficientmod.classify.engine import train
from efficientmod.export import export_verified, load_runtime
from efficientmod.export.calibration import calibration_files, read_calibration_images, run_batched
from efficientmod.export.onnx import export_onnx_int8
from efficientmod.export.openvino import export_openvino
from efficientmod.fuse import deploy
from efficientmod.metadata import export_metadata
from efficientmod.models.pretrained import from_pretrained
from efficientmod.preprocessing import Preprocessing

PHOTOS = ("astronaut", "cat", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "brick", "grass", "gravel", "camera", "coins")
PATCH = 64


def make_photo_patches(root: Path, train_per_class: int = 200, val_per_class: int = 100, seed: int = 0) -> Path:
    """train/<photo>/*.png and val/<photo>/*.png: random PATCH-pixel crops of each photo, train
    from its top 70%, val from its bottom 30%."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        pixels = getattr(data, name)()
        image = np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3]
        split_row = int(0.7 * image.shape[0])
        for split, count, (top, bottom) in (("train", train_per_class, (0, split_row)),
                                            ("val", val_per_class, (split_row, image.shape[0]))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                y = rng.integers(top, bottom - PATCH + 1)
                x = rng.integers(0, image.shape[1] - PATCH + 1)
                Image.fromarray(image[y:y + PATCH, x:x + PATCH]).save(folder / f"{i:03d}.png")
    return root


def train_model(cfg: TrainConfig) -> torch.nn.Module:
    model_dir = Path(cfg.output) / "model"
    if not model_dir.is_dir():
        train(cfg)
    return from_pretrained(model_dir).eval()


def digits_data(img_size: int):
    from efficientmod.classify.data import digits_datasets

    train_set, val_set = digits_datasets(img_size, seed=0)
    val = [val_set[i] for i in range(len(val_set))]
    calib_index = np.linspace(0, len(train_set) - 1, 300).round().astype(int)
    calibration = np.stack([train_set[int(i)][0].numpy() for i in calib_index])
    return calibration, np.stack([v[0].numpy() for v in val]), np.array([v[1] for v in val])


def folder_data(root: Path, preprocessing: Preprocessing, class_names: list[str]):
    calibration = read_calibration_images(root / "train", preprocessing, 300)
    val_files = calibration_files(root / "val")
    labels = np.array([class_names.index(p.parent.name) for p in val_files])
    return calibration, read_calibration_images(root / "val", preprocessing, None), labels


def evaluate_formats(name: str, model: torch.nn.Module, calibration, images, labels, work: Path) -> dict:
    """Top-1 on (images, labels) of PyTorch and of every exported file."""
    deploy(model)
    input_size = tuple(images.shape[1:])
    metadata = export_metadata(model, Preprocessing.of_model(model, input_size))
    out = work / "exports"
    files = {}
    for precision in ("fp32", "bf16", "int8"):
        files[f"openvino {precision}"] = export_openvino(
            model, out / f"{name}_{precision}.xml", input_size, precision, metadata,
            calibration if precision == "int8" else None, calibration, agreement_tolerance=100).path
    export_verified(model, out / f"{name}_fp32.onnx", input_size, metadata=metadata)
    files["onnxruntime fp32"] = out / f"{name}_fp32.onnx"
    files["onnxruntime int8"] = export_onnx_int8(model, out / f"{name}_int8.onnx", calibration, input_size, metadata,
                                                 agreement_tolerance=100).path
    with torch.no_grad():
        reference = run_batched(lambda b: model(torch.from_numpy(b)).numpy(), images)
    results = {"pytorch fp32": reference}
    for label, path in files.items():
        results[label] = run_batched(load_runtime(path, threads=1).run, images)
    rows = []
    for label, logits in results.items():
        predicted = logits.argmax(axis=1)
        rows.append(dict(runtime=label, top1=100.0 * float((predicted == labels).mean()),
                         agreement_with_pytorch=100.0 * float((predicted == reference.argmax(axis=1)).mean())))
    return dict(model=name, input_size=list(input_size), val_images=len(labels), calibration_images=len(calibration),
                rows=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/int8-accuracy"), help="runs, data and exports")
    parser.add_argument("--patch-epochs", type=int, default=30, help="epochs on the photo patches (default 30)")
    parser.add_argument("--train-per-class", type=int, default=200, help="training patches per photo (default 200)")
    parser.add_argument("--val-per-class", type=int, default=100, help="validation patches per photo (default 100)")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = dict(command=" ".join([os.path.basename(sys.executable), *sys.argv]), environment=environment(1),
                  models=[])

    started = time.perf_counter()
    digits_cfg = TrainConfig(**dict(DEMO_PRESET, output=str(args.work / "digits")))
    digits = train_model(digits_cfg)
    calibration, images, labels = digits_data(digits_cfg.img_size)
    result["models"].append(evaluate_formats("digits", digits, calibration, images, labels, args.work))

    patches = args.work / "photo-patches"
    if not (patches / "val").is_dir():
        make_photo_patches(patches, args.train_per_class, args.val_per_class)
    patch_cfg = TrainConfig(**dict(DEMO_PRESET, in_chans=3, img_size=PATCH, epochs=args.patch_epochs, aa=None,
                                   data=str(patches), output=str(args.work / "photo-run")))
    photo = train_model(patch_cfg)
    preprocessing = Preprocessing.of_model(photo, (3, PATCH, PATCH))
    calibration, images, labels = folder_data(patches, preprocessing, list(photo.class_names))
    result["models"].append(evaluate_formats("photo_patches", photo, calibration, images, labels, args.work))
    result["seconds"] = time.perf_counter() - started

    for entry in result["models"]:
        print(f"\n**{entry['model']}** ({entry['val_images']} validation images, {entry['calibration_images']} "
              "calibration images)\n\n| runtime | top-1 % | agreement with PyTorch % |\n|---|---|---|")
        for row in entry["rows"]:
            print(f"| {row['runtime']} | {row['top1']:.2f} | {row['agreement_with_pytorch']:.2f} |")
    if args.json:
        text = json.dumps(result, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
