"""The repository passes its linter and formatter (pyproject.toml's [tool.ruff] settings)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _ruff():
    # ruff is in the test extras ('.[test]'); its binary sits beside the interpreter.
    beside = pathlib.Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]' brings it")
    return found


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run([_ruff(), *command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"
