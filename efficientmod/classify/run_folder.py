"""A classification run's folder: what a run writes there, what is refused before anything
is written (another process on it, an earlier or another run, files no run wrote, a resume
with another model or recipe), the first write, the checkpoints and the best model, the
epoch log.

::

    run_dir/  run.json  .lock  config.yaml  metrics.csv  last.pth  best.pth  model/  tensorboard/
              (a --qat run: model_int8.xml / .bin instead of model/)

The folder is one run's: a process holds ``.lock`` (``fcntl.flock``, released by the system
when it dies) for the run's life, and ``run.json`` (the manifest) lists what the run writes,
its id, and the epoch whose weights ``best.pth`` and ``model/`` hold. ``last.pth`` records
which epoch's best is expected, so a resume rewrites a ``best.pth`` or ``model/`` a kill left
out. ``--overwrite`` deletes exactly the manifest's entries; a file that no run wrote is never
deleted nor written over. A write error is one :class:`RunFolderError` line saying that the
previous checkpoint is intact.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import torch.nn as nn

from efficientmod.checkpoint import WriteError, atomic_write, atomic_write_folder
from efficientmod.classify.config import TrainConfig, save_yaml
from efficientmod.runtime import LAST_CHECKPOINT, load_train_checkpoint, save_train_checkpoint

__all__ = ["RunFolder", "RunFolderError", "RunLog", "RUN_FILES", "RESUME_MAY_CHANGE", "MANIFEST", "LOCK"]

# Flags that may differ between a run and its resume; any other recipe difference is refused
# (a resumed schedule, optimizer and data order are those of the checkpoint's recipe).
RESUME_MAY_CHANGE = frozenset({"output", "resume", "overwrite", "data", "pretrained", "workers", "log_interval",
                               "ckpt_steps", "tensorboard"})

# What a run of the float Trainer writes into its folder (model.onnx: the demo's export).
RUN_FILES = ("last.pth", "best.pth", "model", "metrics.csv", "config.yaml", "tensorboard", "model.onnx")
MANIFEST = "run.json"
LOCK = ".lock"
MODEL_FOLDER_FILES = frozenset({"model.safetensors", "config.json", "README.md"})  # save_pretrained's


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
    """The folder ``path`` of one run (written by rank 0 only: the callers check);
    ``run_files``: the names the run writes there (see :data:`RUN_FILES`)."""

    def __init__(self, path: Path, run_files: tuple[str, ...] = RUN_FILES):
        self.path = Path(path)
        self.run_files = tuple(run_files)
        self.run_id: str | None = None
        self.manifest: dict = {}
        self._lock = None
        self._created: list[Path] = []  # what lock() created, removed again when no run follows

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    # -- the lock ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder's lock until :meth:`unlock` or the process ends; a folder in use
        by another process is a :class:`RunFolderError` naming it."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--output {self.path} is a file, not a folder")
        lock_path = self.path / LOCK
        # what is created here, in the order unlock() removes it
        self._created = [p for p in (lock_path, self.path, *self.path.parents) if not p.exists()]
        with self.writing(lock_path):
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            self._created = []
            raise RunFolderError(f"{self.path} is in use by another run ({holder}); wait for it to end "
                                 "or choose another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        """Release the lock; a folder created by :meth:`lock` for a run refused before its
        first write is removed again."""
        if self._lock is None:
            return
        for created in self._created:
            with contextlib.suppress(OSError):
                created.rmdir() if created.is_dir() else created.unlink()
        self._lock.close()
        self._lock = None

    # -- before the first write ---------------------------------------------------------------
    def check(self, cfg: TrainConfig, class_names: list[str], world: int,
              say: Callable[[str], None]) -> tuple[dict, Path] | None:
        """Everything about the run folder and the checkpoint to resume that can be refused,
        checked before anything is written; returns (checkpoint, path) to resume, or None."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise RunFolderError(f"--output {run_dir} is a file, not a folder")
        self.manifest = self.read_manifest()
        foreign = self.foreign_entries()
        if foreign:
            raise RunFolderError(f"{run_dir} holds {', '.join(foreign)}, which no run wrote; move them away or "
                                 "choose another --output (nothing was changed)")
        earlier = [name for name in ("last.pth", "best.pth", "model") if (run_dir / name).exists()]
        self.run_id = uuid.uuid4().hex
        if not cfg.resume:
            if earlier and not cfg.overwrite:
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
        if earlier and state.get("run_id") != self.manifest.get("run_id") and not cfg.overwrite:
            raise RunFolderError(f"--resume {path} continues another run than the one {run_dir} holds "
                                 f"({', '.join(earlier)}); add --overwrite to replace that run, or choose "
                                 "another --output")
        self.run_id = state.get("run_id") or self.run_id
        return state, path

    def read_manifest(self) -> dict:
        """The folder's ``run.json`` (``{}`` without one)."""
        path = self.path / MANIFEST
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise RunFolderError(f"{path} is not a run manifest of this library; move it away or choose "
                                 "another --output")
        return manifest

    def foreign_entries(self) -> list[str]:
        """The entries of the folder this run would write to (or ``--overwrite`` delete) that
        no run wrote: not in the manifest, or in ``model/`` not save_pretrained's."""
        ours = set(self.manifest.get("files", []))
        foreign = [name for name in self.run_files if name not in ours and os.path.lexists(self.path / name)]
        model = self.path / "model"
        if "model" in ours and model.is_dir():
            foreign += [f"model/{entry.name}" for entry in sorted(model.iterdir())
                        if entry.name not in MODEL_FOLDER_FILES and not entry.name.endswith(".tmp")]
        return foreign

    def prepare(self, cfg: TrainConfig, epochs_done: int) -> None:
        """Delete an earlier run (--overwrite: the manifest's entries) and what a killed write
        left, keep the metrics of the ``epochs_done`` epochs the checkpoint holds, write the
        manifest and config.yaml."""
        with self.writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                for name in self.manifest.get("files", []):
                    target = self.path / name
                    if name not in (MANIFEST, LOCK) and os.path.lexists(target):
                        shutil.rmtree(target) if target.is_dir() else target.unlink()
                self.manifest = {}
            for folder in (self.path, self.path / "model"):
                for stale in folder.glob(".*.tmp") if folder.is_dir() else []:  # atomic_write's, from a kill
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            RunLog.keep_epochs(self.path / "metrics.csv", epochs_done)
            files = set(self.manifest.get("files", [])) | {*self.run_files, MANIFEST, LOCK}
            self.manifest = dict(self.manifest, run_id=self.run_id, files=sorted(files))
            self.manifest.setdefault("best_epochs", {})
            self._write_manifest()
            save_yaml(cfg, self.path / "config.yaml")
        self._created = []  # a run is in the folder now

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1) + "\n"
        atomic_write(self.path / MANIFEST, lambda tmp: Path(tmp).write_text(text))

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, path: Path):
        """Errors of writes (disk full, read-only, a file where a folder should be) as one
        :class:`RunFolderError` line that says the previous checkpoint is intact."""
        try:
            yield
        except (OSError, WriteError) as error:
            last = self.last_checkpoint
            kept = f"; the previous checkpoint {last} is intact" if last.is_file() else ""
            if isinstance(error, WriteError):
                raise RunFolderError(f"{error}{kept}") from None
            raise RunFolderError(f"cannot write {error.filename or path}: {error.strerror or error}{kept}") from None

    def save_checkpoints(self, state: Mapping, *names: str) -> None:
        """``state`` as the training checkpoint ``<name>`` for each name, atomically."""
        for name in names:
            with self.writing(self.path / name):
                save_train_checkpoint(self.path / name, state, task="classification")
            if name == "best.pth":
                self.record_best("best.pth", state["epoch"])

    def save_model(self, model: nn.Module, class_names: list[str], preprocessing: dict | None) -> None:
        """``model/``: ``model`` as a ``save_pretrained`` folder with the run's classes and
        preprocessing, put in place as a whole."""
        with self.writing(self.path / "model"):
            atomic_write_folder(self.path / "model", lambda tmp: model.save_pretrained(
                tmp, class_names=class_names, preprocessing=preprocessing))

    def record_best(self, name: str, epoch: int) -> None:
        """Record in the manifest that ``name`` (best.pth, or the run's best model: ``model``,
        ``model_int8.xml``) now holds the best weights of epoch ``epoch``."""
        self.manifest["best_epochs"][name] = epoch
        with self.writing(self.path / MANIFEST):
            self._write_manifest()

    def stale_best(self, best_epoch: int, names: tuple[str, ...]) -> list[str]:
        """Which of ``names`` (written from the best epoch's weights) do not hold the weights
        of ``best_epoch`` (missing, or from an earlier epoch: a kill came before their write)."""
        recorded = self.manifest.get("best_epochs", {})
        return [name for name in names if recorded.get(name) != best_epoch or not (self.path / name).exists()]

    def repair_best_checkpoint(self, epoch: int) -> None:
        """``best.pth`` as a copy of ``last.pth``, which holds the state of ``epoch``, the best."""
        with self.writing(self.path / "best.pth"):
            atomic_write(self.path / "best.pth", lambda tmp: shutil.copyfile(self.last_checkpoint, tmp))
        self.record_best("best.pth", epoch)


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
