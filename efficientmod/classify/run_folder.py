"""A classification run's folder: what a run writes there, what is refused before anything
is written (an earlier run, a resume with another model or recipe), the first write, the
checkpoints and the best model, and the epoch log.

::

    run_dir/  config.yaml  metrics.csv  last.pth  best.pth  model/  tensorboard/
              (a --qat run: model_int8.xml / .bin instead of model/)

An earlier run is never overwritten unless asked (``--overwrite``, which deletes exactly
:data:`RUN_FILES`); an OSError of any write is one :class:`RunFolderError` line saying that
the previous checkpoint is intact.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch.nn as nn

from efficientmod.checkpoint import atomic_write
from efficientmod.classify.config import TrainConfig, save_yaml
from efficientmod.runtime import LAST_CHECKPOINT, load_train_checkpoint, save_train_checkpoint

__all__ = ["RunFolder", "RunFolderError", "RunLog", "RUN_FILES", "RESUME_MAY_CHANGE"]

# Flags that may differ between a run and its resume; any other recipe difference is refused
# (a resumed schedule, optimizer and data order are those of the checkpoint's recipe).
RESUME_MAY_CHANGE = frozenset({"output", "resume", "overwrite", "data", "pretrained", "workers", "log_interval",
                               "ckpt_steps", "tensorboard"})

# What a run writes into its folder; --overwrite deletes exactly these.
RUN_FILES = ("last.pth", "best.pth", "model", "metrics.csv", "config.yaml", "tensorboard", "model.onnx",
             "model_int8.xml", "model_int8.bin")


class RunFolderError(ValueError):
    """The run folder cannot be used (an earlier run in it, not writable, disk full); the
    message says what to do and that the previous checkpoint is intact."""


class RunLog:
    """``metrics.csv`` (one row per epoch, appended across resumes) and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.csv_path = run_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed; no TensorBoard logs (pip install tensorboard)",
                              stacklevel=2)
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    @staticmethod
    def keep_epochs(csv_path: Path, epochs: int) -> None:
        """Drop the rows after epoch ``epochs`` (those of a run killed between writing its
        row and its checkpoint, which the resumed run writes again)."""
        if not csv_path.exists():
            return
        lines = csv_path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= epochs]
        if len(kept) < len(lines):
            atomic_write(csv_path, lambda tmp: Path(tmp).write_text("".join(kept)))

    def scalars(self, step: int, **values: float) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def epoch(self, row: dict) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.scalars(row["step"], **{f"epoch/{k}": v for k, v in row.items()
                                     if k not in ("epoch", "step") and isinstance(v, (int, float))})
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunFolder:
    """The folder ``path`` of one run (written by rank 0 only: the callers check)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def check(self, cfg: TrainConfig, class_names: list[str], world: int,
              say: Callable[[str], None]) -> tuple[dict, Path] | None:
        """Everything about the run folder and the checkpoint to resume that can be refused,
        checked before anything is written; returns (checkpoint, path) to resume, or None."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"--output {run_dir} is a file, not a folder")
        earlier = [name for name in ("last.pth", "best.pth", "model") if (run_dir / name).exists()]
        if cfg.overwrite:
            return None
        if not cfg.resume:
            if earlier:
                raise RunFolderError(f"{run_dir} already holds a run ({', '.join(earlier)}); continue it with "
                                     "--resume auto, start it afresh with --overwrite, or choose another --output")
            return None
        path = self.last_checkpoint if cfg.resume == "auto" else Path(cfg.resume)
        if not path.exists():
            if cfg.resume != "auto":
                raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
            if earlier:
                raise RunFolderError(f"--resume auto: {run_dir} has no last.pth to continue but holds "
                                     f"{', '.join(earlier)} of an earlier run; start afresh with --overwrite "
                                     "(deletes them) or choose another --output")
            say(f"no checkpoint in {run_dir}; starting a new run")
            return None
        try:
            state = load_train_checkpoint(path, task="classification")
        except ValueError as error:
            raise ValueError(f"{error} (use --pretrained to fine-tune from its weights)") from None
        check_same_recipe(state, path, cfg, class_names, world)
        return state, path

    def prepare(self, cfg: TrainConfig, epochs_done: int) -> None:
        """Create the folder, delete an earlier run (--overwrite) and what a killed write left,
        keep the metrics of the ``epochs_done`` epochs the checkpoint holds, write config.yaml."""
        with self.writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                for name in RUN_FILES:
                    target = self.path / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            for folder in (self.path, self.path / "model"):
                for stale in folder.glob(".*.tmp") if folder.is_dir() else []:  # atomic_write's, from a kill
                    stale.unlink()
            RunLog.keep_epochs(self.path / "metrics.csv", epochs_done)
            save_yaml(cfg, self.path / "config.yaml")

    @contextlib.contextmanager
    def writing(self, path: Path):
        """OSErrors of writes (disk full, read-only, a file where a folder should be) as one
        :class:`RunFolderError` line that says the previous checkpoint is intact."""
        try:
            yield
        except OSError as error:
            last = self.last_checkpoint
            kept = f"; the previous checkpoint {last} is intact" if last.is_file() else ""
            raise RunFolderError(f"cannot write {error.filename or path}: {error.strerror or error}{kept}") from None

    def save_checkpoints(self, state: Mapping, *names: str) -> None:
        """``state`` as the training checkpoint ``<name>`` for each name, atomically."""
        for name in names:
            with self.writing(self.path / name):
                save_train_checkpoint(self.path / name, state, task="classification")

    def save_model(self, model: nn.Module, class_names: list[str], preprocessing: dict | None) -> None:
        """``model/``: ``model`` as a ``save_pretrained`` folder with the run's classes and preprocessing."""
        with self.writing(self.path / "model"):
            model.save_pretrained(self.path / "model", class_names=class_names, preprocessing=preprocessing)


def check_same_recipe(state: dict, path: Path, cfg: TrainConfig, class_names: list[str], world: int) -> None:
    """Refuse a resume whose model, classes or recipe differ from the checkpoint's (only
    the flags of :data:`RESUME_MAY_CHANGE` and of the speed group may change)."""
    saved = state["config"]
    if saved["model"] != cfg.model:
        raise ValueError(f"{path} holds a {saved['model']}, not a {cfg.model}: resume with "
                         f"--model {saved['model']}, or start a new run in another --output")
    if list(state["class_names"]) != class_names:
        raise ValueError(f"{path} was trained on other classes than the data now given")
    speed = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == "speed"}
    changed = [f"--{name.replace('_', '-')} {saved[name]!r} -> {value!r}"
               for name, value in cfg.to_dict().items()
               if name in saved and name not in RESUME_MAY_CHANGE | speed and saved[name] != value]
    if changed:
        raise ValueError(f"--resume: the recipe differs from the checkpoint's ({'; '.join(changed)}); a resumed "
                         "run keeps its recipe: drop these flags, or start a new run in another --output")
    saved_batch = saved["batch_size"] * state["world_size"]
    if state["epoch_step"] and saved_batch != cfg.batch_size * world:
        # the sampler skips the epoch's first epoch_step global batches: only exact at the same size
        raise ValueError(f"{path} was written mid-epoch at a global batch of {saved_batch} "
                         f"({saved['batch_size']} x {state['world_size']} process(es)); resume it with "
                         f"the same global batch (now {cfg.batch_size} x {world}), or from a "
                         "checkpoint written at the end of an epoch")
