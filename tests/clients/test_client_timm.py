"""timm's library entry points, as its scripts (train.py, validate.py) use them."""
from __future__ import annotations

import pytest
import timm

import efficientmod.models  # noqa: F401  (registers the models in timm)

pytestmark = pytest.mark.clients


def test_a_missing_overlay_file_is_named(tmp_path):
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(FileNotFoundError, match="no_such_weights.pth"):
        timm.create_model("em_efficientvit_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
