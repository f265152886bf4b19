"""ExecuTorch fp32 vs int8 on trained models: top-1, latency, and which ops stay fp32.

    python benchmarks/executorch_int8.py --work runs/executorch-int8 --json benchmarks/results/executorch_int8.json

Two small models are trained on the CPU with ``efficientmod.classify.engine`` (the engine of
``efficientmod train``), with the recipe of ``benchmarks/int8_accuracy.py`` (OpenVINO / ONNX
Runtime int8), so the figures line up:

* **digits**: the ``efficientmod demo`` recipe (efficientmod_xxs, scikit-learn's digits at
  32×32, 1 channel); calibrated on 300 training digits, evaluated on the 360 held-out ones.
* **photo patches**: efficientmod_xxs at 64×64 on patches of 12 real photographs of
  scikit-image (each photo a class), training patches from the top 70% of each photo,
  validation patches from the bottom 30%; calibrated on 300 training patches.

Each model is exported with :func:`efficientmod.export.executorch.export_executorch` (what
``efficientmod export --format executorch`` runs) as fp32, int8 of convolutions and linear
layers only (``gemm``, the default) and int8 of every pattern XNNPACK's quantiser knows
(``all``: also the residual adds, the modulation multiply, pooling). Latency: batch 1, the
programs of one model timed in turns (ABCABC...) in one process so that machine load hits
them alike; the load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

# the trained models and data sets of the ONNX Runtime / OpenVINO int8 measurement, shared
from int8_accuracy import PATCH, digits_data, folder_data, make_photo_patches, train_model

from efficientmod.bench import environment
from efficientmod.checkpoint import atomic_write
from efficientmod.classify.config import DEMO_PRESET, TrainConfig
from efficientmod.export.calibration import run_batched
from efficientmod.export.executorch import ExecutorchRuntime, export_executorch
from efficientmod.fuse import deploy
from efficientmod.metadata import export_metadata
from efficientmod.preprocessing import Preprocessing

VARIANTS = (("fp32", "gemm"), ("int8", "gemm"), ("int8", "all"))


def interleaved_latency(runtimes: dict[str, ExecutorchRuntime], image: np.ndarray, rounds: int, warmup: int = 10):
    """Median / min batch-1 latency (ms) of each runtime, timed in turns."""
    for runtime in runtimes.values():
        for _ in range(warmup):
            runtime.run(image)
    times = {label: [] for label in runtimes}
    for _ in range(rounds):
        for label, runtime in runtimes.items():
            start = time.perf_counter()
            runtime.run(image)
            times[label].append(1e3 * (time.perf_counter() - start))
    return {label: dict(median_ms=statistics.median(t), min_ms=min(t), runs=len(t)) for label, t in times.items()}


def evaluate(name: str, model: torch.nn.Module, calibration, images, labels, work: Path, rounds: int) -> dict:
    deploy(model)
    input_size = tuple(images.shape[1:])
    metadata = export_metadata(model, Preprocessing.of_model(model, input_size))
    with torch.no_grad():
        reference = run_batched(lambda b: model(torch.from_numpy(b)).numpy(), images)
    rows, runtimes = [dict(runtime="pytorch fp32", top1=_top1(reference, labels), agreement=100.0)], {}
    for precision, scope in VARIANTS:
        label = f"executorch {precision}" + (f" ({scope})" if precision == "int8" else "")
        result = export_executorch(model, work / "exports" / f"{name}_{precision}_{scope}.pte", input_size, metadata,
                                   precision, calibration, images, agreement_tolerance=100, int8_scope=scope)
        runtimes[label] = ExecutorchRuntime(result.path, threads=1)
        logits = runtimes[label].run(images)
        rows.append(dict(runtime=label, top1=_top1(logits, labels),
                         agreement=100.0 * float((logits.argmax(1) == reference.argmax(1)).mean()),
                         max_abs_diff=result.max_abs_diff, size_mb=result.size_bytes / 1e6,
                         export_s=result.seconds, delegation=result.delegation.to_dict()))
        print(f"{name} {label}: top-1 {rows[-1]['top1']:.2f}%, {result.delegation}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    latency = interleaved_latency(runtimes, images[:1], rounds)
    for row in rows[1:]:
        row.update(latency[row["runtime"]])
    return dict(model=name, input_size=list(input_size), val_images=len(labels), calibration_images=len(calibration),
                load_average_1m_before=load_before, load_average_1m_after=os.getloadavg()[0], rows=rows)


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(axis=1) == labels).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/executorch-int8"), help="runs, data and exports")
    parser.add_argument("--patch-epochs", type=int, default=15, help="epochs on the photo patches (default 15)")
    parser.add_argument("--rounds", type=int, default=200, help="timed turns per program (default 200)")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    result = dict(command=" ".join(["python", *sys.argv]), environment=environment(1), models=[])
    started = time.perf_counter()

    digits_cfg = TrainConfig(**dict(DEMO_PRESET, output=str(args.work / "digits")))
    calibration, images, labels = digits_data(digits_cfg.img_size)
    result["models"].append(evaluate("digits", train_model(digits_cfg), calibration, images, labels, args.work,
                                     args.rounds))

    patches = args.work / "photo-patches"
    if not (patches / "val").is_dir():
        make_photo_patches(patches)
    patch_cfg = TrainConfig(**dict(DEMO_PRESET, in_chans=3, img_size=PATCH, epochs=args.patch_epochs, aa=None,
                                   data=str(patches), output=str(args.work / "photo-run")))
    photo = train_model(patch_cfg)
    calibration, images, labels = folder_data(patches, Preprocessing.of_model(photo, (3, PATCH, PATCH)),
                                              list(photo.class_names))
    result["models"].append(evaluate("photo_patches", photo, calibration, images, labels, args.work, args.rounds))
    result["seconds"] = time.perf_counter() - started

    for entry in result["models"]:
        print(f"\n**{entry['model']}** ({entry['val_images']} validation images, {entry['calibration_images']} "
              f"calibration images; load {entry['load_average_1m_before']:.1f} -> {entry['load_average_1m_after']:.1f})"
              "\n\n| program | top-1 % | agreement with PyTorch % | latency median ms (1 thread) | size MB |"
              " ops outside XNNPACK |\n|---|---|---|---|---|---|")
        for row in entry["rows"]:
            if "median_ms" not in row:
                print(f"| {row['runtime']} | {row['top1']:.2f} | 100 | | | |")
                continue
            outside = ", ".join(f"{op} x{n}" for op, n in row["delegation"]["portable_ops"].items()) or "none"
            print(f"| {row['runtime']} | {row['top1']:.2f} | {row['agreement']:.2f} | {row['median_ms']:.3f} "
                  f"| {row['size_mb']:.2f} | {outside} |")
    if args.json:
        text = json.dumps(result, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
