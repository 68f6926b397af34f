"""The layers of README "Layout", as pyproject.toml's import-linter contract writes them: the
package keeps them, and the contract does catch an arrow back up or a circle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "--config",
                           str(root / "pyproject.toml")], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "smtask", tmp_path / "smtask",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_its_layers():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    # a function-level import counts as much as a module-level one
    ("errors.py", "def _up():\n    from smtask import operator  # noqa\n", "smtask's layers"),
    ("naming.py", "from smtask import kinds  # noqa\n", "smtask's layers"),
    ("local/state.py", "from smtask.local import session  # noqa\n", "local mode"),
    ("kinds/common.py", "from smtask.kinds import training  # noqa\n", "kinds:"),
    ("params/merge.py", "from smtask.params import adapter  # noqa\n", "params:"),
])
def test_an_arrow_back_up_breaks_the_contract(copy, module, line, broken):
    path = copy / "smtask" / module
    path.write_text(path.read_text() + "\n" + line)
    result = lint(copy)
    assert result.returncode == 1, result.stdout
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_a_circle_between_siblings_breaks_the_contract(copy):
    # kill and triggers share a layer: an import each way is a circle
    for module, other in (("kill", "triggers"), ("triggers", "kill")):
        path = copy / "smtask" / f"{module}.py"
        path.write_text(path.read_text() + f"\nfrom smtask import {other}  # noqa\n")
    result = lint(copy)
    assert result.returncode == 1
    assert "no import circle anywhere in smtask BROKEN" in result.stdout, result.stdout
