"""Data for training: folder checks, bad files, conversions, samplers, reproducible
augmentation, the digits demo set."""
from __future__ import annotations

import random
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_images import make_bad_files, make_image_folder
from torch.utils.data import DataLoader

from efficientmod.classify.config import TrainConfig
from efficientmod.classify.data import (
    BadSample,
    ImageFolder,
    ShardSampler,
    TrainSampler,
    check_image_folders,
    collate_skipping_bad,
    digits_datasets,
    train_transform,
)
from efficientmod.preprocessing import Preprocessing

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def test_missing_train_folder_is_one_clear_error(tmp_path):
    (tmp_path / "val" / "ant").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no train/ folder"):
        check_image_folders(tmp_path)
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        check_image_folders(tmp_path / "nowhere")


def test_empty_class_and_mismatched_classes_reported_together(tmp_path):
    make_image_folder(tmp_path, classes=("ant", "bee"), train_per_class=1, val_per_class=1)
    (tmp_path / "train" / "cow").mkdir()  # empty, and missing from val/
    (tmp_path / "val" / "dog").mkdir()
    (tmp_path / "val" / "dog" / "0.jpg").write_bytes(b"x")
    with pytest.raises(ValueError) as error:
        check_image_folders(tmp_path)
    message = str(error.value)
    assert "empty class folder(s): cow" in message
    assert "only in train/: ['cow']" in message and "only in val/: ['dog']" in message


def test_symlinks_that_lead_nowhere_are_counted_as_bad_files(tmp_path):
    make_image_folder(tmp_path, classes=("ant", "bee"), train_per_class=1, val_per_class=1)
    ant = tmp_path / "train" / "ant"
    (ant / "loop_a.jpg").symlink_to(ant / "loop_b.jpg")
    (ant / "loop_b.jpg").symlink_to(ant / "loop_a.jpg")
    (ant / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (ant / "sub").mkdir()
    (ant / "sub" / "up").symlink_to(ant)  # a loop of folders: not followed
    assert check_image_folders(tmp_path) == ["ant", "bee"]
    transform = Preprocessing((3, 32, 32), MEAN, STD, "bilinear", 1.0).transform
    dataset = ImageFolder(tmp_path / "train", ["ant", "bee"], transform)
    names = sorted(Path(path).name for path, _ in dataset.samples)
    assert len(names) == 5 and {"loop_a.jpg", "loop_b.jpg", "gone.jpg"} <= set(names)
    batch = collate_skipping_bad([dataset[i] for i in range(len(dataset))])
    assert len(batch.targets) == 2 and sorted(Path(bad.path).name for bad in batch.bad) == [
        "gone.jpg", "loop_a.jpg", "loop_b.jpg"]
    assert any("symbolic links" in bad.reason for bad in batch.bad)


def test_thousands_of_tiny_files_are_listed_once_each(tmp_path):
    """A folder of 2,000 files (issue 19 tried 10,000): every file is a sample, in a stable order."""
    for split, per_class in (("train", 900), ("val", 100)):
        for name in ("ant", "bee"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:05d}.png").write_bytes(b"x")
    assert check_image_folders(tmp_path) == ["ant", "bee"]
    dataset = ImageFolder(tmp_path / "train", ["ant", "bee"])
    assert len(dataset) == 1800 and [label for _, label in dataset.samples] == [0] * 900 + [1] * 900
    assert Path(dataset.samples[901][0]).name == "00001.png"
    assert isinstance(dataset[0], BadSample)  # a non-image is a bad sample, not a crash


def test_bad_files_are_skipped_and_odd_modes_converted(tmp_path):
    make_image_folder(tmp_path, classes=("ant", "bee"), train_per_class=2, val_per_class=1)
    files = make_bad_files(tmp_path / "train" / "bee")
    assert check_image_folders(tmp_path) == ["ant", "bee"]
    transform = Preprocessing((3, 32, 32), MEAN, STD, "bilinear", 1.0).transform
    dataset = ImageFolder(tmp_path / "train", ["ant", "bee"], transform)
    assert len(dataset) == 4 + len(files["convert"]) + len(files["skip"])
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_skipping_bad)
    batches = list(loader)
    images = torch.cat([b.images for b in batches if len(b.targets)])
    targets = torch.cat([b.targets for b in batches])
    bad = list(chain.from_iterable(b.bad for b in batches))
    assert images.shape == (4 + len(files["convert"]), 3, 32, 32)
    assert torch.isfinite(images).all()
    assert targets.tolist().count(1) == 2 + len(files["convert"])
    assert sorted(b.path for b in bad) == sorted(str(p) for p in files["skip"])
    assert all(b.reason for b in bad)


