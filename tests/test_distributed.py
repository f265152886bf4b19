"""DistributedDataParallel on CPU: two gloo processes under torchrun train exactly what one
process trains with the same global batch (augmentation on: it is seeded per sample).

SGD, not AdamW: its update is linear in the gradient, so a wrong gradient reduction (a sum
instead of a mean, a missing all-reduce) shows, while AdamW's normalisation would hide a
scale error and amplify float rounding where layer scales (1e-4) make gradients tiny."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from synthetic_images import make_image_folder

from efficientmod.classify.config import resolve_config
from efficientmod.classify.engine import Trainer
from efficientmod.cli import build_parser, main

RECIPE = ["--model", "efficientmod_xxs", "--img-size", "32", "--workers", "0", "--epochs", "1",
          "--cooldown-epochs", "0", "--opt", "sgd", "--lr", "0.05", "--weight-decay", "0", "--warmup-epochs", "0",
          "--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--no-tensorboard", "--log-interval", "1"]


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("batch, accum", [(2, 1), (1, 2)])
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path, batch, accum):
    """2 processes x 2 images, and 2 processes x 1 image x 2 accumulated passes (DDP
    all-reducing only the last pass's gradients), equal 1 process x 4 images."""
    data = make_image_folder(tmp_path / "images", train_per_class=8, val_per_class=3)  # 16 images: 4 steps of 4
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(["train", *RECIPE, "--data", str(data), "--batch-size", "4", "--output", str(single)]) == 0

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    # its own session, so that a hung rendezvous cannot outlive the test
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "efficientmod", "train", *RECIPE, "--data", str(data), "--batch-size", str(batch),
         "--grad-accum-steps", str(accum), "--output", str(double)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr[-3000:]

    one = torch.load(single / "last.pth", weights_only=True)
    two = torch.load(double / "last.pth", weights_only=True)
    assert (one["global_step"], two["global_step"]) == (4, 4)
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    initial = Trainer(resolve_config(build_parser().parse_args(
        ["train", *RECIPE, "--data", str(data), "--batch-size", "4", "--output", str(tmp_path / "init")])))
    for key, start in initial.model.state_dict().items():
        moved = (one["model"][key] - start).abs().max()
        apart = (two["model"][key] - one["model"][key]).abs().max()
        assert apart <= 1e-6 + 1e-3 * moved, (key, apart, moved)
    assert (one["model"]["head.weight"] - initial.model.head.weight).abs().max() > 1e-3
    # synchronised evaluation: both runs scored the same 6 validation images
    rows = [next(csv.DictReader(open(run / "metrics.csv"))) for run in (single, double)]
    assert rows[0]["val_top1"] == rows[1]["val_top1"]
    assert float(rows[1]["val_loss"]) == pytest.approx(float(rows[0]["val_loss"]), rel=1e-4)
    assert len(list(double.glob("*.pth"))) == 2  # last.pth and best.pth, written once by rank 0
