"""The default training transform on real photos, on the Pillow a fresh install resolves
(Pillow 13 refuses ``ImageOps.posterize(img, 0)``, which RandAugment asks for)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from efficientmod.config import TrainConfig
from efficientmod.data import ImageFolder, apply_transform, posterize, seeded, train_transform

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
