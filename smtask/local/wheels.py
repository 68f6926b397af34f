"""A step's requirements in local mode: the host's pip downloads the wheels once per content,
and the job installs them with no index (no index URL or credential reaches a container)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from smtask.errors import SmtaskError
from smtask.local.state import of
from smtask.naming import smtask_home

WHEELS_IN_CONTAINER = "/opt/smtask/wheels"
# what makes a container's pip install from the mounted wheels alone
PIP_ENVIRONMENT = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_IN_CONTAINER,
                   "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# The local image's interpreter and platform: the host's pip downloads wheels for it.
WHEEL_TARGET = ("--only-binary=:all:", "--python-version", "3.11", "--platform",
                "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                "--implementation", "cp")


def _pip() -> list[str]:
    """The host's pip (the worker's venv may have none): its configuration (index, mirror,
    credentials, CA bundle) is the host's, used on the host only."""
    import importlib.util
    import sys

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("python3", "pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found, "-m", "pip"] if name == "python3" else [found]
    raise SmtaskError("requirements in local mode need pip on the worker (none found)")


def _redacted(text: str) -> str:
    """pip's output with any credentials in URLs removed."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def wheelhouse(requirements: Path) -> Path:
    """The wheels of ``requirements`` (and their dependencies) for the local image, downloaded
    once per content of the file by the host's pip into ``$SMTASK_HOME/wheels/<hash>/``."""
    import hashlib

    digest = hashlib.sha256(requirements.read_bytes() + " ".join(WHEEL_TARGET).encode())
    root = smtask_home() / "wheels"
    target = root / digest.hexdigest()[:32]
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    try:
        done = subprocess.run([*_pip(), "download", "--disable-pip-version-check", "--quiet",
                               *WHEEL_TARGET, "-d", str(partial), "-r", str(requirements)],
                              capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            lines = _redacted(done.stderr + done.stdout).strip().splitlines()[-8:]
            raise SmtaskError(f"requirements {requirements.name}: the host's pip could not "
                              f"download wheels for the local image: {' | '.join(lines)}")
        (partial / ".complete").write_text("")
        with contextlib.suppress(OSError):  # another process may have finished first
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def install_from_wheels(session: Any, requirements: Path) -> dict[str, str]:
    """Let the session's job install ``requirements`` with no index: the wheels (downloaded on
    the host, see :func:`wheelhouse`) are mounted read-only; returns the job's pip env."""
    mount, state = (str(wheelhouse(requirements)), WHEELS_IN_CONTAINER), of(session)
    if mount not in state.mounts:  # e.g. a tuning job's trials: one session, the same wheels
        state.mounts[:] = [m for m in state.mounts if m[1] != WHEELS_IN_CONTAINER] + [mount]
    return dict(PIP_ENVIRONMENT)
