"""The dense training engine on a toy regression task (exact resume; distributed runs
whose ranks stay in step when one of them has no usable sample or a non-finite loss) and
the dense data sets' image reading."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from synthetic_images import make_bad_files

from efficientmod.dense.config import DenseTrainConfig
from efficientmod.dense.data import Skipped, read_rgb
from efficientmod.dense.engine import train
from efficientmod.runtime import (
    TRAIN_CHECKPOINT_FORMAT,
    Runtime,
    is_train_checkpoint,
    load_train_checkpoint,
    save_train_checkpoint,
)


class NoisyPoints(torch.utils.data.Dataset):
    """``(x, 2x)`` pairs; ``x`` gets noise from the global ``random`` (as the dense data
    sets' flips), so the data order and the restored random states both show in the weights."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        x = torch.full((3,), float(index)) + random.random()
        return x, 2 * x


def squared_error(model: nn.Module, inputs: list, targets: list) -> dict:
    return dict(mse=(model(torch.stack(inputs)) - torch.stack(targets)).pow(2).mean())


def _run(tmp_path, epochs: int, resume=None) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    config = DenseTrainConfig(epochs=epochs, batch_size=4, lr=1e-2, warmup_steps=0, workers=0, seed=1)
    train(model, NoisyPoints(), config, squared_error, tmp_path, resume=resume,
          runtime=Runtime(0, 1, torch.device("cpu")))
    return torch.load(tmp_path / "last.pth", weights_only=True)


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    whole = _run(tmp_path / "whole", epochs=3)
    _run(tmp_path / "split", epochs=1)
    resumed = _run(tmp_path / "split", epochs=3, resume=tmp_path / "split" / "last.pth")
    assert (resumed["epoch"], resumed["step"]) == (whole["epoch"], whole["step"]) == (3, 9)
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    with pytest.raises(ValueError, match="already holds a run"):  # a new run never overwrites an old one
        _run(tmp_path / "whole", epochs=3)


def test_resume_cuts_the_log_back_to_the_checkpoint(tmp_path):
    """Lines written after the checkpoint (a run stopped between the log line and the
    checkpoint, or a line cut short by a kill) are dropped, and written again by the resumed run."""
    _run(tmp_path, epochs=2)
    whole = (tmp_path / "log.jsonl").read_text().splitlines()
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    (tmp_path / "log.jsonl").write_text("\n".join([whole[0], whole[1].replace('"epoch": 2', '"epoch": 99'),
                                                   '{"epoch": 3, "st']) + "\n")
    save_train_checkpoint(tmp_path / "last.pth", dict(state, epoch=1, step=3), task="dense")  # as after epoch 1
    _run(tmp_path, epochs=2, resume=tmp_path / "last.pth")
    again = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["step"]) for line in again] == [(1, 3), (2, 6)]


def test_checkpoint_is_the_classification_engines_format(tmp_path):
    """One format for both engines: ``last.pth``, tagged with the format and the task,
    and each engine refuses the other's checkpoint with a message that says what it is."""
    state = _run(tmp_path, epochs=1)
    assert (state["format"], state["task"]) == (TRAIN_CHECKPOINT_FORMAT, "dense")
    assert is_train_checkpoint(state) and not is_train_checkpoint(state, task="classification")
    with pytest.raises(ValueError, match="is a 'dense' checkpoint, not a 'classification' one"):
        load_train_checkpoint(tmp_path, task="classification")
    classification = tmp_path / "classification"
    save_train_checkpoint(classification / "last.pth", dict(model={}), task="classification")
    with pytest.raises(ValueError, match="is a 'classification' checkpoint, not a 'dense' one"):
        _run(classification, epochs=2, resume=classification / "last.pth")
    untagged = tmp_path / "old.pt"
    torch.save(dict(model={}, config={}), untagged)
    with pytest.raises(ValueError, match="not a training checkpoint of this library"):
        load_train_checkpoint(untagged, task="dense")


