"""Quantisation-aware fine-tuning (``efficientmod train --qat``) into an OpenVINO int8 IR.

Post-training int8 (:mod:`efficientmod.export.quantize`) rounds a trained network to 256
levels per tensor (per channel for weights) and keeps whatever accuracy survives. Where too
little does, quantisation-aware training (Jacob et al., 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference") fine-tunes the network
*through* the rounding: fake quantisers (quantise, then dequantise, in float32) sit where
int8 will run, the forward pass sees int8's errors, gradients pass the rounding unchanged
(the straight-through estimator, Bengio et al., 2013) and the quantisers' ranges are
trained with the weights (NNCF's quantisers; as in LSQ, Esser et al., 2020).

The flow, one run of :class:`QATTrainer` (a :class:`~efficientmod.classify.engine.Trainer`
with its own model, best model and report):

1. ``--init-from``: a trained float model (a ``save_pretrained`` folder or a run folder
   holding ``model/``) is :func:`~efficientmod.fuse.deploy`\\ ed — BatchNorm and layer
   scales folded, projections merged — so the quantisers sit on the weights and
   activations OpenVINO will run in int8 (the same graph ``efficientmod export`` quantises),
   and no BatchNorm statistics drift during the fine-tune. The deployed blocks keep plain
   ``nn.Linear`` / ``nn.Conv2d`` parameters, which train like any others.
2. NNCF's post-training quantisation of that PyTorch model (``nncf.quantize``), calibrated
   on ``--calib-samples`` training images through the evaluation preprocessing, inserts
   the fake quantisers (NNCF's placement for the CPU, :data:`FLOAT_TYPES`): the starting
   point, scored on the validation set next to the float model.
3. The normal training loop fine-tunes weights and quantiser ranges (``QAT_PRESET`` of
   :mod:`efficientmod.classify.config`: a few epochs at a small learning rate, no heavy
   augmentation), evaluating the fake-quantised model every epoch; checkpoints hold the
   quantiser placement (``nncf.torch.get_config``, plain containers) beside the weights.
4. Each best epoch is converted to OpenVINO (``openvino.convert_model``: the fake
   quantisers become FakeQuantize ops that the CPU plugin runs as int8), checked by
   top-1 agreement with the fake-quantised PyTorch model on the validation images, and
   written as ``model_int8.xml`` / ``.bin`` with the metadata ``efficientmod export``
   stores, so ``efficientmod predict`` and :func:`efficientmod.load_runtime` run it.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from efficientmod.classify.config import TrainConfig
from efficientmod.classify.engine import Trainer
from efficientmod.export.calibration import Agreement, check_agreement, prediction_agreement
from efficientmod.export.openvino import StaticBatchModel, save_openvino
from efficientmod.preprocessing import Preprocessing
from efficientmod.runtime import Runtime

__all__ = ["IR_NAME", "AGREEMENT_TOLERANCE", "FLOAT_TYPES", "QATTrainer", "load_float_model",
           "quantise_model", "quantiser_placement", "restore_quantised", "export_int8", "check_qat_options"]

IR_NAME = "model_int8.xml"  # in the run folder, with model_int8.bin
# Points of top-1 / top-5 agreement the IR may lose against the fake-quantised PyTorch model:
# NNCF's fake quantisers and OpenVINO's int8 kernels round differently near class boundaries
# (99.1-99.6% top-1 agreement measured on 1,200 photo patches); a broken conversion is far below.
AGREEMENT_TOLERANCE = 2.0
# NNCF's PyTorch node types whose inputs stay float; none: NNCF's CPU placement, which also
# quantises the modulation multiply and the residual adds (OpenVINO's Multiply / Add).
# ("mul", "add") was measured against it on the photo-patch model (benchmarks/deploy.md):
# more predictions kept (90.5-90.7% vs 85.5-86.7% agreement with fp32), but 1.2-1.7 points
# of top-1 lost against 0.3-0.8 — the fine-tune recovers accuracy best where it quantises most.
FLOAT_TYPES: tuple[str, ...] = ()
MIN_NNCF = (3, 4)  # nncf.torch.get_config / load_from_config as used here (tested with 3.4)


def _nncf():
    try:
        import nncf
        import nncf.torch  # noqa: F401 - the PyTorch backend
    except ImportError:
        raise ImportError("--qat needs NNCF and OpenVINO: pip install 'efficientmod[openvino]'") from None
    if tuple(int(part) for part in nncf.__version__.split(".")[:2]) < MIN_NNCF:
        raise ImportError(f"--qat needs nncf >= {'.'.join(map(str, MIN_NNCF))}, found {nncf.__version__}")
    _use_reference_kernels()
    return nncf


def _use_reference_kernels() -> None:
    """Run NNCF's fake quantisers as its pure-PyTorch reference functions (the same
    arithmetic) instead of its C++ / CUDA kernels. Those are compiled just in time on first
    use — a compiler (and nvcc) needed, minutes on a small machine, and past NNCF's 60 s
    limit a hard error that leaves a lock file behind (measured: a 2-core machine, nncf 3.4).
    Kernels already loaded are left alone."""
    from types import SimpleNamespace

    from nncf.torch.extensions import ExtensionNamespace
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    reference = ReferenceQuantize(ReferenceBackendType.TORCH)
    kernels = SimpleNamespace(Quantize_forward=reference.forward, Quantize_backward=reference.backward)
    for namespace in (extensions.QuantizedFunctionsCPU, extensions.QuantizedFunctionsCUDA):
        if isinstance(namespace, ExtensionNamespace) and namespace._loaded_namespace is None:  # not loaded yet
            namespace._loaded_namespace = kernels


def check_qat_options(cfg: TrainConfig) -> None:
    """Refuse the options that cannot go with ``--qat``."""
    if not cfg.qat:
        raise ValueError("QATTrainer runs --qat; efficientmod.classify.engine.Trainer trains float models")
    if not cfg.init_from:
        raise ValueError("--qat needs --init-from RUN_OR_MODEL_DIR (the trained float model to quantise)")
    refused = {
        "pretrained": "--init-from gives the weights",
        "synthetic": "a QAT run needs real images to calibrate on",
        "benchmark_steps": "a QAT run writes a model",
        "compile": "torch.compile does not trace NNCF's quantiser hooks",
        "ema": "the averaged weights would skip the IR's check; the preset turns it off",
    }
    for name, reason in refused.items():
        if getattr(cfg, name):
            raise ValueError(f"--{name.replace('_', '-')} does not go with --qat: {reason}")
    if cfg.amp in ("bf16", "fp16"):
        raise ValueError(f"--amp {cfg.amp} does not go with --qat: the fake quantisers emulate int8 on float32")


def load_float_model(init_from: str | Path) -> nn.Module:
    """The float model of ``--init-from``: a ``save_pretrained`` folder, or a training run
    folder holding one as ``model/``; with ``class_names`` and ``preprocessing``."""
    from efficientmod.models.pretrained import from_pretrained

    folder = Path(init_from)
    if folder.is_file():
        raise ValueError(f"--init-from {folder} is a file: name the run folder that holds model/ or the "
                         "model/ folder itself (save_pretrained), not a checkpoint")
    if not folder.is_dir():
        raise FileNotFoundError(f"--init-from: folder not found: {folder} (a run folder holding model/, or a "
                                "save_pretrained model/ folder)")
    for candidate in (folder, folder / "model"):
        if (candidate / "config.json").is_file():
            return from_pretrained(candidate)
    raise FileNotFoundError(f"--init-from {folder}: neither a model folder (config.json) nor a run folder "
                            "holding model/")


def qat_config(cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """``cfg`` with --model, --img-size and --in-chans of the ``--init-from`` model (given
    ones must agree with it)."""
    channels, height, width = model.preprocessing.input_size
    if height != width:
        raise ValueError(f"--init-from: the model's saved input size {list(model.preprocessing.input_size)} is "
                         "not square")
    derived = dict(model=model.registry_name, img_size=height, in_chans=channels)
    for name, value in derived.items():
        given = getattr(cfg, name)
        if given is not None and given != value:
            raise ValueError(f"--{name.replace('_', '-')} {given} does not match the --init-from model ({value}); "
                             "drop it")
    return dataclasses.replace(cfg, **derived)


def quantise_model(model: nn.Module, images: list[torch.Tensor], float_types: tuple[str, ...] | None = None,
                   ) -> nn.Module:
    """A copy of ``model`` with NNCF's trainable fake quantisers, their ranges calibrated on
    ``images`` (each 1×C×H×W, preprocessed as at inference) by NNCF's post-training
    quantisation (its CPU placement, fast bias correction), the inputs of the ops of
    ``float_types`` (default :data:`FLOAT_TYPES`) left in float."""
    nncf = _nncf()
    if not images:
        raise ValueError("no calibration image could be read")
    float_types = FLOAT_TYPES if float_types is None else float_types
    ignored = nncf.IgnoredScope(types=list(float_types), validate=False) if float_types else None
    return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images), ignored_scope=ignored)


def _plain(value):
    """``value`` with every enum replaced by its value: what ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def quantiser_placement(qmodel: nn.Module) -> dict:
    """Where ``qmodel``'s fake quantisers sit and how they are built (``nncf.torch.get_config``),
    as plain containers: a checkpoint holding it still loads with ``weights_only=True``."""
    return _plain(_nncf().torch.get_config(qmodel))


