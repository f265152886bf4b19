"""The classification run folder never loses or mixes a run (issue 19, items 1-6): a kill
at any write point resumes to the uninterrupted run, one process per folder, no resume of
another run into it, --overwrite deletes only what a run wrote, every write error is one
line with exit 2 and the previous files intact."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_images import make_image_folder

from efficientmod import create_model
from efficientmod.checkpoint import WriteError, atomic_write, atomic_write_folder
from efficientmod.classify.engine import Trainer
from efficientmod.classify.run_folder import RunFolder
from efficientmod.cli import main

TINY = ["--model", "efficientmod_xxs", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--threads", "1",
        "--warmup-epochs", "1", "--lr", "1e-3", "--cooldown-epochs", "0", "--no-tensorboard"]
KILL_SCRIPT = Path(__file__).with_name("kill_at_writes.py")
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """2 classes x 8 train / 2 val images: 4 steps of 4 per epoch."""
    return make_image_folder(tmp_path_factory.mktemp("images"), train_per_class=8, val_per_class=2)


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    """A finished one-epoch run."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(folder, out, "--epochs", 1) == 0
    return out


def train(folder: Path, out: Path, *extra) -> int:
    return main(["train", *TINY, "--data", str(folder), "--output", str(out), *map(str, extra)])


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` and a hash of its bytes (but .lock's: who last held it)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("efficientmod train:")]


# -- 1, 2: a kill at each write point, then a resume, gives the uninterrupted run ----------------
def kill_and_resume(folder: Path, tmp_path: Path, points: list[str]) -> tuple[dict, Path]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(KILL_SCRIPT), str(folder), str(tmp_path), *points], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), tmp_path


def assert_resumed_runs_equal_the_reference(result: dict, root: Path) -> None:
    assert result["reference"] == 0
    reference = json.loads((root / "reference.json").read_text())
    assert reference["one_run_id"] and "model/config.json" in reference and "best.pth" in reference
    assert not [entry for entry in reference["entries"] if entry.endswith(".tmp")]
    for index, (killed, resumed) in result["runs"].items():
        assert (killed, resumed) == (137, 0), f"kill before write {index} ({result['writes'][int(index) - 1]})"
        assert json.loads((root / f"kill-{index}.json").read_text()) == reference, \
            f"kill before write {index} ({result['writes'][int(index) - 1]})"


def test_a_kill_between_last_and_best_or_during_the_model_save_resumes_to_the_uninterrupted_run(folder, tmp_path):
    """Items 1 and 2: killed after last.pth and before best.pth (which then never came), in
    the middle of model/'s files, and between model/ and the manifest's record of it."""
    writes = ["run.json", "config.yaml", "metrics.csv row", "last.pth", "best.pth"]  # the first five, in order
    points = [writes.index("best.pth") + 1, len(writes) + 4, len(writes) + 6]  # best.pth, model/README.md, run.json
    result, root = kill_and_resume(folder, tmp_path, [str(p) for p in points])
    assert result["writes"][:5] == writes
    assert result["writes"][points[1] - 1].endswith("/README.md") and result["writes"][points[2] - 1] == "run.json"
    assert result["writes"][points[2] - 2] == "model"
    assert_resumed_runs_equal_the_reference(result, root)


@pytest.mark.slow
def test_a_kill_at_every_write_point_resumes_to_the_uninterrupted_run(folder, tmp_path):
    result, root = kill_and_resume(folder, tmp_path, ["all"])
    names = {name.rsplit("/", 1)[-1] for name in result["writes"]}
    assert {"last.pth", "best.pth", "model.safetensors", "config.json", "README.md", "model", "metrics.csv row",
            "config.yaml", "run.json"} <= names
    assert len(result["runs"]) == len(result["writes"])
    assert_resumed_runs_equal_the_reference(result, root)


def test_the_final_line_names_only_the_files_that_exist(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "save_best_model", lambda self, source: None)
    assert train(folder, tmp_path / "run", "--epochs", 1) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and "in best.pth)" in done[0] and "model/" not in done[0]


# -- 3: one process per run folder ------------------------------------------------------------
def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunFolder(out)
    holder.lock()
    before = snapshot(out)
    assert train(folder, out, "--epochs", 1) == 2
    [line] = error_lines(capsys)
    assert f"{out} is in use by another run (pid {os.getpid()} on " in line
    assert snapshot(out) == before
    holder.unlock()
    assert not out.exists()  # nothing ran in it: the lock's folder is gone again


def test_the_lock_of_a_killed_process_is_taken_over(folder, tmp_path, capsys):
    out = tmp_path / "run"
    script = ("import os, signal, sys; from efficientmod.classify.run_folder import RunFolder; "
              "RunFolder(sys.argv[1]).lock(); os.kill(os.getpid(), signal.SIGKILL)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", script, str(out)], env=env).returncode == -signal.SIGKILL
    assert "pid" in (out / ".lock").read_text()
    assert train(folder, out, "--epochs", 1) == 0
    assert (out / "model" / "config.json").exists()


# -- 4: no resume of another run into a folder ------------------------------------------------------
def test_resuming_another_runs_checkpoint_into_a_folder_with_a_run_is_refused_unless_overwrite(
        run, folder, tmp_path, capsys):
    other = tmp_path / "other"
    assert train(folder, other, "--epochs", 1) == 0  # the same recipe, another run
    before = snapshot(other)
    capsys.readouterr()
    assert train(folder, other, "--epochs", 1, "--resume", run / "last.pth") == 2
    [line] = error_lines(capsys)
    assert "continues another run than the one" in line and "--overwrite" in line
    assert snapshot(other) == before
    assert train(folder, other, "--epochs", 1, "--resume", other / "best.pth") == 0  # its own run: accepted
    assert train(folder, other, "--epochs", 1, "--resume", "auto", "--overwrite") == 2
    assert train(folder, other, "--epochs", 1, "--resume", run / "last.pth", "--overwrite") == 0
    run_id = torch.load(run / "last.pth", weights_only=True)["run_id"]
    assert torch.load(other / "last.pth", weights_only=True)["run_id"] == run_id
    assert json.loads((other / "run.json").read_text())["run_id"] == run_id


# -- 5: --overwrite deletes only what a run wrote -------------------------------------------------
def test_overwrite_never_deletes_a_file_no_run_wrote(run, folder, tmp_path, capsys):
    users = tmp_path / "users"
    (users / "model").mkdir(parents=True)
    (users / "model" / "my_code.py").write_text("print('mine')\n")
    before = snapshot(users)
    assert train(folder, users, "--epochs", 1, "--overwrite") == 2
    [line] = error_lines(capsys)
    assert "holds model, which no run wrote" in line
    assert snapshot(users) == before and sorted(p.name for p in users.iterdir()) == ["model"]

    copy = copy_of(run, tmp_path)
    (copy / "notes.txt").write_text("my notes\n")
    assert train(folder, copy, "--epochs", 1, "--overwrite") == 0
    assert (copy / "notes.txt").read_text() == "my notes\n" and (copy / "model" / "config.json").exists()

    (copy / "model" / "my_code.py").write_text("print('mine')\n")  # into a run's model/
    before = snapshot(copy)
    for extra in (["--overwrite"], ["--resume", "auto"]):
        assert train(folder, copy, "--epochs", 1, *extra) == 2
        assert "holds model/my_code.py, which no run wrote" in error_lines(capsys)[0]
        assert snapshot(copy) == before


# -- 6: every write error is one line, exit 2, the previous files intact -----------------------------
def full_disk(monkeypatch) -> None:
    """statvfs says the disk is full (what torch.save's enforce-fail message does not)."""
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(**{
        name: getattr(real(path), name) for name in ("f_frsize", "f_bsize", "f_blocks")}, f_bavail=0))


def test_torch_save_failing_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(folder, tmp_path, monkeypatch,
                                                                                      capsys):
    out, real_save, calls = tmp_path / "run", torch.save, []

    def enforce_fail(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # epoch 1 wrote last.pth and best.pth; epoch 2's last.pth fails
            full_disk(monkeypatch)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1984")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", enforce_fail)
    assert train(folder, out, "--epochs", 2) == 2
    [line] = error_lines(capsys)
    assert f"cannot write {out / 'last.pth'}: ENOSPC: No space left on device" in line
    assert f"the previous checkpoint {out / 'last.pth'} is intact" in line
    monkeypatch.undo()
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_safetensors_failing_during_the_model_save_is_one_line_and_the_resume_writes_model(folder, tmp_path,
                                                                                          monkeypatch, capsys):
    from safetensors import SafetensorError

    import efficientmod.models.pretrained as pretrained

    def no_space(state, path):
        Path(path).write_bytes(b"half")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    out = tmp_path / "run"
    monkeypatch.setattr(pretrained, "save_file", no_space)
    assert train(folder, out, "--epochs", 1) == 2
    [line] = error_lines(capsys)
    assert f"cannot write {out / 'model'}: ENOSPC: No space left on device" in line and "is intact" in line
    assert not (out / "model").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert train(folder, out, "--epochs", 1, "--resume", "auto") == 0  # the epoch is done; model/ is written
    assert "rewriting model (epoch 1's best weights" in capsys.readouterr().err
    assert (out / "model" / "config.json").exists()


def test_a_failing_folder_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")

    def fails(folder: Path) -> None:
        (folder / "weights").write_text("new")
        raise RuntimeError("No space left on device")

    with pytest.raises(WriteError, match=r"cannot write .*model: ENOSPC: No space left on device; the previous "):
        atomic_write_folder(target, fails)
    assert snapshot(tmp_path) == {"model/weights": hashlib.sha256(b"old").hexdigest()}
    atomic_write_folder(target, lambda folder: (folder / "weights").write_text("new"))
    assert snapshot(tmp_path) == {"model/weights": hashlib.sha256(b"new").hexdigest()}
    umask = os.umask(0)
    os.umask(umask)
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~umask)  # not mkdtemp's 0700


def test_real_file_system_refusals_name_the_errno(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"cannot write .*file/run/last.pth: ENOTDIR: Not a directory"):
        atomic_write(tmp_path / "file" / "run" / "last.pth", lambda tmp: Path(tmp).write_text("x"))
    with pytest.raises(WriteError, match=r"cannot write /sys/efficientmod.onnx: (EACCES|EROFS|EPERM): "):
        atomic_write("/sys/efficientmod.onnx", lambda tmp: Path(tmp).write_text("x"))  # root too is refused


def test_export_writers_fail_in_one_line_keeping_the_previous_file(tmp_path, monkeypatch):
    import efficientmod.export.onnx as onnx_export
    import efficientmod.export.openvino as openvino_export

    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")

    def no_space(*args):
        raise RuntimeError("onnx.save: [Errno 28] No space left on device")

    monkeypatch.setattr(onnx_export, "_write_onnx", no_space)
    with pytest.raises(WriteError, match=r"model.onnx: ENOSPC: No space left on device; the previous model.onnx"):
        onnx_export.export_onnx(create_model("efficientmod_xxs", num_classes=2), path, input_size=(3, 32, 32))
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model.onnx"]

    xml = tmp_path / "model_int8.xml"
    xml.write_text("<previous/>")

    def refused(model, where, compress_to_fp16):
        raise RuntimeError(f"Can't open {where} for writing: {os.strerror(errno.EROFS)}")

    monkeypatch.setattr(openvino_export, "_openvino", lambda: SimpleNamespace(save_model=refused))
    with pytest.raises(WriteError, match=r"model_int8.xml: EROFS: Read-only file system"):
        openvino_export.save_openvino(_static_ir_stub(), xml)
    assert xml.read_text() == "<previous/>" and sorted(os.listdir(tmp_path)) == ["model.onnx", "model_int8.xml"]


def test_the_cli_reports_a_file_system_refusal_in_one_line_with_exit_2(monkeypatch, capsys):
    import efficientmod.cli.models as models_cli

    def refused(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/x.png")

    monkeypatch.setattr(models_cli, "run_models", refused)  # read when the parser is built
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == ("efficientmod models: error: cannot use /data/x.png: EACCES: "
                                               "Permission denied")


def _static_ir_stub():
    """What save_openvino reads of a model before writing it: one static 1 x 3 x 32 x 32 input."""
    from openvino import PartialShape

    port = SimpleNamespace(get_partial_shape=lambda: PartialShape([1, 3, 32, 32]))
    return SimpleNamespace(set_rt_info=lambda *args: None, reshape=lambda shape: None, input=lambda index: port)
