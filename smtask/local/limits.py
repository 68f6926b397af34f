"""Local mode's time limits, enforced as SageMaker enforces them."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from smtask.local.containers import stop
from smtask.local.state import of


class TimeLimit:
    """A local job's limit, enforced as SageMaker enforces it: when it passes, the job's
    compose processes and containers are stopped (its outputs are not published) and
    ``reason`` says which limit ended it. ``root``: only the job whose compose file is there
    (one tuning trial), else the session's every job."""

    def __init__(self, session: Any, seconds: float | None, reason: str,
                 root: str | None = None) -> None:
        self.session, self.seconds, self.reason, self.root = session, seconds, reason, root
        self.expired = False
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        self.expired = True
        state = of(self.session)
        if self.root is None:
            state.job_failed = True
        state.log(f"smtask: {self.reason}")
        stop(self.session, self.root)

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()


def max_runtime(seconds: int) -> str:
    return (f"stopped after {seconds} s: its max_runtime_seconds passed (SageMaker stops a "
            "job at its MaxRuntimeInSeconds: MaxRuntimeExceeded)")


def wait_timeout(seconds: float) -> str:
    return f"still running after the {seconds:g} s wait_timeout_seconds; the job was stopped"


def time_limit(session: Any, runtime_limited: bool, cfg: Mapping[str, Any]) -> TimeLimit:
    """The limit of a task's local job: the sooner of the step's ``max_runtime_seconds`` (when
    the job kind has one, ``runtime_limited``: a tuning job's trials each have their own, and
    a batch transform has none, as on SageMaker) and ``wait_timeout_seconds`` (the whole job)."""
    limits = []
    if cfg.get("max_runtime_seconds") and runtime_limited:
        limits.append((cfg["max_runtime_seconds"], max_runtime(cfg["max_runtime_seconds"])))
    if cfg.get("wait_timeout_seconds"):
        limits.append((cfg["wait_timeout_seconds"], wait_timeout(cfg["wait_timeout_seconds"])))
    seconds, reason = min(limits, key=lambda limit: limit[0]) if limits else (None, "")
    return TimeLimit(session, seconds, reason)
