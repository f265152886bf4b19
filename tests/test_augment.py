"""The default training transform on real photos, on the Pillow a fresh install resolves
(Pillow 13 refuses ``ImageOps.posterize(img, 0)``, which RandAugment asks for)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from efficientmod.classify.config import DEMO_PRESET, TrainConfig
from efficientmod.classify.data import ImageFolder, apply_transform, posterize, seeded, train_transform
from efficientmod.cli import main

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the viz extra) ships the real photos")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_posterize_keeps_the_top_bits_including_zero():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for mode, array in (("RGB", pixels), ("L", pixels[..., 0])):
        image = Image.fromarray(array, mode)
        for bits in range(9):
            expected = array & np.uint8((0xFF << (8 - bits)) & 0xFF)  # the top `bits` bits of each value
            assert np.array_equal(np.asarray(posterize(image, bits)), expected), (mode, bits)
    assert not np.asarray(posterize(Image.fromarray(pixels), 0)).any()  # 0 bits: black, as before Pillow 13


def test_the_default_transform_uses_our_posterize():
    from timm.data.auto_augment import AugmentOp

    transform = train_transform(TrainConfig(), 32, MEAN, STD)
    ops = [op for op in transform.transforms[2].ops if isinstance(op, AugmentOp)]
    posterizes = [op for op in ops if op.name.startswith("Posterize")]
    assert posterizes and all(op.aug_fn is posterize for op in posterizes)
    op = posterizes[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # the draw that crashed with Pillow 13
    photo = Image.fromarray(skimage_data.astronaut()).resize((32, 32))
    assert not np.asarray(op(photo)).any()


def _photo_crops(size: int = 48) -> list[Image.Image]:
    crops = []
    for name in PHOTOS:
        array = getattr(skimage_data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        photo = Image.fromarray(array[..., :3])
        step = max(photo.width, photo.height) // 4
        crops += [photo.crop((x, y, x + step, y + step)).resize((size, size), Image.BICUBIC)
                  for x in range(0, photo.width - step + 1, step) for y in range(0, photo.height - step + 1, step)]
    return crops


@pytest.mark.slow
def test_default_training_transform_survives_20000_draws_of_real_photos(tmp_path):
    """The default recipe (RandAugment m9 mstd0.5 inc1, random erasing, random resized crop)
    through the dataset's own path, seeded per (epoch, index) as in training."""
    crops = _photo_crops()
    for i, crop in enumerate(crops):
        (tmp_path / "photos" / "all").mkdir(parents=True, exist_ok=True)
        crop.save(tmp_path / "photos" / "all" / f"{i:03d}.png")
    dataset = ImageFolder(tmp_path / "photos", ["all"], train_transform(TrainConfig(), 32, MEAN, STD), seed=0)
    zero_bits = []

    def counting_posterize(image, bits, **kwargs):
        zero_bits.append(bits == 0)
        return posterize(image, bits, **kwargs)

    for op in dataset.transform.transforms[2].ops:
        if op.aug_fn is posterize:
            op.aug_fn = counting_posterize
    paths = [path for path, _ in dataset.samples]
    decoded = [Image.open(path).convert("RGB") for path in paths]
    for draw in range(20_000):
        index, epoch = draw % len(decoded), draw // len(decoded)
        with seeded(0, epoch, index):
            tensor = apply_transform(dataset.transform, decoded[index], paths[index])
        assert tensor.shape == (3, 32, 32) and bool(tensor.isfinite().all())
    assert sum(zero_bits) >= 1  # the draws did reach the 0-bit posterize that Pillow 13 refuses


@pytest.mark.parametrize("off", ["none", "None", "", None])
def test_no_auto_augment_reaches_timm_as_none_and_the_transform_builds(off):
    config = TrainConfig(aa=off)
    assert config.aa is None and TrainConfig(**DEMO_PRESET).aa is None
    transform = train_transform(config, 32, MEAN, STD)
    kinds = {type(t).__name__ for t in transform.transforms}
    assert "ColorJitter" in kinds  # colour jitter stands in for the auto-augment
    assert not kinds & {"RandAugment", "AutoAugment", "AugMixAugment"}
    photo = Image.fromarray(skimage_data.astronaut())
    assert apply_transform(transform, photo, "astronaut").shape == (3, 32, 32)


@pytest.mark.parametrize("aa, kind", [
    ("rand-m9-mstd0.5-inc1", "RandAugment"), ("rand-m7-n3-p0.8-mmax12-tweights", "RandAugment"),
    ("augmix-m3-w2-d2-a1.0-b1-mstd0.3", "AugMixAugment"), ("original-mstd0.5", "AutoAugment"),
    ("originalr", "AutoAugment"), ("v0", "AutoAugment"), ("v0r", "AutoAugment"), ("3a", "AutoAugment"),
])
def test_every_policy_the_config_accepts_builds_in_timm(aa, kind):
    transform = train_transform(TrainConfig(aa=aa), 32, MEAN, STD)
    assert kind in {type(t).__name__ for t in transform.transforms}
    photo = Image.fromarray(skimage_data.chelsea())
    assert apply_transform(transform, photo, "chelsea").shape == (3, 32, 32)


@pytest.mark.parametrize("aa", ["off", "randaugment", "v1", "rand-m9-bogus", "rand-m9-mstd", "rand-tfoo",
                                "original-m9", "augmix-inc1", 5])
def test_unknown_auto_augment_is_refused_in_one_line(aa, capsys):
    with pytest.raises(ValueError, match=r"aa must be 'none' or a timm auto-augment policy") as error:
        TrainConfig(aa=aa)
    assert "\n" not in str(error.value) and repr(aa) in str(error.value)
    if isinstance(aa, str):  # the command line: exit status 2 and the same line, before any work
        assert main(["train", "--aa", aa, "--synthetic"]) == 2
        assert "aa must be 'none'" in capsys.readouterr().err
