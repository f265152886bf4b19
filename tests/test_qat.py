"""``efficientmod train --qat``: quantisation-aware fine-tune of a saved float model into an
OpenVINO int8 IR (efficientmod_xxs at 32×32 on a tiny image folder, one epoch).

The refusals need nothing optional; everything else skips (with the reason) when
``efficientmod[openvino]`` (OpenVINO + NNCF) is not installed.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_images import make_image_folder
from test_deploy import random_model

from efficientmod.classify.config import QAT_PRESET, TrainConfig
from efficientmod.cli import main
from efficientmod.models import model_info
from efficientmod.preprocessing import Preprocessing

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO / NNCF not installed: "
                                    "pip install 'efficientmod[openvino]'")
CLASSES = ("ant", "bee", "cow")
SMALL = ["--batch-size", "4", "--workers", "0", "--threads", "1", "--no-tensorboard", "--calib-samples", "6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), classes=CLASSES, train_per_class=4,
                             val_per_class=4, size=40)


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder as a training run leaves it: 32 px, the data's classes and
    preprocessing (random weights: enough for the plumbing)."""
    info = model_info("efficientmod_xxs")
    folder = tmp_path_factory.mktemp("float") / "model"
    model = random_model("efficientmod_xxs", scale_head=False, num_classes=len(CLASSES))
    model.save_pretrained(folder, class_names=list(CLASSES), preprocessing=Preprocessing(
        (3, 32, 32), info.mean, info.std, interpolation=info.interpolation, crop_pct=info.crop_pct))
    return folder


