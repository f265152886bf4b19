"""What ``efficientmod serve`` and ``predict --engine ray`` load: every artifact ``predict``
takes, described for ``GET /v1/model``, with the torch model kept for the maps."""
from __future__ import annotations

import pytest
import torch
from test_deploy import random_model

from efficientmod.cli import main
from efficientmod.runtime import save_train_checkpoint
from efficientmod.serve.artifact import load_artifact

CLASSES = ["no", "yes"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    model = random_model("efficientmod_xxs", num_classes=2)
    model.save_pretrained(root / "model", class_names=CLASSES)
    save_train_checkpoint(root / "best.pth", dict(model=model.state_dict(), class_names=CLASSES,
                                                  config=dict(model="efficientmod_xxs")), task="classification")
    torch.save(model.state_dict(), root / "plain.pth")
    assert main(["export", str(root / "model"), "-o", str(root / "model.onnx")]) == 0
    return root


def test_every_artifact_serves_the_same_model(artifacts):
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    served = {name: load_artifact(artifacts / name) for name in ("model", "best.pth", "model.onnx")}
    served["name + checkpoint"] = load_artifact("efficientmod_xxs", checkpoint=artifacts / "best.pth")
    reference = served["model"].predictor.predict(batch, 2)
    for name, artifact in served.items():
        assert artifact.info["name"] == "efficientmod_xxs" and artifact.info["classes"] == CLASSES, name
        assert (artifact.info["runtime"], artifact.explainable is None) == (
            ("onnxruntime", True) if name == "model.onnx" else ("torch", False)), name
        got = artifact.predictor.predict(batch, 2)
        assert [[n for n, _ in row] for row in got] == [[n for n, _ in row] for row in reference], name
        assert [p for row in got for _, p in row] == pytest.approx([p for row in reference for _, p in row], abs=1e-4)
    assert served["model.onnx"].info["precision"] == "fp32"
    assert served["model"].info["preprocessing"]["input_size"] == [3, 224, 224]  # JSON-ready (GET /v1/model)


def test_artifacts_that_cannot_be_served_are_named(artifacts):
    with pytest.raises(ValueError, match="is not a model/ folder, a training checkpoint"):
        load_artifact(artifacts / "plain.pth")
    with pytest.raises(ValueError, match="holds its weights: drop --checkpoint"):
        load_artifact(artifacts / "model.onnx", checkpoint=artifacts / "best.pth")
    with pytest.raises(FileNotFoundError, match="no artifact"):
        load_artifact(artifacts / "missing")


def test_a_served_onnx_file_lets_its_idle_threads_sleep(artifacts, monkeypatch):
    """A replica shares its cores with the proxy: ONNX Runtime's threads do not spin there;
    elsewhere (``predict``, the benchmarks) they keep ONNX Runtime's default."""
    from efficientmod.export import load_runtime, onnx

    entry = "session.intra_op.allow_spinning"
    sleeping = load_runtime(artifacts / "model.onnx", threads=2, spinning=False).session.get_session_options()
    assert sleeping.get_session_config_entry(entry) == "0"
    asked, session = [], onnx.ort_session
    monkeypatch.setattr(onnx, "ort_session", lambda *a, spinning=True, **k: asked.append(spinning) or session(
        *a, spinning=spinning, **k))
    load_artifact(artifacts / "model.onnx", threads=2)
    load_runtime(artifacts / "model.onnx", threads=2)
    assert asked == [False, True]
