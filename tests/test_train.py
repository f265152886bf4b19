"""The training engine on CPU with a tiny EfficientMod at 32x32: the recipe, the run folder,
checkpoints that survive SIGKILL, divergence, fine-tuning, distillation, eval, the CLI."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from synthetic_images import make_bad_files, make_image_folder

from efficientmod import create_model
from efficientmod.classify.config import TrainConfig, load_yaml, resolve_config
from efficientmod.classify.engine import Trainer
from efficientmod.classify.evaluate import evaluate_checkpoint
from efficientmod.classify.losses import DistillationLoss
from efficientmod.cli import build_parser, main

TINY = ["--model", "efficientmod_xxs", "--img-size", "32", "--batch-size", "4", "--workers", "0",
        "--log-interval", "2", "--warmup-epochs", "1", "--lr", "1e-3", "--cooldown-epochs", "0"]


def cli(*args) -> int:
    return main(["train", *TINY, *map(str, args)])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """2 classes x 12 train / 3 val images; in train also 4 files to convert, 3 unreadable
    ones and one more image: 32 files, 8 steps of 4 per epoch."""
    root = make_image_folder(tmp_path_factory.mktemp("images"), train_per_class=12, val_per_class=3)
    make_bad_files(root / "train" / "bee")
    (root / "train" / "ant" / "extra.png").write_bytes((root / "train" / "ant" / "000.jpg").read_bytes())
    return root


@pytest.fixture(scope="module")
def full_run(folder, tmp_path_factory) -> Path:
    """Two epochs of the full DeiT recipe (RandAugment, Mixup/CutMix, random erasing,
    label smoothing, drop path, EMA) on the tiny folder."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli("--data", folder, "--output", out, "--epochs", 2, "--drop-path", 0.1, "--ema-warmup") == 0
    return out


def test_full_recipe_run_folder(full_run, folder):
    assert {"last.pth", "best.pth", "config.yaml", "metrics.csv", "model"} <= {p.name for p in full_run.iterdir()}
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    assert config["mixup"] == 0.8 and config["aa"].startswith("rand-m9-mstd0.5") and config["drop_path"] == 0.1
    rows = list(csv.DictReader(open(full_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(int(r["bad_files"]) == 3 for r in rows)  # corrupt, truncated, not an image
    assert all(r["ema_top1"] != "" for r in rows)
    state = load(full_run / "last.pth")
    assert (state["epoch"], state["epoch_step"]) == (2, 0)
    assert state["global_step"] == 16
    assert state["class_names"] == ["ant", "bee"] and state["config"]["model"] == "efficientmod_xxs"
    assert {"model", "ema", "optimizer", "scheduler", "rng"} <= set(state)
    assert state["optimizer"]["state"] and state["scheduler"]["t_initial"] == 16
    assert not torch.equal(state["model"]["head.weight"], state["ema"]["head.weight"])


def test_existing_run_is_never_overwritten(full_run, folder):
    with pytest.raises(ValueError, match="--resume auto"):
        Trainer(resolve_config(build_parser().parse_args(
            ["train", *TINY, "--data", str(folder), "--output", str(full_run)])))


def test_eval_command_matches_the_validation_of_the_run(full_run, folder, capsys):
    last_top1 = float(list(csv.DictReader(open(full_run / "metrics.csv")))[-1]["val_top1"])
    assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(full_run / "last.pth"),
                 "--data", str(folder), "--workers", "0"]) == 0  # the training size (32) from the checkpoint
    out = capsys.readouterr().out
    assert f"top-1 {last_top1:.2f}%" in out and "(6 images)" in out and "top-5 100.00%" in out
    assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(full_run / "model"),
                 "--data", str(folder), "--img-size", "32", "--workers", "0"]) == 0
    assert f"top-1 {last_top1:.2f}%" in capsys.readouterr().out


