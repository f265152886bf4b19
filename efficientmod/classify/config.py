"""The training recipe: one frozen dataclass whose defaults are the papers' (DeiT) recipe.

Every field is a command-line flag (``--base-lr 4e-3``; booleans also as ``--no-...``) and
a key of the YAML file given with ``--config`` (``base_lr: 4.0e-3``). Precedence, lowest
first: the defaults here, a preset (the digits demo), the YAML file, the flags given on the
command line. The resolved recipe is written to the run folder as ``config.yaml``.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from efficientmod import config_flags
from efficientmod.config_flags import check_field_values, value_problem

__all__ = ["TrainConfig", "DEMO_PRESET", "QAT_PRESET", "add_config_arguments", "given_values", "train_preset",
           "config_of", "resolve_config", "load_yaml", "save_yaml", "check_field_values",
           "INTERPOLATIONS"]


# The auto-augment strings timm 1.0.31's create_transform(auto_augment=...) builds: a policy,
# then options after dashes ("rand-m9-mstd0.5-inc1"). timm asserts on some unknown options and
# silently skips others, so each option is checked here. No auto-augment is None for timm.
_NUMBER = r"\d+(?:\.\d*)?"
AUTO_AUGMENT_OPTIONS = {
    "rand": rf"m\d+|n\d+|p{_NUMBER}|mstd{_NUMBER}|mmax\d+|inc[01]|t(?:weights|3aw|3a)",  # RandAugment
    "augmix": rf"m\d+|w\d+|d\d+|a{_NUMBER}|b[01]|mstd{_NUMBER}",  # AugMix
    **dict.fromkeys(("original", "originalr", "v0", "v0r", "3a"), rf"mstd{_NUMBER}"),  # AutoAugment policies
}
AUTO_AUGMENT_OFF = ("none", "")


def _check_auto_augment(aa: Any) -> None:
    """A one-line ``ValueError`` unless ``aa`` is None or a policy of :data:`AUTO_AUGMENT_OPTIONS`."""
    if aa is None:
        return
    policy, *options = str(aa).split("-")
    pattern = AUTO_AUGMENT_OPTIONS.get(policy)
    unknown = [o for o in options if pattern is None or not re.fullmatch(pattern, o)]
    if pattern is None or unknown:
        detail = f"unknown option(s) {unknown} of {policy!r}" if pattern else "unknown policy"
        raise ValueError(f"aa must be 'none' or a timm auto-augment policy ({', '.join(AUTO_AUGMENT_OPTIONS)}, "
                         f"e.g. rand-m9-mstd0.5-inc1), got {aa!r}: {detail}")


# timm's resize interpolations (timm.data.transforms), and 'random' (bilinear or bicubic per image).
INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")

def option(default: Any, help: str, type: Any = None, choices: tuple | None = None, group: str = "recipe",
           unset: str | None = None, bounds: str | None = None, multiple_of: int | None = None):
    """A recipe field: its default, its ``--help`` text and how the flag parses; ``unset`` says
    what a ``None`` default stands for (``--help`` shows it as the default, or a preset's value);
    ``bounds`` the interval a number must lie in (``"[0, 1)"``, ``"(0, inf)"``) and
    ``multiple_of`` the step an integer must be a multiple of, both checked by
    :func:`check_field_values` for flags and YAML alike."""
    return config_flags.option(default, help, type, choices, group, unset=unset, bounds=bounds,
                               multiple_of=multiple_of)


@dataclass(frozen=True)
class TrainConfig:
    # -- what to train on ---------------------------------------------------------------
    model: str | None = option(None, "model name (`efficientmod models` lists them)", str, group="run")
    data: str | None = option(None, "ImageNet-style folder with train/<class>/* and val/<class>/*; "
                              "without it `train` runs the digits demo", str, group="run")
    output: str | None = option(None, "run folder (checkpoints, config.yaml, metrics.csv, TensorBoard)", str,
                                group="run", unset="runs/<model>")
    resume: str | None = option(None, "'auto' continues from <output>/last.pth when it exists; "
                                "or a checkpoint path. Only the flags of the speed group and --workers, "
                                "--data, --log-interval, --ckpt-steps, --tensorboard may differ from the "
                                "checkpoint's recipe; any other difference is refused", str, group="run")
    overwrite: bool = option(False, "start a new run in an --output folder that holds an earlier run "
                             "(its checkpoints, model/ and metrics are deleted first)", bool, group="run")
    pretrained: str | None = option(None, "fine-tune from these weights (official EfficientMod, timm or "
                                    "own layout); the classifier is replaced for the new classes", str, group="run")
    seed: int = option(0, "random seed (data order, augmentation, initialisation)", int, group="run",
                       bounds="[0, 4294967295]")
    # -- schedule and optimiser ---------------------------------------------------------
    epochs: int = option(300, "epochs of the warm-up + cosine schedule", int, bounds="[1, 100000]")
    cooldown_epochs: int = option(10, "epochs at --min-lr after --epochs (timm/DeiT: 300 + 10)", int,
                                  bounds="[0, 100000]")
    batch_size: int = option(256, "images per process per forward pass (global batch = this x processes "
                             "x --grad-accum-steps)", int, bounds="[1, 65536]")
    grad_accum_steps: int = option(1, "forward/backward passes per optimizer step (one GPU: 256 x 8 = the "
                                   "paper's global batch of 2048)", int, bounds="[1, inf)")
    base_lr: float = option(4e-3, "learning rate at a global batch of --base-batch, scaled linearly", float,
                            bounds="[0, inf)")
    base_batch: int = option(2048, "global batch that --base-lr refers to", int, bounds="[1, inf)")
    lr: float | None = option(None, "absolute learning rate (overrides the linear scaling)", float,
                              bounds="[0, inf)")
    min_lr: float = option(1e-5, "cosine schedule floor", float, bounds="[0, inf)")
    warmup_epochs: int = option(5, "linear warm-up epochs", int, bounds="[0, 100000]")
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up", float, bounds="[0, inf)")
    opt: str = option("adamw", "timm optimizer name", str)
    opt_eps: float = option(1e-8, "optimizer epsilon", float, bounds="(0, inf)")
    weight_decay: float = option(0.05, "weight decay (never on norms, biases, layer scales)", float,
                                 bounds="[0, inf)")
    layer_decay: float | None = option(None, "layer-wise learning-rate decay for fine-tuning, e.g. 0.75", float,
                                       bounds="(0, 1]")
    clip_grad: float | None = option(None, "clip the gradient norm to this value", float, bounds="(0, inf)")
    # -- regularisation and augmentation ------------------------------------------------
    smoothing: float = option(0.1, "label smoothing", float, bounds="[0, 1)")
    mixup: float = option(0.8, "Mixup alpha (0 disables)", float, bounds="[0, inf)")
    cutmix: float = option(1.0, "CutMix alpha (0 disables)", float, bounds="[0, inf)")
    mixup_prob: float = option(1.0, "probability of applying Mixup/CutMix to a batch", float, bounds="[0, 1]")
    mixup_switch_prob: float = option(0.5, "probability of CutMix instead of Mixup", float, bounds="[0, 1]")
    aa: str | None = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy: RandAugment rand-..., AugMix "
                            "augmix-..., AutoAugment original, v0, ... ('none' disables)", str)
    reprob: float = option(0.25, "random erasing probability", float, bounds="[0, 1]")
    hflip: float = option(0.5, "horizontal flip probability", float, bounds="[0, 1]")
    color_jitter: float = option(0.4, "colour jitter (used only without --aa)", float, bounds="[0, inf)")
    train_interpolation: str = option("random", "resize interpolation for training ('random': bilinear "
                                      "or bicubic per image)", str, INTERPOLATIONS)
    drop_path: float | None = option(None, "stochastic depth rate", float, unset="the variant's value",
                                     bounds="[0, 1)")
    drop: float = option(0.0, "dropout before the classifier", float, bounds="[0, 1)")
    ema: bool = option(True, "keep an exponential moving average of the weights (evaluated too)", bool)
    ema_decay: float = option(0.9998, "EMA decay", float, bounds="[0, 1)")
    ema_warmup: bool | None = option(None, "ramp the EMA decay up from 0", bool,
                                     unset="on when the run has fewer than 5 / (1 - decay) optimizer steps, i.e. "
                                     "when a fixed decay would leave the EMA near its random initialisation")
    # -- distillation -------------------------------------------------------------------
    teacher: str | None = option(None, "teacher: a model name (efficientmod or timm) or a "
                                 "save_pretrained folder", str, group="distillation")
    teacher_checkpoint: str | None = option(None, "weights for a teacher given by name", str,
                                            group="distillation")
    distill: str = option("soft", "distillation loss with a teacher", str, ("soft", "hard"), group="distillation")
    distill_tau: float = option(1.0, "soft distillation temperature", float, group="distillation",
                                bounds="(0, inf)")
    distill_alpha: float = option(0.9, "weight of the distillation term", float, group="distillation",
                                  bounds="[0, 1]")
    # -- quantisation-aware fine-tune ------------------------------------------------------
    qat: bool = option(False, "quantisation-aware fine-tune of --init-from into an OpenVINO int8 IR: NNCF fake "
                       "quantisers calibrated on the training images, trained with the rest of the recipe, "
                       "written as model_int8.xml in the run folder (needs efficientmod[openvino]); the "
                       "recipe starts from QAT_PRESET (3 epochs at lr 1e-5, no warm-up, EMA or Mixup)", bool,
                       group="quantisation")
    init_from: str | None = option(None, "--qat: the trained float model, a model/ folder (save_pretrained) or "
                                   "a training run folder holding one; it sets --model, --img-size and "
                                   "--in-chans", str, group="quantisation")
    calib_samples: int = option(300, "--qat: training images (evaluation preprocessing, spread over the "
                                "classes) that set the quantisers' ranges before the fine-tune", int,
                                group="quantisation", bounds="[1, inf)")
    # -- input ----------------------------------------------------------------------------
    img_size: int | None = option(None, "input side (the networks' total stride is 32)", int, group="input",
                                  unset="the model's", bounds="[32, 4096]", multiple_of=32)
    in_chans: int | None = option(None, "input channels", int, group="input", unset="the images' (3 for RGB)",
                                  bounds="[1, 64]")
    workers: int | None = option(None, "data-loader worker processes per process", int, group="input",
                                 unset="the CPU cores available to each process, at most 8", bounds="[0, 1024]")
    # -- speed --------------------------------------------------------------------------
    device: str = option("auto", "cuda, cpu or auto (cuda when available)", str, group="speed")
    amp: str = option("auto", "mixed precision: auto (bf16 on GPU, none on CPU), bf16, fp16 "
                      "(with loss scaling) or none", str, ("auto", "bf16", "fp16", "none"), group="speed")
    channels_last: bool | None = option(None, "channels-last memory format", bool, group="speed",
                                        unset="on for GPU")
    compile: bool = option(False, "torch.compile the model", bool, group="speed")
    threads: int | None = option(None, "PyTorch CPU threads per process (1 stays fast when other work shares "
                                 "the cores)", int, group="speed",
                                 unset="PyTorch's, on CPU lowered so that threads + --workers do not exceed the cores",
                                 bounds="[1, 4096]")
    synthetic: bool = option(False, "random tensors on the device instead of a data folder "
                             "(with --benchmark-steps: throughput without data loading)", bool, group="speed")
    num_classes: int = option(1000, "classes of --synthetic data", int, group="speed", bounds="[1, 100000]")
    benchmark_steps: int = option(0, "measure training images/s over this many steps, then stop "
                                  "(no checkpoints)", int, group="speed", bounds="[0, inf)")
    # -- bookkeeping ----------------------------------------------------------------------
    ckpt_steps: int = option(0, "also write last.pth every this many steps (0: each epoch only)",
                             int, group="run", bounds="[0, inf)")
    log_interval: int = option(10, "steps between progress updates, TensorBoard points and "
                               "non-finite-loss checks", int, group="run", bounds="[1, inf)")
    tensorboard: bool = option(True, "write TensorBoard logs to the run folder", bool, group="run")

    def __post_init__(self):
        if isinstance(self.aa, str) and self.aa.lower() in AUTO_AUGMENT_OFF:
            object.__setattr__(self, "aa", None)  # what timm takes for no auto-augment
        _check_auto_augment(self.aa)
        check_field_values(self)  # a YAML file reaches here without argparse's checks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The digits demo (`efficientmod demo`, or `efficientmod train` without --data): 8x8 digits
# upscaled to 32x32, one channel. RandAugment, Mixup/CutMix and random erasing are made for
# natural 224^2 photos and only slow learning on 1,437 tiny digits; the demo replaces them
# with small random shifts (see data.DigitsDataset) and trains for a few epochs at a high lr.
# One CPU thread: on 2 idle cores two threads are ~1.5x faster, but on a shared machine
# their synchronisation makes training up to 10x slower, while one thread is unaffected.
DEMO_PRESET = dict(
    model="efficientmod_xxs", output="runs/demo", img_size=32, in_chans=1,
    epochs=8, cooldown_epochs=0, batch_size=64, lr=3e-3, warmup_epochs=1, min_lr=1e-5, weight_decay=0.05,
    mixup=0.0, cutmix=0.0, aa="none", reprob=0.0, drop_path=0.0, ema=False, workers=0, threads=1,
    log_interval=5,
)


# `efficientmod train --qat`: a few epochs at a small learning rate from a trained model, no
# warm-up, cool-down or EMA, none of the augmentations that would move the weights far from
# those the quantisers were calibrated for, float32 throughout (the fake quantisers emulate
# int8 on float32 values), no weight decay (it would shrink the quantisers' trainable ranges).
QAT_PRESET = dict(
    epochs=3, cooldown_epochs=0, lr=1e-5, min_lr=1e-6, warmup_epochs=0, weight_decay=0.0, mixup=0.0, cutmix=0.0,
    aa=None, reprob=0.0, drop_path=0.0, ema=False, amp="none",
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice (the safe loader keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                        key_node.start_mark)
            seen.add(key if isinstance(key, str) else None)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (safe tags only); a one-line ``ValueError`` naming the
    file and line for anything that is no readable YAML."""
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {error.start})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ValueError(f"{path}:{where} not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise ValueError(f"{path}: not a recipe: nested too deeply") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    values = _parse_yaml(path)
    values = {} if values is None else values  # an empty file
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of recipe keys to values, got a {type(values).__name__}")
    not_names = [key for key in values if not isinstance(key, str)]
    if not_names:
        raise ValueError(f"{path}: keys must be recipe names (strings), got {reprlib.repr(not_names[0])}")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {reprlib.repr(unknown)}; valid keys: {sorted(fields)}")
    typed = {key: _typed(path, key, value, fields[key].metadata["type"]) for key, value in values.items()}
    problem = next(filter(None, (value_problem(fields[key], value) for key, value in typed.items())), None)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return typed


def _typed(path: Path, key: str, value: Any, kind: type) -> Any:
    """``value`` as the field's type, as its flag would parse it: YAML reads ``4e-3`` (no
    dot) as a string, which must still be the float 0.004; ``2.5`` is no epoch count."""
    if value is None or isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (int, float) and (number or isinstance(value, str)):
        try:
            converted = kind(value)
        except (ValueError, OverflowError):
            pass
        else:
            if kind is float or converted == float(value):  # int(2.5) would silently truncate
                return converted
    hint = " (quote it)" if kind is str and number else ""
    raise ValueError(f"{path}: {key} must be of type {kind.__name__}{hint}, got {reprlib.repr(value)}")


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    from efficientmod.checkpoint import atomic_write

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def add_config_arguments(parser: argparse.ArgumentParser, preset: dict | None = None) -> None:
    """One flag per recipe field (default suppressed, so that only flags given on the
    command line override the YAML file and the preset); ``--help`` shows the defaults of
    ``preset`` where it sets them."""
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="YAML file of recipe keys (the field names below, e.g. base_lr: 4e-3)")
    config_flags.add_flags(parser, TrainConfig, defaults=preset, suppress=True, check_choices=False)


def given_values(args: argparse.Namespace) -> dict:
    """The recipe values a user gave: the ``--config`` YAML file's, overridden by the flags
    given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def train_preset(given: dict) -> dict:
    """The preset ``efficientmod train`` starts from for the values ``given``: the fine-tune
    recipe of a trained model for ``--qat``, the digits demo without ``--data`` (and without
    ``--synthetic``), else none."""
    if given.get("qat"):
        return QAT_PRESET
    if given.get("data") is None and not given.get("synthetic"):
        return DEMO_PRESET
    return {}


def config_of(given: dict, preset: dict | None = None) -> TrainConfig:
    """The recipe: defaults < ``preset`` < the values ``given`` (:func:`given_values`)."""
    return TrainConfig(**{**(preset or {}), **given})


def resolve_config(args: argparse.Namespace, preset: dict | None = None) -> TrainConfig:
    """Defaults < ``preset`` < ``--config`` YAML < flags given on the command line."""
    return config_of(given_values(args), preset)
