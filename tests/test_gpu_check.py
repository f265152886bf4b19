"""benchmarks/gpu_check.sh (its --dry-run on the CPU) and the GPU-only paths it measures,
exercised where the CPU can show them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientmod.dense import speed

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_dense_speed_synchronises_the_measured_gpu_not_gpu0(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    speed._synchronizer(torch.device("cuda:1"))()
    assert calls == [torch.device("cuda:1")]
    speed._synchronizer(torch.device("cpu"))()
    assert calls == [torch.device("cuda:1")]  # nothing to wait for on the CPU


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
