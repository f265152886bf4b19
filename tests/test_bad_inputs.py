"""The corpus of bad inputs (issue 19): every case must end with exit status 2 and exactly one
line on stderr that names the flag, key, file or record at fault, with no traceback, and must
leave every file it was given (and the run folder) as it was.

A case is one row of :data:`CASES`: ``(id, argv, fragment)``. ``argv`` is the command line
after ``efficientmod``, or a function of the case's empty folder that writes the bad input
there and returns the command line; ``fragment`` is a piece of the expected message. The
folder holds ``out/`` (a run folder with a user's file in it) before the case runs; the
helpers below build the usual shapes of a case in one call.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from refusal import assert_refused
from synthetic_images import make_image_folder

from efficientmod.cli import main

OUTPUT = "out"  # the run folder of every case, relative to the case's folder
SMALL_RUN = ["--model", "efficientmod_xxs", "--epochs", "1", "--batch-size", "2", "--img-size", "32",
             "--workers", "0", "--threads", "1"]


def flags(*argv: str, command: str = "train") -> Callable[[Path], list[str]]:
    """A recipe flag (or several) given on the command line."""
    return lambda folder: [command, *argv, "--output", str(folder / OUTPUT)]


def recipe(text: str | bytes) -> Callable[[Path], list[str]]:
    """A ``--config`` YAML file holding ``text``."""
    def build(folder: Path) -> list[str]:
        path = folder / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", "--config", str(path), "--output", str(folder / OUTPUT)]
    return build


def data_folder(shape: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """A ``--data`` folder of two classes, then changed by ``shape``."""
    def build(folder: Path) -> list[str]:
        make_image_folder(folder / "data", classes=("ant", "bee"), train_per_class=1, val_per_class=1, size=8)
        shape(folder / "data")
        return ["train", "--data", str(folder / "data"), *SMALL_RUN, "--output", str(folder / OUTPUT)]
    return build


def _symlink_loops_only(root: Path) -> None:
    loops = root / "train" / "cow"
    loops.mkdir()
    (loops / "a.jpg").symlink_to(loops / "b.jpg")
    (loops / "b.jpg").symlink_to(loops / "a.jpg")
    (root / "val" / "cow").mkdir()
    shutil.copy(next((root / "val" / "ant").iterdir()), root / "val" / "cow")


def _data_is_a_file(folder: Path) -> list[str]:
    (folder / "images.zip").write_bytes(b"PK")
    return ["train", "--data", str(folder / "images.zip"), *SMALL_RUN, "--output", str(folder / OUTPUT)]


def _billion_laughs() -> str:
    """An ``epochs:`` list of 12 levels of aliases, 10 x 5**11 (~500 million) strings if expanded."""
    lines = ["epochs:", "  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    return "\n".join(lines) + "\n"


RANGE_CASES = [  # issue 19 items 11 and 15, then every other bounded recipe value
    ("img-size 0", flags("--img-size", "0"), "img_size must be in [32, 4096], got 0 (--img-size)"),
    ("img-size -32", flags("--img-size", "-32"), "img_size must be in [32, 4096], got -32"),
    ("img-size 40", flags("--img-size", "40"), "img_size must be a multiple of 32, got 40 (--img-size)"),
    ("img-size huge", flags("--img-size", "65536"), "img_size must be in [32, 4096]"),
    ("smoothing 2", flags("--smoothing", "2"), "smoothing must be in [0, 1), got 2.0 (--smoothing)"),
    ("smoothing 1", flags("--smoothing", "1"), "smoothing must be in [0, 1)"),
    ("smoothing negative", flags("--smoothing", "-0.1"), "smoothing must be in [0, 1)"),
    ("ema-decay 2", flags("--ema-decay", "2"), "ema_decay must be in [0, 1), got 2.0 (--ema-decay)"),
    ("ema-decay 1", flags("--ema-decay", "1"), "ema_decay must be in [0, 1)"),
    ("layer-decay -1", flags("--layer-decay", "-1"), "layer_decay must be in (0, 1], got -1.0 (--layer-decay)"),
    ("layer-decay 0", flags("--layer-decay", "0"), "layer_decay must be in (0, 1]"),
    ("layer-decay 2", flags("--layer-decay", "2"), "layer_decay must be in (0, 1]"),
    ("warmup-epochs -1", flags("--warmup-epochs", "-1"), "warmup_epochs must be in [0, 100000], got -1"),
    ("mixup-prob 5", flags("--mixup-prob", "5"), "mixup_prob must be in [0, 1], got 5.0 (--mixup-prob)"),
    ("mixup-switch-prob nan", flags("--mixup-switch-prob", "nan"), "mixup_switch_prob must be a finite number"),
    ("mixup-switch-prob 2", flags("--mixup-switch-prob", "2"), "mixup_switch_prob must be in [0, 1]"),
    ("reprob 2", flags("--reprob", "2"), "reprob must be in [0, 1], got 2.0 (--reprob)"),
    ("hflip 2", flags("--hflip", "2"), "hflip must be in [0, 1], got 2.0 (--hflip)"),
    ("hflip negative", flags("--hflip", "-0.5"), "hflip must be in [0, 1]"),
    ("drop-path 5", flags("--drop-path", "5"), "drop_path must be in [0, 1), got 5.0 (--drop-path)"),
    ("drop 1", flags("--drop", "1"), "drop must be in [0, 1)"),
    ("train-interpolation bogus", flags("--train-interpolation", "bogus"),
     "train_interpolation must be one of random, bilinear, bicubic"),
    ("min-lr nan", flags("--min-lr", "nan"), "min_lr must be a finite number, got nan (--min-lr)"),
    ("min-lr negative", flags("--min-lr=-1e-5"), "min_lr must be in [0, inf)"),
    ("base-lr inf", flags("--base-lr", "inf"), "base_lr must be a finite number, got inf"),
    ("lr negative", flags("--lr", "-1"), "lr must be in [0, inf)"),
    ("lr nan", flags("--lr", "nan"), "lr must be a finite number"),
    ("warmup-lr -inf", flags("--warmup-lr=-inf"), "warmup_lr must be a finite number"),
    ("weight-decay negative", flags("--weight-decay", "-0.05"), "weight_decay must be in [0, inf)"),
    ("opt-eps 0", flags("--opt-eps", "0"), "opt_eps must be in (0, inf)"),
    ("clip-grad 0", flags("--clip-grad", "0"), "clip_grad must be in (0, inf)"),
    ("mixup negative", flags("--mixup", "-1"), "mixup must be in [0, inf)"),
    ("cutmix negative", flags("--cutmix", "-1"), "cutmix must be in [0, inf)"),
    ("color-jitter negative", flags("--color-jitter", "-0.4"), "color_jitter must be in [0, inf)"),
    ("distill-tau 0", flags("--distill-tau", "0"), "distill_tau must be in (0, inf)"),
    ("distill-alpha 2", flags("--distill-alpha", "2"), "distill_alpha must be in [0, 1]"),
    ("distill bogus", flags("--distill", "bogus"), "distill must be one of soft, hard, got 'bogus' (--distill)"),
    ("amp fp32", flags("--amp", "fp32"), "amp must be one of auto, bf16, fp16, none"),
    ("aa bogus", flags("--aa", "bogus"), "aa must be 'none' or a timm auto-augment policy"),
    ("epochs 0", flags("--epochs", "0"), "epochs must be in [1, 100000], got 0 (--epochs)"),
    ("epochs 1e20", flags("--epochs", "99999999999999999999"), "epochs must be in [1, 100000]"),
    ("cooldown-epochs -1", flags("--cooldown-epochs", "-1"), "cooldown_epochs must be in [0, 100000]"),
    ("batch-size 0", flags("--batch-size", "0"), "batch_size must be in [1, 65536], got 0"),
    ("batch-size huge", flags("--batch-size", "1000000"), "batch_size must be in [1, 65536]"),
    ("grad-accum-steps 0", flags("--grad-accum-steps", "0"), "grad_accum_steps must be in [1, inf)"),
    ("base-batch 0", flags("--base-batch", "0"), "base_batch must be in [1, inf)"),
    ("seed negative", flags("--seed", "-1"), "seed must be in [0, 4294967295]"),
    ("seed 2**64", flags("--seed", str(2**64)), "seed must be in [0, 4294967295]"),
    ("in-chans 0", flags("--in-chans", "0"), "in_chans must be in [1, 64]"),
    ("workers negative", flags("--workers", "-1"), "workers must be in [0, 1024]"),
    ("threads 0", flags("--threads", "0"), "threads must be in [1, 4096]"),
    ("num-classes 0", flags("--synthetic", "--num-classes", "0"), "num_classes must be in [1, 100000]"),
    ("num-classes 1e8", flags("--synthetic", "--num-classes", "100000000"), "num_classes must be in [1, 100000]"),
    ("log-interval 0", flags("--log-interval", "0"), "log_interval must be in [1, inf)"),
    ("ckpt-steps negative", flags("--ckpt-steps", "-1"), "ckpt_steps must be in [0, inf)"),
    ("benchmark-steps negative", flags("--benchmark-steps", "-1"), "benchmark_steps must be in [0, inf)"),
    ("calib-samples 0", flags("--calib-samples", "0"), "calib_samples must be in [1, inf)"),
    ("demo img-size 0", flags("--img-size", "0", command="demo"), "img_size must be in [32, 4096]"),
    ("demo smoothing 2", flags("--smoothing", "2", command="demo"), "smoothing must be in [0, 1)"),
]

YAML_CASES = [  # issue 19 item 14, then the other ways a recipe file can be unreadable
    ("yaml epochs .inf", recipe("epochs: .inf\n"), "recipe.yaml: epochs must be of type int, got inf"),
    ("yaml epochs 1e20", recipe("epochs: 99999999999999999999\n"),
     "recipe.yaml: epochs must be in [1, 100000], got 99999999999999999999"),
    ("yaml non-string key", recipe("1: 2\n"), "recipe.yaml: keys must be recipe names (strings), got 1"),
    ("yaml python tag", recipe("epochs: !!python/object/apply:os.system ['echo pwned']\n"),
     "recipe.yaml: line 1, column 9: not valid YAML: could not determine a constructor"),
    ("yaml tab", recipe("epochs: 3\n\tmixup: 0\n"), "recipe.yaml: line 2, column 1: not valid YAML"),
    ("yaml unclosed list", recipe("epochs: [1\n"), "recipe.yaml: line 2, column 1: not valid YAML"),
    ("yaml mapping in value", recipe("epochs: a: b\n"), "recipe.yaml: line 1, column 10: not valid YAML"),
    ("yaml 10000-deep", recipe("epochs: " + "[" * 10_000 + "]" * 10_000 + "\n"), "recipe.yaml: not a recipe: nested"),
    ("yaml duplicate key", recipe("epochs: 3\nepochs: 4\n"), "recipe.yaml: line 2, column 1: not valid YAML: key "
     "'epochs' given twice"),
    ("yaml unhashable key", recipe("? [1]\n: 2\n"), "recipe.yaml: line 1, column 3: not valid YAML"),
    ("yaml top-level list", recipe("- epochs: 3\n"), "recipe.yaml: expected a mapping of recipe keys to values"),
    ("yaml top-level scalar", recipe("0\n"), "recipe.yaml: expected a mapping"),
    ("yaml binary", recipe(b"epochs: 3\n\xff\xfe\x00garbage"), "recipe.yaml: not a UTF-8 text file"),
    ("yaml unknown key", recipe("epoch: 3\n"), "recipe.yaml: unknown key(s) ['epoch']"),
    ("yaml model int", recipe("model: 5\n"), "recipe.yaml: model must be of type str (quote it), got 5"),
    ("yaml bool string", recipe("ema: 'yes'\n"), "recipe.yaml: ema must be of type bool"),
    ("yaml epochs 2.5", recipe("epochs: 2.5\n"), "recipe.yaml: epochs must be of type int, got 2.5"),
    ("yaml epochs list", recipe("epochs: [1, 2]\n"), "recipe.yaml: epochs must be of type int"),
    ("yaml alias bomb", recipe(_billion_laughs()), "recipe.yaml: epochs must be of type int, got [['x', "),
    ("yaml smoothing 2", recipe("smoothing: 2\n"), "recipe.yaml: smoothing must be in [0, 1), got 2.0 (--smoothing)"),
    ("yaml min_lr .nan", recipe("min_lr: .nan\n"), "recipe.yaml: min_lr must be a finite number"),
    ("yaml base_lr 'inf'", recipe("base_lr: 'inf'\n"), "recipe.yaml: base_lr must be a finite number"),
    ("yaml interpolation", recipe("train_interpolation: bogus\n"), "recipe.yaml: train_interpolation must be one of"),
    ("yaml amp", recipe("amp: fp32\n"), "recipe.yaml: amp must be one of auto, bf16, fp16, none"),
    ("yaml img_size 40", recipe("img_size: 40\n"), "recipe.yaml: img_size must be a multiple of 32, got 40"),
    ("yaml missing", lambda folder: ["train", "--config", str(folder / "nowhere.yaml")],
     "config file not found: "),
    ("yaml a folder", lambda folder: ["train", "--config", str(folder)], ": not a file"),
]

DATA_CASES = [  # the --data folder, refused before the run folder is touched
    ("data missing", lambda folder: ["train", "--data", str(folder / "nowhere"), *SMALL_RUN, "--output",
                                     str(folder / OUTPUT)],
     "data folder not found: "),
    ("data a file", _data_is_a_file, "data folder not found: "),
    ("data no val", data_folder(lambda root: shutil.rmtree(root / "val")), "has no val/ folder"),
    ("data empty class", data_folder(lambda root: (root / "train" / "cow").mkdir()),
     "empty class folder(s): cow"),
    ("data class sets differ", data_folder(lambda root: (root / "val" / "ant").rename(root / "val" / "cow")),
     "class folders differ between train/ and val/: only in train/: ['ant']; only in val/: ['cow']"),
    ("data symlink loops only", data_folder(_symlink_loops_only), "empty class folder(s): cow"),
    ("data no classes", data_folder(lambda root: [shutil.rmtree(d) for d in (root / "val").iterdir()]),
     "val has no class folders"),
]


def small_run(*argv: str, command: str = "train") -> Callable[[Path], list[str]]:
    """A small training run (or ``eval``) on a good two-class ``--data`` folder, with ``argv`` at fault."""
    def build(folder: Path) -> list[str]:
        make_image_folder(folder / "data", classes=("ant", "bee"), train_per_class=1, val_per_class=1, size=8)
        argv_ = [arg.format(folder=folder) for arg in argv]
        if command == "eval":
            return ["eval", "--data", str(folder / "data"), "--workers", "0", *argv_]
        return [command, "--data", str(folder / "data"), *SMALL_RUN, "--output", str(folder / OUTPUT), *argv_]
    return build


NAMED_INPUT_CASES = [  # a model, checkpoint or folder named on the command line that does not exist or fit
    ("train unknown model", small_run("--model", "bogus_net"), "Unknown model 'bogus_net'"),
    ("train unknown teacher", small_run("--teacher", "bogus_net"), "--teacher 'bogus_net': Unknown model"),
    ("train pretrained missing", small_run("--pretrained", "{folder}/nowhere.pth"), "checkpoint not found: "),
    ("train in-chans 2 with data", small_run("--in-chans", "2"), "--in-chans must be 3 with --data"),
    ("train batch above images", small_run("--batch-size", "256"), "2 training images cannot fill one optimizer step"),
    ("eval checkpoint missing", small_run("--model", "efficientmod_xxs", "--checkpoint", "{folder}/nowhere.pth",
                                          command="eval"), "checkpoint not found: "),
    ("eval unknown model", small_run("--model", "bogus_net", "--checkpoint", "{folder}/x.pth", command="eval"),
     "Unknown model 'bogus_net'"),
    ("eval data missing", lambda folder: ["eval", "--model", "efficientmod_xxs", "--checkpoint", str(folder),
                                          "--data", str(folder / "nowhere")], "data folder not found: "),
]

CASES = RANGE_CASES + YAML_CASES + DATA_CASES + NAMED_INPUT_CASES


@pytest.mark.parametrize("argv, fragment", [pytest.param(argv, fragment, id=name) for name, argv, fragment in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, fragment):
    (tmp_path / OUTPUT).mkdir()
    (tmp_path / OUTPUT / "my_notes.txt").write_text("a user's file in the run folder\n")
    argv = argv(tmp_path) if callable(argv) else argv
    line = assert_refused(argv, fragment, tmp_path, capsys)
    assert line.startswith(f"efficientmod {argv[0]}: error: ")


def test_corpus_ids_are_unique():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)) and len(names) >= 60


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="needs efficientmod[executorch]")
@pytest.mark.parametrize("content", [b"", b"PTE\x00" * 3], ids=["empty", "truncated"])
def test_truncated_pte_is_exit_2_naming_the_file(tmp_path, capsys, content):
    from PIL import Image

    (tmp_path / "model.pte").write_bytes(content)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    status = main(["predict", str(tmp_path / "model.pte"), str(tmp_path / "a.png")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and not any("Traceback" in line for line in lines)
    assert lines[-1].startswith(f"efficientmod predict: error: cannot load {tmp_path / 'model.pte'} as an ExecuTorch")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="needs efficientmod[executorch]")
def test_truncated_pte_is_one_line(tmp_path, capsys):
    """The file is checked before ExecuTorch's C++ loader, which would log a line of its own."""
    from PIL import Image

    (tmp_path / "model.pte").write_bytes(b"PTE\x00" * 3)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert_refused(["predict", str(tmp_path / "model.pte"), str(tmp_path / "a.png")],
                   f"cannot load {tmp_path / 'model.pte'} as an ExecuTorch program", tmp_path, capsys)


