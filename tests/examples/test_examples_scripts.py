"""The example scripts stay valid: bash parses them and every wsis subcommand they call exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".sh", ".sbatch"))


def test_there_are_examples():
    names = {p.name for p in SCRIPTS}
    assert {"pipeline.sh", "label_array.sbatch", "merge.sbatch", "train_student.sbatch", "submit.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_calls_known_commands(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from wsis_cli.cli.app import app

    known = {c.name for c in app.registered_commands}
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?:\$WSIS|\bwsis|-m wsis_cli)\s+([a-z][a-z-]+)", code))
    assert used or script.name == "submit.sh", "the script runs no wsis command"
    assert used <= known, used - known
