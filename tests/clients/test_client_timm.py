"""timm's library entry points, as its scripts use them: train.py's checkpoints
(``timm.utils.CheckpointSaver`` with the ``args`` Namespace writes exactly what train.py
writes), validate.py's ``create_loader`` + ``load_checkpoint``, the pretrained overlay file."""
from __future__ import annotations

import argparse
import os

import pytest
import timm
import torch
from timm.utils import CheckpointSaver

import efficientmod
import efficientmod.models  # noqa: F401  (registers the models in timm)
from efficientmod.checkpoint import CheckpointError, read_state_dict
from efficientmod.classify.predict import load_model

pytestmark = pytest.mark.clients


def train_py_checkpoint(directory, model_name: str = "em_efficientvit_m0", args_extra=None) -> tuple:
    """``model_best.pth.tar`` as timm's train.py writes it (model, optimizer, args Namespace, metric)."""
    model = timm.create_model(model_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    args = argparse.Namespace(model=model_name, lr=1e-3, epochs=1, input_size=None, mean=None, std=None,
                              decay_milestones=[90, 180], model_kwargs={}, device=torch.device("cpu"),
                              amp=False, **(args_extra or {}))
    saver = CheckpointSaver(model, optimizer, args=args, checkpoint_dir=str(directory),
                            recovery_dir=str(directory), decreasing=False)
    saver.save_checkpoint(epoch=0, metric=50.0)
    return model, directory / "model_best.pth.tar"


def test_train_py_checkpoint_loads_through_every_loader(tmp_path):
    trained, path = train_py_checkpoint(tmp_path)
    expected = trained.state_dict()
    loaded = [efficientmod.load_checkpoint(efficientmod.create_model("efficientvit_m0"), path),
              efficientmod.create_model("efficientvit_m0", checkpoint_path=str(path)),
              load_model("efficientvit_m0", path)]  # what `efficientmod eval/export --checkpoint` build
    for model in loaded:
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_a_training_checkpoint_with_other_objects_is_still_refused(tmp_path):
    """Only argparse.Namespace is allowed beyond weights: an args holding any other object
    (here a function, which pickles as a global) is refused as before."""
    _, path = train_py_checkpoint(tmp_path, args_extra=dict(hook=os.getcwd))
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(path)


def test_validate_py_loader_and_load_checkpoint(tmp_path):
    """validate.py: create_model, timm's load_checkpoint on the training checkpoint, a loader
    from the model's data config over an image folder."""
    from PIL import Image

    trained, path = train_py_checkpoint(tmp_path)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.new("RGB", (256, 240), (40, 90, 200) if label == "cat" else (200, 60, 30)).save(
            tmp_path / "images" / label / "0.png")
    model = timm.create_model("em_efficientvit_m0")
    timm.models.load_checkpoint(model, str(path), use_ema=False)
    config = timm.data.resolve_data_config(model=model)
    loader = timm.data.create_loader(timm.data.ImageDataset(str(tmp_path / "images")), batch_size=2,
                                     use_prefetcher=False, **config)
    images, targets = next(iter(loader))
    assert images.shape == (2, *config["input_size"]) and targets.tolist() == [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), trained.eval()(images))


def test_a_missing_overlay_file_is_named(tmp_path):
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(FileNotFoundError, match="no_such_weights.pth"):
        timm.create_model("em_efficientvit_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050", "efficientmod_xxs"])
def test_every_feature_cls_gives_the_nchw_stage_maps(name):
    """timm's feature_cls options, through both registries, give the network's
    forward_intermediates maps (NCHW), as for timm's own models; the default is a
    FeatureListNet whose stage children are named ``stages_i``."""
    info = efficientmod.model_info(name)
    torch.manual_seed(0)
    network = efficientmod.create_model(name).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = network.forward_intermediates(x, intermediates_only=True)
    assert type(timm.create_model(info.timm_name, features_only=True)).__name__ == "FeatureListNet"
    for feature_cls in ("list", "dict", "hook", "fx", "getter"):
        for model in (timm.create_model(info.timm_name, features_only=True, feature_cls=feature_cls),
                      efficientmod.create_model(name, features_only=True, feature_cls=feature_cls)):
            model.load_state_dict(feature_state(network, model))
            with torch.no_grad():
                maps = model.eval()(x)
            maps = list(maps.values()) if isinstance(maps, dict) else maps
            assert len(maps) == len(expected), feature_cls
            for got, want in zip(maps, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def feature_state(network, features) -> dict:
    """``network``'s weights under the key names of its ``features`` wrapper (timm's wrappers
    rename ``stages.0`` to ``stages_0`` or nest the network under ``model.`` / ``body.``)."""
    source = network.state_dict()
    state = {}
    for key in features.state_dict():
        for candidate in (key, key.replace("_", ".", 1), key.split(".", 1)[-1]):
            if candidate in source:
                state[key] = source[candidate]
                break
    return state