def _unprivileged() -> list[str] | None:
    """The command prefix that runs a process as ``nobody``, when this test runs as root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if setpriv else None


def _nobody_imports_the_package() -> bool:
    """Whether ``nobody`` can import efficientmod from this checkout (not when the checkout or
    the interpreter lies in a folder only root may enter, e.g. one made by ``mktemp -d``)."""
    prefix = _unprivileged()
    if prefix is None:
        return False
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run([*prefix, sys.executable, "-c", "import efficientmod"], capture_output=True, env=env,
                          timeout=120, cwd="/")
    return done.returncode == 0


@pytest.mark.skipif(_unprivileged() is None, reason="runs as root without setpriv: cannot lose a permission")
def test_image_without_read_permission_is_a_bad_sample_not_a_crash():
    """A file the user may not read is skipped and reported like a corrupt one (the run goes
    on); a class folder that cannot be listed counts as empty and is refused up front."""
    if not _nobody_imports_the_package():
        pytest.skip("the checkout or the interpreter is in a folder 'nobody' may not enter")
    root = Path(tempfile.mkdtemp(prefix="efficientmod-perm-"))
    try:
        make_image_folder(root, classes=("ant", "bee"), train_per_class=2, val_per_class=1, size=8)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        denied = sorted((root / "train" / "ant").iterdir())[0]
        denied.chmod(0o000)
        script = ("import sys; from efficientmod.classify.data import ImageFolder, check_image_folders\n"
                  "names = check_image_folders(sys.argv[1])\n"
                  "samples = ImageFolder(sys.argv[1] + '/train', names)\n"
                  "print(*[type(samples[i]).__name__ + ' ' + str(samples[i][1]) for i in range(len(samples))], "
                  "sep='\\n')\n")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), HOME=str(root))
        done = subprocess.run([*_unprivileged(), sys.executable, "-c", script, str(root)], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 4 and lines[0].startswith("BadSample PermissionError"), done.stdout
        assert lines[1:] == ["tuple 0", "tuple 1", "tuple 1"], done.stdout
        locked = root / "train" / "bee" / "locked"  # a sub-folder that cannot be listed: one bad sample
        locked.mkdir(mode=0o700)
        shutil.copy(denied.with_name(sorted(p.name for p in denied.parent.iterdir())[1]), locked)
        done = subprocess.run([*_unprivileged(), sys.executable, "-c", script, str(root)], capture_output=True,
                              text=True, env=env, timeout=120)
        lines = done.stdout.splitlines()
        assert len(lines) == 5 and lines[-1].startswith("BadSample PermissionError") and str(locked) in lines[-1]
        (root / "val" / "bee").chmod(0o000)
        done = subprocess.run([*_unprivileged(), sys.executable, "-c", script, str(root)], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 1 and "empty class folder(s): bee" in done.stderr.strip().splitlines()[-1]
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["export"], "the following arguments are required: MODEL, -o/--output"),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    (["serve", "x", "--replicas"], "argument --replicas: expected one argument"),
], ids=["type", "missing", "command", "no value"])
def test_usage_errors_are_one_line_naming_the_flag(argv, fragment, capsys):
    """argparse's own refusals read like every other input error: one line, exit 2, and where
    to look (not the whole usage block)."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 1, lines
    command = "efficientmod" if argv[0] == "bogus" else f"efficientmod {argv[0]}"
    assert lines[0].startswith(f"{command}: error: {fragment}")
    assert lines[0].endswith(f"({command} --help lists the options)")


@pytest.mark.parametrize("task, rest", [
    ("det", ["eval", "--images", "i", "--annotations", "a.json"]),
    ("seg", ["predict", "--input", "x", "--output", "o"])])
@pytest.mark.parametrize("device, fragment", [
    ("bogus", "--device 'bogus' is not a torch device"),
    pytest.param("cuda", "--device cuda: CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_dense_device_is_checked_before_the_checkpoint_is_read(task, rest, device, fragment, tmp_path, capsys):
    argv = [task, rest[0], "--checkpoint", str(tmp_path / "missing.pth"), *rest[1:], "--device", device]
    line = assert_refused(argv, fragment, tmp_path, capsys)
    assert line.startswith(f"efficientmod {task}: error: ")
