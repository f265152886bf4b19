"""benchmarks/gpu_check.sh (its --dry-run on the CPU) and the GPU-only paths it measures,
exercised where the CPU can show them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from efficientmod import runtime
from efficientmod.cli import main
from efficientmod.dense import engine, speed
from efficientmod.dense.data import fixed_input_shapes, make_loader
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
    assert main(["bench-dense", "--task", "seg", *flags, "--model", "efficientmod_xxs", "--mode", "train",
                 "--size", "64", "64", "--batch-size", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert (result["amp"], result["dtype"]) == (amp, str(dtype).removeprefix("torch."))
    assert result["images_per_second"] > 0
    (autocast_dtype, scaler) = seen
    assert autocast_dtype == dtype and isinstance(scaler, torch.amp.GradScaler) == (amp == "fp16")


def test_dense_speed_refuses_an_unknown_amp_choice(capsys):
    with pytest.raises(SystemExit):
        main(["bench-dense", "--task", "seg", "--amp", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_dense_loader_pins_memory_only_for_a_cuda_device():
    """non_blocking=True copies overlap the GPU's work only from pinned memory."""
    data = [torch.zeros(3)] * 2
    assert make_loader(data, 1, train=False, workers=0, device=torch.device("cuda:1")).pin_memory
    assert not make_loader(data, 1, train=False, workers=0, device=torch.device("cpu")).pin_memory
    assert not make_loader(data, 1, train=False, workers=0).pin_memory


def test_init_runtime_sets_the_cudnn_autotuner_as_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = flags[0].benchmark, flags[0].allow_tf32, flags[1].allow_tf32
    try:
        assert runtime.init_runtime("cuda", cudnn_benchmark=False).device == torch.device("cuda:0")
        assert torch.backends.cudnn.benchmark is False
        runtime.init_runtime("cuda")
        assert torch.backends.cudnn.benchmark is True
    finally:
        flags[0].benchmark, flags[0].allow_tf32, flags[1].allow_tf32 = before


def test_every_device_flag_resolves_through_one_function(monkeypatch):
    """train, eval and predict share runtime.resolve_device: auto is the GPU when there is
    one, an unknown name or CUDA without a GPU is one clear ValueError."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == runtime.init_runtime("auto").device == torch.device("cpu")
    for name, message in (("cuda", "CUDA is not available"), ("tpu9", "not a torch device")):
        with pytest.raises(ValueError, match=message):
            runtime.resolve_device(name)
        with pytest.raises(ValueError, match=message):
            runtime.init_runtime(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("task, autotune", [("det", False), ("seg", True), (None, False)])
def test_dense_training_autotunes_cudnn_only_on_fixed_input_shapes(monkeypatch, tmp_path, task, autotune):
    """Detection batches change shape at nearly every step (aspect-preserving resize, per-batch
    padding, a varying number of proposals in the mask head): cuDNN's autotuner would search
    again each time. Semantic FPN trains on fixed crops, where it pays."""
    asked = []

    def fake_runtime(device="auto", cudnn_benchmark=True):
        asked.append(cudnn_benchmark)
        raise _Stop

    monkeypatch.setattr(engine, "init_runtime", fake_runtime)
    config = engine.DenseTrainConfig(epochs=1, meta={"task": task} if task else {})
    with pytest.raises(_Stop):
        engine.train(nn.Linear(2, 2), [], config, lambda *a: {}, tmp_path)
    assert asked == [autotune] and fixed_input_shapes(task or "dense") is autotune


SIGTERM_CHILD = """
import signal, sys, time
from efficientmod.cli.bench import _terminate_as_interrupt
before = signal.getsignal(signal.SIGTERM)
try:
    with _terminate_as_interrupt():
        print("ready", flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGTERM) is before, flush=True)
    sys.exit(130)
"""


def test_sigterm_stops_a_bench_run_like_ctrl_c():
    """gpu_check.sh's deadline sends SIGTERM; the bench then writes the rows it has. Shown in a
    child process: a signal sent to a pytest-xdist worker would kill the worker."""
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130 and out.split() == ["interrupted", "True"]


def test_gpu_check_refuses_unknown_arguments():
    for arguments in (["--bogus"], ["--budget", "soon"], ["--out"]):
        result = subprocess.run(["bash", str(SCRIPT), *arguments], capture_output=True, text=True)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_gpu_check_deadline_skips_what_does_not_fit_and_still_writes_the_summary(tmp_path):
    """A budget too small for any step: every step is skipped and recorded as such (nothing
    runs), the summary is written and the exit status says the check is incomplete."""
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(SCRIPT.parents[1]),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--budget", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["budget_s"] == 1 and summary["steps"]["infer_bf16_eager"]["status"] == "skipped"
    assert {step["status"] for step in summary["steps"].values()} == {"skipped"}
    assert len(summary["steps"]) == 13 and all(step["expected_s"] > 0 for step in summary["steps"].values())
    assert not list(tmp_path.glob("*.log"))


@pytest.mark.slow  # every command of the GPU check at toy size on the CPU: a few minutes on 2 cores
def test_gpu_check_dry_run_runs_every_command_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(SCRIPT.parents[1]),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpu_check: dry run done" in result.stdout
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {step["status"] for step in summary["steps"].values()} == {"ok"}
    for name in ("warm", "infer_bf16_eager", "infer_bf16_compiled", "train_efficientmod_s_compile",
                 "train_mobilevitv2_100_no_compile", "dense_det", "dense_seg", "paper_claims", "infer_fp32_eager"):
        assert name in summary["steps"]
    compiled = summary["inference"]["infer_bf16_compiled"]["rows"]
    assert len(compiled) == 6 and all(row["error"] == "" for row in compiled)
    assert len(summary["dense"]) == 4 and all(summary["training"].values())