def test_train_sampler_ranks_together_draw_the_single_process_batch():
    size, batch, world = 37, 3, 2
    single = list(TrainSampler(size, seed=5, epoch=2))
    ranks = [list(TrainSampler(size, rank, world, seed=5, epoch=2)) for rank in range(world)]
    for step in range(len(ranks[0]) // batch):
        together = sorted(chain.from_iterable(r[step * batch:(step + 1) * batch] for r in ranks))
        assert together == sorted(single[step * batch * world:(step + 1) * batch * world])
    assert all(epoch == 2 for _, epoch in single)
    assert sorted(i for i, _ in single) == list(range(size))
    assert single != list(TrainSampler(size, seed=5, epoch=3))


def test_train_sampler_skip_resumes_mid_epoch():
    sampler = TrainSampler(20, rank=1, world=2, seed=0)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, skip=6)
    assert list(sampler) == full[6:] and len(sampler) == len(full) - 6


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(chain.from_iterable(shards)) == list(range(11))


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    make_image_folder(tmp_path, train_per_class=2, val_per_class=1)
    recipe = TrainConfig(model="efficientmod_xxs")  # RandAugment, random erasing, flips
    dataset = ImageFolder(tmp_path / "train", ["ant", "bee"], train_transform(recipe, 32, MEAN, STD), seed=7)
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first, _ = dataset[(1, 3)]
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])  # the caller's streams are untouched
    torch.manual_seed(123), random.seed(123)
    again, _ = dataset[(1, 3)]
    other_epoch, _ = dataset[(1, 4)]
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)


def test_digits_split_and_range():
    train, val = digits_datasets(img_size=32, max_shift=2, seed=0)
    assert (len(train), len(val)) == (1437, 360)
    image, label = train[(0, 0)]
    assert image.shape == (1, 32, 32) and -1.0 <= image.min() and image.max() <= 1.0
    assert sorted(set(val.labels.tolist())) == list(range(10))
    shifted = [train[(0, epoch)][0] for epoch in range(4)]
    assert any(not torch.equal(shifted[0], s) for s in shifted[1:])
    assert torch.equal(val[(0, 0)][0], val[(0, 5)][0])  # no augmentation for validation



# -- decoding: as the image is meant to be seen -------------------------------------------------
def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    from efficientmod.images import load_image

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (24, 40), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    expected = np.rint(deep / 257.0).astype(np.uint8)  # 65535 -> 255
    assert rgb.shape == (24, 40, 3) and np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert abs(rgb.mean() - deep.mean() / 257) < 0.5  # Pillow's own convert() would give ~255 everywhere
    assert np.array_equal(np.asarray(load_image(tmp_path / "deep.png", "L")), expected)


@pytest.mark.parametrize("name, values, expected", [
    # in the mode's nominal range: scaled from it (a dark image stays dark)
    ("float in [0, 1]", np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), [[0, 64], [128, 255]]),
    ("int32 in [0, 255]", np.array([[0, 10], [100, 255]], np.int32), [[0, 10], [100, 255]]),
    ("int32 in [0, 65535]", np.array([[0, 257], [32896, 65535]], np.int32), [[0, 1], [128, 255]]),
    # beyond it: scaled from the image's own minimum..maximum, never clipped
    ("float above 1", np.array([[0.0, 250.0], [500.0, 1000.0]], np.float32), [[0, 64], [128, 255]]),
    ("float below 0", np.array([[-1.0, 0.0], [0.0, 1.0]], np.float32), [[0, 128], [128, 255]]),
    ("int32 above 65535", np.array([[0, 100000], [200000, 400000]], np.int32), [[0, 64], [128, 255]]),
    ("int32 negative", np.array([[-100, 0], [0, 100]], np.int32), [[0, 128], [128, 255]]),
    ("float NaN and inf as 0", np.array([[np.nan, np.inf], [0.5, 1.0]], np.float32), [[0, 0], [128, 255]]),
])
def test_32_bit_and_float_tiffs_are_scaled_not_clipped(tmp_path, name, values, expected):
    from PIL import Image

    from efficientmod.images import load_image

    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)  # a real TIFF of mode "F" or "I", as Pillow writes it
    assert Image.open(path).mode == ("F" if values.dtype == np.float32 else "I")
    gray = np.asarray(load_image(path, "L"))
    assert gray.tolist() == expected, name
    assert np.array_equal(np.asarray(load_image(path))[..., 1], gray)


def test_constant_image_beyond_the_nominal_range_is_black(tmp_path):
    from PIL import Image

    from efficientmod.images import load_image

    Image.fromarray(np.full((3, 5), 7.5, np.float32)).save(tmp_path / "flat.tif")
    assert np.asarray(load_image(tmp_path / "flat.tif", "L")).tolist() == [[0] * 5] * 3


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from efficientmod.images import load_image

    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # white left third
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as shot; display rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert upright.shape == (30, 20, 3)  # portrait
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the white band is now on top


def test_huge_images_are_decoded_reduced_or_skipped(tmp_path, monkeypatch):
    from PIL import Image

    import efficientmod.classify.data as data
    import efficientmod.images as images

    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 40 * 40)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8))
    photo.save(tmp_path / "big.jpg", quality=95)
    photo.save(tmp_path / "big.png")
    with pytest.warns(UserWarning, match=r"big.jpg: 96x128 pixels, decoded at 24x32"):
        reduced = images.load_image(tmp_path / "big.jpg")  # JPEG: 1/4 scale by DCT scaling, never full size
    assert reduced.size == (24, 32)
    with pytest.raises(Image.DecompressionBombError, match="decode limit"):
        images.load_image(tmp_path / "big.png")
    (tmp_path / "c" / "x").mkdir(parents=True)
    (tmp_path / "big.png").rename(tmp_path / "c" / "x" / "big.png")
    sample = data.ImageFolder(tmp_path / "c", ["x"])[0]
    assert isinstance(sample, data.BadSample) and "decode limit" in sample.reason  # skipped and counted
