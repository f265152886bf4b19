"""The command line starts as fast as torch imports: help and --version load no engine,
no timm and no model family; registry-backed choices are checked when a command runs."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import efficientmod
from efficientmod.cli import main

HEAVY = ("timm", "torchvision", "efficientmod.models", "efficientmod.classify.engine", "efficientmod.dense.engine",
         "onnx", "onnxruntime", "matplotlib")

# in a fresh interpreter: every command's --help, noting what each one imported
HELP_PROBE = """
import argparse, json, sys
from efficientmod.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))

heavy = {heavy!r}
report = {}
for argv in [()] + list(commands(build_parser())):
    try:
        main([*argv, "--help"])
    except SystemExit as done:
        code = done.code
    report[" ".join(argv) or "(top)"] = [code, [m for m in heavy if m in sys.modules]]
print(json.dumps(report))
""".replace("{heavy!r}", repr(HEAVY))


def test_help_of_every_command_imports_no_engine_nor_timm():
    result = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"(top)", "models", "info", "bench", "bench-dense", "viz", "train", "demo", "eval", "export", "predict",
                "det", "det train", "det eval", "det predict", "seg", "seg train", "seg eval", "seg predict"}
    assert expected <= set(report), sorted(report)
    assert {command: heavy for command, (code, heavy) in report.items() if heavy or code != 0} == {}


def test_version_is_printed_without_importing_the_engines():
    probe = ("import sys\nfrom efficientmod.cli import main\n"
             "try:\n    main(['--version'])\nexcept SystemExit as done:\n    assert done.code == 0, done.code\n"
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    version_line, imported = result.stdout.strip().splitlines()
    assert version_line == f"efficientmod {efficientmod.__version__}" and imported == "[]"


def test_unknown_family_is_refused_when_the_command_runs(capsys):
    assert main(["models", "--family", "resnet", "--no-macs"]) == 2
    err = capsys.readouterr().err
    assert "unknown family 'resnet'" in err and "efficientmod, efficientvit, mobilevitv2" in err


def test_unknown_ablation_is_refused_when_viz_runs(tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert main(["viz", "efficientmod_xxs", str(image), "-o", str(tmp_path / "maps"), "--ablation", "nope"]) == 2
    assert "unknown ablation 'nope'" in capsys.readouterr().err


class FlushRecorder(io.StringIO):
    """A stdout that records what had been written at each flush."""

    def __init__(self):
        super().__init__()
        self.at_flush: list[int] = []  # lines written when flush() was called

    def flush(self):
        self.at_flush.append(self.getvalue().count("\n"))
        super().flush()


def test_models_flushes_each_row_as_it_is_measured(monkeypatch):
    recorder = FlushRecorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    assert main(["models", "efficientvit_m*", "--no-macs"]) == 0
    rows = recorder.getvalue().splitlines()
    assert len(rows) == 1 + len(efficientmod.list_models("efficientvit_m*"))
    assert set(range(1, len(rows) + 1)) <= set(recorder.at_flush)  # the header, then every row, on its own
