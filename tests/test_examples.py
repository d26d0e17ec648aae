"""Every script in examples/ runs end to end (its ``--smoke`` size: a few steps)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
NEEDS = {"dcgan_digits.py": "sklearn", "ctgan_table.py": "ctgan"}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script):
    if script.name in NEEDS:
        pytest.importorskip(NEEDS[script.name])
    done = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(end in done.stdout for end in ("modes covered", "digits drawn", "total variation")), done.stdout


def test_every_example_is_found():
    assert {p.name for p in EXAMPLES} >= {"mlp_ring.py", "dcgan_digits.py", "r3gan_objective.py", "ctgan_table.py"}
