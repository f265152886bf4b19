"""Calibration images and prediction agreement, shared by every reduced-precision export.

Post-training quantisation (ONNX Runtime's static int8, NNCF for OpenVINO, or any other
format's quantiser) needs a few hundred real images preprocessed exactly as at inference;
a bf16 or int8 file is then checked not against PyTorch's logits to 1e-4 (it cannot match
them) but by how often it predicts what the float32 model predicts:

* :func:`read_calibration_images` reads an image folder (flat or one sub-folder per class,
  searched recursively) through a model's :class:`~efficientmod.preprocessing.Preprocessing`
  into one float32 (N, C, H, W) array; a deterministic, evenly spread subset when
  ``samples`` is smaller than the folder.
* :func:`prediction_agreement` compares two logit arrays: top-1 agreement (the same class
  first) and top-5 agreement (the reference's class among the candidate's five best), the
  figures ``efficientmod export`` prints for bf16 / int8.
* :func:`check_agreement` raises :class:`~efficientmod.export.format.ExportVerificationError`
  when either falls more than a tolerance below 100%.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from efficientmod.export.format import Agreement, ExportVerificationError

__all__ = [
    "IMAGE_SUFFIXES", "calibration_files", "read_calibration_images", "prediction_agreement", "check_agreement",
    "run_batched",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def calibration_files(folder: str | os.PathLike, samples: int | None = None) -> list[Path]:
    """The image files under ``folder`` (recursive, sorted), or ``samples`` of them spread
    evenly over that order (so every class folder contributes). A missing folder is a
    ``FileNotFoundError``, one without images a ``ValueError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder not found: {folder}")
    if samples is not None and samples < 1:
        raise ValueError(f"the number of calibration samples must be positive, got {samples}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    if samples is None or samples >= len(files):
        return files
    picks = np.linspace(0, len(files) - 1, samples).round().astype(int)
    return [files[i] for i in picks]


def read_calibration_images(folder: str | os.PathLike, preprocessing, samples: int | None = 300) -> np.ndarray:
    """``samples`` images of ``folder`` (all when None) preprocessed by ``preprocessing``
    (an :class:`efficientmod.preprocessing.Preprocessing`, or anything with ``load(path)`` returning
    a C×H×W tensor) as one float32 (N, C, H, W) array. Unreadable files are skipped with a
    note on stderr; a ``ValueError`` when none is readable."""
    from efficientmod.images import DECODE_ERRORS

    images, skipped = [], []
    for path in calibration_files(folder, samples):
        try:
            images.append(preprocessing.load(path).numpy())
        except DECODE_ERRORS as error:
            skipped.append(f"{path} ({type(error).__name__})")
    if skipped:
        print(f"note: skipped {len(skipped)} unreadable calibration image(s): {', '.join(skipped[:3])}"
              + (" ..." if len(skipped) > 3 else ""), file=sys.stderr)
    if not images:
        raise ValueError(f"none of the calibration images under {folder} could be read")
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)


def run_batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``run`` (batch → logits) over ``images`` in batches of ``batch_size``, concatenated."""
    return np.concatenate([run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def prediction_agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Top-1 / top-5 agreement of ``candidate`` logits with ``reference`` logits (both N×K)."""
    reference, candidate = np.asarray(reference, dtype=np.float32), np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"logits must be two non-empty N×K arrays of one shape, got {reference.shape} "
                         f"and {candidate.shape}")
    expected = reference.argmax(axis=1)
    top5 = np.argsort(-candidate, axis=1, kind="stable")[:, :5]
    return Agreement(
        top1=100.0 * float((candidate.argmax(axis=1) == expected).mean()),
        top5=100.0 * float((top5 == expected[:, None]).any(axis=1).mean()),
        samples=len(reference),
        max_abs_diff=float(np.abs(reference - candidate).max()),
    )


def check_agreement(agreement: Agreement, tolerance: float, label: str) -> Agreement:
    """``agreement`` itself when top-1 and top-5 agreement are both at least ``100 - tolerance``
    percent, else an :class:`ExportVerificationError` naming ``label``."""
    if not 0 <= tolerance <= 100:
        raise ValueError(f"the agreement tolerance is in percentage points, 0-100, got {tolerance}")
    floor = 100.0 - tolerance
    if not (agreement.top1 >= floor and agreement.top5 >= floor):  # also catches NaN
        raise ExportVerificationError(f"{label}: {agreement}, below {floor:g}% (tolerance {tolerance:g} points)")
    return agreement

