"""The scripts of benchmarks/ imported as modules, for the tests of their pure parts."""
from __future__ import annotations

import importlib.util
import types
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str) -> types.ModuleType:
    """``benchmarks/NAME.py`` executed as the module ``NAME`` (not added to ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
