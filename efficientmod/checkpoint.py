"""Reading, converting and writing weights.

``load_checkpoint`` is one straight line: read (safetensors, or ``torch.load`` with
``weights_only=True``) → unwrap (``model`` / ``state_dict`` / ``state_dict_ema`` dicts,
``module.`` / ``_orig_mod.`` prefixes) → detect the layout (this library's own, or a
foreign one registered by the family that knows it) → convert → load. Foreign layouts are
registered with :func:`register_layout` next to the model code (e.g. the official
EfficientMod release in ``models/efficientmod.py``).

This module knows no model family and no registry (the families import it, never the
reverse); the library's own folder format, which needs the registry to rebuild a model,
is :mod:`efficientmod.models.pretrained`.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

__all__ = [
    "CheckpointError", "register_layout", "rename_keys", "load_weights_only", "read_state_dict", "to_own_layout",
    "check_fits", "load_checkpoint", "WriteError", "atomic_write", "atomic_write_folder", "write_error",
]

WRAPPER_KEYS = ("model", "state_dict", "state_dict_ema", "model_ema", "ema")
PREFIXES = ("module.", "_orig_mod.")
# The one class beyond tensors and plain containers that timm's CheckpointSaver writes (train.py's
# ``model_best.pth.tar``): the ``args`` argparse.Namespace, a plain attribute holder that runs no code.
TIMM_CHECKPOINT_GLOBALS = (argparse.Namespace,)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the keys."""


class WriteError(ValueError):
    """A file that could not be written (disk full, read-only, no permission, a file where a
    folder should be), in one line naming the file and the cause; the previous file is kept."""


@dataclass(frozen=True)
class Layout:
    model_cls: type[nn.Module]
    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[dict], dict]

    def describe(self) -> str:
        return f"{self.model_cls.__name__}: {self.name}"


_LAYOUTS: list[Layout] = []


def register_layout(model_cls: type[nn.Module], name: str, detect, convert) -> None:
    """Teach :func:`load_checkpoint` a foreign layout of ``model_cls``'s weights (the
    family's network class; instances of it and of its subclasses):
    ``detect(state_dict) -> bool`` recognises it, ``convert(state_dict) -> state_dict``
    renames/reshapes it to the library's own layout."""
    _LAYOUTS.append(Layout(model_cls, name, detect, convert))


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict:
    """Every key with each ``(pattern, replacement)`` regex substitution of ``rules``
    applied in turn (a foreign layout's renaming); tensors untouched."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


# -- reading -------------------------------------------------------------------------
def load_weights_only(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain containers only (and
    the ``argparse.Namespace`` of a timm training checkpoint), never arbitrary pickled
    objects; a refused or corrupt file is a :class:`CheckpointError`."""
    path = Path(path)
    _check_is_file(path)
    try:
        with torch.serialization.safe_globals(list(TIMM_CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, or a corrupt / truncated file
        raise CheckpointError(f"cannot read {path} as a weights-only checkpoint: {_reason(error)}") from error


def _reason(error: Exception) -> str:
    """One line of ``torch.load``'s error: the unpickler's own reason (e.g. ``Unsupported
    operand 80``) rather than its paragraphs of advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return next((line for line in lines if line.startswith("Unsupported")), lines[0])


def _check_is_file(path: Path) -> None:
    """A missing ``path`` is a ``FileNotFoundError`` saying what was looked for; a device, pipe
    or folder a :class:`CheckpointError` (nothing is read from it)."""
    if not path.exists():
        looks_like_hub_id = str(path).count("/") == 1 and not path.suffix and not str(path).startswith((".", "/", "~"))
        hint = (" - a Hugging Face hub id is not downloaded here: `hf download ID --local-dir DIR`, then pass DIR"
                if looks_like_hub_id else "")
        raise FileNotFoundError(f"checkpoint not found: {path} (no such file or save_pretrained folder{hint})")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint file (a folder, device or pipe)")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors; a corrupt or truncated file is a :class:`CheckpointError`."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' own error type for a bad header or size
        raise CheckpointError(f"cannot read {path} as a safetensors file: {error}") from error


def read_state_dict(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a file (``.safetensors``, ``.pth``/``.pt``/``.bin``
    read with ``weights_only=True``), a ``save_pretrained`` folder, or a dict — wrapper
    dicts unwrapped and ``module.`` / ``_orig_mod.`` prefixes stripped."""
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "model.safetensors"
        _check_is_file(path)
        state = _load_safetensors(path) if path.suffix == ".safetensors" else load_weights_only(path)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), Mapping):
            state = dict(state[key])
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found in the checkpoint (top-level keys: {sorted(state)[:10]})")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _pointwise_as_conv(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict:
    """``state`` with each 2-D (out, in) matrix reshaped to (out, in, 1, 1) where the model
    has a 1×1 convolution there, as the official EfficientViT / MobileViTv2 loaders do."""
    return {k: v.reshape(own[k].shape) if v.ndim == 2 and k in own and own[k].shape == (*v.shape, 1, 1) else v
            for k, v in state.items()}


