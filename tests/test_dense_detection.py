"""Detection / instance segmentation: COCO data with bad entries, the schedule, training,
COCO mAP, and ``efficientmod det train|eval|predict`` end to end on synthetic shapes."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from efficientmod.cli import main
from efficientmod.dense.coco import CocoInstances, _rle_string_counts, require_pycocotools
from efficientmod.dense.config import DenseTrainConfig
from efficientmod.dense.data import Skipped
from efficientmod.dense.detection import build_detector, detection_loss, evaluate_coco, to_coco_results
from efficientmod.dense.engine import build_scheduler, train
from efficientmod.dense.synthetic import SHAPES, make_shapes_coco

# pycocotools' mask decoding under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TINY_DETECTOR = [
    "--model", "efficientmod_xxs", "--min-size", "128", "--max-size", "128", "--fpn-channels", "32",
    "--box-head-dim", "128", "--mask-head-channels", "32", "--batch-size", "4", "--lr", "2e-3",
    "--schedule", "cosine", "--warmup-steps", "20", "--workers", "0",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_coco(root, 48, 128, seed=0, split="train"), make_shapes_coco(root, 16, 128, seed=1, split="val")


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A Mask R-CNN trained 60 steps by the CLI (5 epochs of 12 steps), evaluated on the val set."""
    (images, annotations), (val_images, val_annotations) = shapes
    output = tmp_path_factory.mktemp("det_run")
    status = main(["det", "train", "--images", str(images), "--annotations", str(annotations),
                   "--val-images", str(val_images), "--val-annotations", str(val_annotations),
                   *TINY_DETECTOR, "--epochs", "5", "--max-steps", "60", "--output", str(output)])
    assert status == 0
    return output


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_det_train_lowers_the_loss_and_reaches_a_useful_map(trained):
    log = _log(trained)
    assert [row["epoch"] for row in log] == [1, 2, 3, 4, 5] and log[-1]["step"] == 60
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    report = json.loads((trained / "eval.json").read_text())
    assert report["images"] == 16 and report["skipped"] == {}
    assert report["bbox_mAP"] > 0.15 and report["segm_mAP"] > 0.15  # chance is ~0
    assert report["bbox_mAP_50"] >= report["bbox_mAP"]


@pytest.mark.slow
def test_det_eval_cli_reproduces_the_training_evaluation(trained, shapes, tmp_path):
    _, (val_images, val_annotations) = shapes
    assert main(["det", "eval", "--checkpoint", str(trained), "--device", "cpu", "--images", str(val_images),
                 "--annotations", str(val_annotations), "--workers", "0", "--output", str(tmp_path / "eval.json")]) == 0
    again, first = (json.loads(p.read_text()) for p in (tmp_path / "eval.json", trained / "eval.json"))
    assert again["bbox_mAP"] == pytest.approx(first["bbox_mAP"], abs=1e-6)
    assert again["segm_mAP"] == pytest.approx(first["segm_mAP"], abs=1e-6)


@pytest.mark.slow
def test_det_predict_writes_drawings_and_json(trained, shapes, tmp_path):
    _, (val_images, _) = shapes
    output = tmp_path / "predictions"
    assert main(["det", "predict", "--checkpoint", str(trained / "last.pth"), "--input", str(val_images),
                 "--output", str(output), "--score-threshold", "0.3"]) == 0
    result = json.loads((output / "predictions.json").read_text())
    assert len(result["images"]) == 16 and result["skipped"] == {}
    detections = [d for record in result["images"] for d in record["detections"]]
    assert len(detections) >= 16  # about two shapes per image
    for record in result["images"]:
        with Image.open(output / record["drawing"]) as drawing:
            assert drawing.format == "PNG" and drawing.size == (record["width"], record["height"])
        for detection in record["detections"]:
            x0, y0, x1, y1 = detection["box"]
            assert detection["label"] in SHAPES and detection["score"] >= 0.3
            assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]
            assert detection["mask_rle"]["size"] == [record["height"], record["width"]]


