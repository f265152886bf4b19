"""Pretrained weights, loaded the way timm users load them — with no network.

* EfficientViT / MobileViTv2: timm's published hub repositories, served from a Hugging Face
  cache that the test writes (the hub's own cache layout, ``HF_HUB_OFFLINE``);
* EfficientMod: an official release file (wrapped, ``module.`` prefixes) through timm's
  ``pretrained_cfg_overlay=dict(file=...)``, through ``pretrained=PATH`` and through a URL
  served by a loopback HTTP server (127.0.0.1 only, shut down after the test);
* ``save_pretrained`` folders as hub repositories (``local-dir:``, ``hf-hub:`` from the cache).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch
from conftest import draw_reference_weights, reference_input
from huggingface_hub import constants
from safetensors.torch import save_file

import efficientmod
from efficientmod.models.hub import WeightsNotAvailableError

COMMIT = "0" * 40  # the snapshot revision the fake cache declares as ``main``


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Write ``files`` into ``cache`` as huggingface_hub stores a downloaded repository
    (``models--org--name/refs/main`` → ``snapshots/<commit>/...``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline (what huggingface_hub reads at call time)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_timm_weights(cache: Path, timm_name: str, tmp_path: Path) -> torch.nn.Module:
    """timm's own ``timm_name`` with random weights, cached as its hub repository
    ``timm/<name>.<tag>`` (``model.safetensors``, as timm publishes); returns that model."""
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name).eval()
    with torch.no_grad():  # BatchNorm statistics are part of what must come across
        for module in theirs.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    repo_id = timm.get_pretrained_cfg(timm_name).hf_hub_id
    put_in_hub_cache(cache, repo_id, {"model.safetensors": path})
    return theirs


@pytest.mark.parametrize("name", ["efficientvit_m0", "mobilevitv2_050"])
def test_pretrained_true_loads_timms_published_weights_from_the_hub_cache(name, offline_hub, tmp_path):
    theirs = cache_timm_weights(offline_hub, name, tmp_path)
    assert efficientmod.models.model_info(name).weights.hf_hub_id == timm.get_pretrained_cfg(name).hf_hub_id
    ours = efficientmod.create_model(name, pretrained=True).eval()
    via_timm = timm.create_model(f"em_{name}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(via_timm(x), expected, rtol=1e-5, atol=1e-5)


def test_pretrained_weights_adapt_to_other_classes_and_input_channels(offline_hub, tmp_path):
    """timm's loader does the adapting: a new classifier, the stem summed to one channel."""
    theirs = cache_timm_weights(offline_hub, "efficientvit_m0", tmp_path)
    model = timm.create_model("em_efficientvit_m0", pretrained=True, num_classes=5, in_chans=1).eval()
    assert model.get_classifier().out_features == 5
    stem = theirs.state_dict()["patch_embed.conv1.conv.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.state_dict()["stem.conv1.conv.weight"], stem)
    features = timm.create_model("em_efficientvit_m0", pretrained=True, features_only=True).eval()
    with torch.no_grad():
        assert len(features(torch.randn(1, 3, 64, 64))) == 3


def test_offline_with_an_empty_cache_is_one_clear_error(offline_hub):
    with pytest.raises(WeightsNotAvailableError) as caught:
        efficientmod.create_model("efficientvit_m0", pretrained=True)
    message = str(caught.value)
    assert "timm/efficientvit_m0.r224_in1k" in message and str(offline_hub) in message
    assert "HF_HUB_OFFLINE" in message and "hf download" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no hub-client chain
    with pytest.raises(FileNotFoundError, match="mobilevitv2_050.cvnets_in1k"):  # the same through timm
        timm.create_model("em_mobilevitv2_050", pretrained=True)


@pytest.mark.slow  # a fresh interpreter imports torch, timm and the library
def test_hub_environment_variables_are_honoured(tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, read by a fresh process."""
    cache = tmp_path / "hf-cache"
    theirs = cache_timm_weights(cache, "efficientvit_m0", tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.save({"x": x, "y": theirs.eval()(x)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch, efficientmod\n"
        "e = torch.load(sys.argv[1], weights_only=True)\n"
        "m = efficientmod.create_model('efficientvit_m0', pretrained=True).eval()\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(m(e['x']), e['y'], rtol=1e-5, atol=1e-5)\n"
        "print('loaded')\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(efficientmod.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "expected.pt")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


# -- EfficientMod: the official release files -------------------------------------------------
@pytest.fixture
def official_file(tmp_path, reference):
    """An official-release checkpoint of efficientmod_xxs as the authors' training script
    writes it (``{"model": ...}``, DDP ``module.`` prefixes), with the reference weights."""
    weights = draw_reference_weights(reference("efficientmod_xxs")["layout"], seed=0)
    state = {f"module.{k}": v.float() for k, v in weights.items()}
    path = tmp_path / "EfficientMod_xxs.pth"
    torch.save({"model": state, "epoch": 299}, path)
    return path


def assert_reproduces_reference(model, reference):
    ref = reference("efficientmod_xxs")
    with torch.no_grad():
        logits = model.double().eval()(reference_input(ref["input_shape"], ref["input_seed"]))
    assert (logits - ref["logits"]).abs().max().item() < 1e-4  # weights rounded to float32


def test_official_file_through_timms_overlay_and_pretrained_path(official_file, reference):
    via_timm = timm.create_model("efficientmod_xxs", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(official_file)))
    assert_reproduces_reference(via_timm, reference)
    ours = efficientmod.create_model("efficientmod_xxs", pretrained=str(official_file))
    assert_reproduces_reference(ours, reference)


def test_pretrained_true_without_a_file_says_where_the_weights_are():
    info = efficientmod.models.model_info("efficientmod_s")
    cfg = timm.get_pretrained_cfg("efficientmod_s")
    assert cfg.origin_url == info.weights.origin_url and cfg.origin_url.startswith("https://drive.google.com/")
    for build in (lambda: efficientmod.create_model("efficientmod_s", pretrained=True),
                  lambda: timm.create_model("efficientmod_s", pretrained=True)):
        with pytest.raises(ValueError, match="drive.google.com.*pretrained_cfg_overlay=dict"):
            build()


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 (a free port) serving ``tmp_path``; stopped afterwards."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_official_file_from_a_url(official_file, loopback_server, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))  # timm's URL cache
    url = f"{loopback_server}/{official_file.name}"
    assert_reproduces_reference(efficientmod.create_model("efficientmod_xxs", pretrained=url), reference)
    via_timm = timm.create_model("efficientmod_xxs", pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert_reproduces_reference(via_timm, reference)
    assert list((tmp_path / "torch-hub" / "checkpoints").iterdir())  # downloaded once into the cache


# -- save_pretrained: a hub repository as it stands ----------------------------------------
@pytest.mark.parametrize("name", ["efficientmod_xxs", "efficientvit_m0"])
def test_save_pretrained_folder_is_a_timm_hub_repository(name, offline_hub, tmp_path):
    model = efficientmod.create_model(name, num_classes=3).eval()
    folder = tmp_path / "repo"
    model.save_pretrained(folder, class_names=["ant", "bee", "cat"])
    config = json.loads((folder / "config.json").read_text())
    info = efficientmod.models.model_info(name)
    assert config["architecture"] == info.timm_name and config["num_classes"] == 3
    assert config["label_names"] == ["ant", "bee", "cat"]
    assert config["pretrained_cfg"]["input_size"] == list(info.input_size)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: timm" in card
    assert f"{info.top1:.1f} %" in card and info.paper_ids in card  # the paper's figures
    put_in_hub_cache(offline_hub, "someone/repo", {p.name: p for p in folder.iterdir()})

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for loaded in (timm.create_model(f"local-dir:{folder}", pretrained=True),
                       timm.create_model("hf-hub:someone/repo", pretrained=True),
                       efficientmod.create_model(name, pretrained=str(folder), num_classes=3),
                       efficientmod.create_model(name, pretrained="someone/repo", num_classes=3),
                       efficientmod.from_pretrained(folder)):
            assert torch.equal(loaded.eval()(x), expected)
        fine_tune = efficientmod.create_model(name, pretrained="someone/repo", num_classes=7).eval()
        torch.testing.assert_close(fine_tune.forward_features(x), model.forward_features(x))
        assert fine_tune(x).shape == (2, 7)


def test_a_repository_of_another_architecture_is_refused(tmp_path):
    efficientmod.create_model("efficientmod_xxs").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds weights of efficientmod_xxs, not of efficientmod_xs"):
        efficientmod.create_model("efficientmod_xs", pretrained=str(tmp_path))


def test_a_hub_id_offline_and_not_cached_is_one_clear_error(offline_hub):
    with pytest.raises(WeightsNotAvailableError, match="someone/missing.*hf download someone/missing"):
        efficientmod.create_model("efficientmod_xxs", pretrained="someone/missing")


def test_pretrained_folder_brings_its_architecture_arguments(tmp_path):
    model = efficientmod.create_model("efficientvit_m0", img_size=160, num_classes=2).eval()
    model.save_pretrained(tmp_path)
    loaded = efficientmod.create_model("efficientvit_m0", pretrained=str(tmp_path), num_classes=2).eval()
    assert loaded.build_kwargs == {"img_size": 160}
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
