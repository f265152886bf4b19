"""Kill a tiny training at its write points, then resume it (run by tests/test_run_folder.py).

``python kill_at_writes.py DATA ROOT POINT...`` trains ``ROOT/reference`` uninterrupted,
logging every write point in order (each ``os.replace`` that puts a file or folder in
place, each metrics.csv row) to ``ROOT/reference.writes``; then for each POINT (a 1-based
index into that log, or ``all``) trains ``ROOT/kill-<N>`` and ends the process with
``os._exit`` just before write N (its temporary file written, not yet in place: a kill
during the write), then resumes it with ``--resume auto``, and replaces the folder by its
:func:`digest` (``ROOT/<name>.json``: 72 MB checkpoints per point would fill the disk).
Each run is a forked child of this process (imports once, no torch op before the fork).
Prints one JSON line: ``{"reference": status, "writes": [...], "runs": {N: [kill status,
resume status]}}``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

from efficientmod.classify.run_folder import RunLog
from efficientmod.cli import main

TRAIN = ["train", "--model", "efficientmod_xxs", "--img-size", "32", "--batch-size", "4", "--workers", "0",
         "--threads", "1", "--epochs", "2", "--warmup-epochs", "1", "--lr", "1e-3", "--cooldown-epochs", "0",
         "--no-tensorboard"]
KILLED = 137
WALL_CLOCK_COLUMNS = ("img_per_s", "epoch_time_s", "time")
CHECKPOINT_ENTRIES = ("model", "ema", "optimizer", "epoch", "epoch_step", "global_step", "best_top1", "best_source",
                      "best_epoch")


def train(data: str, output: Path, *, kill_before: int | None = None, log: Path | None = None,
          resume: bool = False) -> int:
    """One run of ``efficientmod train`` (in this process), its write points counted."""
    writes: list[str] = []
    real_replace, real_row = os.replace, RunLog.epoch

    def point(name: str) -> None:
        writes.append(name)
        if len(writes) == kill_before:
            os._exit(KILLED)

    def replace(src, dst, *args, **kwargs):
        point(os.path.relpath(dst, output))
        return real_replace(src, dst, *args, **kwargs)

    def row(self, values):
        point("metrics.csv row")
        return real_row(self, values)

    os.replace, RunLog.epoch = replace, row
    try:
        status = main([*TRAIN, "--data", data, "--output", str(output), *(["--resume", "auto"] if resume else [])])
    finally:
        os.replace, RunLog.epoch = real_replace, real_row
    if log is not None:
        log.write_text(json.dumps(writes))
    return status


def _hash(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.contiguous().numpy().tobytes()).hexdigest()[:16]
    if isinstance(value, dict):
        return {str(key): _hash(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_hash(item) for item in value]
    return value


def digest(folder: Path) -> dict:
    """What a run folder holds, as hashes: the checkpoints' weights, EMA, optimizer and
    counters, model/'s files, metrics.csv without wall-clock columns, the manifest, the
    names of all its entries; whether every file names the same run."""
    import torch

    result = dict(entries=sorted(str(p.relative_to(folder)) for p in folder.rglob("*")))
    run_ids = set()
    for name in ("last.pth", "best.pth"):
        if (folder / name).exists():
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
            result[name] = _hash({key: state[key] for key in CHECKPOINT_ENTRIES})
            run_ids.add(state["run_id"])
    for path in sorted((folder / "model").glob("*")):
        result[f"model/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if (folder / "metrics.csv").exists():
        with open(folder / "metrics.csv") as handle:
            result["metrics"] = [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS}
                                 for row in csv.DictReader(handle)]
    if (folder / "run.json").exists():
        result["manifest"] = json.loads((folder / "run.json").read_text())
        run_ids.add(result["manifest"].pop("run_id"))
    result["one_run_id"] = len(run_ids) == 1  # the run's own id (a random one) in every file
    return result


def save_digest(folder: Path) -> int:
    folder.with_suffix(".json").write_text(json.dumps(digest(folder)))
    shutil.rmtree(folder)
    return 0


def child_status(run) -> int:
    pid = os.fork()
    if pid == 0:
        status = KILLED + 1
        try:
            status = run()
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_all(data: str, root: Path, points: list[str]) -> dict:
    log = root / "reference.writes"
    reference_status = child_status(lambda: train(data, root / "reference", log=log))
    child_status(lambda: save_digest(root / "reference"))
    writes = json.loads(log.read_text())
    chosen = range(1, len(writes) + 1) if points == ["all"] else map(int, points)
    runs = {}
    for index in chosen:
        output = root / f"kill-{index}"
        killed = child_status(partial(train, data, output, kill_before=index))
        resumed = child_status(partial(train, data, output, resume=True))
        child_status(partial(save_digest, output))
        runs[index] = [killed, resumed]
    return dict(reference=reference_status, writes=writes, runs=runs)


if __name__ == "__main__":
    print(json.dumps(run_all(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])))
