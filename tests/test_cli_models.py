"""`efficientmod models` / `efficientmod info`."""
from __future__ import annotations

import subprocess
import sys

import efficientmod
from efficientmod.cli import main


def test_models_lists_every_registered_model_with_params_and_macs(capsys):
    assert main(["models", "efficientmod_*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["model", "family"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == set(efficientmod.list_models("efficientmod_*"))
    assert rows["efficientmod_s"][2:5] == ["12.897", "1.317", "224²"]  # params (M), GMACs, input
    assert rows["efficientmod_xxs"][2:4] == ["4.736", "0.557"]


def test_models_lists_all_families(capsys):
    assert main(["models", "--no-macs"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[0] for row in rows] == efficientmod.list_models()
    assert {row[1] for row in rows} == {"efficientmod", "efficientvit", "mobilevitv2"}
    assert all(row[3] == "-" for row in rows)  # --no-macs


def test_models_filters_by_family_and_says_when_nothing_matches(capsys):
    assert main(["models", "--family", "efficientvit", "--no-macs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == efficientmod.list_models(family="efficientvit") and len(names) == 6
    assert main(["models", "efficientmod_*", "--family", "mobilevitv2"]) == 2
    assert "no model matches 'efficientmod_*' in family mobilevitv2" in capsys.readouterr().err


def test_info_describes_one_model(capsys):
    assert main(["info", "efficientmod_xs"]) == 0
    out = capsys.readouterr().out
    assert "6.628 M" in out and "0.710 G" in out
    assert "stride 32: 288 ch" in out and "78.3%" in out


def test_unknown_model_is_a_clear_error_with_suggestions(capsys):
    assert main(["info", "efficientmod_xss"]) == 2
    assert "Did you mean: efficientmod_xs" in capsys.readouterr().err


def test_console_entry_point_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "efficientmod", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "models" in result.stdout
