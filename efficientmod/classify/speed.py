"""Training speed: ``efficientmod train --benchmark-steps N`` (images/s of forward, backward and
optimizer step, all processes together; with real data also the share of the wall time spent
waiting for the input pipeline)."""
from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from efficientmod.classify.data import SyntheticBatches

__all__ = ["training_speed"]


def training_speed(trainer, steps: int, warmup: int = 10) -> dict:
    """Training images/s of a built :class:`~efficientmod.classify.engine.Trainer` (forward +
    backward + optimizer step, all processes together) over ``steps`` steps after ``warmup``
    steps; with real data also the share of the wall time spent waiting for the input pipeline."""
    cfg, runtime = trainer.cfg, trainer.runtime
    total = steps + warmup
    if cfg.synthetic:
        batches = SyntheticBatches(cfg.batch_size, trainer.in_chans, trainer.img_size, len(trainer.class_names),
                                   runtime.device, total)
    else:
        trainer.train_sampler.set_epoch(0)
        if total > trainer.steps_per_epoch:
            raise ValueError(f"--benchmark-steps {steps} (+{warmup} warm-up) exceeds one epoch "
                             f"({trainer.steps_per_epoch} steps)")
        batches = trainer.train_loader
    trainer.model.train()
    waited, iterator = 0.0, iter(batches)
    for step in tqdm(range(total), desc="benchmark", disable=not runtime.main, file=sys.stderr):
        if step == warmup:
            _synchronize(runtime.device)
            started, waited = time.perf_counter(), 0.0
        before = time.perf_counter()
        images, targets, _ = next(iterator)
        waited += time.perf_counter() - before
        trainer.train_step(images, targets)
    _synchronize(runtime.device)
    elapsed = time.perf_counter() - started
    result = dict(img_per_s=steps * cfg.batch_size * runtime.world / elapsed, data_wait_share=waited / elapsed,
                  steps=steps, batch_size=cfg.batch_size, processes=runtime.world,
                  data="synthetic" if cfg.synthetic else cfg.data, dtype=str(trainer.dtype),
                  channels_last=trainer.channels_last, compile=cfg.compile, device=str(runtime.device))
    trainer.say(f"benchmark: {result['img_per_s']:.1f} img/s ({cfg.model}, {trainer.img_size}px, "
                f"batch {cfg.batch_size} x {runtime.world}, {result['dtype']}, channels_last={trainer.channels_last}, "
                f"compile={cfg.compile}, data={result['data']}, waiting for data "
                f"{100 * result['data_wait_share']:.1f}% of the time)")
    return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
