"""load_checkpoint / save_pretrained / from_pretrained / atomic_write."""
from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
from conftest import draw_reference_weights, reference_input, smallest_fast
from safetensors.torch import save_file

import efficientmod
from efficientmod import model_info
from efficientmod.checkpoint import CheckpointError, WriteError, atomic_write, read_state_dict


@pytest.fixture(scope="module")
def official_state(reference):
    return draw_reference_weights(reference("efficientmod_xxs")["layout"], seed=0)


def logits_of(model, reference):
    ref = reference("efficientmod_xxs")
    x = reference_input(ref["input_shape"], ref["input_seed"]).to(next(model.parameters()).dtype)
    with torch.no_grad():
        return model.eval()(x).double()


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "state_dict_ema", "module_prefix"])
def test_official_checkpoint_wrappers_and_prefixes(wrap, official_state, reference):
    state = {"module." + k: v for k, v in official_state.items()} if wrap == "module_prefix" else official_state
    checkpoint = state if wrap in ("plain", "module_prefix") else {wrap: state, "epoch": 300}
    model = efficientmod.create_model("efficientmod_xxs").double()
    efficientmod.load_checkpoint(model, checkpoint)
    assert (logits_of(model, reference) - reference("efficientmod_xxs")["logits"]).abs().max() < 1e-8


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_files_are_read_safely(suffix, official_state, reference, tmp_path):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"model": official_state, "args": {"lr": 4e-3}}, path)
    else:
        save_file(official_state, str(path))
    model = efficientmod.load_checkpoint(efficientmod.create_model("efficientmod_xxs").double(), path)
    assert (logits_of(model, reference) - reference("efficientmod_xxs")["logits"]).abs().max() < 1e-8
    model32 = efficientmod.create_model("efficientmod_xxs", checkpoint_path=str(path))  # float32
    assert (logits_of(model32, reference) - reference("efficientmod_xxs")["logits"]).abs().max() < 1e-4


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(path)


def test_unrecognised_layout_names_its_keys():
    model = efficientmod.create_model("efficientmod_xxs")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout.*backbone\.conv1\.weight"):
        efficientmod.load_checkpoint(model, {"backbone.conv1.weight": torch.zeros(3)})


def test_foreign_layouts_apply_to_their_own_network_class_only():
    """Layouts are registered per network class (checkpoint.py knows no family): a timm
    EfficientViT checkpoint is never converted for an EfficientMod model, and the error
    lists the layouts that do apply to the model."""
    import timm

    timm_state = timm.create_model("efficientvit_m0", num_classes=10).state_dict()
    efficientvit = efficientmod.create_model("efficientvit_m0", num_classes=10)
    efficientmod.load_checkpoint(efficientvit, timm_state)  # detected and converted
    with pytest.raises(CheckpointError, match=r"\(EfficientMod: official EfficientMod release\)$"):
        efficientmod.load_checkpoint(efficientmod.create_model("efficientmod_xxs"), timm_state)


def test_missing_and_unexpected_keys_are_named(official_state):
    state = dict(official_state)
    state.pop("layers.0.blocks.0.gamma_1")
    state["layers.0.blocks.0.extra.weight"] = torch.zeros(1)
    model = efficientmod.create_model("efficientmod_xxs")
    with pytest.raises(CheckpointError) as error:
        efficientmod.load_checkpoint(model, state)
    message = str(error.value)
    assert "missing keys (1): stages.0.blocks.0.layer_scale" in message
    assert "unexpected keys (1): stages.0.blocks.0.extra.weight" in message
    before = model.stages[0].blocks[0].layer_scale.clone()
    efficientmod.load_checkpoint(model, state, strict=False)  # loads what fits
    assert torch.equal(model.stages[0].blocks[0].layer_scale, before)
    assert torch.equal(model.stem.conv.weight, official_state["patch_embed.proj.weight"].float())


def test_wrong_variant_is_a_shape_error(official_state):
    with pytest.raises(CheckpointError, match="shape mismatch"):
        efficientmod.load_checkpoint(efficientmod.create_model("efficientmod_xs"), official_state, strict=False)


