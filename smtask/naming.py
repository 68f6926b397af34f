"""Deterministic, valid SageMaker names and artifact locations for a task instance."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MAX_JOB_NAME = 63
# The SDK's local mode refuses to mount folders under these (common_utils._SENSITIVE_SYSTEM_PATHS)
_SDK_RESTRICTED_ROOTS = ("/root", "/etc", "/var/lib")


def smtask_home() -> Path:
    """``$SMTASK_HOME``, else ``~/.smtask`` (``/var/tmp/smtask`` where the SDK refuses ~)."""
    if os.environ.get("SMTASK_HOME"):
        return Path(os.environ["SMTASK_HOME"]).resolve()
    home = Path.home() / ".smtask"
    return Path("/var/tmp/smtask") if str(home).startswith(_SDK_RESTRICTED_ROOTS) else home


def _slug(text: str, allowed: str = "A-Za-z0-9-") -> str:
    return re.sub(rf"[^{allowed}]+", "-", text).strip("-")


def run_stamp(run_id: str) -> str:
    """The run's time as ``YYYYMMDDHHMMSS`` when its id holds one, else a slug of the id."""
    match = re.search(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):?(\d{2}):?(\d{2})", run_id)
    return "".join(match.groups()) if match else _slug(run_id)[:20]


def job_name(pipeline: str, step: str, *, dag_id: str, run_id: str, task_id: str,
             map_index: int = -1, max_length: int = MAX_JOB_NAME) -> str:
    """``<pipeline>-<step>-<run time>[-m<i>]-<hash>``: at most ``max_length`` (63; a tuning
    job's name: 32) chars of [A-Za-z0-9-].

    The same task instance always gets the same name (so a retry can find its job); the hash
    over dag, run, task and map index keeps different task instances apart after truncation.
    """
    digest = task_instance_id(dag_id=dag_id, run_id=run_id, task_id=task_id,
                              map_index=map_index)[:8]
    tail = (f"-m{map_index}" if map_index >= 0 else "") + f"-{digest}"
    head = f"{_slug(pipeline)}-{_slug(step)}-{run_stamp(run_id)}"
    return head[: max_length - len(tail)].rstrip("-") + tail


def task_instance_id(*, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """A task instance's id in SageMaker: the sha256 of dag, run, task and map index. Its start
    ends each job name; the whole is every job's ``smtask:task-instance`` tag, so a job that
    exists under the task's name can be told to be this task instance's own."""
    return hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode()).hexdigest()


def attempt_name(job_name: str, attempt: int, max_length: int = MAX_JOB_NAME) -> str:
    """The name of a task instance's ``attempt``-th job (after failed ones): ``-r<n>``
    before the hash, still at most ``max_length`` characters."""
    if attempt <= 1:
        return job_name
    match = re.fullmatch(r"(.*?)((?:-m\d+)?)-([0-9a-f]{8})", job_name)
    if match is None:
        raise ValueError(f"{job_name!r} is not a name made by job_name()")
    head, mapped, digest = match.groups()
    tail = f"{mapped}-r{attempt}-{digest}"
    return head[: max_length - len(tail)].rstrip("-") + tail


def path_component(text: str) -> str:
    """``text`` (an Airflow id: run id, dag id) as one path component: [A-Za-z0-9._-] only,
    never ``.``, ``..`` or hidden (Airflow allows dots in ids)."""
    return re.sub(r"^\.+", "_", _slug(text, "A-Za-z0-9._-")) or "_"


def run_prefix(artifacts: str, pipeline: str, dag_id: str, run_id: str, map_index: int = -1) -> str:
    """Where one run's artifacts live: ``<artifacts>/<pipeline>/<dag id>/<run id>[/<map
    index>]``. The dag id keeps apart two DAGs that share a pipeline name and a run id (two
    ``@daily`` DAGs both run ``scheduled__<date>``; a copied DAG keeps its config)."""
    prefix = f"{artifacts.rstrip('/')}/{_slug(pipeline)}/{path_component(dag_id)}/" \
             f"{path_component(run_id)}"
    return f"{prefix}/{map_index}" if map_index >= 0 else prefix