def restore_quantised(model: nn.Module, placement: dict) -> nn.Module:
    """``model`` with the fake quantisers that ``placement`` (``nncf.torch.get_config``)
    describes, their values still to be loaded with ``load_state_dict``."""
    nncf = _nncf()
    return nncf.torch.load_from_config(copy.deepcopy(model), placement)


@torch.no_grad()
def export_int8(qmodel: nn.Module, path: str | Path, batches: Iterable, metadata: dict,
                tolerance: float = AGREEMENT_TOLERANCE) -> tuple[Path, Agreement, np.ndarray, np.ndarray]:
    """Convert the fake-quantised ``qmodel`` to an OpenVINO int8 IR, run it and ``qmodel`` on
    ``batches`` (``(images, labels)`` pairs, images preprocessed; read once, batch by batch),
    require their top-1 / top-5 agreement within ``tolerance`` points of 100, then write
    ``path`` (.xml + .bin, atomically, a batch of 1, ``metadata`` with precision
    int8). Returns the path, the agreement, the IR's logits and the labels. Nothing is
    written when the check fails (:class:`~efficientmod.export.format.ExportVerificationError`)."""
    cpu = copy.deepcopy(qmodel).cpu().eval()
    ov_model = int8 = None
    reference, logits, labels = [], [], []
    for images, targets in batches:
        images = torch.as_tensor(images).float().cpu()
        if ov_model is None:
            ov_model, int8 = _convert_int8(cpu, images[:1])
        reference.append(cpu(images).numpy())
        logits.append(int8.run(images.numpy()))
        labels.append(np.asarray(targets))
    if ov_model is None:
        raise ValueError(f"{path}: no image to check the int8 IR on")
    logits = np.concatenate(logits)
    agreement = check_agreement(prediction_agreement(np.concatenate(reference), logits), tolerance,
                                f"{path} (OpenVINO int8 vs the fake-quantised PyTorch model)")
    save_openvino(ov_model, path, {**metadata, "precision": "int8"})
    return Path(path), agreement, logits, np.concatenate(labels)


