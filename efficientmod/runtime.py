"""Process set-up shared by the training engines (classification and dense).

One place for what every engine needs: the device of a ``--device`` value, joining the
process group that ``torchrun`` describes, the ranks' agreement on a flag, seeding and
saving / restoring random states, mixed precision, the loss scaler and the optimizer step
(backward, unscale, clip, step), the training-checkpoint format (one for both engines: ``last.pth`` in the run folder, a
format tag and the task, written atomically, read with ``weights_only=True``) and the
error types that the command line maps to exit statuses. Importing this module imports
torch (and safetensors) only.
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from efficientmod.checkpoint import atomic_write, load_weights_only

__all__ = [
    "TRAIN_CHECKPOINT_FORMAT", "LAST_CHECKPOINT", "AMP_CHOICES", "TrainingDiverged", "Runtime", "resolve_device",
    "init_runtime", "on_every_rank", "cpus_per_process", "seed_everything", "rng_state", "set_rng_state",
    "amp_dtype", "autocast", "grad_scaler", "backward", "apply_gradients", "optimizer_step",
    "save_train_checkpoint", "load_train_checkpoint", "read_train_checkpoint", "is_train_checkpoint",
]

TRAIN_CHECKPOINT_FORMAT = "efficientmod-train-v1"
LAST_CHECKPOINT = "last.pth"  # the state a run resumes from, in its run folder (both engines)
AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` choice (:data:`AMP_CHOICES`); ``auto`` is bf16 on
    a GPU and full precision on a CPU."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 autocast (whose small gradients would underflow), else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Add ``loss``'s gradients (outside autocast, as PyTorch's AMP recipe has it), scaled by
    ``scaler`` (:func:`grad_scaler`) when there is one."""
    (loss if scaler is None else scaler.scale(loss)).backward()


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, parameters,
                    clip_grad: float | None = None) -> None:
    """Step ``optimizer`` on the gradients that :func:`backward` accumulated, then clear them.
    With a float16 loss ``scaler`` the gradients are unscaled before clipping (``clip_grad``:
    their total norm over ``parameters``) and a step whose gradients overflowed is skipped
    (the scale then shrinks)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   parameters: list, clip_grad: float | None = None) -> None:
    """One update from one loss: :func:`backward` from cleared gradients, then
    :func:`apply_gradients`."""
    optimizer.zero_grad(set_to_none=True)
    backward(loss, scaler)
    apply_gradients(optimizer, scaler, parameters, clip_grad)


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN/inf; the last good checkpoint is left intact."""


# -- processes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` is the GPU when there is one, else
    the CPU; a name torch does not know, or CUDA on a machine without it, is a one-line
    ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def init_runtime(device: str = "auto", cudnn_benchmark: bool = True) -> Runtime:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs,
    gloo on CPUs); a plain process is rank 0 of 1. ``device`` is resolved by
    :func:`resolve_device`; plain ``cuda`` is this process's GPU (``LOCAL_RANK``). On a GPU,
    TF32 is allowed and cuDNN's autotuner is on when ``cudnn_benchmark`` (right when input
    shapes repeat: it searches again for every new shape)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    run_device = resolve_device(device)
    if run_device.type == "cuda" and run_device.index is None:
        run_device = torch.device("cuda", local_rank)
    if run_device.type == "cuda":
        torch.cuda.set_device(run_device)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if run_device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Runtime(rank, world, run_device)


def on_every_rank(flag: bool | torch.Tensor, runtime: Runtime) -> bool:
    """Whether ``flag`` (a bool or a one-element tensor) holds on every process: a collective
    in a distributed run, so that the ranks take (or skip) a step together and stop together."""
    if not runtime.distributed:
        return bool(flag)
    agreed = torch.as_tensor(flag, dtype=torch.float32, device=runtime.device).clone()
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def cpus_per_process(world: int) -> int:
    """CPU cores this process may use (its affinity set, shared by the machine's processes)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, available // world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's random states as tensors and lists (loadable with weights_only)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(
        python=list(random.getstate()[1]),
        numpy=torch.from_numpy(keys.astype(np.int64)), numpy_pos=int(pos),
        numpy_gauss=[int(has_gauss), float(cached)],
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    )


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- training checkpoints ----------------------------------------------------------------------
def save_train_checkpoint(path: str | os.PathLike, state: Mapping, task: str) -> None:
    """Atomically write ``state`` (tensors, numbers, strings and containers of them) as a
    training checkpoint of ``task`` ("classification", "detection", ...)."""
    tagged = {**state, "format": TRAIN_CHECKPOINT_FORMAT, "task": task}
    atomic_write(path, lambda tmp: torch.save(tagged, tmp))


def _task_of(state: Mapping) -> str:
    return state.get("task", "classification")  # v1 checkpoints written before dense training had one


def is_train_checkpoint(state, task: str | None = None) -> bool:
    """Whether ``state`` (a loaded dict) is a training checkpoint of this library (of ``task``)."""
    if not isinstance(state, Mapping) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        return False
    return task is None or _task_of(state) == task


def load_train_checkpoint(path: str | os.PathLike, task: str) -> dict:
    """A checkpoint written by :func:`save_train_checkpoint` for ``task`` (a run folder
    stands for its :data:`LAST_CHECKPOINT`), read with ``weights_only=True``; anything else
    is a ``ValueError`` that says what the file is."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    state = load_weights_only(path)
    if not is_train_checkpoint(state):
        raise ValueError(f"{path} is not a training checkpoint of this library")
    if _task_of(state) != task:
        raise ValueError(f"{path} is a {_task_of(state)!r} checkpoint, not a {task!r} one")
    return state


def read_train_checkpoint(path: str | os.PathLike, task: str) -> dict | None:
    """The dict of ``path`` when it is a training checkpoint of ``task``, else None (a
    released or timm checkpoint, a safetensors file, a ``save_pretrained`` folder, a missing
    path), which the caller hands on to :func:`efficientmod.load_checkpoint`. Unlike
    :func:`load_train_checkpoint`, a folder is never read as a run's :data:`LAST_CHECKPOINT`."""
    path = Path(path)
    if not path.is_file() or path.suffix == ".safetensors":
        return None
    state = load_weights_only(path)
    return state if is_train_checkpoint(state, task) else None