def test_ignore_head_keeps_the_new_classifier(official_state):
    model = efficientmod.create_model("efficientmod_xxs", num_classes=7)
    head = model.head.weight.clone()
    with pytest.warns(UserWarning, match=r"head\.weight"):
        efficientmod.load_checkpoint(model, official_state, ignore_head=True)
    assert torch.equal(model.head.weight, head)
    with pytest.raises(CheckpointError, match="ignore_head=True"):
        efficientmod.load_checkpoint(model, official_state)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = efficientmod.create_model("efficientmod_xxs", num_classes=4).eval()
    model.save_pretrained(tmp_path / "run", class_names=["a", "b", "c", "d"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"] == "efficientmod_xxs" and config["num_classes"] == 4
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # timm's hub format
    restored = efficientmod.from_pretrained(tmp_path / "run").eval()
    assert restored.class_names == ["a", "b", "c", "d"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    assert sorted(os.listdir(tmp_path / "run")) == ["README.md", "config.json", "model.safetensors"]


def test_from_pretrained_needs_a_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        efficientmod.from_pretrained(tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_text("old")

    def broken_writer(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(WriteError, match=r"cannot write .*ckpt.pth: RuntimeError: disk full; the previous "
                       r"ckpt.pth is intact"):  # a writer's own exception, as one line naming the file
        atomic_write(path, broken_writer)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_save_pretrained_keeps_architecture_arguments(tmp_path):
    model = efficientmod.create_model("efficientvit_m0", num_classes=3, img_size=160, drop_path_rate=0.1).eval()
    model.save_pretrained(tmp_path)
    restored = efficientmod.from_pretrained(tmp_path).eval()
    assert restored.build_kwargs == {"img_size": 160, "drop_path_rate": 0.1}
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.json", lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", ["efficientmod_xxs", "efficientvit_m0"])
def test_headless_model_loads_a_checkpoint_with_a_classifier(name, tmp_path):
    """num_classes=0 (feature extraction): the checkpoint's whole head is dropped with a
    warning — for EfficientViT also its BatchNorm, which sits where the model has none."""
    full = efficientmod.create_model(name).eval()
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")
    with pytest.warns(UserWarning, match=r"classifier ignored.*head\."):
        headless = efficientmod.create_model(name, num_classes=0, checkpoint_path=str(tmp_path / "full.pth"))
    trunk = {k: v for k, v in full.state_dict().items() if not k.startswith("head.")}
    assert trunk.keys() == headless.state_dict().keys()
    assert all(torch.equal(v, headless.state_dict()[k]) for k, v in trunk.items())
    with pytest.raises(CheckpointError, match="unexpected keys"):  # without ignore_head: strict
        efficientmod.load_checkpoint(headless, tmp_path / "full.pth")


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict"):
        read_state_dict(tmp_path / "tensor.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read .*broken.safetensors"):
        read_state_dict(tmp_path / "broken.safetensors")


def test_from_pretrained_with_another_class_count_keeps_the_trunk(tmp_path):
    model = efficientmod.create_model("efficientmod_xxs", num_classes=4).eval()
    model.save_pretrained(tmp_path, class_names=list("abcd"))
    with pytest.warns(UserWarning, match="classifier ignored"):
        tuned = efficientmod.from_pretrained(tmp_path, num_classes=6).eval()
    assert tuned.num_classes == 6 and tuned.class_names is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), tuned.forward_features(x))
        assert tuned(x).shape == (1, 6)


def test_deployed_model_is_not_saved_in_a_form_that_cannot_be_reloaded(tmp_path):
    model = efficientmod.deploy(efficientmod.create_model("efficientmod_xxs"))
    with pytest.raises(ValueError, match="before efficientmod.deploy"):
        model.save_pretrained(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_save_pretrained_restores_an_ablation_configuration(tmp_path):
    model = efficientmod.create_model("efficientmod_xxs", num_classes=2, block="van",
                                      attention_depths=(0, 0, 0, 1)).eval()
    model.save_pretrained(tmp_path)
    restored = efficientmod.from_pretrained(tmp_path).eval()
    assert restored.cfg == model.cfg and hash(restored.cfg) == hash(model.cfg)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


# -- the official EfficientViT (microsoft/Cream) and MobileViTv2 (apple/ml-cvnets) files ---------
REFERENCE = Path(__file__).parent / "reference"
OFFICIAL_FILES = {"efficientvit_m0": "efficientvit_m0_official_layout.pth",
                  "mobilevitv2_050": "mobilevitv2_050_official_layout.pt"}


def official_logits_error(model, name: str) -> float:
    """Largest difference of ``model``'s float64 logits from the official code's (README there)."""
    figures = torch.load(REFERENCE / f"{name}_official_logits.pt", weights_only=True)
    with torch.no_grad():
        return (model.double().eval()(figures["input"]) - figures["logits"]).abs().max().item()


def official_keys(name: str) -> list:
    """``[key, shape]`` of the official state dict of variant ``name``, in its order."""
    with gzip.open(REFERENCE / "official_keys.json.gz", "rt") as handle:
        return json.load(handle)[name]


@pytest.mark.parametrize("name", list(OFFICIAL_FILES))
@pytest.mark.parametrize("loader", ["load_checkpoint", "checkpoint_path", "pretrained_file", "timm_overlay"])
def test_official_files_reproduce_the_official_logits_through_every_loader(name, loader):
    path = str(REFERENCE / OFFICIAL_FILES[name])
    if loader == "load_checkpoint":
        model = efficientmod.load_checkpoint(efficientmod.create_model(name), path)
    elif loader == "checkpoint_path":
        model = efficientmod.create_model(name, checkpoint_path=path)
    elif loader == "pretrained_file":
        model = efficientmod.create_model(name, pretrained=path)
    else:
        model = timm.create_model(model_info(name).timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert official_logits_error(model, name) < 1e-12


@pytest.mark.parametrize("name", smallest_fast(["efficientvit_m0", "efficientvit_m1", "efficientvit_m2",
                                                "efficientvit_m3", "efficientvit_m4", "efficientvit_m5",
                                                "mobilevitv2_050", "mobilevitv2_075", "mobilevitv2_100",
                                                "mobilevitv2_125", "mobilevitv2_150", "mobilevitv2_175",
                                                "mobilevitv2_200"]))
def test_every_official_layout_loads_strictly(name):
    """The official state dict of every variant (keys and shapes of the official code),
    converted, fits the model exactly: no missing, unexpected or misshaped tensor."""
    state = {key: torch.zeros(shape) for key, shape in official_keys(name)}
    efficientmod.load_checkpoint(efficientmod.create_model(name), {"model": state}, strict=True)


@pytest.mark.parametrize("name", list(OFFICIAL_FILES))
def test_official_2d_pointwise_weights_are_reshaped_to_1x1_convs(name):
    """Released files may hold the 1×1 conv weights as (out, in) matrices; the official
    loaders reshape them, so does load_checkpoint."""
    state = read_state_dict(REFERENCE / OFFICIAL_FILES[name])
    flattened = {k: v.flatten(1) if v.ndim == 4 and v.shape[2:] == (1, 1) else v for k, v in state.items()}
    assert sum(v.ndim == 2 for v in flattened.values()) > 20
    model = efficientmod.load_checkpoint(efficientmod.create_model(name), flattened)
    assert official_logits_error(model, name) < 1e-12


@pytest.mark.parametrize("name,other", [("efficientvit_m0", "mobilevitv2_050"), ("mobilevitv2_050", "efficientvit_m0")])
def test_a_file_that_fits_no_layout_is_a_checkpoint_error_from_every_loader(name, other, tmp_path):
    foreign = str(REFERENCE / OFFICIAL_FILES[other])
    wrong_variant = tmp_path / "wrong_variant.pth"  # the family's layout, another variant's shapes
    larger = {"efficientvit_m0": "efficientvit_m1", "mobilevitv2_050": "mobilevitv2_100"}[name]
    torch.save({key: torch.zeros(shape) for key, shape in official_keys(larger)}, wrong_variant)
    for source in (foreign, str(wrong_variant)):
        for build in (lambda s: efficientmod.load_checkpoint(efficientmod.create_model(name), s),
                      lambda s: efficientmod.create_model(name, checkpoint_path=s),
                      lambda s: efficientmod.create_model(name, pretrained=s),
                      lambda s: timm.create_model(model_info(name).timm_name, pretrained=True,
                                                  pretrained_cfg_overlay=dict(file=s))):
            with pytest.raises(CheckpointError) as error:
                build(source)
            assert len(str(error.value)) < 2000


def test_a_1_channel_checkpoint_is_refused_by_a_3_channel_model_at_load(tmp_path):
    """As timm refuses it: at load, naming in_chans, from every loader (not at the first forward)."""
    gray = efficientmod.create_model("efficientvit_m0", in_chans=1, num_classes=4)
    path = tmp_path / "gray.pth"
    torch.save({"model": gray.state_dict()}, path)
    gray.save_pretrained(tmp_path / "folder")
    for build in (lambda: efficientmod.load_checkpoint(efficientmod.create_model("efficientvit_m0", num_classes=4),
                                                       path),
                  lambda: efficientmod.create_model("efficientvit_m0", num_classes=4, checkpoint_path=str(path)),
                  lambda: efficientmod.create_model("efficientvit_m0", num_classes=4, pretrained=str(path)),
                  lambda: efficientmod.create_model("efficientvit_m0", in_chans=3, pretrained=str(tmp_path / "folder")),
                  lambda: timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True, in_chans=3)):
        with pytest.raises(CheckpointError, match="1-channel input, the model takes 3: build it with in_chans=1"):
            build()


def test_a_features_only_model_takes_its_checkpoint_as_it_is_built(tmp_path):
    network = efficientmod.create_model("mobilevitv2_050")
    path = tmp_path / "weights.pth"
    torch.save(network.state_dict(), path)
    features = efficientmod.create_model("mobilevitv2_050", features_only=True, checkpoint_path=str(path))
    assert torch.equal(features.state_dict()["stem_conv.weight"], network.state_dict()["stem.conv.weight"])
    with pytest.raises(ValueError, match="checkpoint_path=PATH"):
        efficientmod.load_checkpoint(features, path)