@pytest.mark.slow
def test_det_train_resumes_from_its_checkpoint(trained, shapes, tmp_path):
    (images, annotations), _ = shapes
    shutil.copy(trained / "last.pth", tmp_path / "last.pth")
    assert main(["det", "train", "--images", str(images), "--annotations", str(annotations), *TINY_DETECTOR,
                 "--output", str(tmp_path)]) == 2  # without --resume, a run folder is never overwritten
    assert main(["det", "train", "--images", str(images), "--annotations", str(annotations), *TINY_DETECTOR,
                 "--epochs", "6", "--max-steps", "64", "--output", str(tmp_path), "--resume"]) == 0
    log = _log(tmp_path)
    assert len(log) == 1 and log[0]["epoch"] == 6 and log[0]["step"] == 64
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert state["step"] == 64
    assert main(["det", "train", "--images", str(images), "--annotations", str(annotations), *TINY_DETECTOR,
                 "--output", str(tmp_path / "empty"), "--resume"]) == 2  # nothing to resume: a clear error


def _broken_coco(tmp_path):
    images, annotation_file = make_shapes_coco(tmp_path, 6, 64, seed=3)
    data = json.loads(annotation_file.read_text())
    (images / "00001.jpg").unlink()  # annotated, but the file is gone
    (images / "00002.jpg").write_bytes(b"not an image")  # present but undecodable
    lost = sum(a["image_id"] == 1 for a in data["annotations"])
    base = dict(image_id=3, category_id=1, iscrowd=0, segmentation=[[5, 5, 20, 5, 20, 20]])
    data["annotations"] += [
        dict(base, id=100, image_id=999, bbox=[0, 0, 10, 10]),  # unknown image
        dict(base, id=101, category_id=42, bbox=[0, 0, 10, 10]),  # class id out of range
        dict(base, id=102, bbox=[5, 5, 0, 10]),  # empty box
        dict(base, id=103, bbox=[70, 70, 10, 10]),  # outside the 64 px image
        dict(base, id=104, bbox=[5, 5, 10, "x"]),  # malformed
        dict(base, id=105, bbox=[4, 8, 16, 24], segmentation=[[1, 2]]),  # unusable polygon: box used
    ]
    annotation_file.write_text(json.dumps(data))
    return images, annotation_file, lost


def test_coco_bad_entries_are_skipped_and_counted(tmp_path):
    images, annotation_file, lost = _broken_coco(tmp_path)
    dataset = CocoInstances(images, annotation_file, train=True)
    assert dict(dataset.skipped) == {
        "missing image file": 1,
        "annotation of an unknown or missing image": 1 + lost,
        "category id out of range": 1,
        "empty or degenerate box": 3,
        "unusable mask (box used)": 1,
    }
    assert len(dataset) == 5 and 1 not in dataset.ids
    assert dataset[dataset.ids.index(2)] == Skipped("unreadable image file", str(images / "00002.jpg"))
    _, target = dataset[dataset.ids.index(3)]
    box_mask = [m for m, b in zip(target["masks"], target["boxes"], strict=True)
                if b[2] - b[0] == 16 and b[3] - b[1] == 24]
    assert len(box_mask) == 1 and int(box_mask[0].sum()) == pytest.approx(16 * 24, rel=0.15)

    # the run goes on past the undecodable image, and says so
    model = build_detector("mask_rcnn", "efficientmod_xxs", 3, min_size=64, max_size=64, fpn_channels=16,
                           box_head_dim=32, mask_head_channels=8)
    summary = train(model, dataset, DenseTrainConfig(epochs=1, batch_size=2, warmup_steps=0, workers=0),
                    detection_loss, tmp_path / "run")
    assert summary["skipped"] == {"unreadable image file": 1} and summary["steps"] == 3
    report = evaluate_coco(model, CocoInstances(images, annotation_file), workers=0)
    assert report["images"] == 4 and report["skipped"]["unreadable image file"] == 1
    assert 0 <= report["bbox_mAP"] <= 1


