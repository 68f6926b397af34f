"""Names: the rules for the names that become paths and parts of AWS names, deterministic
and valid SageMaker job names for a task instance, and artifact locations."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

MAX_JOB_NAME = 63
INSTANCE_TAG = "smtask:task-instance"  # every job's and model's tag: task_instance_id()
# Names that become path components and parts of AWS names: ASCII only, never "." or "..".
NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "pipeline": (re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,29}"),
                 "1-30 of A-Z a-z 0-9 -, starting with a letter or digit"),
    "step": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"),
             "1-63 of A-Z a-z 0-9 _ -, starting with a letter or digit"),
    # processing inputs and outputs, training channels (SageMaker: [A-Za-z0-9.-_], at most 64)
    "data": (re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
             "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'"),
    # SageMaker's ModelName: ^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$, at most 63
    "model": (re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"),
              "1-63 of A-Z a-z 0-9 -, starting and ending with a letter or digit "
              "(SageMaker's model names)"),
    # SageMaker's ModelPackageGroupName and EndpointName: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$
    "group": (re.compile(r"[A-Za-z0-9](?:-*[A-Za-z0-9]){0,62}"),
              "1-63 of A-Z a-z 0-9 -, starting and ending with a letter or digit "
              "(SageMaker's model package group names)"),
    "endpoint": (re.compile(r"[A-Za-z0-9](?:-*[A-Za-z0-9]){0,62}"),
                 "1-63 of A-Z a-z 0-9 -, starting and ending with a letter or digit "
                 "(SageMaker's endpoint names)"),
}

# a metric's key among a registered model version's customer metadata (its value: JSON)
METRIC_PREFIX = "metric:"

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


# a run id as Airflow makes it (manual__2026-12-01T06:00:00.123456+00:00), and as a component
# (ASCII digits only: Python's \d, and Airflow's run id rule, also take other scripts' digits)
_AIRFLOW_RUN_ID = re.compile(r"[a-z_]+__[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                             r"(\.[0-9]+)?\+00:00")
_AIRFLOW_COMPONENT = re.compile(r"[a-z_]+__[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}-[0-9]{2}-[0-9]{2}"
                                r"(\.[0-9]+)?-00-00")
_HASH_HEX = 32  # 128 bits of sha256: no two ids can be made to meet
_HASHED = re.compile(rf".*-h[0-9a-f]{{{_HASH_HEX}}}")


def path_component(text: str) -> str:
    """``text`` (an Airflow id: run id, dag id) as one path component: [A-Za-z0-9._-] only,
    never ``.``, ``..`` or hidden (Airflow allows dots in ids), and never another id's (two
    DAGs sharing a pipeline name and a run id must not write into each other's outputs).

    An id that is a component already stays as it is, and so does a run id Airflow made
    (its ``:`` and ``+`` become ``-``, in their fixed places). Any other id is made one and
    takes ``-h`` and 32 hex digits of its hash (``.copy`` and ``_copy``, ``r:1`` and ``r+1``
    stay apart); so does an id that has the shape of those two forms, so no id can name
    another's folder."""
    component = re.sub(r"^\.+", "_", _slug(text, "A-Za-z0-9._-")) or "_"
    if _AIRFLOW_RUN_ID.fullmatch(text):
        return component
    if component == text and not _AIRFLOW_COMPONENT.fullmatch(text) and \
            not _HASHED.fullmatch(text):
        return component
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return f"{component}-h{digest}"


def run_prefix(artifacts: str, pipeline: str, dag_id: str, run_id: str, map_index: int = -1) -> str:
    """Where one run's artifacts live: ``<artifacts>/<pipeline>/<dag id>/<run id>[/<map
    index>]``. The dag id keeps apart two DAGs that share a pipeline name and a run id (two
    ``@daily`` DAGs both run ``scheduled__<date>``; a copied DAG keeps its config)."""
    prefix = f"{artifacts.rstrip('/')}/{_slug(pipeline)}/{path_component(dag_id)}/" \
             f"{path_component(run_id)}"
    return f"{prefix}/{map_index}" if map_index >= 0 else prefix


def quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted with escapes (a look-alike or a newline shows), cut to ``limit``."""
    shown = ascii(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def key_path(*keys: Any) -> str:
    """``steps.trainer.image``; an odd key (not a plain name) is quoted so the path stays one
    readable line."""
    return ".".join(str(k) if NAME_RULES["step"][0].fullmatch(str(k)) else quoted(str(k), 40)
                    for k in keys)


def name_problem(kind: str, name: Any) -> str | None:
    """Why ``name`` cannot be a ``kind`` name (see :data:`NAME_RULES`), or None if it can."""
    pattern, rule = NAME_RULES[kind]
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if kind == "step" and name.isdigit():  # <run>/<map index>/<step>: "0" is a mapped folder
        return (f"{quoted(name)} is not allowed: a step's name may not be only digits (a "
                "mapped task's folder of the run is its map index)")
    return None if pattern.fullmatch(name) else f"{quoted(name)} is not allowed: use {rule}"


def check_name(step: str, what: str, name: Any) -> str:
    """``name`` if it may be a ``what`` name of ``step`` (a processing input, a training
    channel: it becomes a path in the container); else a TypeError, like the other checks of
    the function's return value."""
    problem = name_problem("data", name)
    if problem:
        raise TypeError(f"step '{step}': {what} name {problem}")
    return str(name)