def test_eval_of_the_ema_weights_and_of_the_model_folder_at_its_training_size(full_run, folder, capsys):
    """--ema scores the EMA weights of a training checkpoint (as the run's ema_top1); a
    model/ folder is evaluated at the size it was trained at (32 px, not the model's 224)."""
    last_ema_top1 = float(list(csv.DictReader(open(full_run / "metrics.csv")))[-1]["ema_top1"])
    assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(full_run / "last.pth"), "--ema",
                 "--data", str(folder), "--workers", "0"]) == 0
    assert f"top-1 {last_ema_top1:.2f}%" in capsys.readouterr().out
    best_top1 = load(full_run / "best.pth")["best_top1"]
    assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(full_run / "model"),
                 "--data", str(folder), "--workers", "0"]) == 0
    assert f"top-1 {best_top1:.2f}%" in capsys.readouterr().out
    with pytest.raises(ValueError, match="EMA weights are in a training checkpoint"):
        evaluate_checkpoint("efficientmod_xxs", str(full_run / "model"), str(folder), workers=0, use_ema=True)


def _weights_after_run(out: Path) -> dict:
    return load(out / "last.pth")["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_repeats_the_uninterrupted_run(folder, tmp_path):
    args = [*TINY, "--data", str(folder), "--epochs", "2", "--ckpt-steps", "2", "--drop-path", "0.1",
            "--no-tensorboard"]
    reference = tmp_path / "reference"
    assert main(["train", *args, "--output", str(reference)]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-c", "import torch, sys; torch.set_num_threads(1); "
                                "from efficientmod.cli import main; sys.exit(main(sys.argv[1:]))",
                                "train", *args, "--output", str(killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "last.pth").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = load(killed / "last.pth")
    assert interrupted["epoch"] == 0 and 0 < interrupted["epoch_step"] < 8  # killed mid-epoch 1

    assert main(["train", *args, "--output", str(killed), "--resume", "auto"]) == 0
    assert_same_weights(_weights_after_run(killed), _weights_after_run(reference))
    assert metrics(killed) == metrics(reference)  # epoch 1's loss includes the steps before the kill
    assert_same_weights(load(killed / "last.pth")["ema"], load(reference / "last.pth")["ema"])


def test_resume_refuses_another_batch_size(folder, tmp_path):
    """The sampler skips the epoch's first steps x global batch samples, and the recipe is
    the checkpoint's: another --batch-size is refused with a clear error."""
    args = ["train", *TINY, "--data", str(folder), "--output", str(tmp_path / "run"), "--no-tensorboard"]
    trainer = Trainer(resolve_config(build_parser().parse_args(args)))
    trainer.epoch_step = trainer.global_step = 3
    trainer.save("last.pth")
    trainer.close()  # releases the run folder
    with pytest.raises(ValueError, match="--batch-size 4 -> 2"):
        Trainer(resolve_config(build_parser().parse_args([*args, "--resume", "auto", "--batch-size", "2"])))
    resumed = Trainer(resolve_config(build_parser().parse_args([*args, "--resume", "auto"])))
    assert (resumed.epoch_step, resumed.global_step) == (3, 3)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path, capsys):
    out = tmp_path / "nan"
    status = cli("--data", folder, "--output", out, "--epochs", 1, "--lr", 1e30, "--warmup-epochs", 0,
                 "--ckpt-steps", 1, "--log-interval", 1, "--mixup", 0, "--cutmix", 0, "--no-tensorboard")
    assert status == 3
    assert "NaN/inf" in capsys.readouterr().err
    state = load(out / "last.pth")
    assert 1 <= state["global_step"] < 8
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_fine_tuning_loads_pretrained_weights_replaces_head_and_decays_layers(full_run, tmp_path):
    three = make_image_folder(tmp_path / "three", classes=("a", "b", "c"), train_per_class=2, val_per_class=1)
    cfg = TrainConfig(model="efficientmod_xxs", data=str(three), output=str(tmp_path / "ft"), img_size=32,
                      batch_size=2, workers=0, pretrained=str(full_run / "last.pth"), layer_decay=0.5,
                      tensorboard=False)
    with pytest.warns(UserWarning, match="classifier ignored"):
        trainer = Trainer(cfg)
    pretrained = load(full_run / "last.pth")["model"]
    own = trainer.model.state_dict()
    assert own["head.weight"].shape == (3, 256)
    for key in ("stem.conv.weight", "stages.3.blocks.2.attn.qkv.weight"):
        if key in own:
            assert torch.equal(own[key], pretrained[key]), key
    scales = sorted({group["lr_scale"] for group in trainer.optimizer.param_groups})
    assert len(scales) > 3 and scales[-1] == 1.0 and scales[0] < 0.01


def test_distillation_losses():
    student = torch.randn(6, 5)
    targets = torch.randint(0, 5, (6,))
    images = torch.randn(6, 3)
    teacher = torch.nn.Linear(3, 5)
    base = torch.nn.CrossEntropyLoss()
    copy = DistillationLoss(base, lambda x: student, "soft", tau=2.0, alpha=1.0)
    assert copy(images, student, targets).abs().item() < 1e-6  # the student already is the teacher
    hard = DistillationLoss(base, teacher, "hard", alpha=1.0)
    expected = torch.nn.functional.cross_entropy(student, teacher(images).argmax(1))
    torch.testing.assert_close(hard(images, student, targets), expected)
    half = DistillationLoss(base, teacher, "soft", tau=1.0, alpha=0.5)
    assert half(images, student, targets) > 0.5 * base(student, targets)
    # DeiT's soft term: tau^2 * sum over the batch of KL(p_teacher || p_student) / (batch x classes)
    tau, p_teacher = 2.0, (teacher(images) / 2.0).softmax(1)
    kl = (p_teacher * (p_teacher.log() - (student / tau).log_softmax(1))).sum()
    deit = DistillationLoss(base, teacher, "soft", tau=tau, alpha=0.9)
    expected = 0.1 * base(student, targets) + 0.9 * tau**2 * kl / student.numel()
    torch.testing.assert_close(deit(images, student, targets), expected)


def test_training_with_a_teacher_folder(full_run, folder, tmp_path):
    out = tmp_path / "distilled"
    assert cli("--data", folder, "--output", out, "--epochs", 1, "--teacher", full_run / "model",
               "--distill", "hard", "--no-ema", "--no-tensorboard") == 0
    assert load(out / "last.pth")["config"]["teacher"] == str(full_run / "model")


def test_config_precedence_and_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base-lr: 1.0e-3\nepochs: 7\nmixup: 0.0\n")
    args = build_parser().parse_args(["train", "--config", str(recipe), "--epochs", "3"])
    cfg = resolve_config(args, preset=dict(epochs=50, smoothing=0.2))
    assert (cfg.base_lr, cfg.epochs, cfg.mixup, cfg.smoothing, cfg.cutmix) == (1e-3, 3, 0.0, 0.2, 1.0)
    recipe.write_text("bogus: 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_yaml(recipe)
    with pytest.raises(ValueError, match="multiple of 32"):
        replace(cfg, img_size=40)


def test_yaml_values_get_the_types_and_choices_of_their_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_lr: 4e-3\nepochs: '7'\nema: false\n")  # YAML reads 4e-3 (no dot) as a string
    assert load_yaml(recipe) == dict(base_lr=4e-3, epochs=7, ema=False)
    for bad, message in [("epochs: 2.5", "epochs must be of type int"), ("base_lr: fast", "base_lr must be"),
                         ("ema: 'yes'", "ema must be of type bool")]:
        recipe.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            load_yaml(recipe)
    for bad in ("log_interval: 0", "ckpt_steps: -1"):  # 0 would divide by zero mid-run
        recipe.write_text(bad + "\n")
        with pytest.raises(ValueError, match=r"log_interval must be in \[1, inf\), got 0 \(--log-interval\)|"
                           r"ckpt_steps must be in \[0, inf\), got -1 \(--ckpt-steps\)"):
            resolve_config(build_parser().parse_args(["train", "--config", str(recipe)]))
    recipe.write_text("amp: fp32\n")
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, fp16, none"):
        resolve_config(build_parser().parse_args(["train", "--config", str(recipe)]))


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "torchrun" in text


def test_synthetic_benchmark_measures_images_per_second(tmp_path, monkeypatch):
    """A stand-in clock on which each training step takes 0.25 s and fetching a batch no time:
    2 timed steps of 2 images (after the 10 warm-up steps) are 4 images in 0.5 s."""
    import efficientmod.classify.speed as speed_module

    now, steps = [0.0], []
    real_step = Trainer.train_step

    def timed_step(self, *args, **kwargs):
        steps.append(1)
        now[0] += 0.25
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(speed_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    cfg = TrainConfig(model="efficientmod_xxs", img_size=32, batch_size=2, synthetic=True, num_classes=4,
                      benchmark_steps=2, output=str(tmp_path / "bench"))
    result = Trainer(cfg).fit()
    assert len(steps) == 10 + 2
    assert result["img_per_s"] == pytest.approx(8.0) and result["data_wait_share"] == 0
    assert (result["steps"], result["batch_size"], result["processes"], result["data"]) == (2, 2, 1, "synthetic")
    assert not (tmp_path / "bench").exists()  # measuring writes no run folder


def test_bad_folder_fails_before_training(tmp_path, capsys):
    (tmp_path / "train" / "ant").mkdir(parents=True)
    (tmp_path / "val" / "ant").mkdir(parents=True)
    assert cli("--data", tmp_path, "--output", tmp_path / "out") == 2
    assert "empty class folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_is_built_with_the_variants_drop_path(folder, tmp_path):
    cfg = TrainConfig(model="efficientmod_s", data=str(folder), output=str(tmp_path / "s"), img_size=32,
                      batch_size=2, workers=0, tensorboard=False, ema=False)
    trainer = Trainer(cfg)
    rates = [m.drop_prob for m in trainer.model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.02)  # efficientmod_s: the paper's 0.02
    assert create_model("efficientmod_xxs").num_classes == 1000


def test_shipped_deit_config_is_the_default_recipe():
    config = Path(__file__).parents[1] / "configs" / "deit_imagenet.yaml"
    assert TrainConfig(**load_yaml(config)) == TrainConfig()


@pytest.mark.parametrize("name", ["efficientmod_xxs", "efficientvit_m0", "mobilevitv2_050"])
def test_every_family_trains_with_layer_decay_and_drop_path(name):
    cfg = TrainConfig(model=name, img_size=64, batch_size=2, synthetic=True, num_classes=3, benchmark_steps=1,
                      layer_decay=0.8, drop_path=0.05, ema=False)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))
    assert torch.isfinite(loss)
    assert len({group["lr_scale"] for group in trainer.optimizer.param_groups}) > 3
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def _digit_pngs(folder: Path) -> tuple[list[Path], list[int]]:
    """The demo's 360 validation digits as 8x8 grayscale PNG files (0..16 -> 0..255)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, images, _, labels = train_test_split(digits.images, digits.target, test_size=0.2, stratify=digits.target,
                                            random_state=0)  # the split of digits_datasets(seed=0)
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray((image * 255 / 16).round().astype("uint8"), "L").save(paths[-1])
    return paths, labels.tolist()


def _predicted_top1(capsys, paths: list[Path], labels: list[int], *model) -> float:
    assert main(["predict", *map(str, model), *map(str, paths), "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    predicted = [int(line.split()[-1]) for line in lines if line.strip().startswith("1.")]
    assert len(predicted) == len(labels)
    return 100 * sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)


@pytest.mark.slow
def test_demo_life_cycle(tmp_path, capsys):
    """Two epochs of the digits demo (below its 95% target, so exit status 1): trained,
    reloaded, evaluated, exported, checked in ONNX Runtime, benchmarked — and its model/
    and model.onnx classify digit image files as well as the demo's own evaluation."""
    run = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--output", str(run)]) == 1
    out = capsys.readouterr().out
    top1 = out.split("validation     top-1 ")[1].split("%")[0]
    assert float(top1) > 50 and "NOT reached" in out
    assert f"ONNX Runtime top-1 {top1}%" in out and (run / "model.onnx").exists()
    assert "torch-cpu" in out and "M MACs per image" in out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert [config[k] for k in ("model", "img_size", "in_chans", "threads")] == ["efficientmod_xxs", 32, 1, 1]
    saved = yaml.safe_load((run / "model" / "config.json").read_text())
    preprocessing = saved["pretrained_cfg"]  # timm's config.json format
    assert (preprocessing["input_size"], preprocessing["mean"], preprocessing["std"]) == ([1, 32, 32], [0.5], [0.5])
    assert saved["label_names"] == [str(d) for d in range(10)]
    assert load(run / "best.pth")["preprocessing"]["input_size"] == [1, 32, 32]

    paths, labels = _digit_pngs(tmp_path / "pngs")
    for model in ([run / "model"], [run / "model.onnx"], ["efficientmod_xxs", "--checkpoint", run / "best.pth"]):
        assert abs(_predicted_top1(capsys, paths, labels, *model) - float(top1)) <= 2.0, model


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_channels_last_and_clipping(amp):
    """The gradients the optimizer steps on have the total norm --clip-grad (unscaled first
    under fp16's loss scaling), where the same step without clipping has a larger one."""

    def step_norms(clip_grad: float | None) -> tuple[Trainer, list[float]]:
        cfg = TrainConfig(model="efficientmod_xxs", img_size=32, batch_size=2, synthetic=True, num_classes=3,
                          benchmark_steps=1, amp=amp, clip_grad=clip_grad, channels_last=True, ema=False)
        trainer, norms = Trainer(cfg), []

        def record_norm(optimizer, args, kwargs):
            grads = [p.grad.float() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        trainer.optimizer.register_step_pre_hook(record_norm)
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        for _ in range(20):  # fp16: the scaler skips the steps whose scaled gradients overflow, halving its scale
            assert torch.isfinite(trainer.train_step(images, torch.tensor([0, 2])))
            if norms:
                return trainer, norms
        raise AssertionError("no optimizer step in 20 passes")

    clip = 0.01
    trainer, [clipped] = step_norms(clip)
    _, [unclipped] = step_norms(None)  # the same weights (same seed) and batch
    assert unclipped > 2 * clip and clipped == pytest.approx(clip, rel=1e-3)
    assert (trainer.scaler is not None) == (amp == "fp16")  # fp16 needs loss scaling, bf16 does not
    assert trainer.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_failing_transform_exits_1_naming_file_and_step(folder, tmp_path, monkeypatch, capsys):
    """A bug in the pipeline (here a step raising ValueError, as Pillow 13's posterize did)
    is not bad input: exit 1, one line naming the file and the step, not exit 2."""
    import efficientmod.classify.data as data_module

    def broken(cfg, img_size, mean, std):
        def posterize_zero(image):
            raise ValueError("bits must be between or equal to 1 and 8")

        from torchvision.transforms import Compose
        return Compose([posterize_zero])

    monkeypatch.setattr(data_module, "train_transform", broken)
    assert cli("--data", folder, "--output", tmp_path / "out", "--epochs", 1, "--no-tensorboard") == 1
    [err] = [line for line in capsys.readouterr().err.splitlines() if "internal error" in line]
    assert err.startswith("efficientmod train: internal error: TransformError: transform function failed on ")
    assert "bits must be between" in err and str(folder) in err and "posterize_zero" in err


# -- the run folder: nothing lost ------------------------------------------------------------------
STABLE_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1", "lr", "bad_files")


def metrics(run: Path) -> list[dict]:
    """metrics.csv without the columns that depend on the wall clock."""
    return [{k: row[k] for k in STABLE_COLUMNS} for row in csv.DictReader(open(run / "metrics.csv"))]


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_fresh_run_refuses_an_earlier_runs_best_and_model_unless_overwrite(full_run, folder, tmp_path, capsys):
    run = copy_of(full_run, tmp_path)
    (run / "last.pth").unlink()
    best = (run / "best.pth").read_bytes()
    assert cli("--data", folder, "--output", run, "--epochs", 1, "--no-tensorboard") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli("--data", folder, "--output", run, "--epochs", 1, "--no-tensorboard", "--resume", "auto") == 2
    assert "has no last.pth" in capsys.readouterr().err
    assert (run / "best.pth").read_bytes() == best
    assert cli("--data", folder, "--output", run, "--epochs", 1, "--no-tensorboard", "--overwrite",
               "--warmup-epochs", 1, "--lr", 1e-5) == 0
    err = capsys.readouterr().err
    assert [int(r["epoch"]) for r in metrics(run)] == [1]  # the earlier run's rows are gone with it
    assert "warning: the warm-up (1 epochs) is not shorter than the run (1 epochs)" in err
    assert "warning: the learning rate is only 1e-05" in err
    assert "32 train / 6 val images, 2 classes" in err and "global batch 4" in err


def test_a_refused_resume_writes_nothing(full_run, folder, tmp_path):
    run = copy_of(full_run, tmp_path)
    config = (run / "config.yaml").read_bytes()
    base = ["train", *TINY, "--data", str(folder), "--output", str(run), "--resume", "auto", "--epochs", "2",
            "--drop-path", "0.1", "--ema-warmup"]  # the recipe of full_run
    for extra, message in ((["--model", "efficientmod_xs"], "holds a efficientmod_xxs, not a efficientmod_xs"),
                           (["--lr", "2e-3"], r"recipe differs .*--lr 0.001 -> 0.002"),
                           (["--drop-path", "0.2"], r"--drop-path 0.1 -> 0.2")):
        with pytest.raises(ValueError, match=message):
            Trainer(resolve_config(build_parser().parse_args([*base, *extra])))
        assert (run / "config.yaml").read_bytes() == config
    stale = run / ".last.pth.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    trainer = Trainer(resolve_config(build_parser().parse_args(
        [*base, "--log-interval", "5", "--workers", "0"])))  # allowed to change
    assert (trainer.epoch, trainer.cfg.log_interval) == (2, 5) and not stale.exists()


