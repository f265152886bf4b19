"""The training loop shared by detection and segmentation (its settings:
:class:`~efficientmod.dense.config.DenseTrainConfig`).

One straight line per step: batch → device → ``compute_loss`` (under ``--amp`` autocast) →
AdamW step at the learning rate of timm's scheduler (:func:`build_scheduler`). Around it: a
progress bar on stderr, skipped samples counted by reason, after every epoch (and when
stopped early) a line of ``log.jsonl`` and then an atomic training-state checkpoint
(``last.pth`` in the classification engine's format, see
:func:`efficientmod.runtime.save_train_checkpoint`: model, optimizer, loss scaler, epoch,
step, every rank's random states and what is needed to rebuild the model), and resuming
from it: the epoch order and the loader workers' seeds are fixed by seed and epoch, and
the log is cut back to the checkpoint, so a run killed at any point and resumed repeats
the uninterrupted one (on CPU, bit for bit). ``torchrun`` starts distributed data-parallel
training (one process per GPU, or gloo on CPU), whose ranks agree before each step that
every one of them has a usable batch and after it that every loss is finite. Process
setup, seeding, random states, mixed precision, the optimizer step and the checkpoint
format are shared with the classification engine (:mod:`efficientmod.runtime`); the rest
is not, because Mixup, EMA and the per-step checkpoints of classification have no use here
and the batches are lists of differently sized images.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler
from tqdm import tqdm

from efficientmod.checkpoint import atomic_write
from efficientmod.dense.config import RUN_LOG, DenseTrainConfig
from efficientmod.dense.data import SkipCounter, fixed_input_shapes, make_loader
from efficientmod.runtime import (
    LAST_CHECKPOINT,
    Runtime,
    TrainingDiverged,
    amp_dtype,
    autocast,
    grad_scaler,
    init_runtime,
    load_train_checkpoint,
    on_every_rank,
    optimizer_step,
    rng_state,
    save_train_checkpoint,
    seed_everything,
    set_rng_state,
)

__all__ = ["build_scheduler", "train", "read_training_state", "load_trained", "to_device"]


def build_scheduler(optimizer: torch.optim.Optimizer, config: DenseTrainConfig, steps_per_epoch: int) -> Scheduler:
    """timm's step / cosine / poly schedule with linear warm-up from ``lr × warmup_ratio``,
    counted in optimizer steps (call ``step_update(step)`` before each step)."""
    warmup = dict(warmup_t=config.warmup_steps, warmup_lr_init=config.lr * config.warmup_ratio, t_in_epochs=False)
    if config.schedule == "step":
        # timm decays once t + 1 reaches a milestone: + 1 starts the decay on the milestone epoch's first step
        milestones = [m * steps_per_epoch + 1 for m in config.milestones]
        return MultiStepLRScheduler(optimizer, milestones, config.gamma, warmup_prefix=False, **warmup)
    total = total_steps(config, steps_per_epoch)
    if config.schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total, **warmup)
    return PolyLRScheduler(optimizer, t_initial=total, power=config.poly_power, **warmup)


def total_steps(config: DenseTrainConfig, steps_per_epoch: int) -> int:
    if config.epochs is None:
        return config.max_steps
    planned = config.epochs * steps_per_epoch
    return min(planned, config.max_steps) if config.max_steps else planned


def num_epochs(config: DenseTrainConfig, steps_per_epoch: int) -> int:
    return config.epochs or math.ceil(config.max_steps / steps_per_epoch)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_rng_states(runtime: Runtime) -> list[dict]:
    """Every rank's random states, in rank order (a collective in a distributed run)."""
    if not runtime.distributed:
        return [rng_state()]
    states = [None] * runtime.world
    dist.all_gather_object(states, rng_state())
    return states


