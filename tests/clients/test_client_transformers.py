"""transformers on a save_pretrained folder: TimmWrapper (timm's config.json and weights,
as the hub serves them) and pipeline("image-classification")."""
from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

import efficientmod
import efficientmod.models  # noqa: F401  (registers the models in timm)
from efficientmod.preprocessing import Preprocessing

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.clients
CLASSES = ["cat", "dog", "fox"]


def saved(name: str, directory, preprocessing: Preprocessing | None = None, **kwargs):
    torch.manual_seed(0)
    model = efficientmod.create_model(name, num_classes=len(CLASSES), **kwargs).eval()
    model.save_pretrained(directory, class_names=CLASSES, preprocessing=preprocessing)
    return model


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050", "efficientmod_xxs"])
def test_timm_wrapper_and_pipeline_give_our_logits(name, tmp_path):
    ours = saved(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = transformers.TimmWrapperForImageClassification.from_pretrained(str(tmp_path)).eval()
        classify = transformers.pipeline("image-classification", model=str(tmp_path))
    picture = Image.new("RGB", (300, 260), (30, 160, 90))
    pixels = classify.image_processor(picture, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = ours(pixels)
        torch.testing.assert_close(wrapper(pixel_values=pixels).logits, expected, rtol=1e-5, atol=1e-6)
    results = classify(picture, top_k=len(CLASSES))
    scores = dict(zip(CLASSES, expected.softmax(-1)[0].tolist(), strict=True))
    assert {r["label"] for r in results} == set(CLASSES)
    assert all(abs(r["score"] - scores[r["label"]]) < 1e-5 for r in results)


def test_pipeline_on_a_1_channel_model_says_it_needs_grayscale(tmp_path):
    """The pipeline always sends RGB; a grayscale model says so instead of failing obscurely."""
    saved("efficientvit_m0", tmp_path, in_chans=1, preprocessing=Preprocessing((1, 224, 224), (0.5,), (0.25,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classify = transformers.pipeline("image-classification", model=str(tmp_path))
    with pytest.raises(ValueError, match="1-channel .grayscale. model got RGB images"):
        classify(Image.new("L", (224, 224), 128))
