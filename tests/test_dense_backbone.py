"""The backbone + FPN adapter on every registered family, inside torchvision's detectors."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from efficientmod import create_model, list_models, model_info
from efficientmod.checkpoint import CheckpointError
from efficientmod.dense.backbone import build_backbone_fpn
from efficientmod.dense.detection import build_detector
from efficientmod.dense.segmentation import build_segmenter


def _first_of_each_family() -> list[str]:
    first: dict[str, str] = {}
    for name in list_models():
        first.setdefault(model_info(name).family, name)
    return list(first.values())


SMALL = _first_of_each_family()  # the registry lists the small variants first


def _bn_family_variant() -> str:
    for name in SMALL:
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model(name).modules()):
            return name
    pytest.skip("no registered family uses BatchNorm")


@pytest.mark.parametrize("name", SMALL)
def test_fpn_levels_follow_feature_info(name):
    fpn = build_backbone_fpn(name, out_channels=16).eval()
    reductions = fpn.body.model.feature_info
    assert fpn.strides[:-1] == [f["reduction"] for f in reductions]  # every map, then the max-pooled level
    assert fpn.size_divisible % max(fpn.strides[:-1]) == 0
    side = 2 * fpn.size_divisible
    with torch.no_grad():
        levels = fpn(torch.rand(1, 3, side, side))
    assert list(levels)[:-1] == fpn.feature_names
    assert len(levels) == len(fpn.strides) == len(fpn.feature_names) + 1  # the FPN levels and the pooled one
    for level, stride in zip(levels.values(), fpn.strides, strict=True):
        assert level.shape == (1, 16, math.ceil(side / stride), math.ceil(side / stride))


@pytest.mark.parametrize("name", SMALL)
def test_mask_rcnn_trains_and_predicts_on_every_family(name):
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", name, num_classes=2, min_size=96, max_size=96, fpn_channels=16,
                           box_head_dim=32, mask_head_channels=8, rpn_batch_size_per_image=32,
                           box_batch_size_per_image=32)
    assert model.transform.size_divisible == model.backbone.size_divisible
    assert min(model.backbone.strides) >= 4
    images = [torch.rand(3, 96, 80), torch.rand(3, 72, 96)]  # sides not multiples of the backbone's
    masks = torch.zeros(1, 96, 80, dtype=torch.uint8)
    masks[:, 20:60, 10:50] = 1
    targets = [
        dict(boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0]]), labels=torch.tensor([1]), masks=masks),
        dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
             masks=torch.zeros(0, 72, 96, dtype=torch.uint8)),  # an image with no object
    ]
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    last_stage = model.backbone.body.model.feature_info[-1]["module"]
    grads = [p.grad for n, p in model.backbone.body.model.named_parameters() if n.startswith(last_stage)]
    # the loss reaches the last stage: every parameter there gets a finite gradient, and not all are zero
    # (EfficientViT zero-initialises the last norm of each residual branch, so most of its own are, at first)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.any() for g in grads)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and outputs[1]["masks"].shape[-2:] == (72, 96)


@pytest.mark.parametrize("name", SMALL)
def test_semantic_fpn_on_every_family(name):
    model = build_segmenter(name, num_classes=5, fpn_channels=16, head_channels=16)
    side = model.size_divisible
    logits = model(torch.rand(2, 3, side, side))
    assert logits.shape == (2, 5, side, side)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, side, side))).backward()
    assert min(model.backbone.strides) >= 4  # the finest level Semantic FPN uses is stride 4


def test_frozen_stages_freeze_the_stem_and_first_stages():
    name = _bn_family_variant()
    fpn = build_backbone_fpn(name, out_channels=16, frozen_stages=1)
    inner = fpn.body.model
    first, second = (inner.feature_info[i]["module"] + "." for i in (0, 1))
    names = [n for n, _ in inner.named_parameters()]
    stem = names[: next(i for i, n in enumerate(names) if n.startswith(first))]
    parameters = dict(inner.named_parameters())
    assert stem and not any(parameters[n].requires_grad for n in stem)
    assert not any(p.requires_grad for n, p in parameters.items() if n.startswith(first))
    assert all(p.requires_grad for n, p in parameters.items() if n.startswith(second))
    assert all(p.requires_grad for p in fpn.fpn.parameters())
    frozen_bns = [n for n, m in inner.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen_bns and all(not n.startswith(second) for n in frozen_bns)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for n, m in inner.named_modules() if n.startswith(second))


def test_frozen_bn_keeps_statistics():
    name = _bn_family_variant()
    fpn = build_backbone_fpn(name, out_channels=16, frozen_bn=True).train()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fpn.body.modules())
    before = {k: v.clone() for k, v in fpn.body.state_dict().items()}
    fpn(torch.rand(2, 3, fpn.size_divisible, fpn.size_divisible))
    assert all(torch.equal(before[k], v) for k, v in fpn.body.state_dict().items())


def test_frozen_stage_zero_freezes_only_the_stem_and_bad_values_are_refused():
    fpn = build_backbone_fpn("efficientmod_xxs", out_channels=16, frozen_stages=0)
    parameters = dict(fpn.body.model.named_parameters())
    assert not any(p.requires_grad for n, p in parameters.items() if n.startswith("stem."))
    assert all(p.requires_grad for n, p in parameters.items() if n.startswith("stages."))
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone_fpn("efficientmod_xxs", frozen_stages=9)
    with pytest.raises(ValueError, match="extra FPN levels"):
        build_backbone_fpn("efficientmod_xxs", extra="p7")


@pytest.mark.filterwarnings("ignore:checkpoint classifier ignored")
def test_backbone_loads_classification_weights(tmp_path):
    classifier = create_model("efficientmod_xxs")
    classifier.save_pretrained(tmp_path / "xxs")
    fpn = build_backbone_fpn("efficientmod_xxs", checkpoint=str(tmp_path / "xxs"))
    reference = classifier.state_dict()
    loaded = fpn.body.model.state_dict()
    assert loaded and all(torch.equal(v, reference[k]) for k, v in loaded.items())
    with pytest.raises(CheckpointError):
        build_backbone_fpn("efficientmod_xs", checkpoint=str(tmp_path / "xxs"))