def _rle(mask: np.ndarray) -> dict:
    """``mask`` as a compressed COCO RLE, as JSON holds it."""
    rle = require_pycocotools().encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))


def test_rle_string_counts_are_the_runs_pycocotools_encodes():
    rng = np.random.default_rng(0)
    for trial in range(50):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((height, width)) < rng.random()
        if trial % 5 == 0:
            mask[:] = trial % 2  # one run only
        flat = mask.T.reshape(-1)  # column-major, runs of 0s first
        edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0]:
            runs = [0] + runs
        assert _rle_string_counts(_rle(mask)["counts"]) == runs
    assert _rle_string_counts("01{") is None  # ends inside a count ('{' = 75: more groups follow)
    assert _rle_string_counts("0 1") is None  # ' ' is below the alphabet


def test_coco_malformed_fields_are_skipped_and_name_their_record(tmp_path):
    images, annotation_file = make_shapes_coco(tmp_path, 3, 64, seed=4)
    data = json.loads(annotation_file.read_text())
    disc = np.hypot(*np.meshgrid(np.arange(64) - 30, np.arange(64) - 20)) < 8  # a disc at (30, 20)
    good_rle = _rle(disc)
    base = dict(image_id=1, category_id=2, bbox=[22, 12, 16, 16], iscrowd=0, segmentation=good_rle)
    data["annotations"] += [
        dict(base, id=200),  # a compressed RLE: its own mask is used
        dict(base, id=201, segmentation=dict(good_rle, counts="!!not an rle")),
        dict(base, id=202, segmentation=dict(size=[64, 64], counts=[100, 20])),  # covers 120 of 4096 pixels
        dict(base, id=203, segmentation=dict(size=[64, 64], counts=[4000, -4, 100])),
        dict(base, id=204, segmentation=dict(good_rle, size=[32, 32])),  # not the image's size
        dict(base, id=205, segmentation=[[1, 2, "x", 4, 5, 6]]),
        dict(base, id=206, iscrowd="no"),
        dict(base, id=207, area="large"),
        dict(base, category_id="2"),  # no id
        dict(base, id=200),  # id taken
        dict(base, id=208, image_id=[1]),
        dict(base, id=209, category_id=None),
        dict(base, id=210, iscrowd=True),  # a bool is 0 / 1: kept
    ]
    data["images"] += [dict(id=4, file_name="00001.jpg", width="64", height=64),
                       dict(file_name="00002.jpg", width=64, height=64),
                       dict(id=None, file_name="00002.jpg", width=64, height=64)]
    annotation_file.write_text(json.dumps(data))
    dataset = CocoInstances(images, annotation_file, train=True)
    assert dict(dataset.skipped) == {
        "unusable mask (box used)": 5,
        "iscrowd is not 0 or 1": 1,
        "area is not a non-negative number": 1,
        "annotation without an integer id": 1,
        "annotation id listed twice": 1,
        "annotation of an unknown or missing image": 1,
        "category id out of range": 1,
        "malformed image entry": 3,
    }
    first = dataset.skipped.first
    count = len(data["annotations"])
    assert first["unusable mask (box used)"] == f"{annotation_file.name} annotations[{count - 12}] (id 201)"
    assert first["iscrowd is not 0 or 1"] == f"{annotation_file.name} annotations[{count - 7}] (id 206)"
    assert first["annotation without an integer id"] == f"{annotation_file.name} annotations[{count - 5}]"
    assert first["malformed image entry"] == f"{annotation_file.name} images[3] (id 4)"
    assert f"1 × iscrowd is not 0 or 1 (first: {annotation_file.name} annotations[{count - 7}] (id 206))" in str(
        dataset.skipped)

    # every kept mask decodes: nothing is left to fail in the middle of a run
    for index in range(len(dataset)):
        _, target = dataset[index]
        assert target["masks"].shape == (len(target["boxes"]), 64, 64)
    kept = {a["id"]: a for a in dataset.annotations[1]}
    assert kept[210]["iscrowd"] == 1 and 206 not in kept and 207 not in kept
    _, target = dataset[dataset.ids.index(1)]
    from_rle = [m for m in target["masks"] if int(m.sum()) == int(disc.sum())]
    disc = torch.from_numpy(disc)
    assert len(from_rle) == 1 and any(torch.equal(from_rle[0].bool(), d) for d in (disc, disc.flip(-1)))  # random flip


