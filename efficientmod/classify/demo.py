"""The life-cycle demo after training (``efficientmod demo``): reload the trained model from
its run folder, evaluate it, export it to ONNX, check the exported model's accuracy in ONNX
Runtime, and benchmark it — each step through the library's public functions. ``model/``,
``best.pth`` and ``model.onnx`` record the digits' real preprocessing (1 channel, the
training size, mean = std = 0.5, bilinear, no crop), so ``efficientmod predict`` classifies
digit images with either."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from efficientmod.bench import BenchSettings, Candidate, benchmark, count_macs, count_params
from efficientmod.classify.config import TrainConfig
from efficientmod.classify.data import collate_skipping_bad, digits_datasets
from efficientmod.classify.evaluate import evaluate
from efficientmod.export import export_onnx
from efficientmod.metadata import export_metadata
from efficientmod.models.pretrained import from_pretrained
from efficientmod.preprocessing import Preprocessing

__all__ = ["DEMO_TARGET_TOP1", "demo_report", "onnx_top1"]

DEMO_TARGET_TOP1 = 95.0  # % on the 360 held-out digits


def onnx_top1(path: str | Path, loader) -> float:
    """Top-1 (%) of an exported model in ONNX Runtime over ``loader``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hits = total = 0
    for images, targets, _ in loader:
        logits = session.run(None, {"input": images.numpy()})[0]
        hits += int((np.argmax(logits, axis=1) == targets.numpy()).sum())
        total += len(targets)
    return 100.0 * hits / max(total, 1)


def demo_report(cfg: TrainConfig, result: dict, train_seconds: float, target: float = DEMO_TARGET_TOP1) -> int:
    """Evaluate, export and benchmark the model the demo trained; print the summary.
    Returns 0 when the reloaded model reaches ``target`` top-1, else 1."""
    run_dir = Path(result["run_dir"])
    model = from_pretrained(run_dir / "model").eval()
    input_size = (model.in_chans, cfg.img_size, cfg.img_size)
    _, val = digits_datasets(cfg.img_size, seed=cfg.seed)
    loader = DataLoader(val, batch_size=120, collate_fn=collate_skipping_bad)
    metrics = evaluate(model, loader, torch.device("cpu"), progress=False)

    # the file carries its preprocessing and classes: `efficientmod predict model.onnx digit.png` reads them
    metadata = export_metadata(model, Preprocessing.of_model(model))
    onnx_path = export_onnx(model, run_dir / "model.onnx", input_size=input_size, metadata=metadata)
    ort_top1 = onnx_top1(onnx_path, loader)

    threads = torch.get_num_threads()
    report = benchmark([Candidate(cfg.model, "efficientmod", model, input_size)],
                       BenchSettings(backends=("torch-cpu", "ort-cpu"), threads=threads, runs=30, warmup=5, batch=0))
    latency = {row.backend: row.latency_ms_median for row in report.rows}

    passed = metrics["top1"] >= target
    lines = [
        "",
        "=" * 72,
        f"efficientmod demo: {cfg.model} on scikit-learn digits ({cfg.img_size}x{cfg.img_size}, 1 channel)",
        f"  trained        {result['epochs']} epochs in {train_seconds:.0f} s on CPU ({threads} thread(s))",
        f"  validation     top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"
        f"  ({metrics['count']} images; target >= {target:.0f}%: {'reached' if passed else 'NOT reached'})",
        f"  ONNX           {onnx_path}  (ONNX Runtime top-1 {ort_top1:.2f}%)",
        f"  size           {count_params(model) / 1e6:.2f} M parameters, "
        f"{count_macs(model, input_size) / 1e6:.1f} M MACs per image",
        "  latency        " + ", ".join(
            f"{backend} {ms:.2f} ms" if ms is not None else f"{backend} n/a" for backend, ms in latency.items())
        + f" (batch 1, median, {threads} thread(s))",
        f"  run folder     {run_dir}  (last.pth, best.pth, model/, config.yaml, metrics.csv, tensorboard/)",
        "=" * 72,
    ]
    print("\n".join(lines))
    if not passed:
        print(f"efficientmod demo: validation top-1 {metrics['top1']:.2f}% is below the {target:.0f}% target",
              file=sys.stderr)
    return 0 if passed else 1
