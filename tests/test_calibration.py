"""Calibration-folder reading and prediction agreement (efficientmod.export.calibration)."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic_images import make_image_folder

from efficientmod.export import ExportVerificationError
from efficientmod.export.calibration import (
    calibration_files,
    check_agreement,
    prediction_agreement,
    read_calibration_images,
    run_batched,
)
from efficientmod.preprocessing import Preprocessing

PREPROCESSING = Preprocessing((3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("calib"), classes=("ant", "bee", "cow"),
                             train_per_class=4, val_per_class=0)
    (root / "train" / "cow" / "notes.txt").write_text("not an image")
    (root / "train" / "cow" / "zz_broken.png").write_bytes(b"not a png")
    return root


def test_files_are_sorted_and_subsets_cover_every_class(folder):
    files = calibration_files(folder)
    assert len(files) == 13 and files == sorted(files)  # 12 JPEGs + the broken PNG, not the .txt
    subset = calibration_files(folder, samples=3)
    assert [p.parent.name for p in subset] == ["ant", "bee", "cow"]
    assert calibration_files(folder, samples=100) == files


def test_read_preprocesses_like_predict_and_skips_unreadable(folder, capsys):
    images = read_calibration_images(folder, PREPROCESSING, samples=None)
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.float32
    first = calibration_files(folder)[0]
    np.testing.assert_array_equal(images[0], PREPROCESSING.load(first).numpy())
    assert "skipped 1 unreadable" in capsys.readouterr().err


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        calibration_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        calibration_files(tmp_path)
    with pytest.raises(ValueError, match="positive"):
        calibration_files(tmp_path, samples=0)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="could be read"):
        read_calibration_images(tmp_path, PREPROCESSING)


def test_agreement_counts_top1_and_top5():
    reference = np.eye(6, dtype=np.float32)[[0, 1, 2, 3]]  # best classes 0, 1, 2, 3
    candidate = reference.copy()
    candidate[1] = [0, 0.5, 0, 0, 0, 1]  # top-1 wrong (5), reference class 1 second: top-5 right
    candidate[2] = [1, 1, 0, 1, 1, 1]  # class 2 is last of six: top-1 and top-5 wrong
    agreement = prediction_agreement(reference, candidate)
    assert (agreement.top1, agreement.top5, agreement.samples) == (50.0, 75.0, 4)
    assert agreement.max_abs_diff == pytest.approx(1.0)
    assert "top-1 agreement 50.00%" in str(agreement)
    with pytest.raises(ValueError):
        prediction_agreement(reference, candidate[:3])


def test_check_agreement_tolerance():
    agreement = prediction_agreement(np.eye(4), np.eye(4)[[0, 1, 2, 0]])  # 75% top-1, 100% top-5
    assert check_agreement(agreement, 25, "x") is agreement
    with pytest.raises(ExportVerificationError, match="x: top-1 agreement 75.00%"):
        check_agreement(agreement, 24.9, "x")
    with pytest.raises(ValueError):
        check_agreement(agreement, -1, "x")


def test_run_batched_concatenates_in_order():
    images = np.arange(70, dtype=np.float32).reshape(70, 1)
    calls = []

    def run(batch):
        calls.append(len(batch))
        return batch * 2

    np.testing.assert_array_equal(run_batched(run, images, 32), images * 2)
    assert calls == [32, 32, 6]