class AutocastProbe(nn.Module):
    """A linear layer that records the dtype it computes in."""

    def __init__(self):
        super().__init__()
        self.linear, self.dtypes = nn.Linear(3, 3), []

    def forward(self, x):
        y = self.linear(x)
        self.dtypes.append(y.dtype)
        return y.float()


@pytest.mark.parametrize("amp, dtype", [("none", torch.float32), ("auto", torch.float32),
                                        ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_choice_sets_the_autocast_dtype_and_fp16_scales_the_loss(tmp_path, amp, dtype):
    torch.manual_seed(0)
    model = AutocastProbe()
    config = DenseTrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=0, workers=0, seed=1, amp=amp)
    train(model, NoisyPoints(), config, squared_error, tmp_path, runtime=Runtime(0, 1, torch.device("cpu")))
    assert set(model.dtypes) == {dtype}  # auto: full precision on a CPU
    state = load_train_checkpoint(tmp_path, task="dense")
    assert (state["scaler"] is not None) == (amp == "fp16")  # saved for an exact resume
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0
    resumed = AutocastProbe()
    train(resumed, NoisyPoints(), DenseTrainConfig(**{**config.__dict__, "epochs": 3}), squared_error, tmp_path,
          resume=tmp_path / "last.pth", runtime=Runtime(0, 1, torch.device("cpu")))
    assert load_train_checkpoint(tmp_path, task="dense")["epoch"] == 3


def test_unknown_amp_choice_is_refused():
    with pytest.raises(ValueError, match="amp must be one of"):
        DenseTrainConfig(amp="fp8")


class SomeUnreadable(NoisyPoints):
    """NoisyPoints whose points 3 and 7 are unreadable files."""

    def __getitem__(self, index: int):
        return Skipped("unreadable image file", f"{index}.jpg") if index in (3, 7) else super().__getitem__(index)


def test_the_run_counts_skipped_samples_and_names_the_first(tmp_path, capsys):
    config = DenseTrainConfig(epochs=1, batch_size=4, lr=1e-2, warmup_steps=0, workers=0, seed=1)
    summary = train(nn.Linear(3, 3), SomeUnreadable(), config, squared_error, tmp_path,
                    runtime=Runtime(0, 1, torch.device("cpu")))
    assert summary["skipped"] == {"unreadable image file": 2} and summary["steps"] == 3
    # the epoch's line names the first of them to be drawn (the order is shuffled)
    assert re.search(r"skipped: 2 × unreadable image file \(first: [37]\.jpg\)", capsys.readouterr().err)


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import pathlib, sys, torch, torch.distributed as dist, torch.nn as nn
    from efficientmod.dense.config import DenseTrainConfig
    from efficientmod.dense.engine import train
    from efficientmod.runtime import TrainingDiverged, init_runtime
    sys.path.insert(0, {tests!r})
    from test_dense_engine import RankTrap, squared_error

    runtime = init_runtime("cpu")
    torch.manual_seed(0)
    config = DenseTrainConfig(epochs=1, batch_size=1, lr=1e-2, warmup_steps=0, workers=0)
    try:
        summary = train(nn.Linear(3, 3), RankTrap(sys.argv[1]), config, squared_error, sys.argv[2], runtime=runtime)
        result = f"steps {{summary['steps']}}"
    except TrainingDiverged as error:
        result = f"stopped: {{error}}"
    pathlib.Path(sys.argv[3], f"rank{{runtime.rank}}.txt").write_text(result)  # one file each: no interleaving
    dist.destroy_process_group()
""")


class RankTrap(torch.utils.data.Dataset):
    """Four points; on rank 1 the first one it draws is ``trap``: unreadable or NaN."""

    def __init__(self, trap: str):
        self.trap, self.drawn = trap, 0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        self.drawn += 1
        x = torch.full((3,), float(index))
        if torch.distributed.get_rank() == 1 and self.drawn == 1:
            if self.trap == "unreadable":
                return Skipped("unreadable image file", f"{index}.jpg")
            x = x * float("nan")
        return x, 2 * x


def _torchrun(tmp_path, trap: str) -> list[str]:
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    finished = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         trap, str(tmp_path / "out"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180)  # a hang (ranks out of step) fails here
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]


@pytest.mark.slow
def test_ranks_skip_together_when_one_has_nothing_to_train_on(tmp_path):
    """Rank 1's first batch is empty and it has no earlier batch to repeat: both ranks skip
    that step (before, rank 0 waited forever in DDP's all-reduce)."""
    assert _torchrun(tmp_path, "unreadable") == ["steps 1", "steps 1"]
    state = torch.load(tmp_path / "out" / "last.pth", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's random states, for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    lines = _torchrun(tmp_path, "nan")
    assert len(lines) == 2 and all(line.startswith("stopped: the loss is not finite at step 0") for line in lines)


def test_read_rgb_converts_odd_modes_and_skips_what_it_cannot_decode(tmp_path):
    files = make_bad_files(tmp_path)
    for path in files["convert"]:
        image = read_rgb(path)
        assert image.mode == "RGB" and image.size == (40, 40), path
    assert [read_rgb(path).reason for path in files["skip"]] == ["unreadable image file"] * 3
    assert read_rgb(tmp_path / "gone.jpg") == Skipped("missing image file", str(tmp_path / "gone.jpg"))


def _parse(argv: list[str]):
    from efficientmod.cli import build_parser

    return build_parser().parse_args(argv)


def test_dense_training_flags_are_generated_from_the_config_dataclasses():
    """Every option field of DenseTrainConfig is a flag of `det train` and `seg train`, with
    the dataclass's default (the 1x schedule) or the segmentation schedule's."""
    from efficientmod.cli.dense import _train_config
    from efficientmod.config_flags import option_fields
    from efficientmod.dense.config import SEG_SCHEDULE, BackboneSettings, SegmenterSettings

    det = _parse(["det", "train", "--images", "i", "--annotations", "a.json", "--output", "o"])
    seg = _parse(["seg", "train", "--data", "d", "--output", "o"])
    assert _train_config(det, {}) == DenseTrainConfig()
    assert _train_config(seg, {}) == DenseTrainConfig(**SEG_SCHEDULE)
    for settings in (BackboneSettings, SegmenterSettings):
        for f in option_fields(settings):
            expected = list(f.default) if isinstance(f.default, tuple) else f.default
            assert getattr(seg, f.name) == expected, f.name
    assert (det.resume, det.frozen_bn, det.detector, seg.split, seg.resize) == (
        False, False, "mask_rcnn", "training", [2048, 512])
    given = _parse(["seg", "train", "--data", "d", "--output", "o", "--amp", "--milestones", "3", "--resume",
                    "--no-reduce-zero-label", "--resize", "64", "32", "--frozen-bn", "--epochs", "4"])
    config = _train_config(given, dict(task="seg"))
    assert (config.amp, config.milestones, config.epochs, config.meta) == ("bf16", (3,), 4, dict(task="seg"))
    assert (given.resume, given.reduce_zero_label, given.resize, given.frozen_bn) == (True, False, [64, 32], True)
    assert _parse(["seg", "eval", "--checkpoint", "c", "--data", "d"]).split == "validation"
    with pytest.raises(SystemExit):
        _parse(["det", "train", "--images", "i", "--annotations", "a.json", "--output", "o", "--schedule", "linear"])


# -- determinism and kill + resume of `det train` / `seg train` (issue 19 item 7) ----------------
class Killed(BaseException):
    """Stands for a kill: nothing in the library or the command line catches it."""


def _dense_command(task: str, root) -> list[str]:
    """A tiny `det train` / `seg train`: 2 images, 1 per step, 2 epochs (4 steps, 2 checkpoints)."""
    from efficientmod.dense.synthetic import make_shapes_ade, make_shapes_coco

    tiny = ["--model", "efficientmod_xxs", "--fpn-channels", "16", "--batch-size", "1", "--lr", "2e-3",
            "--warmup-steps", "1", "--workers", "0"]
    if task == "det":
        images, annotations = make_shapes_coco(root, 2, 64, seed=0, split="train")
        return ["det", "train", "--images", str(images), "--annotations", str(annotations), *tiny, "--min-size",
                "64", "--max-size", "64", "--box-head-dim", "32", "--mask-head-channels", "16", "--schedule",
                "cosine", "--epochs", "2"]
    make_shapes_ade(root, 2, 64, seed=0, split="training")
    return ["seg", "train", "--data", str(root), "--num-classes", "4", "--resize", "64", "64", "--crop-size", "64",
            *tiny, "--head-channels", "16", "--max-steps", "4"]


def _train_from_fresh_process_state(command: list[str], output, seed: int) -> int:
    """The command run after global random states that differ from run to run, as in a
    fresh process (torch seeds its generator at random)."""
    from efficientmod.cli import main

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return main([*command, "--output", str(output)])


def _run_record(output) -> tuple[dict, list[dict]]:
    """The checkpoint and the epoch log of a run, less the log's timings."""
    log = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return torch.load(output / "last.pth", weights_only=True), [{k: v for k, v in line.items() if k != "seconds"}
                                                                for line in log]


def _assert_same_run(run, reference) -> None:
    (state, log), (expected, expected_log) = run, reference
    assert (state["epoch"], state["step"]) == (expected["epoch"], expected["step"]) == (2, 4)
    assert log == expected_log and [line["epoch"] for line in log] == [1, 2]
    for key, value in expected["model"].items():
        assert torch.equal(state["model"][key], value), key
    for index, moments in expected["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(state["optimizer"]["state"][index][name]), torch.as_tensor(value))


@pytest.fixture(scope="module", params=["det", "seg"])
def dense_reference(request, tmp_path_factory):
    """(task, the tiny command, the uninterrupted run's record)."""
    root = tmp_path_factory.mktemp(f"{request.param}_data")
    command = _dense_command(request.param, root)
    output = tmp_path_factory.mktemp(f"{request.param}_whole")
    assert _train_from_fresh_process_state(command, output, seed=1) == 0
    return request.param, command, _run_record(output)


def test_dense_training_is_deterministic_for_a_seed(dense_reference, tmp_path):
    """Two runs of one command give the same weights, optimizer state and losses (before,
    the detector's initial weights came from torch's random start-up seed: epoch-1 losses
    of three identical runs were 2.994, 2.880 and 2.544)."""
    _, command, reference = dense_reference
    assert _train_from_fresh_process_state(command, tmp_path, seed=2) == 0
    _assert_same_run(_run_record(tmp_path), reference)


@pytest.mark.parametrize("write, when", [
    (1, "after"), pytest.param(1, "before", marks=pytest.mark.slow),
    pytest.param(2, "before", marks=pytest.mark.slow), pytest.param(2, "after", marks=pytest.mark.slow)])
def test_a_run_killed_at_a_checkpoint_write_resumes_to_the_uninterrupted_run(dense_reference, tmp_path, monkeypatch,
                                                                            write, when):
    """Killed just before (a kill during the atomic write leaves the file as it was) or
    just after the ``write``-th checkpoint, then continued with ``--resume`` (or started
    again when no checkpoint was written): the same weights, optimizer state and log."""
    import efficientmod.dense.engine as engine

    _, command, reference = dense_reference
    save, calls = engine.save_train_checkpoint, []

    def killed_at_the_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == write and when == "before":
            raise Killed
        save(*args, **kwargs)
        if len(calls) == write:
            raise Killed

    monkeypatch.setattr(engine, "save_train_checkpoint", killed_at_the_write)
    with pytest.raises(Killed):
        _train_from_fresh_process_state(command, tmp_path, seed=3)
    monkeypatch.setattr(engine, "save_train_checkpoint", save)
    again = command + (["--resume"] if (tmp_path / "last.pth").exists() else [])
    assert _train_from_fresh_process_state(again, tmp_path, seed=4) == 0
    _assert_same_run(_run_record(tmp_path), reference)