def test_metrics_after_a_kill_between_row_and_checkpoint_equal_an_uninterrupted_run(folder, tmp_path, monkeypatch):
    args = ["--data", folder, "--epochs", 2, "--no-tensorboard", "--no-ema"]
    assert cli(*args, "--output", tmp_path / "reference") == 0
    real_save = Trainer.save

    def killed_at_the_second_epochs_checkpoint(self, *names):
        if self.epoch == 2 and self.epoch_step == 0:
            raise KeyboardInterrupt  # the row of epoch 2 is written, its checkpoint is not
        real_save(self, *names)

    monkeypatch.setattr(Trainer, "save", killed_at_the_second_epochs_checkpoint)
    assert cli(*args, "--output", tmp_path / "killed") == 130
    assert [r["epoch"] for r in metrics(tmp_path / "killed")] == ["1", "2"]
    monkeypatch.setattr(Trainer, "save", real_save)
    assert cli(*args, "--output", tmp_path / "killed", "--resume", "auto") == 0
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "reference")


@pytest.mark.parametrize("fault", ["disk full", "read-only", "parent is a file"])
def test_write_failures_are_one_line_and_keep_the_previous_checkpoint(fault, folder, tmp_path, monkeypatch, capsys):
    import errno

    out = tmp_path / "run"
    if fault == "parent is a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        real_save, calls = torch.save, []

        def failing_save(obj, path, *a, **k):
            calls.append(path)
            if len(calls) > 2:  # epoch 1 wrote last.pth and best.pth; epoch 2's last.pth fails
                code, text = (errno.ENOSPC, "No space left on device") if fault == "disk full" else \
                    (errno.EROFS, "Read-only file system")
                raise OSError(code, text, str(path))
            real_save(obj, path, *a, **k)

        monkeypatch.setattr(torch, "save", failing_save)
    status = cli("--data", folder, "--output", out, "--epochs", 2, "--no-tensorboard", "--no-ema")
    err = [line for line in capsys.readouterr().err.splitlines() if "efficientmod train:" in line]
    assert status == 2 and len(err) == 1 and "Traceback" not in err[0]
    if fault == "parent is a file":
        assert "Not a directory" in err[0]
    else:
        assert ("No space left" if fault == "disk full" else "Read-only") in err[0]
        assert "the previous checkpoint" in err[0] and "is intact" in err[0]
        monkeypatch.undo()
        assert load(out / "last.pth")["epoch"] == 1
        assert not list(out.glob(".*.tmp"))


