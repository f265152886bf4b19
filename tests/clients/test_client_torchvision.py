"""torchvision on the library's features_only models, as on timm's own: BackboneWithFPN
(``return_layers`` naming the wrapper's stage children) under a FasterRCNN training step,
``create_feature_extractor`` on the plain network. NCHW maps everywhere."""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import MultiScaleRoIAlign

import efficientmod
import efficientmod.models  # noqa: F401  (registers the models in timm)

pytestmark = pytest.mark.clients
FAMILIES = ["efficientvit_m0", "mobilevitv2_050", "efficientmod_xxs"]


def fpn_backbone(name: str, out_indices) -> BackboneWithFPN:
    body = timm.create_model(efficientmod.model_info(name).timm_name, features_only=True, out_indices=out_indices)
    stage_children = [f"stages_{i}" for i in out_indices]
    return BackboneWithFPN(body, return_layers={child: str(n) for n, child in enumerate(stage_children)},
                           in_channels_list=body.feature_info.channels(), out_channels=32)


@pytest.mark.parametrize("name", FAMILIES)
def test_backbone_with_fpn_trains_a_faster_rcnn_step(name):
    out_indices = (0, 1, 2) if name.startswith("efficientvit") else (1, 2, 3)
    backbone = fpn_backbone(name, out_indices)
    levels = [str(n) for n in range(len(out_indices))]
    detector = FasterRCNN(
        backbone, num_classes=3, min_size=128, max_size=128,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
    ).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 10.0, 100.0, 60.0]]), "labels": torch.tensor([2])}]
    losses = detector(images, targets)
    sum(losses.values()).backward()
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.body.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_create_feature_extractor_gives_the_nchw_stage_maps(name):
    model = efficientmod.create_model(name).eval()
    stages = [f"stages.{i}" for i in efficientmod.model_info(name).feature_out_indices]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        maps = list(create_feature_extractor(model, return_nodes=stages)(x).values())
        expected = model.forward_intermediates(x, intermediates_only=True)
    channels = [info["num_chs"] for info in model.feature_info]
    assert [m.shape[1] for m in maps] == channels  # channels second: NCHW
    assert all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
