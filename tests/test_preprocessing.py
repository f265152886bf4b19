"""One Preprocessing from data loading to deployment: the training checkpoint, the model/
folder's config.json and model card, export metadata, predict and eval all record and
use the same input size, statistics, interpolation and crop."""
from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from synthetic_images import make_image_folder
from test_deploy import random_model

from efficientmod.classify.config import DEMO_PRESET, TrainConfig
from efficientmod.classify.data import build_datasets, digits_preprocessing
from efficientmod.classify.evaluate import default_workers
from efficientmod.classify.predict import load_model
from efficientmod.cli import main
from efficientmod.metadata import MAX_CLASSES, ExportMetadata, class_names_of, export_metadata
from efficientmod.models import model_info
from efficientmod.models.pretrained import from_pretrained
from efficientmod.preprocessing import Preprocessing

SIZE = 64  # not the variant's 224 nor the demo's 32


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), train_per_class=6, val_per_class=4, size=56)


@pytest.fixture(scope="module")
def run(images, tmp_path_factory) -> Path:
    """One short epoch at 64 px on the RGB folder, its model/ exported to ONNX."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--model", "efficientmod_xxs", "--data", str(images), "--output", str(out),
                 "--img-size", str(SIZE), "--batch-size", "4", "--workers", "0", "--epochs", "1",
                 "--warmup-epochs", "0", "--cooldown-epochs", "0", "--lr", "1e-3", "--no-tensorboard"]) == 0
    assert main(["export", str(out / "model"), "-o", str(out / "model.onnx")]) == 0
    return out


def _eval(capsys, checkpoint: Path, images: Path, *extra: str) -> tuple[str, float, float]:
    """(input size, top-1, loss) that `efficientmod eval` prints for ``checkpoint``."""
    assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(checkpoint), "--data", str(images),
                 "--workers", "0", *extra]) == 0
    out = capsys.readouterr().out
    size, top1, loss = re.search(r"\) at (\S+): top-1 ([\d.]+)%.*loss ([\d.]+)", out).groups()
    return size, float(top1), float(loss)


def _assert_agree(exported: tuple[str, float, float], best: tuple[str, float, float]) -> None:
    assert exported[:2] == best[:2] and exported[2] == pytest.approx(best[2], abs=1e-3)


def test_eval_of_folder_checkpoint_and_export_agree_at_the_training_size(run, images, capsys):
    folder = _eval(capsys, run / "model", images)
    best = _eval(capsys, run / "best.pth", images)
    assert folder[0] == best[0] == f"3x{SIZE}x{SIZE}"
    assert folder[1] == best[1] and folder[2] == pytest.approx(best[2], abs=1e-4)
    _assert_agree(_eval(capsys, run / "model.onnx", images), best)
    assert _eval(capsys, run / "model", images, "--img-size", "96")[0] == "3x96x96"  # asked for: another size


@pytest.mark.slow  # about 12 s (OpenVINO) and 100 s (ExecuTorch) on 2 shared cores
@pytest.mark.parametrize("runtime, suffix", [("openvino", ".xml"), ("executorch", ".pte")])
def test_eval_of_the_other_exports_agrees(runtime, suffix, run, images, capsys):
    if importlib.util.find_spec(runtime) is None:
        pytest.skip(f"{runtime} is not installed")
    exported = run / f"model{suffix}"
    assert main(["export", str(run / "model"), "-o", str(exported)]) == 0
    _assert_agree(_eval(capsys, exported, images), _eval(capsys, run / "best.pth", images))


def test_the_run_records_one_preprocessing_everywhere(run):
    from efficientmod.export import read_onnx_metadata

    expected = Preprocessing.of_timm_cfg(model_info("efficientmod_xxs").pretrained_cfg(), 3)
    expected = expected.with_input_size((3, SIZE, SIZE))
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    config = json.loads((run / "model" / "config.json").read_text())
    assert Preprocessing.from_dict(best["preprocessing"]) == expected
    assert Preprocessing.from_dict(config["pretrained_cfg"]) == expected
    assert ExportMetadata.from_dict(read_onnx_metadata(run / "model.onnx")).preprocessing == expected
    for model in (from_pretrained(run / "model"), load_model("efficientmod_xxs", run / "best.pth")):
        assert model.preprocessing == expected and Preprocessing.of_model(model) == expected
        assert model.class_names == ["ant", "bee"] == model.pretrained_cfg["label_names"]
    via_timm = timm.create_model(f"local-dir:{run / 'model'}", pretrained=True)  # timm reads config.json itself
    assert via_timm.pretrained_cfg["label_names"] == ["ant", "bee"] == class_names_of(via_timm)
    assert Preprocessing.of_model(via_timm) == expected


def _card_input_line(folder: Path) -> str:
    return next(line for line in (folder / "README.md").read_text().splitlines() if line.startswith("| input |"))


@pytest.mark.parametrize("preset", ["demo", "rgb64"])
def test_model_card_states_what_config_json_records(preset, images, tmp_path):
    cfg = (TrainConfig(**dict(DEMO_PRESET, model="efficientmod_xxs")) if preset == "demo"
           else TrainConfig(model="efficientmod_xxs", data=str(images), img_size=64))
    data = build_datasets(cfg, cfg.img_size, model_info(cfg.model))
    model = random_model("efficientmod_xxs", num_classes=len(data.class_names), in_chans=data.in_chans)
    model.save_pretrained(tmp_path, class_names=data.class_names, preprocessing=data.preprocessing)
    saved = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    chans, height, width = saved["input_size"]
    assert _card_input_line(tmp_path) == (
        f"| input | {chans} × {height} × {width}, crop {saved['crop_pct']}, mean {saved['mean']}, "
        f"std {saved['std']}, {saved['interpolation']} |")
    if preset == "demo":
        assert data.preprocessing == digits_preprocessing(32)
        assert (saved["input_size"], saved["mean"], saved["interpolation"]) == ([1, 32, 32], [0.5], "bilinear")
    else:
        assert saved["input_size"] == [3, 64, 64] and saved["mean"] == [0.485, 0.456, 0.406]


def test_a_one_channel_folder_and_its_export_evaluate_on_grey_images(tmp_path, capsys):
    """A model/ folder at 1 x 64 x 64 (the digits' statistics) decodes an image folder as
    one channel, and so does its ONNX export."""
    model = random_model("efficientmod_xxs", num_classes=2, in_chans=1)
    model.save_pretrained(tmp_path / "model", class_names=["ant", "bee"], preprocessing=digits_preprocessing(SIZE))
    assert main(["export", str(tmp_path / "model"), "-o", str(tmp_path / "model.onnx")]) == 0
    capsys.readouterr()
    grey = make_image_folder(tmp_path / "grey", train_per_class=1, val_per_class=3)
    folder, onnx = (_eval(capsys, tmp_path / name, grey) for name in ("model", "model.onnx"))
    assert folder[0] == onnx[0] == f"1x{SIZE}x{SIZE}"
    assert folder[1] == onnx[1] and folder[2] == pytest.approx(onnx[2], abs=1e-3)


def test_export_metadata_round_trips_and_checks_what_it_reads():
    model = random_model("efficientmod_xxs", num_classes=2, in_chans=1)
    model.declare(digits_preprocessing(SIZE), ["no", "yes"])
    written = export_metadata(model, model.preprocessing)
    read = ExportMetadata.from_dict(json.loads(json.dumps(written)), "x.onnx")
    assert (read.architecture, read.num_classes, read.class_names) == ("efficientmod_xxs", 2, ("no", "yes"))
    assert read.preprocessing == digits_preprocessing(SIZE)
    for change, message in [
        (dict(producer="someone"), "no efficientmod metadata"),
        (dict(class_names=[1, 2]), "must all be strings"),
        (dict(class_names=["a", "b", "c"]), "3 class names for a model with 2 classes"),
        (dict(class_names="ab"), "must be a list of strings"),
        (dict(num_classes=MAX_CLASSES + 1, class_names=None), "num_classes must be an integer"),
        (dict(num_classes=True), "num_classes must be an integer"),
        (dict(input_size=[1, 10**6, 48]), "outside 1 to 4096"),
        (dict(std=[0.0]), "must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExportMetadata.from_dict({**written, **change}, "x.onnx")


def test_declarations_are_checked_and_a_new_head_drops_the_names():
    model = random_model("efficientmod_xxs", num_classes=2)
    assert model.preprocessing is None and model.class_names is None  # the class-level defaults
    with pytest.raises(ValueError, match="1 channel"):
        model.declare(digits_preprocessing(SIZE))
    with pytest.raises(ValueError, match="1 class names for a model with 2"):
        model.declare(None, ["only"])
    model.declare(None, ["a", "b"])
    assert model.pretrained_cfg["label_names"] == ["a", "b"]
    model.reset_classifier(5)
    assert model.class_names is None and "label_names" not in model.pretrained_cfg


def test_predict_of_a_missing_folder_says_it_is_not_found(capsys):
    assert main(["predict", "runs/s/model", "cat.jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "efficientmod predict: error: model folder not found: runs/s/model"


def test_eval_workers_default_to_the_cores_without_warnings(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers() == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers() == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    model = random_model("efficientmod_xxs", num_classes=2)
    model.save_pretrained(tmp_path / "model", class_names=["ant", "bee"],
                          preprocessing=Preprocessing.of_model(model, (3, 32, 32)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["eval", "--model", "efficientmod_xxs", "--checkpoint", str(tmp_path / "model"),
                     "--data", str(images)]) == 0  # no --workers
    assert "(8 images) at 3x32x32" in capsys.readouterr().out
    assert not [w for w in caught if "worker" in str(w.message)]


def test_grey_images_of_a_folder_are_decoded_as_one_channel(tmp_path):
    from efficientmod.classify.data import ImageFolder

    (tmp_path / "a").mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "a" / "red.png")
    pre = digits_preprocessing(16)
    image, label = ImageFolder(tmp_path, ["a"], pre.transform, mode=pre.image_mode)[0]
    assert image.shape == (1, 16, 16) and label == 0
