"""Evaluation: top-1, top-5 and loss of a model on a folder of images (or any loader of
:class:`~efficientmod.classify.data.Batch`), synchronised over the processes of a distributed run."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from efficientmod.classify.data import ImageFolder, ShardSampler, check_image_folders, collate_skipping_bad
from efficientmod.preprocessing import Preprocessing
from efficientmod.runtime import amp_dtype, autocast, cpus_per_process, resolve_device

__all__ = ["evaluate", "evaluate_checkpoint", "default_workers", "ExportedClassifier"]


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


def default_workers() -> int:
    """Evaluation's data-loader processes: up to 4, leaving one of the cores this process
    may use to it (0 workers, loading in the process itself, on one core)."""
    return max(0, min(4, cpus_per_process(1) - 1))


class ExportedClassifier(nn.Module):
    """An exported file run in its runtime (on CPU, float32), as a module :func:`evaluate`
    can call; ``metadata`` is what the file declares (:class:`~efficientmod.metadata.ExportMetadata`)."""

    def __init__(self, path: str | os.PathLike):
        from efficientmod.export import load_classifier

        super().__init__()
        self.runtime, self.metadata = load_classifier(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.run(images.float().cpu().numpy()))


def _is_exported(path: str | os.PathLike) -> bool:
    from efficientmod.export import format_of

    try:
        format_of(path)
    except ValueError:  # not a suffix of an export format
        return False
    return True


def _load_exported(model_name: str, path: str, use_ema: bool) -> tuple[nn.Module, Preprocessing, list | None]:
    from efficientmod.models import model_info

    if use_ema:
        raise ValueError(f"--ema reads a training checkpoint's EMA weights; {path} is an exported model")
    if not Path(path).exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    model = ExportedClassifier(path)
    meta = model.metadata
    if model_info(meta.architecture).name != model_info(model_name).name:
        raise ValueError(f"{path} holds a {meta.architecture}, not a {model_name}")
    return model, meta.preprocessing, None if meta.class_names is None else list(meta.class_names)


def _run_device(device: str, exported: bool) -> torch.device:
    """:func:`~efficientmod.runtime.resolve_device`; an exported file runs on the CPU."""
    if exported:
        if device not in ("auto", "cpu"):
            raise ValueError(f"--device {device}: an exported model runs in its own runtime, on the CPU")
        return torch.device("cpu")
    return resolve_device(device)


def evaluate_checkpoint(
    model_name: str,
    checkpoint: str,
    data: str,
    split: str = "val",
    batch_size: int = 128,
    workers: int | None = None,
    img_size: int | None = None,
    device: str = "auto",
    amp: str = "auto",
    use_ema: bool = False,
) -> dict:
    """Evaluate ``checkpoint`` on ``data/<split>`` with the preprocessing it declares (a
    training checkpoint's, a ``save_pretrained`` folder's, an exported file's metadata;
    the registry's for official EfficientMod or timm weights), at ``img_size`` pixels when
    given. ``checkpoint`` is any of those; an exported ``.onnx`` / ``.xml`` / ``.pte`` runs
    in its runtime on CPU. ``workers`` defaults to :func:`default_workers`."""
    from efficientmod.classify.predict import load_model

    class_names = check_image_folders(data, splits=(split,))
    exported = _is_exported(checkpoint)
    run_device = _run_device(device, exported)
    if exported:
        model, preprocessing, saved = _load_exported(model_name, checkpoint, use_ema)
        num_classes = model.metadata.num_classes
    else:
        model = load_model(model_name, checkpoint, num_classes=len(class_names), use_ema=use_ema)
        preprocessing, saved, num_classes = Preprocessing.of_model(model), model.class_names, model.num_classes
    if saved is not None and saved != class_names:
        raise ValueError(f"the checkpoint was trained on other classes than {data}/{split} holds "
                         f"(checkpoint: {saved[:10]}..., folder: {class_names[:10]}...)")
    if num_classes != len(class_names):
        raise ValueError(f"the model predicts {num_classes} classes, {data}/{split} holds {len(class_names)}")
    if img_size is not None:
        preprocessing = preprocessing.with_input_size((preprocessing.channels, img_size, img_size))
    model.to(run_device)
    if run_device.type == "cuda":  # as in training: NHWC convolutions, cuDNN's autotuner for the fixed eval shape
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    dataset = ImageFolder(Path(data) / split, class_names, preprocessing.transform, mode=preprocessing.image_mode)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset)), num_workers=workers,
                        collate_fn=collate_skipping_bad, pin_memory=run_device.type == "cuda")
    result = evaluate(model, loader, run_device, None if exported else amp_dtype(amp, run_device))
    return dict(result, input_size=list(preprocessing.input_size))