def to_own_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, str]:
    """Convert ``state`` to ``model``'s own key names; returns it and the layout's name."""
    own = model.state_dict()
    if set(state) & set(own) and len(set(state) & set(own)) >= len(own) // 2:
        return _pointwise_as_conv(state, own), "efficientmod"
    layouts = [layout for layout in _LAYOUTS if isinstance(model, layout.model_cls)]
    for layout in layouts:
        if layout.detect(state):
            return _pointwise_as_conv(layout.convert(state), own), layout.name
    sample = ", ".join(sorted(state)[:6])
    raise CheckpointError(
        f"unrecognised checkpoint layout for {getattr(model, 'registry_name', '') or type(model).__name__}: "
        f"its keys ({sample}, ...) match neither this library's layout nor a known foreign one "
        f"({', '.join(layout.describe() for layout in layouts) or 'none'})"
    )


def _unfitting_head_keys(model: nn.Module, state: Mapping[str, torch.Tensor], own: Mapping) -> list[str]:
    """The checkpoint's classifier entries that do not fit ``model``: another class count,
    or any at all when the model has no classifier (``num_classes=0``, an ``nn.Identity``
    head that may stand where the checkpoint has a norm + linear head)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((n for n, m in model.named_modules() if m is classifier), None) if classifier is not None else None
    if not name:
        return []
    prefix = name + "."
    return [k for k, v in state.items() if k.startswith(prefix) and (k not in own or v.shape != own[k].shape)]


def _input_channels_hint(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """What to do when the checkpoint's first convolution (the first 4-D weight, modules
    being registered in forward order) takes another number of input channels than the model's."""
    first = next((k for k, v in own.items() if v.ndim == 4), None)
    theirs = state.get(first) if first is not None else None
    if theirs is None or theirs.ndim != 4 or theirs.shape[0] != own[first].shape[0]:
        return ""
    channels, ours = theirs.shape[1], own[first].shape[1]
    if channels == ours:
        return ""
    return (f"; the checkpoint is for {channels}-channel input, the model takes {ours}: "
            f"build it with in_chans={channels}")


def check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], layout: str, strict: bool = True,
               ignored=(), hint: str = "") -> None:
    """Raise one :class:`CheckpointError` naming the keys when ``state`` (in the model's own
    layout) does not fit the model's state dict ``own``: shape mismatches always, missing or
    unexpected keys when ``strict``; keys in ``ignored`` are left out of the comparison. A
    checkpoint for another number of input channels says so (refused at load, as timm does)."""
    ignored = set(ignored)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and k not in ignored and v.shape != own[k].shape]
    missing = sorted(set(own) - set(state) - ignored)
    unexpected = sorted(set(state) - set(own) - ignored)
    if not mismatched and not (strict and (missing or unexpected)):
        return
    parts = []
    if mismatched:
        parts.append("shape mismatch: " + "; ".join(mismatched[:10]))
    if missing:
        parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10]))
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10]))
    raise CheckpointError(f"checkpoint ({layout} layout) does not fit the model: " + "; ".join(parts)
                          + _input_channels_hint(own, state) + hint)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    strict: bool = True,
    ignore_head: bool = False,
) -> nn.Module:
    """Load released (official EfficientMod, timm) or own weights into ``model``.

    Args:
        strict: missing or unexpected keys raise one :class:`CheckpointError` naming them.
        ignore_head: a classifier whose shape differs from the model's (another class
            count, or none at all for ``num_classes=0``) is dropped with a warning and the
            model keeps its fresh head.
    """
    target = getattr(model, "model", model)  # timm's feature getter holds the network whole
    if target is model and type(model).__module__.startswith("timm.models._features"):
        raise ValueError(f"{type(model).__name__} (a features_only model) holds the network's modules under other "
                         "names: load the checkpoint as it is built, create_model(name, features_only=True, "
                         "checkpoint_path=PATH) or pretrained=PATH")
    state, layout = to_own_layout(target, read_state_dict(path_or_state_dict))
    own = target.state_dict()
    dropped = []
    if ignore_head:
        dropped = _unfitting_head_keys(target, state, own)
        if dropped:
            warnings.warn(f"checkpoint classifier ignored (shape differs from the model's): {dropped}", stacklevel=2)
            state = {k: v for k, v in state.items() if k not in dropped}
    check_fits(own, state, layout, strict=strict, ignored=dropped,
               hint="" if ignore_head else " (ignore_head=True drops a classifier of another class count)")
    target.load_state_dict(state, strict=False)
    return model


