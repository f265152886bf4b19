"""How variants are declared: keyword configurations, a typed model-info record, no
state shared between instances, one classifier initialisation path in the base class."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import efficientmod
from efficientmod.models import model_info
from efficientmod.models.base import Backbone
from efficientmod.models.efficientmod import EfficientModCfg
from efficientmod.models.efficientvit import EfficientViTCfg
from efficientmod.models.info import ModelInfo
from efficientmod.models.mobilevitv2 import MobileViTv2Cfg


@pytest.mark.parametrize("cfg_cls, args", [
    (EfficientViTCfg, ((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5))),
    (EfficientModCfg, ((32, 64, 128, 256), ((1,),) * 4)),
    (MobileViTv2Cfg, (0.5,)),
])
def test_configurations_take_keywords_only(cfg_cls, args):
    with pytest.raises(TypeError):
        cfg_cls(*args)


def test_model_info_is_a_typed_record():
    names = {f.name for f in dataclasses.fields(ModelInfo)}
    assert "extra" not in names
    assert {"first_conv", "classifier", "pool_size", "drop_path_rate", "weights"} <= names
    assert model_info("efficientmod_s").drop_path_rate == 0.02  # the paper's recipe, read by train.py
    assert model_info("efficientvit_m0").weights.hf_hub_id == "timm/efficientvit_m0.r224_in1k"


def test_instances_share_no_mutable_state():
    assert "build_kwargs" not in vars(Backbone)
    first = efficientmod.create_model("efficientvit_m0", img_size=160)
    second = efficientmod.create_model("efficientvit_m0")
    assert first.build_kwargs == {"img_size": 160} and second.build_kwargs == {}
    first.build_kwargs["drop_path_rate"] = 0.1
    assert second.build_kwargs == {}


@pytest.mark.parametrize("name, std", [("efficientmod_xxs", 0.02), ("mobilevitv2_050", 0.01)])
def test_reset_classifier_initialises_the_head_as_the_family_does(name, std):
    assert "_init_weights" in vars(Backbone)  # the base defines what reset_classifier calls
    model = efficientmod.create_model(name)
    model.reset_classifier(500)
    weight = model.get_classifier().weight
    assert weight.shape[0] == 500 and abs(weight.std().item() - std) < 0.2 * std
    assert torch.count_nonzero(model.get_classifier().bias) == 0
