"""Reading and writing artifacts by URI from plain tasks (``file://`` or ``s3://``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask import naming
from smtask.errors import SmtaskError


def confined(target: str | Path, root: str | Path) -> Path:
    """``target`` resolved, refused unless it lies inside ``root`` and no symlink below
    ``root`` leads there (a linked folder would carry a write or a delete elsewhere; ``root``
    itself may be a link). Every path smtask writes or deletes goes through here first."""
    base = Path(root).resolve()
    lexical = Path(os.path.normpath(target))
    try:
        expected = base / lexical.relative_to(os.path.normpath(root))
    except ValueError:
        expected = None
    resolved = Path(target).resolve()
    if expected != resolved or not resolved.is_relative_to(base):
        raise SmtaskError(f"refusing to write or delete {target}: it is outside {base} "
                          "(or reaches it through a symlink)")
    return resolved


def local_path(uri: str, root: str | None = None) -> Path:
    """The path of a ``file://`` URI; with ``root`` (a URI or path), confined to it."""
    path = Path(urlparse(uri).path)
    return confined(path, urlparse(root).path) if root else path


def map_index(context: Any) -> int:
    """The task instance's map index; -1 when it is not mapped."""
    index = getattr(context["ti"], "map_index", None)
    return -1 if index is None else int(index)


def run_prefix(context: Any, step: str | None = None,
               params: dict[str, Any] | None = None) -> str:
    """The URI of this run's artifacts (the same one the smtask tasks of the run write under),
    or of one step's folder in it. For plain tasks, e.g. a data source."""
    from smtask.params import name_problem, run_params
    from smtask.sessions import artifacts_root

    problem = name_problem("step", step) if step is not None else None
    if problem:  # it becomes a folder of the run's artifacts
        raise SmtaskError(f"run_prefix: step {problem}")
    params = params or run_params(context)
    prefix = naming.run_prefix(artifacts_root(params), params["pipeline_name"], context["run_id"],
                               map_index(context))
    return f"{prefix}/{step}" if step else prefix


def _s3(context_params: dict[str, Any] | None) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    params = context_params or {}
    return S3Hook(aws_conn_id=params.get("aws_conn_id", "aws_default"))


def write_text(uri: str, text: str, params: dict[str, Any] | None = None) -> str:
    """Write one file; a ``file://`` one only under the artifacts root of the params' mode."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        from smtask.sessions import artifacts_root

        root = artifacts_root(params or {"mode": "local"})
        path = local_path(uri, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        _s3(params).load_string(text, key=parsed.path.lstrip("/"), bucket_name=parsed.netloc,
                                replace=True)
    return uri


def read_text(uri: str, params: dict[str, Any] | None = None) -> str:
    """One file's text; for a folder (prefix), the files under it joined in name order."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return "".join(p.read_text() for p in files)
    hook, key = _s3(params), parsed.path.lstrip("/")
    keys = sorted(hook.list_keys(bucket_name=parsed.netloc, prefix=key) or [key])
    return "".join(hook.read_key(k, bucket_name=parsed.netloc) for k in keys)
