"""Batch inference over Ray Data: ``efficientmod predict ARTIFACT DIR --output preds.jsonl
--engine ray``.

The pipeline: read the files (``read_binary_files``), decode them with the artifact's
preprocessing (tasks), run the model (``map_batches`` over a pool of actors, each holding
the artifact in its runtime), and write the rows from the driver as they arrive. A row is
``{"path", "labels", "probs", "error"}``: the top-k classes, best first, or the reason an
unreadable file was skipped (counted, never fatal). The output is its own journal: a rerun
skips every path already written (a ``.parquet`` output is gathered in
``OUTPUT.partial.jsonl`` and written in one piece when the run ends). On a cluster
(``address``) the files must be readable from every node.
"""
from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from efficientmod.checkpoint import atomic_write
from efficientmod.classify.data import DECODE_ERRORS
from efficientmod.classify.predict import Preprocessing
from efficientmod.serve.artifact import load_artifact
from efficientmod.serve.cluster import init_ray

__all__ = ["BatchSummary", "predict_to_file", "image_files", "read_rows", "OUTPUT_SUFFIXES"]

OUTPUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class BatchSummary:
    predicted: int  # rows written by this run
    bad: int  # unreadable files among them
    skipped: int  # paths already in the output (a resumed run)


def image_files(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """The files named, folders searched recursively (hidden files left out), in order."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(str(p) for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif item.is_file():
            files.append(str(item))
        else:
            raise FileNotFoundError(f"no image file or folder {item}")
    return files


def _journal(output: Path) -> Path:
    """Where the rows go while the run lasts: the output itself for .jsonl."""
    return output if output.suffix == ".jsonl" else output.with_name(output.name + ".partial.jsonl")


def _read_journal(path: Path) -> list[dict]:
    """The complete rows of a JSON-lines journal; a last line cut off by a crash is removed."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with open(path, "rb") as lines:
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            if not line.endswith(b"\n"):
                rows.pop()
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        os.truncate(path, good_bytes)
    return rows


def read_rows(output: str | os.PathLike) -> list[dict]:
    """Every row written to ``output`` so far (finished .parquet and its journal included)."""
    output = Path(output)
    rows = []
    if output.suffix == ".parquet" and output.exists():
        import pyarrow.parquet as pq

        rows = pq.read_table(output).to_pylist()
    return rows + _read_journal(_journal(output))


def decode_batch(batch: dict, preprocessing: Preprocessing) -> dict:
    """Ray Data stage: file bytes → preprocessed images (zeros and a reason for a bad file)."""
    images, errors = [], []
    shape = preprocessing.input_size
    for data in batch["bytes"]:
        try:
            images.append(preprocessing.load(io.BytesIO(data)).numpy())
            errors.append("")
        except UnidentifiedImageError:
            images.append(np.zeros(shape, np.float32))
            errors.append("not an image (no format Pillow reads)")
        except DECODE_ERRORS as error:
            images.append(np.zeros(shape, np.float32))
            errors.append(f"{type(error).__name__}: {error}")
    return {"path": np.asarray(batch["path"]), "image": np.stack(images), "error": np.asarray(errors)}


class ClassifyBatch:
    """Ray Data stage: one actor holding the artifact, classifying decoded batches."""

    def __init__(self, model: str, checkpoint: str | None, threads: int | None, topk: int):
        self.predictor = load_artifact(model, threads, checkpoint).predictor
        self.topk = min(topk, len(self.predictor.class_names))

    def __call__(self, batch: dict) -> dict:
        import torch

        good = batch["error"] == ""
        labels = np.full((len(good), self.topk), "", dtype=object)
        probs = np.zeros((len(good), self.topk), np.float64)
        if good.any():
            for row, top in zip(np.flatnonzero(good), self.predictor.predict(torch.from_numpy(batch["image"][good]),
                                                                            self.topk), strict=True):
                labels[row] = [name for name, _ in top]
                probs[row] = [p for _, p in top]
        return {"path": batch["path"], "labels": labels.astype(str), "probs": probs, "error": batch["error"]}


def _rows(batch: dict) -> Iterable[dict]:
    for path, labels, probs, error in zip(batch["path"], batch["labels"], batch["probs"], batch["error"],
                                          strict=True):
        yield (dict(path=str(path), labels=[], probs=[], error=str(error)) if error else
               dict(path=str(path), labels=[str(n) for n in labels], probs=[float(p) for p in probs], error=None))


def _finish_parquet(output: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_rows(output)
    schema = pa.schema([("path", pa.string()), ("labels", pa.list_(pa.string())), ("probs", pa.list_(pa.float64())),
                        ("error", pa.string())])
    atomic_write(output, lambda tmp: pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp))
    _journal(output).unlink(missing_ok=True)


def predict_to_file(model: str, images: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                    checkpoint: str | None = None, topk: int = 5, batch_size: int = 16, threads: int | None = None,
                    workers: int = 1, address: str | None = None) -> BatchSummary:
    """Classify ``images`` (files and folders) with the artifact ``model`` over Ray Data
    (``workers`` model actors of ``threads`` CPUs each) into ``output`` (.jsonl or .parquet);
    Ray is started embedded unless ``address`` names a cluster."""
    import ray

    output = Path(output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {output}")
    if min(topk, batch_size, workers, threads or 1) < 1:
        raise ValueError("--topk, --batch-size, --workers and --threads must be positive")
    done = {row["path"] for row in read_rows(output)}
    todo = [path for path in image_files(images) if path not in done]
    preprocessing = load_artifact(model, threads, checkpoint).predictor.preprocessing  # fails here on a bad artifact
    started_ray = not ray.is_initialized()
    init_ray(address)
    predicted = bad = 0
    try:
        if todo:
            dataset = (ray.data.read_binary_files(todo, include_paths=True)
                       .map_batches(decode_batch, fn_kwargs=dict(preprocessing=preprocessing), batch_size=batch_size)
                       .map_batches(ClassifyBatch, fn_constructor_args=(model, checkpoint, threads, topk),
                                    batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                                    num_cpus=threads or 1))
            output.parent.mkdir(parents=True, exist_ok=True)
            with open(_journal(output), "a") as journal:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    for row in _rows(batch):
                        journal.write(json.dumps(row) + "\n")
                        predicted, bad = predicted + 1, bad + bool(row["error"])
                    journal.flush()
        if output.suffix == ".parquet":
            _finish_parquet(output)
    finally:
        if started_ray:
            ray.shutdown()
    return BatchSummary(predicted, bad, len(done))


def report(summary: BatchSummary, output: str | os.PathLike) -> int:
    """Print what a run did; 1 when some files were unreadable (as ``predict``), else 0."""
    print(f"efficientmod predict: wrote {summary.predicted} row(s) to {output}"
          + (f", {summary.skipped} already there (skipped)" if summary.skipped else ""))
    if summary.bad:
        print(f"efficientmod predict: {summary.bad} unreadable file(s), recorded with their reason in {output}",
              file=sys.stderr)
    return 1 if summary.bad else 0