def to_device(obj, device: torch.device):
    """Tensors inside lists / dicts moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# -- checkpoints ------------------------------------------------------------------------
def task_of(config: DenseTrainConfig) -> str:
    """The task a run's checkpoint is tagged with: its model description's (``detection``,
    ``segmentation``), or ``dense`` for a model described by nothing."""
    return config.meta.get("task", "dense")


def save_training_state(path: Path, model: nn.Module, optimizer, scaler, epoch: int, step: int,
                        config: DenseTrainConfig, rng: list[dict]) -> None:
    """Atomically write ``path``: everything :func:`train` needs to resume (``rng``: each
    rank's random states, see :func:`_all_rng_states`)."""
    state = dict(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None,
        epoch=epoch,
        step=step,
        rng=rng,
        config={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    )
    save_train_checkpoint(path, state, task=task_of(config))


def read_training_state(path: str | Path, task: str) -> dict:
    """A checkpoint written by :func:`train` for ``task`` (a run folder stands for its
    ``last.pth``), read with ``weights_only=True``."""
    return load_train_checkpoint(path, task)


def load_trained(path: str | Path, task: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """The model a :func:`train` checkpoint of ``task`` holds, rebuilt by ``build(meta)``
    from the description saved with it, and that description."""
    state = read_training_state(path, task)
    meta = state["config"].get("meta", {})
    model = build(meta)
    model.load_state_dict(state["model"])
    return model.eval(), meta


# -- the loop -------------------------------------------------------------------------
@dataclass
class _Training:
    """What the steps of a run share: the model (and its DDP wrapper), the optimisation,
    the data and where the run is written."""

    model: nn.Module
    wrapped: nn.Module
    parameters: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    dtype: torch.dtype | None
    config: DenseTrainConfig
    runtime: Runtime
    output: Path
    loader: torch.utils.data.DataLoader | None = None
    scheduler: Scheduler | None = None
    skipped: SkipCounter = field(default_factory=SkipCounter)
    history: list[dict] = field(default_factory=list)


def train(
    model: nn.Module,
    dataset,
    config: DenseTrainConfig,
    compute_loss: Callable[[nn.Module, list, list], dict[str, torch.Tensor]],
    output: str | Path,
    resume: str | Path | None = None,
    runtime: Runtime | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` and return a summary (losses per step, skip counts).

    ``compute_loss(model, inputs, targets)`` returns named losses whose sum is minimised.
    ``resume`` continues a run from its ``last.pth`` (model, optimizer, loss scaler, epoch,
    step, random states). ``runtime`` defaults to :func:`efficientmod.runtime.init_runtime`
    (``torchrun``'s process group, else one process on the GPU if there is one), with
    cuDNN's autotuner on only for a task whose input shapes are fixed
    (:func:`~efficientmod.dense.data.fixed_input_shapes`). For the same initial weights in
    every run, build ``model`` after ``seed_everything(config.seed)``, as the command line does.
    """
    runtime = runtime or init_runtime(cudnn_benchmark=fixed_input_shapes(task_of(config)))
    output = Path(output)
    if resume is None and (output / LAST_CHECKPOINT).exists():
        raise ValueError(f"{output} already holds a run ({output / LAST_CHECKPOINT}); continue it with --resume "
                         "or choose another --output")
    seed_everything(config.seed + runtime.rank)
    run = _build(model, config, runtime, output)
    start_epoch, step = _resume(run, resume) if resume is not None else (0, 0)
    _wrap_and_load(run, dataset)
    if runtime.main:
        output.mkdir(parents=True, exist_ok=True)
        _keep_log_until(output / RUN_LOG, step)  # lines of epochs after the checkpoint are written again
    steps_per_epoch = len(run.loader)
    last_step, epochs = total_steps(config, steps_per_epoch), num_epochs(config, steps_per_epoch)
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if step >= last_step:
            break
        epoch_start = len(run.history)
        step, complete = _train_one_epoch(run, compute_loss, epoch, epochs, step, last_step)
        _end_epoch(run, epoch, complete, step, last_step, run.history[epoch_start:], time.perf_counter() - started)
    return dict(history=run.history, skipped=dict(run.skipped), steps=step, checkpoint=str(output / LAST_CHECKPOINT))


def _build(model: nn.Module, config: DenseTrainConfig, runtime: Runtime, output: Path) -> _Training:
    """The model on its device (BatchNorm synchronised across GPUs), AdamW on the trainable
    parameters and the loss scaler of ``--amp fp16``."""
    device = runtime.device
    if runtime.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    dtype = amp_dtype(config.amp, device)
    return _Training(model, model, parameters, optimizer, grad_scaler(device, dtype), dtype, config, runtime, output)


def _resume(run: _Training, path: str | Path) -> tuple[int, int]:
    """Restore model, optimizer, loss scaler and this rank's random states from ``path``;
    the (epoch, step) to go on from."""
    state = read_training_state(path, task_of(run.config))
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rngs) == run.runtime.world:
        set_rng_state(rngs[run.runtime.rank])  # else: this rank keeps its fresh seed
    return int(state["epoch"]), int(state["step"])


def _wrap_and_load(run: _Training, dataset) -> None:
    """The DDP wrapper of a distributed run, the training loader and the schedule."""
    runtime, config = run.runtime, run.config
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        run.wrapped = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    run.loader = make_loader(dataset, config.batch_size, train=True, workers=config.workers, seed=config.seed,
                             device=runtime.device)
    run.scheduler = build_scheduler(run.optimizer, config, len(run.loader))


def _train_one_epoch(run: _Training, compute_loss: Callable, epoch: int, epochs: int, step: int,
                     last_step: int) -> tuple[int, bool]:
    """One pass over the loader (or up to ``last_step``); the step reached and whether the
    epoch was complete. The epoch order and the workers' seeds are fixed by seed and epoch."""
    runtime, device, loader = run.runtime, run.runtime.device, run.loader
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(run.config.seed + 1009 * epoch + runtime.rank)  # the workers' seeds
    run.wrapped.train()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", file=sys.stderr, disable=not runtime.main,
               dynamic_ncols=True, leave=False)
    batches, last_usable = 0, None
    for inputs, targets, skipped_now in bar:
        batches += 1
        for sample in skipped_now:
            run.skipped.add(sample.reason, sample.path)
        if inputs:
            last_usable = inputs, targets
        elif runtime.distributed and last_usable:  # ranks must step together: redo the last batch
            inputs, targets = last_usable
        if not on_every_rank(bool(inputs), runtime):  # a rank has nothing to train on: all skip
            continue
        run.scheduler.step_update(step)
        with autocast(device, run.dtype):
            losses = compute_loss(run.wrapped, to_device(inputs, device), to_device(targets, device))
        loss = sum(losses.values())
        if not on_every_rank(bool(torch.isfinite(loss)), runtime):  # all ranks stop, none waits forever
            raise TrainingDiverged(f"the loss is not finite at step {step} (this rank's losses: {_fmt(losses)}); "
                                   "lower --lr?")
        optimizer_step(loss, run.optimizer, run.scaler, run.parameters, run.config.clip_grad)
        step += 1
        run.history.append(dict(step=step, loss=loss.item(), **{k: v.item() for k, v in losses.items()}))
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if step >= last_step:
            break
    bar.close()
    return step, batches == len(loader)


def _end_epoch(run: _Training, epoch: int, complete: bool, step: int, last_step: int, recent: list[dict],
               seconds: float) -> None:
    """The epoch's log line, then the checkpoint (a cut-short epoch is redone on resume): a
    run stopped between the two resumes from the previous checkpoint, and the line is
    written again."""
    rng = _all_rng_states(run.runtime)
    if run.runtime.main:
        mean = sum(h["loss"] for h in recent) / max(len(recent), 1)
        line = dict(epoch=epoch + 1, step=step, loss=mean, lr=run.optimizer.param_groups[0]["lr"],
                    skipped=dict(run.skipped), seconds=round(seconds, 1))
        with open(run.output / RUN_LOG, "a") as log:
            log.write(json.dumps(line) + "\n")
        save_training_state(run.output / LAST_CHECKPOINT, run.model, run.optimizer, run.scaler,
                            epoch + 1 if complete else epoch, step, run.config, rng)
        print(f"epoch {epoch + 1}: loss {mean:.4f}, step {step}/{last_step}, {run.skipped}", file=sys.stderr)
    _barrier()


def _keep_log_until(path: Path, step: int) -> None:
    """Keep the lines of ``path`` up to ``step`` (the checkpoint's): those of a fresh run's
    folder, or written after the checkpoint by a run that was stopped, would be doubled,
    and a line cut short by a kill is no JSON."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line + "\n")
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def _fmt(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
