"""The training engine: ties timm's optimizer, scheduler, Mixup/CutMix, losses and EMA to
the library's models and data, on one process or many (``torchrun``), without losing work.

One step (:meth:`Trainer.train_step`)::

    x, y  ← batch (bad files dropped)  → Mixup/CutMix (timm)
    loss  ← L(model(x), y)   L: soft-target / label-smoothing CE, + distillation from a teacher
    θ     ← AdamW(θ, ∇loss)  every --grad-accum-steps passes (grad-clipped, loss-scaled for fp16;
                               DDP all-reduces ∇ once per update)
    lr    ← warm-up, cosine, cool-down at min lr (per update);   θ_ema ← EMA(θ_ema, θ)

The defaults are the official EfficientMod recipe (timm 0.6 / DeiT); docs/training.md
compares them item by item. Nothing lost: ``last.pth`` is written atomically each epoch
and every ``ckpt_steps`` updates; ``best.pth`` and ``model/`` when the better of the raw and
the EMA weights beats every earlier epoch's top-1 (which one is recorded). Each checkpoint
holds the model, EMA, optimizer, scheduler, loss scaler, counters, the epoch's loss sums,
every rank's RNG states, the recipe, the class names and the preprocessing, as tensors and
plain containers only (read back with ``torch.load(weights_only=True)``). With the
sample-level seeding of :mod:`efficientmod.classify.data`, a resumed run repeats the uninterrupted
one step for step, ``metrics.csv`` included. The run folder
(:mod:`efficientmod.classify.run_folder`) is checked before anything is written; the losses
are :mod:`efficientmod.classify.losses`'; backward and optimizer step :mod:`efficientmod.runtime`'s.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from efficientmod.checkpoint import load_checkpoint
from efficientmod.classify.config import TrainConfig
from efficientmod.classify.data import (
    ShardSampler,
    TrainSampler,
    build_datasets,
    collate_skipping_bad,
)
from efficientmod.classify.evaluate import evaluate
from efficientmod.classify.losses import build_criterion
from efficientmod.classify.run_folder import RUN_FILES, RunFolder, RunLog
from efficientmod.models import create_model, model_info
from efficientmod.runtime import (
    Runtime,
    TrainingDiverged,
    amp_dtype,
    apply_gradients,
    autocast,
    backward,
    cpus_per_process,
    grad_scaler,
    init_runtime,
    on_every_rank,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = ["Trainer", "train"]


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`, then :meth:`fit`.

    A subclass changes what is trained through the hooks :meth:`configure` (the recipe it
    runs), :meth:`build_model`, :meth:`state_dict`, :meth:`save_best_model` and
    :meth:`report`, and the attributes :attr:`best_model_name` and :attr:`min_useful_lr`
    (:class:`efficientmod.classify.qat.QATTrainer` is one)."""

    best_model_name = "model/"  # what save_best_model writes, in the final line
    run_files = RUN_FILES  # what a run writes into its folder (the manifest lists them)
    min_useful_lr = 1e-4  # a lower learning rate is warned about: a short run may barely move

    def __init__(self, cfg: TrainConfig, runtime: Runtime | None = None):
        cfg = self.configure(cfg)
        if cfg.model is None:
            raise ValueError("--model is required (`efficientmod models` lists the names)")
        if cfg.overwrite and cfg.resume == "auto":
            raise ValueError("--overwrite starts afresh and --resume auto continues: give one of them "
                             "(--overwrite --resume PATH replaces the folder's run by the continuation of PATH)")
        self.cfg = cfg
        self.runtime = runtime or init_runtime(cfg.device)
        self._set_threads()
        info = model_info(cfg.model)
        self.img_size = cfg.img_size or info.input_size[-1]
        self.run_dir = Path(cfg.output or f"runs/{cfg.model}")
        self.run_folder = RunFolder(self.run_dir, self.run_files)
        self.dtype = amp_dtype(cfg.amp, self.runtime.device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.runtime.device.type == "cuda"
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self._build_data()
        self.updates_per_epoch = max(1, self.steps_per_epoch // cfg.grad_accum_steps)
        self.total_epochs = cfg.epochs + cfg.cooldown_epochs
        if not cfg.benchmark_steps and self.runtime.main:
            self.run_folder.lock()  # held until fit() ends
        try:
            self._build_run(cfg)
        except BaseException:
            self.run_folder.unlock()
            raise

    def _build_run(self, cfg: TrainConfig) -> None:
        """Everything after the data: the run folder's checks, the model, optimizer, EMA,
        Mixup, losses, the resumed state, the first write."""
        resume = None if cfg.benchmark_steps else self.run_folder.check(  # reads only
            cfg, self.class_names, self.runtime.world, self.say)

        self.model = self.build_model(None if resume is None else resume[0])
        self.optimizer, self.scheduler = self._build_optimizer()
        self.scaler = grad_scaler(self.runtime.device, self.dtype)
        self.ema = self._build_ema()
        self.mixup = self._build_mixup()
        self.criterion = build_criterion(cfg, self.mixup is not None, len(self.class_names), self.in_chans,
                                         self.runtime.device, self.channels_last)

        self.epoch = self.epoch_step = self.global_step = 0
        self.epoch_totals = torch.zeros(3, dtype=torch.float64)  # this epoch's loss sum, steps, bad files
        self.best_top1, self.best_source, self.best_epoch = -1.0, None, 0
        self.bad_seen: set[str] = set()
        seed_everything(cfg.seed + self.runtime.rank)  # each rank its own drop-path and Mixup draws
        if resume is not None:
            self._load_state(*resume)
        if not cfg.benchmark_steps and self.runtime.main:
            self.run_folder.prepare(cfg, self.epoch)  # the first write, after every check
        self.train_model = self._wrap_model()
        self.log = RunLog(self.run_dir, cfg.tensorboard) if self.runtime.main and not cfg.benchmark_steps else None

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        """The recipe this trainer runs: ``cfg``, refused when it asks for a quantisation-aware
        fine-tune (:class:`efficientmod.classify.qat.QATTrainer` runs those)."""
        if cfg.qat:
            raise ValueError("--qat runs in efficientmod.classify.qat.QATTrainer (`efficientmod train --qat`)")
        if cfg.init_from:
            raise ValueError("--init-from gives the float model of --qat; to fine-tune from weights use --pretrained")
        return cfg

    # -- building ----------------------------------------------------------------------------
    def _set_threads(self) -> None:
        """Loader workers and PyTorch threads: the given ones, else the process's share of the cores."""
        cfg = self.cfg
        cores = cpus_per_process(self.runtime.world)
        self.workers = cfg.workers if cfg.workers is not None else min(8, cores)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif self.runtime.device.type == "cpu":  # PyTorch's default (all cores), less the loader workers' share
            torch.set_num_threads(min(torch.get_num_threads(), max(1, cores - self.workers)))
        self.threads = torch.get_num_threads()

    def _build_data(self) -> None:
        """Classes, channels, preprocessing and loaders of the data (none for --synthetic)."""
        cfg = self.cfg
        if cfg.synthetic:
            if not cfg.benchmark_steps:
                raise ValueError("--synthetic data only measures speed: add --benchmark-steps N")
            self.class_names = [str(i) for i in range(cfg.num_classes)]
            self.in_chans = cfg.in_chans or 3
            self.steps_per_epoch = cfg.benchmark_steps
            self.preprocessing = None
            return
        self.data = build_datasets(cfg, self.img_size, model_info(cfg.model))
        self.class_names, self.in_chans = self.data.class_names, cfg.in_chans or self.data.in_chans
        self.preprocessing = self.data.preprocessing
        self._build_loaders()

    def _build_loaders(self) -> None:
        cfg, runtime = self.cfg, self.runtime
        self.train_sampler = TrainSampler(len(self.data.train), runtime.rank, runtime.world, cfg.seed)
        # whole optimizer steps only: a last incomplete accumulation is dropped (as the official code)
        accum = cfg.grad_accum_steps
        self.steps_per_epoch = self.train_sampler.per_rank() // cfg.batch_size // accum * accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.data.train)} training images cannot fill one optimizer step of "
                             f"{cfg.batch_size} x {accum} (--grad-accum-steps) per process on {runtime.world} "
                             "process(es); lower --batch-size or --grad-accum-steps")
        common = dict(num_workers=self.workers, collate_fn=collate_skipping_bad,
                      pin_memory=runtime.device.type == "cuda", persistent_workers=self.workers > 0,
                      generator=torch.Generator())  # never draws from the global torch RNG
        self.train_loader = DataLoader(self.data.train, batch_size=cfg.batch_size, sampler=self.train_sampler,
                                       drop_last=True, **common)
        self.val_loader = DataLoader(self.data.val, batch_size=cfg.batch_size,
                                     sampler=ShardSampler(len(self.data.val), runtime.rank, runtime.world), **common)

    def build_model(self, resume_state: dict | None) -> nn.Module:
        """The network to train, on the device (``resume_state``: the checkpoint a resume
        continues, whose weights are loaded later; None for a new run)."""
        cfg = self.cfg
        info = model_info(cfg.model)
        drop_path = cfg.drop_path if cfg.drop_path is not None else info.drop_path_rate
        kwargs = dict(num_classes=len(self.class_names), in_chans=self.in_chans)
        if drop_path:
            kwargs["drop_path_rate"] = drop_path
        if cfg.drop:
            kwargs["drop_rate"] = cfg.drop
        model = create_model(cfg.model, **kwargs)
        if cfg.pretrained:  # a resumed run then overwrites these weights with its own
            load_checkpoint(model, cfg.pretrained, ignore_head=True)
        model.to(self.runtime.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _build_optimizer(self):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        self.global_batch = cfg.batch_size * self.runtime.world * cfg.grad_accum_steps
        self.lr = cfg.lr if cfg.lr is not None else cfg.base_lr * self.global_batch / cfg.base_batch
        extra = dict(fused=True) if self.runtime.device.type == "cuda" and cfg.opt in ("adamw", "adam") else {}
        optimizer = create_optimizer_v2(self.model, cfg.opt, lr=self.lr, weight_decay=cfg.weight_decay,
                                        layer_decay=cfg.layer_decay, eps=cfg.opt_eps, **extra)
        scheduler, _ = create_scheduler_v2(
            optimizer, "cosine", num_epochs=cfg.epochs, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr,
            warmup_epochs=cfg.warmup_epochs, cooldown_epochs=cfg.cooldown_epochs, step_on_epochs=False,
            updates_per_epoch=self.updates_per_epoch,
        )
        return optimizer, scheduler

    def _build_ema(self):
        from timm.utils import ModelEmaV3

        cfg = self.cfg
        if not cfg.ema:
            return None
        self.ema_warmup = cfg.ema_warmup
        if self.ema_warmup is None:  # a fixed decay d needs ~5 / (1 - d) steps to forget the initial weights
            self.ema_warmup = self.updates_per_epoch * self.total_epochs < 5 / (1 - cfg.ema_decay)
        return ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=self.ema_warmup)

    def _build_mixup(self):
        from timm.data import Mixup

        cfg = self.cfg
        if not (cfg.mixup > 0 or cfg.cutmix > 0) or cfg.mixup_prob <= 0:
            return None
        return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                     switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                     num_classes=len(self.class_names))

    def _wrap_model(self) -> nn.Module:
        model = self.model
        if self.runtime.distributed:
            # depth-wise kernels of shape (C, 1, k, k): strides of the size-1 dim differ, layout is the same
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            model = DistributedDataParallel(model, device_ids=[self.runtime.device.index]
                                            if self.runtime.device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)
        if self.cfg.compile:
            if self.runtime.device.type == "cuda" and importlib.util.find_spec("triton") is None:
                raise ValueError("--compile on CUDA needs triton, which is not installed (or drop --compile)")
            model = torch.compile(model, dynamic=False)  # an odd-sized batch recompiles statically, not dynamic
        return model

    def _load_state(self, state: dict, path: Path) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.epoch_step, self.global_step = state["epoch"], state["epoch_step"], state["global_step"]
        self.best_top1, self.best_source = state["best_top1"], state["best_source"]
        self.best_epoch = state["best_epoch"]
        if len(state["rng"]) == self.runtime.world:
            set_rng_state(state["rng"][self.runtime.rank])
            if state.get("epoch_totals"):  # the loss sums of the epoch's steps before a mid-epoch checkpoint
                self.epoch_totals = state["epoch_totals"][self.runtime.rank].clone()
        else:
            self.say(f"the checkpoint comes from {len(state['rng'])} process(es), this run has {self.runtime.world}: "
                     "random streams are re-seeded, so the run continues but does not repeat exactly")
        self.scheduler.step_update(num_updates=self.global_step)
        self.say(f"resumed {path}: epoch {self.epoch + 1}, step {self.epoch_step}/{self.steps_per_epoch}")

    def state_dict(self) -> dict:
        """Everything a resume needs; collective in a distributed run (gathers RNG states)."""
        rng, totals = [rng_state()], [self.epoch_totals.cpu()]
        if self.runtime.distributed:
            rng, totals = [None] * self.runtime.world, [None] * self.runtime.world
            dist.all_gather_object(rng, rng_state())
            dist.all_gather_object(totals, self.epoch_totals.cpu())
        return dict(
            model=self.model.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, epoch_step=self.epoch_step, global_step=self.global_step,
            epoch_totals=totals, best_top1=self.best_top1, best_source=self.best_source, best_epoch=self.best_epoch,
            rng=rng, run_id=self.run_folder.run_id,
            config=self.cfg.to_dict(), class_names=list(self.class_names), world_size=self.runtime.world,
            preprocessing=None if self.preprocessing is None else self.preprocessing.to_dict(),
        )

    def save(self, *names: str) -> None:
        """Write the state to ``run_dir/<name>`` for each name, atomically, on rank 0 only —
        after checking that the weights are finite, so a good checkpoint is never replaced
        by a diverged one."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingDiverged(self._diverged_message("the weights hold NaN/inf"))
        state = self.state_dict()
        if self.runtime.main:
            self.run_folder.save_checkpoints(state, *names)

    def save_best_model(self, source: str) -> None:
        """``model/`` (save_pretrained, with the run's preprocessing) from the best weights:
        the raw model's or the EMA's (``source``), whichever scored the best top-1; rank 0
        only."""
        if self.runtime.main:
            self.run_folder.save_model(self.ema.module if source == "ema" else self.model, self.class_names,
                                       self.preprocessing)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, targets: torch.Tensor, update: bool = True) -> torch.Tensor | None:
        """One forward/backward pass, adding 1/N of its gradient (N = ``--grad-accum-steps``);
        with ``update`` also the optimizer and EMA step. None when the batch had no usable image."""
        images = images.to(self.runtime.device, non_blocking=True)
        targets = targets.to(self.runtime.device, non_blocking=True)
        if self.mixup is not None and len(targets) % 2:
            images, targets = images[:-1], targets[:-1]  # Mixup pairs images; bad files made it odd
        empty = not len(targets)
        if empty:
            if not self.runtime.distributed and (not update or self.cfg.grad_accum_steps == 1):
                return None
            # keep the ranks' gradient all-reduces matched: a zero-weighted dummy step
            images = torch.zeros(1, self.in_chans, self.img_size, self.img_size, device=self.runtime.device)
        elif self.mixup is not None:
            images, targets = self.mixup(images, targets)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        no_sync = self.train_model.no_sync if self.runtime.distributed and not update else contextlib.nullcontext
        with no_sync():  # DDP all-reduces the gradients of the last pass of an accumulation only
            with autocast(self.runtime.device, self.dtype):
                logits = self.train_model(images)
                loss = logits.float().sum() * 0 if empty else self.criterion(images, logits, targets)
            backward(loss / self.cfg.grad_accum_steps, self.scaler)
        if update:
            apply_gradients(self.optimizer, self.scaler, self.model.parameters(), self.cfg.clip_grad)
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step + 1)
        return None if empty else loss.detach()

    def train_one_epoch(self, epoch: int) -> dict:
        """The epoch's remaining steps; a mid-epoch resume carries the loss sums of the steps
        before it (``epoch_totals``), so the epoch's mean is that of an uninterrupted run."""
        cfg, runtime = self.cfg, self.runtime
        self.model.train()
        self.train_sampler.set_epoch(epoch, skip=self.epoch_step * cfg.batch_size)
        totals = self.epoch_totals = self.epoch_totals.to(runtime.device)  # loss sum, steps, bad files
        nonfinite = torch.zeros((), dtype=torch.bool, device=runtime.device)
        images_seen, started = 0, time.perf_counter()
        with tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {epoch + 1}/{self.total_epochs}",
                  disable=not runtime.main, dynamic_ncols=True, file=sys.stderr) as bar:
            for images, targets, bad in self.train_loader:
                if self.epoch_step == self.steps_per_epoch:
                    break  # the batches of an incomplete last accumulation
                self._note_bad(bad)
                totals[2] += len(bad)
                update = (self.epoch_step + 1) % cfg.grad_accum_steps == 0
                loss = self.train_step(images, targets, update)
                self.epoch_step += 1
                images_seen += len(targets) * runtime.world
                if loss is not None:
                    totals[0] += loss
                    totals[1] += 1
                    nonfinite |= ~torch.isfinite(loss)
                checkpoint_due = False
                if update:
                    self.global_step += 1
                    self.scheduler.step_update(num_updates=self.global_step)
                    checkpoint_due = cfg.ckpt_steps and self.global_step % cfg.ckpt_steps == 0
                if self.epoch_step % cfg.log_interval == 0 or checkpoint_due or self.epoch_step == self.steps_per_epoch:
                    self._check_finite(nonfinite)
                    rate = images_seen / (time.perf_counter() - started)
                    mean_loss = (totals[0] / totals[1].clamp(min=1)).item()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self.current_lr():.2e}", img_s=f"{rate:.0f}")
                    if self.log is not None:
                        self.log.scalars(self.global_step, **{"train/loss": mean_loss, "train/lr": self.current_lr(),
                                                              "train/img_per_s": rate})
                if checkpoint_due:
                    self.save("last.pth")
                bar.update(1)
        if runtime.distributed:
            totals = totals.clone()
            dist.all_reduce(totals)
        elapsed = time.perf_counter() - started
        self.epoch_totals = torch.zeros(3, dtype=torch.float64)
        return dict(loss=(totals[0] / totals[1].clamp(min=1)).item(), bad_files=int(totals[2].item()),
                    img_per_s=images_seen / elapsed, time=elapsed)

    def current_lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if not on_every_rank(~nonfinite, self.runtime):  # every rank stops, none waits forever
            raise TrainingDiverged(self._diverged_message("the training loss became NaN/inf"))

    def _diverged_message(self, what: str) -> str:
        last = self.run_folder.last_checkpoint
        kept = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"
        return (f"{what} at epoch {self.epoch + 1}, step {self.epoch_step} (global step {self.global_step}); "
                f"stopped. {kept}. Lower the learning rate (--lr/--base-lr), set --clip-grad, or use "
                f"--amp bf16/none instead of fp16.")

    def _note_bad(self, bad: list) -> None:
        for path, reason in bad:
            if path not in self.bad_seen:
                self.bad_seen.add(path)
                tqdm.write(f"warning: skipping unreadable file {path} ({reason})", file=sys.stderr)

    def evaluate_model(self, model: nn.Module) -> dict:
        """Loss, top-1 and top-5 of ``model`` on the validation images (all ranks' together)."""
        return evaluate(model, self.val_loader, self.runtime.device, self.dtype, self.channels_last,
                        progress=self.runtime.main)

    def validate(self) -> dict:
        result = self.evaluate_model(self.model)
        if self.ema is not None:
            result["ema_top1"] = self.evaluate_model(self.ema.module)["top1"]
        return result

    def fit(self) -> dict:
        """Train from the current epoch/step to ``epochs + cooldown_epochs``; returns the final metrics."""
        if self.cfg.benchmark_steps:
            from efficientmod.classify.speed import training_speed

            return training_speed(self, self.cfg.benchmark_steps)
        self._start_summary()
        started = time.perf_counter()
        val: dict = {}
        try:
            self._repair_best()
            for epoch in range(self.epoch, self.total_epochs):
                self.epoch = epoch
                train = self.train_one_epoch(epoch)
                val = self.validate()
                self.epoch, self.epoch_step = epoch + 1, 0
                # the better of the raw and the EMA weights (the official code kept the EMA's only)
                score, source = max((val["top1"], "model"), (val.get("ema_top1", -1.0), "ema"))
                improved = score > self.best_top1
                if improved:
                    self.best_top1, self.best_source, self.best_epoch = score, source, self.epoch
                self._epoch_summary(epoch, train, val, improved)  # before the save: a kill in between
                # last.pth first: it records the best epoch, whose best.pth and model a resume rewrites if missing
                self.save("last.pth", *(["best.pth"] if improved else []))  # is undone by the resume
                if improved:
                    self._save_best_model()
        finally:
            self.close()
        elapsed = time.perf_counter() - started
        if self.runtime.main and val:
            saved = [name for name in ("best.pth", self.best_model_name) if (self.run_dir / name).exists()]
            tqdm.write(f"done: {self.epoch} epochs, val top-1 {val['top1']:.2f}% (best {self.best_top1:.2f}%, "
                       f"{self.best_source} weights, in {' and '.join(saved) or 'no file'}), {elapsed:.0f} s; "
                       f"run folder {self.run_dir}")
        return self.report(dict(val, best_top1=self.best_top1, best_source=self.best_source, epochs=self.epoch,
                                run_dir=str(self.run_dir), time=elapsed))

    def close(self) -> None:
        """Close the logs and release the run folder (:meth:`fit` does it when it ends)."""
        if self.log is not None:
            self.log.close()
        self.run_folder.unlock()

    def _save_best_model(self) -> None:
        """:meth:`save_best_model`, recorded in the manifest (rank 0)."""
        self.save_best_model(self.best_source)
        if self.runtime.main:
            self.run_folder.record_best(self.best_model_name.rstrip("/"), self.best_epoch)

    def _repair_best(self) -> None:
        """Rewrite best.pth and the best model when a kill came between last.pth, which
        records the best epoch, and them (last.pth then holds that epoch's state); a run
        continued from another folder's checkpoint (--overwrite --resume PATH) writes its
        last.pth first."""
        if not self.runtime.main or not self.best_epoch:
            return
        if not self.run_folder.last_checkpoint.exists():
            self.save("last.pth")
        stale = self.run_folder.stale_best(self.best_epoch, ("best.pth", self.best_model_name.rstrip("/")))
        if not stale:
            return
        if (self.epoch, self.epoch_step) != (self.best_epoch, 0):
            self.say(f"warning: {', '.join(stale)} do not hold the best weights (epoch {self.best_epoch}), "
                     "which are no longer in last.pth; they are rewritten at the next improvement")
            return
        self.say(f"rewriting {', '.join(stale)} (epoch {self.best_epoch}'s best weights; a kill came before them)")
        if "best.pth" in stale:
            self.run_folder.repair_best_checkpoint(self.best_epoch)
        if self.best_model_name.rstrip("/") in stale:
            self._save_best_model()

    def report(self, result: dict) -> dict:
        """What :meth:`fit` returns: ``result`` (the last validation, the best top-1 and
        where it came from, the epochs, the run folder, the time)."""
        return result

    def _start_summary(self) -> None:
        """What the run is about to do, and warnings for settings that make it useless."""
        cfg = self.cfg
        if not self.runtime.main:
            return
        aug = "RandAugment " + cfg.aa if cfg.aa else f"colour jitter {cfg.color_jitter}"
        mix = f"Mixup {cfg.mixup} / CutMix {cfg.cutmix}" if self.mixup is not None else "no Mixup/CutMix"
        ema = "off"
        if self.ema is not None:
            ema = f"decay {cfg.ema_decay}" + (" with warm-up (a short run)" if self.ema_warmup else "")
        scaled = "" if cfg.lr is not None else f" (--base-lr {cfg.base_lr:g} x {self.global_batch} / {cfg.base_batch})"
        drop_path = cfg.drop_path if cfg.drop_path is not None else "the variant's"
        lines = [
            f"training {cfg.model} at {self.img_size}px on {self.runtime.device} ({self.runtime.world} process(es), "
            f"amp {self.dtype or 'none'}); run folder {self.run_dir}",
            f"  data      {len(self.data.train)} train / {len(self.data.val)} val images, "
            f"{len(self.class_names)} classes",
            f"  schedule  {cfg.epochs} epochs + {cfg.cooldown_epochs} cool-down, {self.steps_per_epoch} steps of "
            f"{cfg.batch_size} per epoch and process, global batch {self.global_batch} "
            f"({cfg.batch_size} x {self.runtime.world} process(es) x {cfg.grad_accum_steps} accumulated), "
            f"{self.updates_per_epoch * self.total_epochs} optimizer steps",
            f"  lr        {self.lr:.3g}{scaled}, warm-up {cfg.warmup_epochs} epochs, cosine to {cfg.min_lr:g}",
            f"  augment   {aug}, {mix}, random erasing {cfg.reprob}, label smoothing {cfg.smoothing}, "
            f"drop path {drop_path}",
            f"  EMA       {ema}",
            f"  CPU       {self.threads} thread(s), {self.workers} loader worker(s) per process",
        ]
        self.say("\n".join(lines))
        if cfg.warmup_epochs >= cfg.epochs:
            self.say(f"warning: the warm-up ({cfg.warmup_epochs} epochs) is not shorter than the run ({cfg.epochs} "
                     "epochs): the lr never reaches its peak; lower --warmup-epochs")
        if self.lr < self.min_useful_lr:
            self.say(f"warning: the learning rate is only {self.lr:.2g} (linear scaling to a global batch of "
                     f"{self.global_batch}); a short run may barely move: set --lr for this batch")

    def _epoch_summary(self, epoch: int, train: dict, val: dict, improved: bool) -> None:
        if not self.runtime.main:
            return
        row = dict(epoch=epoch + 1, step=self.global_step, train_loss=round(train["loss"], 5),
                   val_loss=round(val["loss"], 5), val_top1=round(val["top1"], 3), val_top5=round(val["top5"], 3),
                   ema_top1=round(val["ema_top1"], 3) if "ema_top1" in val else None, lr=self.current_lr(),
                   img_per_s=round(train["img_per_s"], 1), bad_files=train["bad_files"] + val["bad_files"],
                   epoch_time_s=round(train["time"], 2), time=datetime.now().isoformat(timespec="seconds"))
        with self.run_folder.writing(self.log.csv_path):
            self.log.epoch(row)
        ema = f" | ema top-1 {val['ema_top1']:.2f}%" if "ema_top1" in val else ""
        bad = f" | {row['bad_files']} bad file(s) skipped" if row["bad_files"] else ""
        tqdm.write(f"epoch {epoch + 1}/{self.total_epochs} | train loss {train['loss']:.4f} | "
                   f"val loss {val['loss']:.4f}"
                   f" top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}%{ema} | lr {self.current_lr():.2e} | "
                   f"{train['img_per_s']:.0f} img/s | {train['time']:.1f} s{bad}"
                   + (f" | best ({self.best_source})" if improved else ""))

    def say(self, message: str) -> None:
        """``message`` on stderr, from rank 0 only (beside tqdm's progress bars)."""
        if self.runtime.main:
            tqdm.write(message, file=sys.stderr)


def train(cfg: TrainConfig, trainer_class: type[Trainer] = Trainer) -> dict:
    """Build a ``trainer_class`` (:class:`Trainer`, or a subclass such as
    :class:`efficientmod.classify.qat.QATTrainer`) for ``cfg`` and fit it, leaving the
    process group, if any."""
    try:
        return trainer_class(cfg).fit()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
