"""``efficientmod predict``: preprocessing, class names, the ONNX path, unreadable files."""
from __future__ import annotations

import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata
from test_deploy import random_model

import efficientmod
from efficientmod.classify.predict import Predictor, imagenet_class_names, load_model
from efficientmod.cli import main
from efficientmod.preprocessing import Preprocessing
from efficientmod.runtime import read_train_checkpoint, save_train_checkpoint

CLASSES = ["cat", "astronaut", "coffee"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two real photos (scikit-image's) and a file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(skdata.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    random_model("efficientmod_xxs", num_classes=len(CLASSES)).save_pretrained(folder, class_names=CLASSES)
    return folder


def parse_top(out: str) -> dict[str, list[tuple[float, str]]]:
    """{image path: [(percent, class), ...]} from predict's output."""
    result, current = {}, None
    for line in out.splitlines():
        match = re.match(r"\s+\d+\.\s+([\d.]+)%\s+(.+)$", line)
        if match:
            result[current].append((float(match[1]), match[2]))
        else:
            current = line.strip()
            result[current] = []
    return result


def test_imagenet_class_names_are_bundled():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[281] == "tabby"


def test_preprocessing_follows_the_registry(images):
    model = efficientmod.create_model("efficientvit_m0")
    pre = Preprocessing.of_model(model)
    info = efficientmod.model_info("efficientvit_m0")
    assert (pre.input_size, pre.mean, pre.std, pre.crop_pct) == (info.input_size, info.mean, info.std, info.crop_pct)
    tensor = pre.load(images / "chelsea.jpg")
    assert tensor.shape == (3, 224, 224)
    assert -3 < tensor.mean() < 3 and tensor.std() > 0.1  # normalised, not raw 0..255


def test_cli_predict_uses_saved_class_names_and_skips_unreadable_files(pretrained, images, capsys):
    paths = [str(images / n) for n in ("chelsea.jpg", "broken.jpg", "astronaut.png")]
    assert main(["predict", str(pretrained), *paths, "--topk", "3", "--batch-size", "1"]) == 1
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and "broken.jpg" in captured.err
    top = parse_top(captured.out)
    assert list(top) == [paths[0], paths[2]]
    for rows in top.values():
        assert sorted(name for _, name in rows) == sorted(CLASSES)
        assert sum(p for p, _ in rows) == pytest.approx(100, abs=0.05)
        assert [p for p, _ in rows] == sorted((p for p, _ in rows), reverse=True)


def test_onnx_predictions_match_the_deployed_model(pretrained, images, tmp_path, capsys):
    onnx_path = tmp_path / "xxs.onnx"
    assert main(["export", str(pretrained), "-o", str(onnx_path)]) == 0
    capsys.readouterr()
    paths = [str(images / "chelsea.jpg"), str(images / "astronaut.png")]
    assert main(["predict", str(pretrained), *paths]) == 0
    from_torch = parse_top(capsys.readouterr().out)
    assert main(["predict", str(onnx_path), *paths]) == 0
    from_onnx = parse_top(capsys.readouterr().out)
    assert list(from_torch) == list(from_onnx) == paths and all(from_torch.values())  # both images, with classes
    names = [[[n for _, n in rows] for rows in top.values()] for top in (from_onnx, from_torch)]
    assert names[0] == names[1]
    for a, b in zip(from_onnx.values(), from_torch.values(), strict=True):
        assert [p for p, _ in a] == pytest.approx([p for p, _ in b], abs=0.02)


def test_training_checkpoint_sets_classes_channels_and_preprocessing(tmp_path):
    model = random_model("efficientmod_xxs", num_classes=2, in_chans=1)
    preprocessing = dict(input_size=[1, 64, 64], mean=[0.5], std=[0.25], interpolation="bilinear", crop_pct=1.0)
    save_train_checkpoint(tmp_path / "last.pth", dict(model=model.state_dict(), class_names=["no", "yes"], epoch=3,
                                                      config=dict(in_chans=1), preprocessing=preprocessing),
                          task="classification")
    loaded = load_model("efficientmod_xxs", tmp_path / "last.pth")
    assert loaded.class_names == ["no", "yes"] and loaded.num_classes == 2 and loaded.in_chans == 1
    assert loaded.preprocessing == Preprocessing.from_dict(preprocessing)
    assert loaded.preprocessing.to_dict() == preprocessing
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_only_classification_training_checkpoints_are_read_as_such(tmp_path):
    """The one reader that ``predict`` and ``evaluate`` share: anything else (released
    weights, a plain state dict, safetensors, a folder, another task's run) is left to
    ``load_checkpoint``."""
    weights = random_model("efficientmod_xxs", num_classes=2).state_dict()
    save_train_checkpoint(tmp_path / "cls.pth", dict(model=weights, class_names=["a", "b"]), task="classification")
    save_train_checkpoint(tmp_path / "dense.pth", dict(model=weights, class_names=["a", "b"]), task="dense")
    torch.save(dict(model=weights, class_names=["a", "b"]), tmp_path / "untagged.pth")
    save_file(weights, tmp_path / "plain.safetensors")
    assert read_train_checkpoint(tmp_path / "cls.pth", "classification")["class_names"] == ["a", "b"]
    for other in ("dense.pth", "untagged.pth", "plain.safetensors", "missing.pth", "."):
        assert read_train_checkpoint(tmp_path / other, "classification") is None, other


def test_thousand_class_model_predicts_imagenet_names(images):
    predictor = Predictor.from_model(random_model("efficientmod_xxs"))
    (prediction,) = predictor.predict_files([images / "chelsea.jpg"])
    assert len(prediction.top) == 5
    assert all(name in imagenet_class_names() for name, _ in prediction.top)


@pytest.mark.parametrize("argv, message", [
    (["efficientmod_xxs", "x.jpg"], "pass --checkpoint"),
    (["nonexistent_model", "--checkpoint", "w.pth", "x.jpg"], "Unknown model"),
    (["efficientmod_xxs", "--checkpoint", "w.pth", "--device", "tpu9", "x.jpg"], "not a torch device"),
])
def test_cli_predict_bad_arguments(capsys, argv, message):
    assert main(["predict", *argv]) == 2
    assert message in capsys.readouterr().err


def test_onnx_without_metadata_is_refused(tmp_path, capsys):
    from efficientmod.export import export_onnx

    path = export_onnx(torch.nn.Conv2d(3, 4, 1), tmp_path / "plain.onnx", (3, 8, 8))
    assert main(["predict", str(path), "x.jpg"]) == 2
    assert "no efficientmod metadata" in capsys.readouterr().err


def test_file_that_is_not_onnx_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    assert main(["predict", str(path), "x.jpg"]) == 2
    assert f"cannot read {path} as an ONNX model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cli_predict_on_cuda_without_cuda_is_a_clear_error(capsys):
    assert main(["predict", "efficientmod_xxs", "--checkpoint", "w.pth", "--device", "cuda", "x.jpg"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