def one_line_error(capsys) -> str:
    """The CLI's error: one line, the last one on stderr (libraries may log before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(("efficientmod train:", "efficientmod demo:"))]
    assert len(errors) == 1 and errors[0] == err[-1], err
    return errors[0]


@pytest.mark.parametrize("argv, message", [
    (["--qat"], "--qat needs --init-from"),
    (["--init-from", "somewhere"], "--init-from gives the float model of --qat"),
    (["--qat", "--init-from", "somewhere", "--pretrained", "w.pth"], "--pretrained does not go with --qat"),
    (["--qat", "--init-from", "somewhere", "--ema"], "--ema does not go with --qat"),
    (["--qat", "--init-from", "somewhere", "--amp", "bf16"], "--amp bf16 does not go with --qat"),
    (["--qat", "--init-from", "somewhere", "--compile"], "--compile does not go with --qat"),
])
def test_bad_qat_arguments_are_refused_in_one_line(argv, message, data, tmp_path, capsys):
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *argv]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_demo_refuses_qat(capsys):
    assert main(["demo", "--qat", "--init-from", "somewhere"]) == 2
    assert "efficientmod train --qat" in one_line_error(capsys)


def test_the_float_trainer_refuses_qat_and_imports_nothing_of_it():
    """QAT is a trainer of its own: the float Trainer points to it, and neither the engine
    nor anything it imports imports the QAT module."""
    from test_layout import import_graph

    from efficientmod.classify.engine import Trainer

    with pytest.raises(ValueError, match="QATTrainer"):
        Trainer(TrainConfig(qat=True, init_from="somewhere", model="efficientmod_xxs"))
    graph = import_graph()
    seen, todo = set(), ["efficientmod.classify.engine"]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    assert "efficientmod.classify.qat" not in seen
    assert "efficientmod.classify.engine" in graph["efficientmod.classify.qat"]


def test_qat_preset_is_a_short_fine_tune():
    cfg = TrainConfig(**QAT_PRESET)
    assert cfg.cooldown_epochs == cfg.warmup_epochs == 0 and not cfg.ema and cfg.weight_decay == 0
    assert cfg.mixup == cfg.cutmix == cfg.reprob == 0 and cfg.lr <= 1e-4


@needs_openvino
@pytest.mark.parametrize("argv, message", [
    (["--init-from", "missing-folder"], "--init-from: folder not found"),
    (["--model", "efficientmod_xs"], "--model efficientmod_xs does not match the --init-from model"),
    (["--img-size", "64"], "--img-size 64 does not match"),
])
def test_qat_refuses_a_model_that_does_not_fit(argv, message, data, float_dir, tmp_path, capsys):
    argv = ["--init-from", str(float_dir), *argv] if argv[0] != "--init-from" else argv
    assert main(["train", "--qat", "--data", str(data), "--output", str(tmp_path / "run"), *argv]) == 2
    assert message in one_line_error(capsys)


@needs_openvino
def test_qat_refuses_data_with_other_classes(float_dir, tmp_path, capsys):
    other = make_image_folder(tmp_path / "other", classes=("x", "y", "z"), train_per_class=4, val_per_class=1)
    assert main(["train", "--qat", "--init-from", str(float_dir), "--data", str(other),
                 "--output", str(tmp_path / "run"), *SMALL]) == 2
    assert "trained on the classes" in one_line_error(capsys)


@needs_openvino
def test_quantiser_placement_survives_a_weights_only_checkpoint(float_dir, data, tmp_path):
    """get_config + state_dict, saved and read back with weights_only=True, rebuild the same
    fake-quantised model (what --resume relies on)."""
    import efficientmod
    from efficientmod.checkpoint import load_weights_only
    from efficientmod.classify.qat import quantise_model, quantiser_placement, restore_quantised
    from efficientmod.models.pretrained import from_pretrained

    model = efficientmod.deploy(from_pretrained(float_dir))
    images = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    qmodel = quantise_model(model, images)
    torch.save(dict(placement=quantiser_placement(qmodel), model=qmodel.state_dict()), tmp_path / "q.pth")
    saved = load_weights_only(tmp_path / "q.pth")
    restored = restore_quantised(model, saved["placement"])
    restored.load_state_dict(saved["model"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), qmodel.eval()(x))
        assert not torch.equal(qmodel(x), model(x))  # the quantisers are in place


@needs_openvino
def test_element_wise_ops_can_stay_float(float_dir):
    """With ``mul`` and ``add`` among the float types NNCF leaves the modulation multiply's
    inputs in float (its output still feeds an int8 projection): fewer quantisers."""
    import efficientmod
    from efficientmod.classify.qat import quantise_model
    from efficientmod.models.pretrained import from_pretrained

    model = efficientmod.deploy(from_pretrained(float_dir))
    images = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def hooks(float_types):
        from nncf.torch.function_hook.wrapper import get_hook_storage

        return [name for name, _ in get_hook_storage(quantise_model(model, images, float_types)).named_hooks()]

    everywhere, element_wise_float = hooks(()), hooks(("mul", "add"))
    assert len(element_wise_float) < len(everywhere)
    # the outputs of the context projection g and the value activation feed the multiply only
    for producer in ("/g/linear/", "/v_act/gelu/"):
        assert any(name.startswith("post_hooks") and producer in name for name in everywhere)
        assert not any(name.startswith("post_hooks") and producer in name for name in element_wise_float)


@needs_openvino
@pytest.mark.slow  # NNCF calibration, one epoch and the OpenVINO conversion: ~30 s on a loaded 2-core machine
def test_qat_run_writes_a_verified_int8_ir(float_dir, data, tmp_path, capsys):
    from efficientmod.checkpoint import load_weights_only
    from efficientmod.classify.qat import QATTrainer, restore_quantised
    from efficientmod.export import load_runtime
    from efficientmod.export.calibration import read_calibration_images
    from efficientmod.models.pretrained import from_pretrained

    out = tmp_path / "qat"
    cfg = TrainConfig(**dict(QAT_PRESET, qat=True, init_from=str(float_dir.parent), data=str(data), output=str(out),
                             epochs=1, lr=1e-4, batch_size=4, workers=0, threads=1, tensorboard=False,
                             calib_samples=6))
    result = QATTrainer(cfg).fit()
    written = {p.name for p in out.iterdir()}
    assert {"last.pth", "best.pth", "model_int8.xml", "model_int8.bin", "metrics.csv"} <= written
    assert not (out / "model").exists()
    scores = result["qat"]
    assert set(scores) == {"fp32_top1", "ptq_top1", "qat_top1", "ir_top1", "ir_agreement"}
    assert scores["ir_agreement"] >= 99.0 and scores["qat_top1"] == result["best_top1"]
    assert "int8 post-training (start)" in capsys.readouterr().err

    runtime = load_runtime(out / "model_int8.xml", threads=1)
    assert runtime.metadata["precision"] == "int8" and runtime.metadata["class_names"] == list(CLASSES)
    assert runtime.metadata["input_size"] == [3, 32, 32]
    # the IR predicts what the fake-quantised PyTorch model of best.pth predicts
    state = load_weights_only(out / "best.pth")
    assert state["config"]["model"] == "efficientmod_xxs" and state["qat"]["scores"]["ptq_top1"] == scores["ptq_top1"]
    import efficientmod

    qmodel = restore_quantised(efficientmod.deploy(from_pretrained(float_dir)), state["qat"]["placement"])
    qmodel.load_state_dict(state["model"])
    images = read_calibration_images(data / "val", Preprocessing.of_model(from_pretrained(float_dir)), None)
    with torch.no_grad():
        reference = qmodel.eval()(torch.from_numpy(images)).numpy()
    logits = runtime.run(images)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 11 / 12
    assert np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()

    # a resume rebuilds the quantisers from the checkpoint (nothing left to train here)
    resumed = QATTrainer(replace(cfg, resume="auto")).fit()
    assert resumed["epochs"] == 1 and resumed["qat"]["ptq_top1"] == scores["ptq_top1"]

    image = next((data / "val" / "ant").iterdir())
    assert main(["predict", str(out / "model_int8.xml"), str(image), "--topk", "2"]) == 0
    assert any(name in capsys.readouterr().out for name in CLASSES)
    # the run folder rules of every run: no silent overwrite
    assert main(["train", "--qat", "--init-from", str(float_dir), "--data", str(data), "--output", str(out),
                 *SMALL]) == 2
    assert "already holds a run" in capsys.readouterr().err