def _convert_int8(qmodel: nn.Module, example: torch.Tensor):
    """``qmodel`` (CPU, eval) as an ``openvino.Model`` with a dynamic batch axis, and that
    model compiled per batch size in int8 (:class:`~efficientmod.export.openvino.StaticBatchModel`)."""
    import openvino as ov

    with warnings.catch_warnings():  # TorchScript's tracer warns about NNCF's quantisers (constants, as meant)
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(qmodel, example_input=example)
    ov_model.reshape([-1, *example.shape[1:]])
    return ov_model, StaticBatchModel(ov_model, "int8")


class QATTrainer(Trainer):
    """``efficientmod train --qat``: a :class:`~efficientmod.classify.engine.Trainer` whose
    model is the deployed float model of ``--init-from`` with NNCF's fake quantisers, whose
    best epochs are written as the verified OpenVINO int8 IR ``model_int8.xml`` (instead of
    ``model/``), and whose result adds the fp32 / post-training / QAT comparison (``qat``)."""

    best_model_name = IR_NAME
    run_files = ("last.pth", "best.pth", "metrics.csv", "config.yaml", "tensorboard", IR_NAME, "model_int8.bin")
    min_useful_lr = 0.0  # a fine-tune of quantisers wants a small learning rate

    def __init__(self, cfg: TrainConfig, runtime: Runtime | None = None):
        self.scores: dict[str, float] = {}  # fp32 and post-training top-1, then the IR's
        self.placement: dict | None = None  # where the fake quantisers sit (nncf.torch.get_config)
        super().__init__(cfg, runtime)

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` checked for ``--qat``, with the model, input size and channels of the
        ``--init-from`` float model (loaded here)."""
        check_qat_options(cfg)
        _nncf()
        self.float_model = load_float_model(cfg.init_from)
        return qat_config(cfg, self.float_model)

    def check_data(self) -> None:
        """The data must have the model's classes and preprocessing."""
        saved = self.float_model.class_names
        if saved is not None and list(saved) != list(self.class_names):
            raise ValueError(f"--init-from was trained on the classes {list(saved)[:5]}..., the data has "
                             f"{list(self.class_names)[:5]}... (same names, same order needed)")
        recorded = self.float_model.preprocessing.to_dict()
        differs = [key for key, value in self.preprocessing.to_dict().items() if recorded[key] != value]
        if differs:
            raise ValueError(f"the data's preprocessing differs from the --init-from model's in {', '.join(differs)}")

    def build_model(self, resume_state: dict | None) -> nn.Module:
        """The deployed float model with fake quantisers: restored from the checkpoint to
        resume, else calibrated (and the float and post-training top-1 measured)."""
        from efficientmod.fuse import deploy

        if self.runtime.distributed:
            raise ValueError("--qat runs on one process (not under torchrun)")
        self.check_data()
        float_model = deploy(self.float_model.to(self.runtime.device))
        if resume_state is not None:
            saved = resume_state.get("qat")
            if not saved:
                raise ValueError("--resume: the checkpoint holds no QAT state (it is not a --qat run)")
            self.placement, self.scores = saved["placement"], dict(saved["scores"])
            return restore_quantised(float_model, self.placement)
        images = self.calibration_images()
        self.say(f"qat: calibrating NNCF's int8 quantisers on {len(images)} training images")
        model = quantise_model(float_model, images)
        self.placement = quantiser_placement(model)
        self.scores = dict(fp32_top1=self.evaluate_model(float_model)["top1"],
                           ptq_top1=self.evaluate_model(model)["top1"])
        self.say(f"qat: val top-1 fp32 {self.scores['fp32_top1']:.2f}%, int8 after calibration (post-training) "
                 f"{self.scores['ptq_top1']:.2f}%")
        return model

    def calibration_images(self) -> list[torch.Tensor]:
        """``--calib-samples`` training images through the evaluation transform, spread
        evenly over the (class-ordered) training set; unreadable files skipped."""
        from efficientmod.classify.data import BadSample, ImageFolder, digits_datasets

        cfg = self.cfg
        if cfg.data is None:
            dataset = digits_datasets(cfg.img_size, max_shift=0, seed=cfg.seed)[0]
        else:
            dataset = ImageFolder(Path(cfg.data) / "train", self.class_names, self.data.val.transform)
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(cfg.calib_samples, len(dataset))).round().astype(int))
        samples = [dataset[int(i)] for i in picks]
        readable = (sample for sample in samples if not isinstance(sample, BadSample))
        return [image[None].to(self.runtime.device) for image, _ in readable]

    def state_dict(self) -> dict:
        """The trainer's state, and the quantiser placement and the starting scores."""
        return dict(super().state_dict(), qat=dict(placement=self.placement, scores=self.scores))

    def save_best_model(self, source: str) -> None:
        """The model's IR as ``model_int8.xml`` in the run folder, checked on the validation
        set (rank 0 only; ``source`` is always the raw model: QAT keeps no EMA)."""
        if self.runtime.main:
            with self.run_folder.writing(self.run_dir / IR_NAME):
                self.write_ir()

    def write_ir(self) -> Path:
        """The fake-quantised model as ``model_int8.xml`` (:func:`export_int8`, with the metadata
        ``efficientmod export`` stores), its top-1 and agreement added to the scores."""
        from efficientmod.metadata import export_metadata

        path = self.run_dir / IR_NAME
        preprocessing = Preprocessing.of_model(self.float_model, (self.cfg.in_chans, self.cfg.img_size,
                                                                  self.cfg.img_size))
        metadata = export_metadata(self.float_model, preprocessing)
        batches = ((images, labels) for images, labels, _ in self.val_loader if len(labels))
        _, agreement, logits, labels = export_int8(self.model, path, batches, metadata)
        self.scores.update(ir_top1=100.0 * float((logits.argmax(axis=1) == labels).mean()),
                           ir_agreement=agreement.top1)
        self.say(f"qat: wrote {path} (OpenVINO int8: val top-1 {self.scores['ir_top1']:.2f}%, {agreement} "
                 "against the fake-quantised PyTorch model)")
        return path

    def report(self, result: dict) -> dict:
        """``result`` with ``qat``: the fp32 / post-training int8 / QAT int8 comparison (rank
        0), also printed."""
        if not self.runtime.main:
            return result
        scores = dict(self.scores, qat_top1=self.best_top1)
        print(f"qat: val top-1: fp32 {scores['fp32_top1']:.2f}% | int8 post-training (start) "
              f"{scores['ptq_top1']:.2f}% | int8 after QAT {scores['qat_top1']:.2f}% (fake-quantised PyTorch); "
              f"OpenVINO {IR_NAME} {scores.get('ir_top1', float('nan')):.2f}%", file=sys.stderr)
        return dict(result, qat=scores)
