"""An ImageNet-style folder of real photo patches for end-to-end training checks: one class
per scikit-image photo, training patches from the left 70% of each photo and validation
patches from the disjoint right 30% (held out: no pixel of a validation image was seen).

    python tests/real_photos.py OUT [--train 100] [--val 25] [--size 64] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    return Image.fromarray(np.stack([array] * 3, -1) if array.ndim == 2 else array[..., :3])


def make_photo_folder(root: Path, train: int = 100, val: int = 25, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        image = photo(name)
        split_x = int(image.width * 0.7)
        for split, count, (x0, x1) in (("train", train, (0, split_x)), ("val", val, (split_x, image.width))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(size, min(x1 - x0, image.height) // 2 + 1))
                x, y = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(0, image.height - side + 1))
                patch = image.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
                patch.save(folder / f"{i:03d}.jpg", quality=90)
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--val", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="another seed draws other patches")
    args = parser.parse_args()
    print(make_photo_folder(args.out, args.train, args.val, args.size, args.seed))