# -- the recipe ------------------------------------------------------------------------------------
def test_gradient_accumulation_equals_the_large_batch():
    def trainer(accum: int) -> Trainer:
        return Trainer(TrainConfig(model="efficientmod_xxs", img_size=32, batch_size=4 // accum, synthetic=True,
                                   num_classes=3, benchmark_steps=1, ema=False, mixup=0, cutmix=0, drop_path=0.0,
                                   grad_accum_steps=accum, lr=1e-3))

    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    whole, halves = trainer(1), trainer(2)
    assert halves.global_batch == whole.global_batch == 4
    whole.train_step(images, targets)
    before = [p.detach().clone() for p in halves.model.parameters()]
    halves.train_step(images[:2], targets[:2], update=False)
    assert all(torch.equal(a, b) for a, b in zip(before, halves.model.parameters(), strict=True))  # no step yet
    halves.train_step(images[2:], targets[2:], update=True)
    for a, b in zip(whole.model.parameters(), halves.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def test_cooldown_holds_min_lr_after_the_cosine_and_ema_warms_up_for_short_runs():
    trainer = Trainer(TrainConfig(model="efficientmod_xxs", img_size=32, batch_size=2, synthetic=True, num_classes=3,
                                  benchmark_steps=4, epochs=2, cooldown_epochs=1, warmup_epochs=0, lr=1e-3,
                                  min_lr=1e-5))
    assert trainer.total_epochs == 3
    lrs = [trainer.scheduler._get_lr(t)[0] for t in range(12)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[4] < 1e-3
    assert lrs[8:] == pytest.approx([1e-5] * 4)  # the cool-down epoch
    assert trainer.ema_warmup  # 12 steps at decay 0.9998 would leave the EMA at its initial weights
    assert TrainConfig().ema_decay == 0.9998 and TrainConfig().distill_alpha == 0.9
    assert TrainConfig().train_interpolation == "random" and TrainConfig().cooldown_epochs == 10


def test_best_checkpoint_and_model_folder_hold_the_better_of_raw_and_ema(full_run):
    from efficientmod.models.pretrained import from_pretrained

    best = load(full_run / "best.pth")
    rows = list(csv.DictReader(open(full_run / "metrics.csv")))
    chosen = (-1.0, None)
    for row in rows:  # the first epoch that beats every earlier one, by its better weights
        score = max((float(row["val_top1"]), "model"), (float(row["ema_top1"]), "ema"))
        chosen = score if score[0] > chosen[0] else chosen
    assert (best["best_top1"], best["best_source"]) == chosen
    model = from_pretrained(full_run / "model")
    assert_same_weights(model.state_dict(), best[best["best_source"]], atol=0)
    assert model.preprocessing.input_size == (3, 32, 32) and model.preprocessing.crop_pct == 0.875
    assert best["preprocessing"] == model.preprocessing.to_dict()


def test_workers_and_threads_default_to_the_machine(folder, tmp_path, monkeypatch):
    """On 2 cores: 2 loader workers (no DataLoader oversubscription warning) and 1 PyTorch
    thread beside them."""
    import warnings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    torch.set_num_threads(2)
    try:
        cfg = TrainConfig(model="efficientmod_xxs", data=str(folder), output=str(tmp_path / "run"), img_size=32,
                          batch_size=4, tensorboard=False, ema=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = Trainer(cfg)
            images, _, _ = next(iter(trainer.train_loader))
        assert (trainer.workers, trainer.threads, len(images) > 0) == (2, 1, True)
        assert not [w for w in caught if "worker" in str(w.message)]
    finally:
        torch.set_num_threads(1)