# -- writing ---------------------------------------------------------------------------
# the causes a writer's exception may only spell out in its message (torch.save says
# "[enforce fail at inline_container.cc...]", safetensors "SafetensorError: ... No space left")
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                errno.EIO, errno.EFBIG, errno.ENAMETOOLONG)
NEARLY_FULL_BYTES = 1 << 20


def _cause(error: BaseException, folder: Path) -> str:
    """``ENOSPC: No space left on device`` (the errno of an OSError in ``error``'s chain, one
    named in its message, or a full disk under ``folder``), else ``error``'s type and first line."""
    chained, seen = error, set()
    while chained is not None and id(chained) not in seen:  # a re-raised cause makes a cycle
        seen.add(id(chained))
        if isinstance(chained, OSError) and chained.errno:
            return f"{errno.errorcode.get(chained.errno, chained.errno)}: {chained.strerror or chained}"
        chained = chained.__cause__ or chained.__context__
    text = str(error)
    for code in WRITE_ERRNOS:
        if os.strerror(code).lower() in text.lower():
            return f"{errno.errorcode[code]}: {os.strerror(code)}"
    try:
        stats = os.statvfs(folder)
    except OSError:
        stats = None
    if stats is not None and stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES:
        return f"ENOSPC: {os.strerror(errno.ENOSPC)}"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


def write_error(path: str | os.PathLike, error: BaseException, existed: bool) -> WriteError:
    """``error``, raised while writing ``path``, as one :class:`WriteError` line naming the
    file and the cause (``existed``: whether an earlier ``path`` is there and kept)."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), Path("."))
    kept = f"; the previous {path.name} is intact" if existed else ""
    return WriteError(f"cannot write {path}: {_cause(error, folder)}{kept}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` to a temporary file in the same folder, fsync it, then rename it
    over ``path``: a crash leaves either the old file or the new one, never half of one.
    Any exception of the writer or the file system but a ``ValueError`` (which says what is
    wrong with the input) is one :class:`WriteError` line; the previous ``path`` is kept."""
    path = Path(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except ValueError:
        _remove(tmp)
        raise
    except Exception as error:  # noqa: BLE001 - torch.save, safetensors, onnx... each raise their own types
        failure = write_error(path, error, existed)  # before the temporary file frees the space it took
        _remove(tmp)
        raise failure from error
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_folder)`` into a temporary folder beside ``path``, then put it in place of
    ``path`` by renames: a crash leaves the old folder, the new one, or none (never a part of
    one; the temporary folders are named ``.<name>.*.tmp``). Errors as :func:`atomic_write`'s."""
    path = Path(path)
    existed = path.exists()
    staging = old = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        try:
            write(staging)
        except WriteError as error:  # of a file inside: name the folder, not the temporary one
            raise error.__cause__ or error from None
        if existed:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
            os.replace(path, old)  # onto the empty folder
        os.replace(staging, path)
        _fsync_folder(path.parent)
    except ValueError:
        _remove(staging)
        raise
    except Exception as error:  # noqa: BLE001 - as atomic_write
        failure = write_error(path, error, existed)
        _remove(staging)
        if old is not None:  # the previous folder back in place
            _remove(old) if path.exists() else os.replace(old, path)
        raise failure from error
    except BaseException:
        _remove(staging)
        raise
    _remove(old)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove(path: str | os.PathLike | None) -> None:
    """Delete a temporary file or folder, if any."""
    if path is None or not os.path.lexists(path):
        return
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)
