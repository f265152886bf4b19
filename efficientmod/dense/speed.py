"""Images per second of Mask R-CNN and Semantic FPN training and inference, at the papers'
input sizes by default (COCO 1333×800, 80 classes; ADE20K 512×512, 150 classes), on random
images with random objects / label maps. The command line is ``efficientmod bench-dense``::

    efficientmod bench-dense --task det --mode train --model efficientmod_s --device cuda
"""
from __future__ import annotations

import time

import torch

from efficientmod.dense.data import fixed_input_shapes
from efficientmod.dense.detection import build_detector, detection_loss
from efficientmod.dense.segmentation import build_segmenter, segmentation_loss
from efficientmod.runtime import amp_dtype, autocast, grad_scaler, optimizer_step

__all__ = ["measure"]

PAPER_SIZES = dict(det=(800, 1333), seg=(512, 512))
PAPER_CLASSES = dict(det=80, seg=150)


def _random_targets(task: str, batch: int, height: int, width: int, num_classes: int, device) -> list:
    if task == "seg":
        return [torch.randint(0, num_classes, (height, width), device=device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        corners = torch.rand(2, 5, 2, device=device) * torch.tensor([width, height], device=device)
        boxes = torch.cat([corners.min(0).values, corners.max(0).values + 16], 1)
        masks = torch.zeros(5, height, width, dtype=torch.uint8, device=device)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        targets.append(dict(boxes=boxes, labels=torch.randint(1, num_classes + 1, (5,), device=device), masks=masks))
    return targets


def _synchronizer(device: torch.device):
    """Waits for ``device``'s queued work (its own GPU, not GPU 0); a no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(task: str, mode: str, model_name: str = "efficientmod_s", batch_size: int = 2,
            size: tuple[int, int] | None = None, steps: int = 20, warmup: int = 5, device: str = "cuda",
            amp: str = "none") -> dict:
    """Images per second of ``steps`` timed iterations after ``warmup`` ones; ``amp`` is the
    training engines' choice (:data:`~efficientmod.runtime.AMP_CHOICES`: autocast dtype,
    float16 with loss scaling), cuDNN's autotuner set as the task's training sets it
    (:func:`~efficientmod.dense.data.fixed_input_shapes`)."""
    height, width = size or PAPER_SIZES[task]
    num_classes = PAPER_CLASSES[task]
    run_device = torch.device(device)
    dtype = amp_dtype(amp, run_device)
    if run_device.type == "cuda":
        torch.cuda.set_device(run_device)  # kernels, allocations and the synchronisation on that GPU
        torch.backends.cudnn.benchmark = fixed_input_shapes(task)
    if task == "det":
        model = build_detector("mask_rcnn", model_name, num_classes, min_size=min(height, width),
                               max_size=max(height, width))
        loss_fn = detection_loss
    else:
        model = build_segmenter(model_name, num_classes)
        loss_fn = segmentation_loss
    model.to(run_device).train(mode == "train")
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    scaler = grad_scaler(run_device, dtype)
    images = [torch.rand(3, height, width, device=run_device) for _ in range(batch_size)]
    targets = _random_targets(task, batch_size, height, width, num_classes, run_device)

    def step() -> None:
        if mode == "train":
            with autocast(run_device, dtype):
                loss = sum(loss_fn(model, images, targets).values())
            optimizer_step(loss, optimizer, scaler, parameters)
        else:
            with torch.no_grad(), autocast(run_device, dtype):
                model(images if task == "det" else torch.stack(images))

    for _ in range(warmup):
        step()
    synchronize = _synchronizer(run_device)
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    seconds = time.perf_counter() - started
    name = torch.cuda.get_device_name(run_device) if run_device.type == "cuda" else "cpu"
    return dict(task=task, mode=mode, model=model_name, size=[height, width], batch_size=batch_size,
                amp=amp, dtype=str(dtype or torch.float32).removeprefix("torch."), device=name,
                cudnn_benchmark=run_device.type == "cuda" and torch.backends.cudnn.benchmark,
                images_per_second=round(steps * batch_size / seconds, 2))