def test_coco_records_that_would_shift_labels_are_refused(tmp_path):
    images, annotation_file = make_shapes_coco(tmp_path, 2, 64)
    data = json.loads(annotation_file.read_text())
    cases = {
        "categories[1] has no integer 'id'": dict(data, categories=[dict(id=1), dict(name="x"), dict(id=3)]),
        "categories[0] has no integer 'id'": dict(data, categories=[dict(id="1")]),
        "category id 2 is listed twice (categories[1] and categories[2])":
            dict(data, categories=[dict(id=1), dict(id=2), dict(id=2)]),
        "image id 2 is listed twice (images[1] and images[2])":
            dict(data, images=data["images"] + [dict(data["images"][1])]),
    }
    for message, broken in cases.items():
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=re.escape(f"broken.json: {message}")):
            CocoInstances(images, path)
    assert main(["det", "train", "--images", str(images), "--annotations", str(path),
                 "--output", str(tmp_path / "run")]) == 2


def test_coco_file_names_outside_the_images_folder_are_skipped_and_named(tmp_path):
    """A ``file_name`` is never opened outside ``--images`` (issue 19 item 13): an absolute
    path or a ``..`` that climbs out is a bad record, counted and named; a ``..`` that stays
    inside the folder is an ordinary path."""
    images, annotation_file = make_shapes_coco(tmp_path / "data", 3, 64, seed=5)
    outside = tmp_path / "secret.jpg"
    shutil.copy(images / "00001.jpg", outside)  # a real image: only the path check keeps it out
    data = json.loads(annotation_file.read_text())
    climbing = "../" * (len(images.parts) + 2) + str(outside).lstrip("/")  # ../../../../.../secret.jpg
    data["images"][0]["file_name"] = climbing
    data["images"][1]["file_name"] = str(outside)  # absolute
    data["images"][2]["file_name"] = "sub/../00003.jpg"  # inside the folder
    (images / "sub").mkdir()
    annotation_file.write_text(json.dumps(data))
    assert (images / climbing).is_file() and not (images / climbing).resolve().is_relative_to(images.resolve())
    dataset = CocoInstances(images, annotation_file)
    assert dataset.skipped["file_name outside the images folder"] == 2
    assert dataset.skipped.first["file_name outside the images folder"] == f"{annotation_file.name} images[0] (id 1)"
    assert dataset.ids == [3] and dataset[0][1]["image_id"] == 3


def test_coco_image_whose_size_differs_from_its_record_is_skipped_when_loaded(tmp_path):
    images, annotation_file = make_shapes_coco(tmp_path, 2, 64)
    Image.new("RGB", (48, 64)).save(images / "00002.jpg")
    dataset = CocoInstances(images, annotation_file)
    assert dataset[1] == Skipped("image size differs from its record", str(images / "00002.jpg"))


def test_unusable_annotation_files_give_clear_errors(tmp_path):
    images, annotation_file = make_shapes_coco(tmp_path, 2, 64)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoInstances(images, tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        CocoInstances(images, tmp_path / "text.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoInstances(images, tmp_path / "other.json")
    (tmp_path / "list.json").write_text(json.dumps([{"images": []}]))  # issue 19 item 18: was an AttributeError
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'list.json'} is not a COCO instances file: "
                                                   "its top level is a JSON list")):
        CocoInstances(images, tmp_path / "list.json")
    assert main(["det", "train", "--images", str(images), "--annotations", str(tmp_path / "list.json"),
                 "--output", str(tmp_path / "run")]) == 2
    with pytest.raises(ValueError, match="no usable image"):
        CocoInstances(tmp_path, annotation_file)  # every file_name missing under this folder
    assert main(["det", "train", "--images", str(images), "--annotations", str(tmp_path / "text.json"),
                 "--output", str(tmp_path / "run")]) == 2


