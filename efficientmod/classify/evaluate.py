"""Evaluation: top-1, top-5 and loss of a model on a folder of images (or any loader of
:class:`~efficientmod.classify.data.Batch`), synchronised over the processes of a distributed run."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from efficientmod.classify.data import (
    ImageFolder,
    ShardSampler,
    check_image_folders,
    collate_skipping_bad,
    eval_transform,
)
from efficientmod.runtime import amp_dtype, autocast, read_train_checkpoint, resolve_device

__all__ = ["evaluate", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> dict:
    """Mean cross-entropy, top-1 and top-5 accuracy (%) over every sample of ``loader``;
    in a distributed run the sums are all-reduced, so every rank gets the global result."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top-1, top-5, count, bad
    for images, targets, bad in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        sums[4] += len(bad)
        if not len(targets):
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        sums[0] += F.cross_entropy(logits, targets, reduction="sum")
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += len(targets)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    model.train(was_training)
    loss, top1, top5, count, bad = sums.tolist()
    count_or_one = max(count, 1.0)
    return dict(loss=loss / count_or_one, top1=100 * top1 / count_or_one, top5=100 * top5 / count_or_one,
                count=int(count), bad_files=int(bad))


def evaluate_checkpoint(
    model_name: str,
    checkpoint: str,
    data: str,
    split: str = "val",
    batch_size: int = 128,
    workers: int = 4,
    img_size: int | None = None,
    device: str = "auto",
    amp: str = "auto",
    use_ema: bool = False,
) -> dict:
    """Evaluate ``checkpoint`` (a training checkpoint of this library, a ``save_pretrained``
    folder, an official EfficientMod or a timm checkpoint, loaded by
    :func:`~efficientmod.classify.predict.load_model`) on ``data/<split>``."""
    from efficientmod.classify.predict import load_model
    from efficientmod.models import model_info

    class_names = check_image_folders(data, splits=(split,))
    info = model_info(model_name)
    model = load_model(model_name, checkpoint)
    if use_ema:
        _load_ema_weights(model, checkpoint)
    saved = getattr(model, "class_names", None)
    if saved and list(saved) != class_names:
        raise ValueError(f"the checkpoint was trained on other classes than {data}/{split} holds "
                         f"(checkpoint: {saved[:10]}..., folder: {class_names[:10]}...)")
    if model.num_classes != len(class_names):
        raise ValueError(f"the checkpoint predicts {model.num_classes} classes, {data}/{split} holds "
                         f"{len(class_names)}")
    run_device = resolve_device(device)
    model.to(run_device)
    if run_device.type == "cuda":  # as in training: NHWC convolutions, cuDNN's autotuner for the fixed eval shape
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    saved_size = (getattr(model, "preprocessing", None) or {}).get("input_size")
    size = img_size or (saved_size or info.input_size)[-1]
    transform = eval_transform(size, info.mean, info.std, info.crop_pct, info.interpolation)
    dataset = ImageFolder(Path(data) / split, class_names, transform)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset)), num_workers=workers,
                        collate_fn=collate_skipping_bad, pin_memory=run_device.type == "cuda")
    return evaluate(model, loader, run_device, amp_dtype(amp, run_device))


def _load_ema_weights(model: nn.Module, checkpoint: str) -> None:
    """The EMA weights of the training checkpoint ``checkpoint`` into ``model``."""
    from efficientmod.checkpoint import load_checkpoint

    own = read_train_checkpoint(checkpoint, task="classification")
    if own is None or own.get("ema") is None:
        raise ValueError(f"{checkpoint} holds no EMA weights")
    load_checkpoint(model, own["ema"])
