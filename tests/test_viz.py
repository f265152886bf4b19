"""Context, attention and class-activation maps: shapes, determinism, and that each map is
the quantity it claims to be."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import efficientmod
from efficientmod.cli import main
from efficientmod.models.ablations import create_ablation
from efficientmod.viz import attention_map, compute_maps, last_per_stage, normalise, overlay

HEIGHT, WIDTH = 64, 96  # not square, so a transposed map cannot pass


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return efficientmod.create_model(name, **kwargs).eval()


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def xxs():
    return build("efficientmod_xxs")


def test_efficientmod_maps_have_the_resolution_of_their_stage(xxs):
    maps = compute_maps(xxs, images())
    depths = xxs.cfg.depths
    assert len(maps.context) == sum(depths)
    for name, heat in maps.context.items():
        stride = 4 * 2 ** int(name.split(".")[1])
        assert heat.shape == (2, HEIGHT // stride, WIDTH // stride), name
    assert sorted(maps.attention) == ["stages.2.blocks.6", "stages.3.blocks.2", "stages.3.blocks.3"]
    assert maps.attention["stages.2.blocks.6"].shape == (2, 4, 6)
    assert maps.cam.shape == (2, 2, 3) and maps.classes.shape == (2,) and not maps.notes
    assert list(last_per_stage(maps.context)) == ["stages.0", "stages.1", "stages.2", "stages.3"]


def test_maps_are_deterministic(xxs):
    first, second = compute_maps(xxs, images(), query=(0.2, 0.9)), compute_maps(xxs, images(), query=(0.2, 0.9))
    for kind in ("context", "attention"):
        for name, heat in getattr(first, kind).items():
            assert torch.equal(heat, getattr(second, kind)[name])
    assert torch.equal(first.cam, second.cam)


def test_context_map_is_the_channel_reduced_ctx_branch(xxs):
    x = images()
    maps = compute_maps(xxs, x, reduce="norm")
    block = xxs.stages[0].blocks[1]
    with torch.no_grad():
        before = xxs.stages[0].blocks[0](xxs.stem(x))
        expected = block.ctx(block.norm(before)).norm(dim=-1)
    torch.testing.assert_close(maps.context["stages.0.blocks.1"], expected)
    assert not torch.equal(compute_maps(xxs, x, reduce="mean").context["stages.0.blocks.1"], expected)


def test_attention_weights_reproduce_the_layer_output(xxs):
    """The recomputed softmax(QKᵀ/√d), applied to V, gives what the layer itself computed."""
    from efficientmod.models.efficientmod import _mhsa_weights

    block = xxs.stages[3].blocks[2]
    x = torch.randn(2, 2, 3, block.norm1.normalized_shape[0])
    weights, grid = _mhsa_weights(block, x)
    tokens = block.norm1(x.reshape(2, 6, -1))
    attn = block.attn
    value = attn.qkv(tokens).reshape(2, 6, 3, attn.heads, attn.head_dim)[:, :, 2].transpose(1, 2)
    rebuilt = attn.proj((weights @ value).transpose(1, 2).reshape(2, 6, -1))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt, attn(tokens))
    assert grid == (2, 3) and weights.shape == (2, attn.heads, 6, 6)


def test_attention_map_reads_a_query_row_or_the_mean():
    weights = torch.rand(1, 2, 6, 6).softmax(dim=-1)
    mean = attention_map(weights, (2, 3))
    torch.testing.assert_close(mean, weights.mean(dim=(1, 2)).reshape(1, 2, 3))
    # (y, x) = (1, 0.5) is the bottom-middle token: row 1, column 1 → index 4
    torch.testing.assert_close(attention_map(weights, (2, 3), (1.0, 0.5)), weights[:, :, 4].mean(1).reshape(1, 2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attention_map(weights, (2, 3), (1.5, 0.0))


def test_cam_of_a_pooled_linear_head_is_the_classic_cam(xxs):
    x = images()
    maps = compute_maps(xxs, x)
    with torch.no_grad():
        features = xxs.forward_features(x)
    weights = xxs.head.weight[maps.classes]  # (B, C)
    classic = torch.relu(torch.einsum("bc,bchw->bhw", weights, features)) / (features.shape[2] * features.shape[3])
    torch.testing.assert_close(maps.cam, classic)
    torch.testing.assert_close(maps.logits.argmax(1), maps.classes)
    assert (compute_maps(xxs, x, target_class=3).classes == 3).all()


@pytest.mark.parametrize("name, context_blocks", [("van", 12), ("focalnet", 12), ("mbconv", 0)])
def test_ablation_blocks_give_context_maps_where_they_have_a_context(name, context_blocks):
    torch.manual_seed(0)
    model = create_ablation(name, "efficientmod_xxs").eval()
    maps = compute_maps(model, images(1))
    assert len(maps.context) == context_blocks
    if context_blocks:
        assert maps.context["stages.1.blocks.0"].shape == (1, HEIGHT // 8, WIDTH // 8)
    else:
        assert any("no context-modulation branch" in note for note in maps.notes)


def test_efficientvit_attention_is_per_window_and_sums_to_one():
    model = build("efficientvit_m0")
    x = torch.randn(1, 3, 224, 224)
    maps = compute_maps(model, x, query=(0.0, 0.0))
    first = maps.attention["stages.0.blocks.0.attn"]  # 14×14 map, 7×7 windows
    assert first.shape == (1, 14, 14)
    torch.testing.assert_close(first.sum(), torch.tensor(1.0))
    assert first[0, :7, :7].sum() == pytest.approx(1.0, abs=1e-5)  # the query's window only
    assert first[0, 7:].abs().sum() == 0 and first[0, :, 7:].abs().sum() == 0
    assert any("no context-modulation branch" in note for note in maps.notes)


def test_mobilevitv2_separable_attention_is_the_context_scores():
    model = build("mobilevitv2_050")
    maps = compute_maps(model, images(1))
    assert maps.attention and not maps.context
    layer = maps.attention["stages.2.1.transformer.0.attn"]
    assert layer.shape == (1, HEIGHT // 8, WIDTH // 8)
    torch.testing.assert_close(layer.sum(), torch.tensor(1.0))  # mean over queries of softmax rows
    query = compute_maps(model, images(1), query=(0.0, 0.0)).attention["stages.2.1.transformer.0.attn"]
    assert (query[0, 1::2].abs().sum(), query[0, :, 1::2].abs().sum()) == (0, 0)  # only pixel position (0, 0)
    torch.testing.assert_close(query.sum(), torch.tensor(1.0))


def test_overlay_and_normalise():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    picture = overlay(image, torch.arange(6.0).reshape(2, 3), alpha=1.0)
    assert picture.shape == (32, 48, 3) and picture.min() >= 0 and picture.max() <= 1
    assert not np.allclose(picture[:, 0], picture[:, -1])  # left and right ends differ
    assert np.array_equal(normalise(np.full((2, 2), 3.0)), np.zeros((2, 2)))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_cli_writes_a_png_per_map_and_a_contact_sheet(photo, tmp_path, capsys):
    assert main(["viz", "efficientmod_xxs", str(photo), "-o", str(tmp_path), "--img-size", "64",
                 "--query", "0.5,0.5"]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == [f"efficientmod_xxs_{name}.png" for name in (
        "chelsea_attention_stages2", "chelsea_attention_stages3", "chelsea_cam", "chelsea_context_stages0",
        "chelsea_context_stages1", "chelsea_context_stages2", "chelsea_context_stages3", "chelsea_input",
        "contact_sheet")]
    assert Image.open(tmp_path / "efficientmod_xxs_chelsea_cam.png").size == (64, 64)
    assert "random" in capsys.readouterr().err


def test_cli_uses_a_save_pretrained_checkpoint_and_its_class_names(photo, tmp_path, capsys):
    model = build("efficientmod_xxs", num_classes=3)
    model.save_pretrained(tmp_path / "run", class_names=["cat", "dog", "fish"])
    out = tmp_path / "maps"
    assert main(["viz", "efficientmod_xxs", str(photo), str(photo), "--checkpoint", str(tmp_path / "run"),
                 "-o", str(out), "--img-size", "64"]) == 0
    assert (out / "efficientmod_xxs_00_chelsea_cam.png").exists()
    assert (out / "efficientmod_xxs_01_chelsea_cam.png").exists()
    with torch.no_grad():
        predicted = model(compute_input(photo)).argmax().item()
    assert f"chelsea.png: predicted {['cat', 'dog', 'fish'][predicted]}" in capsys.readouterr().out


def compute_input(path) -> torch.Tensor:
    from efficientmod.viz import load_image

    info = efficientmod.model_info("efficientmod_xxs")
    return load_image(path, 64, info.crop_pct, info.mean, info.std)[1][None]


@pytest.mark.parametrize("argv, message", [
    (["efficientmod_xxs", "missing.png"], "no image file"),
    (["efficientmod_xxs", "{photo}", "--query", "2,0"], "[0, 1]"),
    (["efficientmod_xxs", "{photo}", "--img-size", "100"], "multiple of 32"),
    (["efficientvit_m0", "{photo}", "--ablation", "van"], "applies to EfficientMod models"),
    (["efficientmod_xxs", "{photo}", "--class", "1000"], "does not exist"),
    (["efficientmod_xxs", "{photo}", "--alpha", "1.5"], "--alpha must be in [0, 1]"),
])
def test_cli_errors_are_clear(argv, message, photo, tmp_path, capsys):
    argv = [a.replace("{photo}", str(photo)) for a in argv]
    assert main(["viz", *argv, "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_checks_every_image_before_writing_any_map(photo, tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["viz", "efficientmod_xxs", str(photo), str(tmp_path / "missing.png"), "-o", str(out)]) == 2
    assert "no image file" in capsys.readouterr().err and not out.exists()


def test_two_models_in_one_folder_keep_their_own_files(photo, tmp_path, capsys):
    for model in ("efficientmod_xxs", "efficientvit_m0"):
        assert main(["viz", model, str(photo), "-o", str(tmp_path), "--img-size", "64"]) == 0
    assert main(["viz", "efficientmod_xxs", str(photo), "-o", str(tmp_path), "--img-size", "64",
                 "--ablation", "van"]) == 0
    names = {p.name for p in tmp_path.glob("*.png")}
    for prefix in ("efficientmod_xxs", "efficientvit_m0", "efficientmod_xxs-van"):
        assert {f"{prefix}_contact_sheet.png", f"{prefix}_chelsea_cam.png", f"{prefix}_chelsea_input.png"} <= names
    xxs, vit = (np.asarray(Image.open(tmp_path / f"{m}_chelsea_cam.png"))
                for m in ("efficientmod_xxs", "efficientvit_m0"))
    assert not np.array_equal(xxs, vit)  # neither run overwrote the other's map
    assert len(names) == 9 + 6 + 9  # input, CAM, sheet and xxs: 4 context + 2 attention, m0: 3 attention


def test_query_point_is_marked_on_the_attention_panels_only():
    from efficientmod.viz import ModelMaps, mark_point, panels_for, query_pixel

    # the token attention_map reads, stretched over the image: (1, 0.5) on a 2×3 grid is row 1, column 1
    assert query_pixel((1.0, 0.5), (2, 3), (64, 96)) == (1.5 * 32 - 0.5, 1.5 * 32 - 0.5)
    assert query_pixel((0.0, 0.0), (4, 4), (64, 64)) == (7.5, 7.5)
    picture = np.full((64, 64, 3), 0.5)
    marked = mark_point(picture, (20.0, 30.0))
    assert (marked[20, 30] == 1).all() and (marked[20, 30 + 4] == 1).all()  # the dot and the ring (radius 3..4.5)
    assert (marked[20, 30 + 5] == 0).all() and (marked[20, 30 + 7] == 0.5).all()  # its black edge, then untouched
    assert (picture == 0.5).all()  # the picture itself is not drawn on

    torch.manual_seed(0)
    maps = ModelMaps(context={"stages.0.blocks.1": torch.rand(1, 4, 6)},
                     attention={"stages.2.blocks.0": torch.rand(1, 2, 3)}, cam=torch.rand(1, 2, 3))
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    plain = {p.title: p.picture for p in panels_for(pixels, maps, 0, "x", "cat", 0.5)}
    queried = {p.title: p.picture for p in panels_for(pixels, maps, 0, "x", "cat", 0.5, query=(1.0, 0.5))}
    changed = {title for title in plain if not np.array_equal(plain[title], queried[title])}
    assert changed == {"attention stages.2"}
    expected = mark_point(plain["attention stages.2"], query_pixel((1.0, 0.5), (2, 3), (HEIGHT, WIDTH)))
    np.testing.assert_array_equal(queried["attention stages.2"], expected)


def test_flat_maps_are_said_to_carry_no_signal(photo, tmp_path, capsys):
    from efficientmod.viz import ModelMaps, panels_for

    maps = ModelMaps(attention={"stages.1.blocks.0": torch.full((1, 2, 3), 1 / 6),
                                "stages.2.blocks.0": torch.rand(1, 2, 3)}, cam=torch.zeros(1, 2, 3))
    panels = panels_for(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), maps, 0, "x", "cat", 0.5)
    assert [(p.title, p.flat) for p in panels] == [
        ("input", False), ("attention stages.1\n(flat: no signal)", True), ("attention stages.2", False),
        ("CAM: cat\n(flat: no signal)", True)]

    # EfficientViT-M0 with random weights: its attention is uniform, and the run says which maps show nothing
    assert main(["viz", "efficientvit_m0", str(photo), "-o", str(tmp_path), "--img-size", "64",
                 "--query", "0.5,0.5"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "constant map, no signal" in line]
    assert len(notes) == 1
    flat = notes[0].split("note: ")[1].split(": constant map")[0].split(", ")
    # at 64 px the final map is 1×1, so the CAM is flat too
    assert flat == ["efficientvit_m0_chelsea_attention_stages1.png", "efficientvit_m0_chelsea_attention_stages2.png",
                    "efficientvit_m0_chelsea_cam.png"]
    assert all((tmp_path / name).is_file() for name in flat)


def test_contact_sheet_has_a_colour_bar_of_the_maps_scale(tmp_path):
    from matplotlib import colormaps

    from efficientmod.viz import COLORMAP, Panel, contact_sheet, contact_sheet_figure

    rows = [[Panel("input", np.zeros((8, 8, 3)), "a.png"), Panel("CAM", np.ones((8, 8, 3)), "b.png")]]
    figure = contact_sheet_figure(rows, "a title")
    bars = [axis._colorbar for axis in figure.axes if getattr(axis, "_colorbar", None) is not None]  # matplotlib's
    assert len(bars) == 1
    (bar,) = bars
    assert bar.mappable.get_clim() == (0, 1) and bar.cmap.name == COLORMAP
    assert "min-max" in bar.ax.get_ylabel()
    # the bar's colours are those overlay() paints with: a map's top value is the bar's top colour
    painted = overlay(np.zeros((4, 4, 3), dtype=np.uint8), torch.tensor([[0.0, 1.0]]), alpha=1.0)
    assert np.allclose(painted[0, -1], colormaps[bar.cmap.name](1.0)[:3])
    path = contact_sheet(rows, tmp_path / "sheet.png", "a title")
    assert Image.open(path).size[0] > Image.open(path).size[1]  # written: two panels and the bar side by side


def test_a_failed_image_write_keeps_the_previous_files(tmp_path, monkeypatch):
    """The panels and the contact sheet are written atomically: a write that fails half-way
    (disk full) is one WriteError and the files of the previous run stay whole."""
    import matplotlib.figure
    from matplotlib import pyplot

    from efficientmod.checkpoint import WriteError
    from efficientmod.viz import Panel, contact_sheet, save_panels

    rows = [[Panel("input", np.zeros((8, 8, 3)), "a.png"), Panel("CAM", np.ones((8, 8, 3)), "b.png")]]
    save_panels(rows[0], tmp_path)
    sheet = contact_sheet(rows, tmp_path / "sheet.png", "before")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert Image.open(tmp_path / "a.png").size == (8, 8)

    def half_written(tmp, *args, **kwargs):
        with open(tmp, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyplot, "imsave", half_written)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, tmp, **kwargs: half_written(tmp))
    with pytest.raises(WriteError, match="No space left"):
        save_panels(rows[0], tmp_path)
    with pytest.raises(WriteError, match="No space left"):
        contact_sheet(rows, sheet, "after")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
