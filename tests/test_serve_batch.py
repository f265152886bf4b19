"""``efficientmod predict --engine ray``: Ray Data batch inference equals the single-process
``predict`` on the same files, counts bad files without stopping, and resumes."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from synthetic_images import make_bad_files, make_image_folder
from test_deploy import random_model

from efficientmod.classify.predict import Predictor, load_model
from efficientmod.cli import main
from efficientmod.preprocessing import Preprocessing
from efficientmod.serve.batch import image_files, read_rows

pytestmark = pytest.mark.slow  # Ray's start-up alone takes ~10 s here

CLASSES = ["ant", "bee", "wasp"]


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    from efficientmod.serve.cluster import init_ray

    init_ray(num_cpus=2, object_store_bytes=200 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    make_image_folder(root / "folder", classes=("ant", "bee"), train_per_class=5, val_per_class=2)
    bad = make_bad_files(root / "folder" / "odd")
    return root / "folder", bad


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "model"
    model = random_model("efficientmod_xxs", num_classes=len(CLASSES))
    model.save_pretrained(folder, class_names=CLASSES, preprocessing=Preprocessing.of_model(model, (3, 64, 64)))
    return folder


def expected_rows(model_folder, files) -> dict:
    predictor = Predictor.from_model(load_model(model_folder))
    return {p.path: p.top for p in predictor.predict_files(files, topk=3)}


def test_ray_data_equals_predict_counts_bad_files_and_resumes(ray_instance, images, model_folder, tmp_path, capsys):
    folder, bad = images
    files = image_files([folder])
    output = tmp_path / "preds.jsonl"
    argv = ["predict", str(model_folder), str(folder), "--engine", "ray", "--output", str(output), "--topk", "3",
            "--batch-size", "4"]
    assert main(argv) == 1  # some files are unreadable: reported, the others predicted
    assert f"{len(bad['skip'])} unreadable file(s)" in capsys.readouterr().err
    rows = {row["path"]: row for row in read_rows(output)}
    assert sorted(rows) == files
    expected = expected_rows(model_folder, files)
    assert sorted(p for p, row in rows.items() if row["error"]) == sorted(map(str, bad["skip"]))
    assert rows[str(folder / "odd" / "notes.txt")]["error"] == "not an image (no format Pillow reads)"
    assert set(expected) == {p for p, row in rows.items() if not row["error"]}
    for path, top in expected.items():
        assert rows[path]["labels"] == [name for name, _ in top]
        assert rows[path]["probs"] == pytest.approx([p for _, p in top], abs=1e-5)

    kept = output.read_text().splitlines(keepends=True)
    output.write_text("".join(kept[:5]) + kept[5][:10])  # a run cut short, in the middle of a line
    kept_paths = {json.loads(line)["path"] for line in kept[:5]}
    bad_left = [str(p) for p in bad["skip"] if str(p) not in kept_paths]
    assert main(argv) == (1 if bad_left else 0)
    assert f"wrote {len(files) - 5} row(s)" in capsys.readouterr().out
    again = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(row["path"] for row in again) == files  # each once
    for row in again:  # the same rows, up to float rounding in other batches
        assert (row["labels"], row["error"]) == (rows[row["path"]]["labels"], rows[row["path"]]["error"])
        assert row["probs"] == pytest.approx(rows[row["path"]]["probs"], abs=1e-5)


def test_parquet_output(ray_instance, images, model_folder, tmp_path, capsys):
    folder, _ = images
    files = [str(p) for p in sorted((folder / "val" / "bee").iterdir())]
    output = tmp_path / "preds.parquet"
    assert main(["predict", str(model_folder), *files, "--engine", "ray", "--output", str(output), "--topk", "2"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(output)
    assert table.column_names == ["path", "labels", "probs", "error"] and table.num_rows == len(files)
    assert not (tmp_path / "preds.parquet.partial.jsonl").exists()
    expected = expected_rows(model_folder, files)
    for row in table.to_pylist():
        assert row["labels"] == [name for name, _ in expected[row["path"]][:2]] and row["error"] is None
    assert main(["predict", str(model_folder), *files, "--engine", "ray", "--output", str(output)]) == 0
    assert "wrote 0 row(s)" in capsys.readouterr().out and pq.read_table(output).num_rows == len(files)


@pytest.mark.parametrize("argv, message", [
    (["--engine", "ray"], "give both"),
    (["--engine", "ray", "--output", "preds.csv"], "must end in .jsonl or .parquet"),
])
def test_bad_batch_arguments(argv, message, capsys, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "model.onnx", str(image), *argv]) == 2
    assert message in capsys.readouterr().err
