"""What smtask keeps about one local session: one typed object, the SDK session's ``smtask``.

The SDK calls smtask's corrections with its own session object (a compose file's generator
gets ``self.sagemaker_session``): that is where they find this state.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtask.images import DEFAULT_REGION, LOCAL_IMAGE

__all__ = ["DEFAULT_REGION", "LOCAL_IMAGE", "LocalState", "Owner", "of"]
LABEL = "smtask.session"
OWNER_LABEL = "smtask.owner"  # "<host>:<pid>:<process start time>" of the task process
SCRATCH_LABEL = "smtask.scratch"  # the session's scratch folder, removed with its containers
OWNER_FILE = ".smtask-owner"
# smtask's own files for a job (its settings, a model's code) in the scratch folder: mounted
# read-only, unlike the SDK's scratch folders. No job name (the SDK's folders) starts with "_".
READ_ONLY = "_ro"


@dataclass(frozen=True)
class Owner:
    """The process a local session belongs to; its start time tells a reused PID apart."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Owner:
        import psutil

        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        try:
            host, pid, started = text.rsplit(":", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started:.2f}"

    def alive(self) -> bool:
        """False only when this machine's process table says the owner is gone."""
        import psutil

        if self.host != socket.gethostname():
            return True  # another machine's process: not ours to judge
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.NoSuchProcess:
            return False


@dataclass
class LocalState:
    """One local session: its containers' labels, its scratch folder, where its jobs log and
    publish, and what happened to its job."""

    session_id: str
    owner: Owner
    scratch: Path
    output: Any  # the containers' output (a ContainerOutput): to the task log
    artifacts: str = ""  # the artifacts root (file:// or s3://): every output's confinement
    step: str = ""  # the step the session runs a job of (named in messages)
    exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    serving_port: int | None = None  # held for the session's life (see serving)
    mounts: list[tuple[str, str]] = field(default_factory=list)  # extra read-only mounts
    # a job's own writable mounts (a training job's checkpoints), by its compose file's folder
    job_mounts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (staging, final) outputs
    # outputs for s3:// artifacts (local.s3_endpoint): (a copy in the scratch folder, its URI)
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    closing: bool = False  # the session is removing its containers
    killed: bool = False  # the task was killed: no result, whatever the SDK returns
    job_failed: bool = False  # a container failed (or a limit passed): no outputs published
    warm_up: tuple[str, ...] = ()  # modules to import while the first container runs (output)

    @property
    def log(self) -> Callable[[str], None]:
        """A line of smtask's own to the task log."""
        return self.output.sink  # type: ignore[no-any-return]

    @property
    def read_only(self) -> Path:
        """The session's folder of read-only files (created on first use)."""
        area = self.scratch / READ_ONLY
        area.mkdir(exist_ok=True)
        return area


def of(session: Any) -> LocalState:
    """The smtask state of an SDK ``LocalSession`` made by :func:`smtask.local.session.open`."""
    return session.smtask  # type: ignore[no-any-return]
