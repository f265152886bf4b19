"""benchmarks/gpu_check.sh (its --dry-run on the CPU) and the GPU-only paths it measures,
exercised where the CPU can show them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientmod.dense import speed
from efficientmod.dense.segmentation import segmentation_loss
from efficientmod.runtime import optimizer_step

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_dense_speed_synchronises_the_measured_gpu_not_gpu0(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    speed._synchronizer(torch.device("cuda:1"))()
    assert calls == [torch.device("cuda:1")]
    speed._synchronizer(torch.device("cpu"))()
    assert calls == [torch.device("cuda:1")]  # nothing to wait for on the CPU


@pytest.mark.parametrize("flags, amp, dtype", [([], "none", torch.float32), (["--amp"], "bf16", torch.bfloat16),
                                               (["--amp", "fp16"], "fp16", torch.float16),
                                               (["--amp", "auto"], "auto", torch.float32)])
def test_dense_speed_takes_the_training_engines_amp_choices(flags, amp, dtype, monkeypatch, capsys):
    """``--amp`` as in ``det/seg train`` (a bare ``--amp`` still means bf16, ``auto`` is full
    precision on a CPU); float16 training steps through a loss scaler."""
    seen = []

    def probing_loss(model, images, targets):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return segmentation_loss(model, images, targets)

    def probing_step(loss, optimizer, scaler, parameters):
        seen.append(scaler)
        optimizer_step(loss, optimizer, scaler, parameters)

    monkeypatch.setattr(speed, "segmentation_loss", probing_loss)
    monkeypatch.setattr(speed, "optimizer_step", probing_step)
    speed.main(["--task", "seg", *flags, "--model", "efficientmod_xxs", "--mode", "train", "--size", "64", "64",
                "--batch-size", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"])
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert (result["amp"], result["dtype"]) == (amp, str(dtype).removeprefix("torch."))
    assert result["images_per_second"] > 0
    (autocast_dtype, scaler) = seen
    assert autocast_dtype == dtype and isinstance(scaler, torch.amp.GradScaler) == (amp == "fp16")


def test_dense_speed_refuses_an_unknown_amp_choice(capsys):
    with pytest.raises(SystemExit):
        speed.main(["--task", "seg", "--amp", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_gpu_check_refuses_unknown_arguments():
    result = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.slow  # every command of the GPU check at toy size on the CPU: a few minutes on 2 cores
def test_gpu_check_dry_run_runs_every_command_on_cpu():
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(SCRIPT.parents[1]))
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpu_check: dry run done" in result.stdout
    for name in ("infer_eager_compiled", "infer_cudagraphs", "paper_claims", "train_efficientmod_s_compile",
                 "dense_det", "dense_seg"):
        assert f"] {name}:" in result.stderr