@pytest.mark.slow
def test_retinanet_trains_and_evaluates(shapes, tmp_path):
    (images, annotations), (val_images, val_annotations) = shapes
    torch.manual_seed(0)
    model = build_detector("retinanet", "efficientmod_xxs", len(SHAPES), min_size=128, max_size=128, fpn_channels=32)
    assert model.backbone.strides == [8, 16, 32, 64, 128]
    config = DenseTrainConfig(epochs=None, max_steps=24, batch_size=4, lr=2e-3, warmup_steps=5, workers=0,
                              schedule="cosine")
    history = train(model, CocoInstances(images, annotations, train=True, masks=False), config, detection_loss,
                    tmp_path)["history"]
    assert {"classification", "bbox_regression"} <= set(history[0])
    first, last = (sum(h["loss"] for h in part) / 6 for part in (history[:6], history[-6:]))
    assert last < first
    report = evaluate_coco(model, CocoInstances(val_images, val_annotations, masks=False), workers=0)
    assert report["images"] == 16 and "segm_mAP" not in report and 0 <= report["bbox_mAP"] <= 1


def test_coco_results_use_xywh_boxes_and_category_ids():
    output = dict(boxes=torch.tensor([[10.0, 20.0, 30.0, 60.0]]), labels=torch.tensor([2]),
                  scores=torch.tensor([0.9]), masks=torch.zeros(1, 1, 64, 64))
    output["masks"][0, 0, 20:60, 10:30] = 0.8
    (result,) = to_coco_results(output, image_id=7, category_ids=[5, 11, 17])
    assert result["image_id"] == 7 and result["category_id"] == 11
    assert result["bbox"] == [10.0, 20.0, 20.0, 40.0] and result["score"] == pytest.approx(0.9)
    assert result["segmentation"]["size"] == [64, 64]


def _lr(config: DenseTrainConfig, step: int, steps_per_epoch: int) -> float:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    build_scheduler(optimizer, config, steps_per_epoch).step_update(step)
    return optimizer.param_groups[0]["lr"]


def test_step_cosine_poly_schedules_with_warmup():
    steps_per_epoch = 10
    step = DenseTrainConfig(lr=1.0, warmup_steps=0)  # the 1x schedule: x0.1 from epochs 8 and 11 on
    assert _lr(step, 79, steps_per_epoch) == 1.0
    assert _lr(step, 80, steps_per_epoch) == pytest.approx(0.1)
    assert _lr(step, 109, steps_per_epoch) == pytest.approx(0.1)
    assert _lr(step, 110, steps_per_epoch) == pytest.approx(0.01)
    warm = DenseTrainConfig(lr=1.0, warmup_steps=100, warmup_ratio=1e-3)
    assert _lr(warm, 0, 1000) == pytest.approx(1e-3)
    assert _lr(warm, 50, 1000) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert _lr(warm, 100, 1000) == 1.0
    cosine = DenseTrainConfig(lr=1.0, schedule="cosine", epochs=2, warmup_steps=0)
    assert _lr(cosine, 10, steps_per_epoch) == pytest.approx(0.5)
    assert _lr(cosine, 20, steps_per_epoch) == pytest.approx(0.0, abs=1e-12)
    poly = DenseTrainConfig(lr=1.0, schedule="poly", epochs=None, max_steps=100, warmup_steps=0, poly_power=0.9)
    assert _lr(poly, 50, steps_per_epoch) == pytest.approx(0.5 ** 0.9)
    assert math.isclose(_lr(poly, 0, steps_per_epoch), 1.0)
    with pytest.raises(ValueError, match="schedule"):
        DenseTrainConfig(schedule="linear")
