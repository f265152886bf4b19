"""Semantic FPN: the head, mIoU / accuracy, whole and sliding inference, ADE20K-layout data
with bad entries, and ``efficientmod seg train|eval|predict`` end to end on synthetic shapes."""
from __future__ import annotations

import copy
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from efficientmod import list_models
from efficientmod.cli import main
from efficientmod.dense.data import Skipped
from efficientmod.dense.segmentation import (
    IGNORE_INDEX,
    AdeSegmentation,
    ConfusionMatrix,
    SemanticFPNHead,
    _window_starts,
    build_segmenter,
    evaluate_segmentation,
    segment,
)
from efficientmod.dense.synthetic import SHAPES, make_shapes_ade

NUM_CLASSES = len(SHAPES) + 1  # background + shapes, after reduce_zero_label
TINY_SEGMENTER = [
    "--num-classes", str(NUM_CLASSES), "--resize", "512", "128", "--crop-size", "96", "--model", "efficientmod_xxs",
    "--fpn-channels", "32", "--head-channels", "32", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "10",
    "--workers", "0",
]


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_shapes_ade(root, 32, 128, seed=0, split="training")
    make_shapes_ade(root, 8, 128, seed=1, split="validation")
    return root


@pytest.mark.parametrize("strides", [(4, 8, 16, 32), (16, 32, 64)])
def test_semantic_fpn_head_predicts_at_the_finest_stride(strides):
    head = SemanticFPNHead(in_channels=8, strides=strides, num_classes=5, channels=16)
    levels = [torch.rand(2, 8, 128 // s, 128 // s) for s in strides]
    assert head(levels).shape == (2, 5, 128 // strides[0], 128 // strides[0])
    # one conv stage per level, plus one per doubling: P_i gets max(1, log2(s_i / s_0)) convs
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in scale) for scale in head.scale_heads]
    assert convs == [max(1, int(math.log2(s // strides[0]))) for s in strides]


def test_confusion_matrix_metrics_follow_their_definitions():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    prediction = torch.tensor([[0, 1, 1], [1, 1, 0]])
    confusion = ConfusionMatrix(4)
    confusion.update(prediction, target)
    metrics = confusion.metrics()
    # class 0: TP 1, union 2; class 1: TP 2, union 4; class 2: TP 0, union 1; class 3 absent
    assert metrics["IoU"] == [0.5, 0.5, 0.0, None]
    assert metrics["mIoU"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert metrics["aAcc"] == pytest.approx(3 / 5)
    assert metrics["mAcc"] == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)


def test_sliding_windows_cover_the_image_and_agree_with_whole_inference():
    assert _window_starts(100, 64, 32) == [0, 32, 36]
    assert _window_starts(64, 64, 32) == [0]
    torch.manual_seed(0)
    model = build_segmenter("efficientmod_xxs", 3, fpn_channels=16, head_channels=16).eval()
    image = torch.rand(3, 64, 96)
    whole = segment(model, image, "whole")
    assert whole.shape == (3, 64, 96) and torch.allclose(whole.sum(0), torch.ones(64, 96), atol=1e-5)
    one_window = segment(model, image[:, :, :64], "slide", crop_size=64, stride=32)
    assert torch.allclose(one_window, segment(model, image[:, :, :64], "whole"), atol=1e-5)
    slid = segment(model, image, "slide", crop_size=64, stride=32, output_size=(32, 48))
    assert slid.shape == (3, 32, 48) and torch.allclose(slid.sum(0), torch.ones(32, 48), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        segment(model, image, "slide", crop_size=48, stride=16)


def test_ade_reduce_zero_label_convention(ade):
    dataset = AdeSegmentation(ade, "validation", NUM_CLASSES, resize=(512, 128))
    image_path, label_path = dataset.pairs[0]
    raw = np.asarray(Image.open(label_path)).astype(np.int64)
    _, target = dataset[0]
    expected = np.where(raw == 0, IGNORE_INDEX, raw - 1)
    assert np.array_equal(target.numpy(), expected) and (raw == 0).any()
    kept = AdeSegmentation(ade, "validation", NUM_CLASSES + 1, reduce_zero_label=False, resize=(512, 128))
    assert np.array_equal(kept[0][1].numpy(), raw)
    assert AdeSegmentation(ade, "validation", NUM_CLASSES, reduce_zero_label=False)[0] == Skipped(
        "class id out of range", str(label_path))  # raw ids run to NUM_CLASSES


def test_ade_bad_entries_are_skipped_and_counted(tmp_path):
    root = make_shapes_ade(tmp_path, 6, 64, seed=2, split="training")
    labels = root / "annotations" / "training"
    (labels / "00000.png").unlink()  # image without a label map
    Image.new("L", (64, 64)).save(labels / "orphan.png")  # label map without an image
    Image.new("L", (32, 64)).save(labels / "00001.png")  # size differs from the image
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(labels / "00002.png")  # class id out of range
    (root / "images" / "training" / "00003.jpg").write_bytes(b"broken")  # undecodable image
    dataset = AdeSegmentation(root, "training", NUM_CLASSES, resize=(256, 64))
    assert dict(dataset.skipped) == {"image without a label map": 1, "label map without an image": 1}
    assert [dataset[i].reason for i in range(3)] == [
        "label map size differs from the image", "class id out of range", "unreadable image file"]
    model = build_segmenter("efficientmod_xxs", NUM_CLASSES, fpn_channels=16, head_channels=16)
    report = evaluate_segmentation(model, dataset, workers=0)
    assert report["images"] == 2
    assert report["skipped"] == {"image without a label map": 1, "label map without an image": 1,
                                 "label map size differs from the image": 1, "class id out of range": 1,
                                 "unreadable image file": 1}
    with pytest.raises(FileNotFoundError, match="ADE20K layout"):
        AdeSegmentation(root, "validation", NUM_CLASSES)


def test_ade_unreadable_or_multichannel_label_maps_are_skipped_and_named(tmp_path):
    root = make_shapes_ade(tmp_path, 5, 64, seed=3, split="training")
    labels = root / "annotations" / "training"
    (labels / "00000.png").write_bytes(b"\x89PNG broken")  # unreadable
    Image.new("RGB", (64, 64)).save(labels / "00001.png")  # three channels
    (labels / "00002.png").write_bytes((labels / "00003.png").read_bytes()[:60])  # truncated
    (root / "images" / "training" / "00004.jpg").unlink()  # a label map without an image
    dataset = AdeSegmentation(root, "training", NUM_CLASSES, resize=(256, 64))
    assert [dataset[i] for i in range(3)] == [
        Skipped("unreadable label map", str(labels / "00000.png")),
        Skipped("label map is not single-channel", str(labels / "00001.png")),
        Skipped("unreadable label map", str(labels / "00002.png"))]
    assert dataset.skipped.first == {"label map without an image": str(labels / "00004.png")}
    model = build_segmenter("efficientmod_xxs", NUM_CLASSES, fpn_channels=16, head_channels=16)
    report = evaluate_segmentation(model, dataset, workers=0)
    assert report["images"] == 1 and report["skipped"] == {
        "label map without an image": 1, "unreadable label map": 2, "label map is not single-channel": 1}
    assert report["skipped_first"] == {
        "label map without an image": str(labels / "00004.png"), "unreadable label map": str(labels / "00000.png"),
        "label map is not single-channel": str(labels / "00001.png")}


def _blank_png(path, width: int, height: int) -> None:
    """A black 8-bit grayscale PNG of ``width`` x ``height`` written without allocating it:
    a few hundred KB on disk for hundreds of MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, rows, pixels = zlib.compressobj(1), 500, []
    for start in range(0, height, rows):
        pixels.append(compressor.compress(bytes((width + 1) * min(rows, height - start))))  # filter byte + row
    pixels.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(pixels))
                     + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, when it reads the header
def test_ade_label_maps_are_decoded_under_the_image_bound(tmp_path):
    """Issue 19 item 8: a 12000 x 12000 label PNG (a few hundred KB) was decoded in full
    (4.6 GB of memory) before being skipped; now its size is checked before decoding,
    against the bound images have (efficientmod.images.MAX_DECODE_PIXELS)."""
    root = make_shapes_ade(tmp_path, 2, 64, seed=4, split="training")
    huge = root / "annotations" / "training" / "00000.png"
    _blank_png(huge, 12000, 12000)
    assert huge.stat().st_size < 1_000_000
    dataset = AdeSegmentation(root, "training", NUM_CLASSES, resize=(256, 64))
    assert dataset[0] == Skipped("label map over the decode limit", str(huge))
    assert dataset[1][1].shape == (64, 64)  # the other sample is read as before


def test_seg_cli_trains_evaluates_and_predicts(ade, tmp_path):
    run = tmp_path / "run"
    assert main(["seg", "train", "--data", str(ade), "--val-split", "validation", *TINY_SEGMENTER,
                 "--max-steps", "40", "--output", str(run)]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 5 and log[-1]["step"] == 40  # 32 images / batch 4 = 8 steps an epoch
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    report = json.loads((run / "eval.json").read_text())
    assert report["images"] == 8 and report["mIoU"] > 0.4 and report["aAcc"] > 0.9

    assert main(["seg", "eval", "--checkpoint", str(run), "--data", str(ade), "--mode", "slide", "--window", "64",
                 "--stride", "32", "--workers", "0", "--output", str(tmp_path / "slide.json")]) == 0
    slide = json.loads((tmp_path / "slide.json").read_text())
    assert slide["images"] == 8 and abs(slide["mIoU"] - report["mIoU"]) < 0.15

    output = tmp_path / "predictions"
    images = ade / "images" / "validation"
    assert main(["seg", "predict", "--checkpoint", str(run / "last.pth"), "--input", str(images),
                 "--output", str(output)]) == 0
    result = json.loads((output / "predictions.json").read_text())
    assert len(result["images"]) == 8
    for record in result["images"]:
        with Image.open(output / record["drawing"]) as drawing:
            assert drawing.format == "PNG" and drawing.mode == "RGB" and drawing.size == (128, 128)
        classes = np.asarray(Image.open(output / record["labels"]))
        assert classes.shape == (128, 128) and classes.max() < NUM_CLASSES
        assert sum(record["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
        assert record["class_fractions"]["0"] > 0.5  # mostly background


@pytest.mark.slow
def test_seg_train_runs_data_parallel_under_torchrun(ade, tmp_path):
    """Two gloo processes on the CPU: each trains on half the data, rank 0 writes the run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "efficientmod", "seg", "train", "--data", str(ade), *TINY_SEGMENTER, "--max-steps", "3",
               "--output", str(tmp_path)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 3  # 32 images / 2 ranks / batch 4 = 4 steps an epoch
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert not any(key.startswith("module.") for key in state["model"])  # the unwrapped model is saved


@pytest.mark.parametrize("task", [pytest.param("det", marks=pytest.mark.slow), "seg"])
def test_speed_script_measures_both_modes(task, monkeypatch):
    """images/s = timed steps × batch / the seconds they took: the steps are counted (forward
    passes of the model), the seconds come from a stand-in clock; training changes the
    weights, inference does not."""
    from efficientmod.dense import speed

    built, forwards = [], []

    def counting(build):
        def wrapped(*args, **kwargs):
            model = build(*args, **kwargs)
            model.register_forward_pre_hook(lambda *_: forwards.append(1))
            built.append((model, copy.deepcopy(model.state_dict())))
            return model
        return wrapped

    monkeypatch.setattr(speed, "build_detector", counting(speed.build_detector))
    monkeypatch.setattr(speed, "build_segmenter", counting(speed.build_segmenter))
    for mode, seconds in (("train", 2.5), ("infer", 0.5)):
        clock = iter([100.0, 100.0 + seconds])
        monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda clock=clock: next(clock)))
        forwards.clear()
        result = speed.measure(task, mode, "efficientmod_xxs", batch_size=1, size=(64, 96), steps=2, warmup=1,
                               device="cpu")
        assert len(forwards) == 1 + 2  # the warm-up step, then the timed ones
        assert result["images_per_second"] == round(2 * 1 / seconds, 2)
        assert result["size"] == [64, 96] and result["batch_size"] == 1 and result["device"] == "cpu"
        model, initial = built[-1]
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])]
        assert bool(changed) == (mode == "train")


def test_frozen_backbone_options_survive_the_checkpoint_round_trip(ade, tmp_path):
    """A BatchNorm family trained with frozen BN / stages is rebuilt the same way by `seg eval`."""
    name = "efficientvit_m0" if "efficientvit_m0" in list_models() else pytest.skip("EfficientViT not registered")
    assert main(["seg", "train", "--data", str(ade), *TINY_SEGMENTER, "--model", name, "--crop-size", "128",
                 "--window", "128", "--frozen-bn", "--frozen-stages", "1", "--max-steps", "2",
                 "--output", str(tmp_path)]) == 0
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert state["config"]["meta"]["frozen_bn"] and state["config"]["meta"]["frozen_stages"] == 1
    assert not any(key.endswith("num_batches_tracked") for key in state["model"] if key.startswith("backbone.body"))
    assert main(["seg", "eval", "--checkpoint", str(tmp_path), "--data", str(ade), "--workers", "0",
                 "--output", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["images"] == 8
