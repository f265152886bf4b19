"""The classification losses: the (smoothed or soft-target) cross-entropy of a student, with
or without a frozen teacher to distil from (DeiT's soft and hard distillation), each called as
``criterion(images, logits, targets)``, and the teacher they are given."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from efficientmod.checkpoint import load_checkpoint
from efficientmod.classify.config import TrainConfig
from efficientmod.models import create_model

__all__ = ["DistillationLoss", "PlainLoss", "build_teacher", "build_criterion"]


class DistillationLoss(nn.Module):
    """Knowledge distillation as in DeiT (Touvron et al., 2021), for a one-head student:

        L = (1 − α) · L_base(s, y) + α · L_kd
        soft: L_kd = τ² · Σ KL( softmax(t/τ) ‖ softmax(s/τ) ) / (B · C)     hard: L_kd = CE(s, argmax t)

    with s, t the student's and the frozen teacher's logits on the same (mixed) images, B the
    batch and C the classes. The soft term is DeiT's (and the EfficientMod training code's):
    the KL summed over the batch, divided by the number of logits — PyTorch's legacy
    "mean" — so α = 0.9, τ = 1 reproduce their recipe's balance between the two terms.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str = "soft", tau: float = 1.0, alpha: float = 0.9):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"--distill must be soft or hard, got {kind!r}")
        self.base, self.teacher, self.kind, self.tau, self.alpha = base, teacher, kind, tau, alpha

    def forward(self, images: torch.Tensor, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = self.teacher(images).float()
        student = student.float()
        if self.kind == "soft":
            kd = F.kl_div(F.log_softmax(student / self.tau, dim=1), F.log_softmax(teacher / self.tau, dim=1),
                          reduction="sum", log_target=True) * self.tau**2 / student.numel()
        else:
            kd = F.cross_entropy(student, teacher.argmax(dim=1))
        return (1 - self.alpha) * self.base(student, targets) + self.alpha * kd


class PlainLoss(nn.Module):
    """``criterion(images, logits, targets)`` without a teacher."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, images: torch.Tensor, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base(student.float(), targets)


def build_teacher(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """A registry or timm model name (weights from ``--teacher-checkpoint``), or a
    ``save_pretrained`` folder."""
    import timm

    from efficientmod.models import list_models
    from efficientmod.models.pretrained import from_pretrained

    if Path(cfg.teacher).is_dir():
        teacher = from_pretrained(cfg.teacher)
    else:
        build = create_model if cfg.teacher in list_models() else timm.create_model
        try:
            teacher = build(cfg.teacher, num_classes=num_classes, in_chans=in_chans)
        except RuntimeError as error:  # timm: unknown model
            raise ValueError(f"--teacher {cfg.teacher!r}: {error}") from error
        if cfg.teacher_checkpoint:
            load_checkpoint(teacher, cfg.teacher_checkpoint)
        else:
            warnings.warn("--teacher without --teacher-checkpoint distils from random weights", stacklevel=2)
    if getattr(teacher, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the teacher predicts {teacher.num_classes} classes, the data has {num_classes}")
    return teacher.eval().requires_grad_(False)


def build_criterion(cfg: TrainConfig, mixup: bool, num_classes: int, in_chans: int, device: torch.device,
                    channels_last: bool) -> nn.Module:
    """The recipe's loss: soft-target cross-entropy after Mixup/CutMix (which already smooth
    the targets), else label-smoothing or plain cross-entropy; with ``--teacher`` distilled
    from the teacher (built on ``device``)."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup:
        base = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        base = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    if not cfg.teacher:
        return PlainLoss(base)
    teacher = build_teacher(cfg, num_classes, in_chans).to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    return DistillationLoss(base, teacher, cfg.distill, cfg.distill_tau, cfg.distill_alpha)
