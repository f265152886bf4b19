"""The server's request handling without Ray (the fast tier): bounds, decoding, errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_images import class_image, jpeg_bytes

from efficientmod.classify.predict import Preprocessing
from efficientmod.serve.http import Limits, RequestError, check_length, decode_image
from efficientmod.serve.page import pixels_of

GRAY = Preprocessing((1, 32, 32), (0.5,), (0.5,), "bilinear", 1.0)


def test_decode_image_is_the_preprocessing_of_the_file(tmp_path):
    data = jpeg_bytes(class_image(1, 7, size=40))
    (tmp_path / "a.jpg").write_bytes(data)
    tensor = decode_image("a.jpg", data, GRAY, Limits())
    assert torch.equal(tensor, GRAY.load(tmp_path / "a.jpg"))


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty file"),
    (b"%PDF-1.4", 400, "not an image"),
    (jpeg_bytes(class_image(0, 1))[:300], 400, "unreadable image header"),
    (jpeg_bytes(class_image(0, 1))[:900], 400, "truncated or corrupt"),
])
def test_bad_images_are_named_errors(data, status, words):
    with pytest.raises(RequestError) as raised:
        decode_image("x.jpg", data, GRAY, Limits())
    error = raised.value
    assert error.status == status and error.message.startswith("x.jpg: ") and words in error.message


def test_the_pixel_bound_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (300, 200)).save(buffer, format="PNG")
    with pytest.raises(RequestError, match="300x200 pixels, over the bound of 59,999") as raised:
        decode_image("big.png", buffer.getvalue(), GRAY, Limits(max_pixels=59_999))
    assert raised.value.status == 413
    assert decode_image("big.png", buffer.getvalue(), GRAY, Limits(max_pixels=60_000)).shape == (1, 32, 32)


@pytest.mark.parametrize("length, status", [(None, 411), ("ten", 400), ("0", 400), ("1001", 413)])
def test_the_declared_length_is_checked(length, status):
    with pytest.raises(RequestError) as raised:
        check_length(length, Limits(max_bytes=1000))
    assert raised.value.status == status
    check_length("1000", Limits(max_bytes=1000))


def test_bounds_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        Limits(max_images=0)


def test_the_maps_are_drawn_over_the_crop_the_model_saw():
    image = class_image(2, 3, size=32).convert("L")
    tensor = GRAY.transform(image)
    pixels = pixels_of(tensor, GRAY)
    assert pixels.shape == (32, 32, 3) and pixels.dtype.name == "uint8"
    assert abs(pixels[..., 0].astype(int) - np.asarray(image).astype(int)).max() <= 1


@pytest.mark.parametrize("argv, message", [
    (["missing_folder"], "no artifact missing_folder"),
    (["weights.pth"], "is not a model/ folder, a training checkpoint"),
    (["weights.pth", "--port", "0"], "--port must be in 1..65535"),
    (["weights.pth", "--replicas", "0"], "must be positive"),
    (["weights.pth", "--batch-wait-ms", "-1"], "--batch-wait-ms must be >= 0"),
])
def test_serve_refuses_bad_arguments_before_starting_ray(argv, message, tmp_path, monkeypatch, capsys):
    from efficientmod.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pth")  # a plain state dict: no architecture
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_batch_inputs_are_checked_before_ray_starts(capsys, tmp_path, monkeypatch):
    from efficientmod.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["predict", "model.onnx", "no_such_image.png", "--engine", "ray", "--output", "p.jsonl"]) == 2
    assert "no image file or folder no_such_image.png" in capsys.readouterr().err
