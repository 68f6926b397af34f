"""Waiting for a submitted job: what counts as done or failed is data shared by every kind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from smtask.errors import JobFailed

# kind -> (describe method, name argument, status key)
DESCRIBE = {
    "processing": ("describe_processing_job", "ProcessingJobName", "ProcessingJobStatus"),
    "training": ("describe_training_job", "TrainingJobName", "TrainingJobStatus"),
    "transform": ("describe_transform_job", "TransformJobName", "TransformJobStatus"),
}
DONE = {"Completed"}
FAILED = {"Failed", "Stopped"}


def wait(client: Any, kind: str, job_name: str, *, first_poll: float = 0.2, cap: float = 30.0,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll ``describe`` from a short first interval, doubling to ``cap``, until the job ends.

    Returns the last description of a Completed job; raises :class:`JobFailed` with
    SageMaker's FailureReason for a Failed or Stopped one.
    """
    method, name_arg, status_key = DESCRIBE[kind]
    delay = first_poll
    while True:
        description = getattr(client, method)(**{name_arg: job_name})
        status = description[status_key]
        if status in DONE:
            return description
        if status in FAILED:
            reason = description.get("FailureReason") or f"the job ended {status}"
            raise JobFailed(kind, job_name, reason)
        sleep(delay)
        delay = min(delay * 2, cap)
