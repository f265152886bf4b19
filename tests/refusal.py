"""What the bad-input corpus (tests/test_bad_inputs.py: flags, recipes, folders; tests/
test_bad_files.py: config.json, export metadata, export targets, weights, hub sources)
asserts of every case: exit 2, one line naming the problem, no traceback, no file changed."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from efficientmod.cli import main


def tree_digest(root: Path) -> str:
    """One hash of every path, file content and symbolic link under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_refused(argv: list[str], fragment: str, folder: Path, capsys) -> str:
    """Run ``efficientmod argv`` in-process; assert exit 2, one line on stderr holding
    ``fragment``, no traceback and ``folder`` unchanged; return the line."""
    before = tree_digest(folder)
    status = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, f"exit {status}: {err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert tree_digest(folder) == before, "the case changed its files or the run folder"
    return lines[0]
