"""Reading and writing artifacts by URI from plain tasks (``file://`` or ``s3://``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask import naming
from smtask.errors import SmtaskError
from smtask.paths import confined, local_path

__all__ = ["confined", "local_path", "map_index", "read_bytes", "read_text", "remove",
           "run_prefix", "write_bytes", "write_text"]


def map_index(context: Any) -> int:
    """The task instance's map index; -1 when it is not mapped."""
    index = getattr(context["ti"], "map_index", None)
    return -1 if index is None else int(index)


def dag_id(context: Any) -> str:
    """The id of the task instance's DAG."""
    dag = context.get("dag")
    return str(getattr(dag, "dag_id", None) or context["ti"].dag_id)


def run_prefix(context: Any, step: str | None = None,
               params: dict[str, Any] | None = None) -> str:
    """The URI of this run's artifacts, ``<artifacts>/<pipeline>/<dag id>/<run id>`` (the same
    one the smtask tasks of the run write under), or of one step's folder in it. For plain
    tasks, e.g. a data source."""
    from smtask.naming import name_problem
    from smtask.params import run_params
    from smtask.paths import artifacts_root

    problem = name_problem("step", step) if step is not None else None
    if problem:  # it becomes a folder of the run's artifacts
        raise SmtaskError(f"run_prefix: step {problem}")
    params = params or run_params(context)
    prefix = naming.run_prefix(artifacts_root(params), params["pipeline_name"], dag_id(context),
                               context["run_id"], map_index(context))
    return f"{prefix}/{step}" if step else prefix


def _s3(context_params: dict[str, Any] | None) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    params = context_params or {}
    return S3Hook(aws_conn_id=params.get("aws_conn_id", "aws_default"))


def write_text(uri: str, text: str, params: dict[str, Any] | None = None) -> str:
    """Write one text file; see :func:`write_bytes`."""
    return write_bytes(uri, text.encode(), params)


def write_bytes(uri: str, data: bytes, params: dict[str, Any] | None = None) -> str:
    """Write one file; a ``file://`` one only under the artifacts root of the params' mode."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = local_path(uri, _root(params))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        _s3(params).load_bytes(data, key=parsed.path.lstrip("/"), bucket_name=parsed.netloc,
                               replace=True)
    return uri


def read_text(uri: str, params: dict[str, Any] | None = None) -> str:
    """One file's text; for a folder (prefix), the files under it joined in name order."""
    return read_bytes(uri, params).decode()


def read_bytes(uri: str, params: dict[str, Any] | None = None) -> bytes:
    """One file's bytes; for a folder (prefix), the files under it joined in name order."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return b"".join(p.read_bytes() for p in files)
    hook, key = _s3(params), parsed.path.lstrip("/")
    keys = sorted(hook.list_keys(bucket_name=parsed.netloc, prefix=key) or [key])
    return b"".join(hook.get_key(k, bucket_name=parsed.netloc).get()["Body"].read() for k in keys)


def remove(uri: str, params: dict[str, Any] | None = None) -> int:
    """Delete a file or a folder (``s3://``: every key under the prefix) inside the artifacts
    root of the params' mode, and nothing outside it; returns how many files went."""
    root, parsed = _root(params), urlparse(uri)
    if parsed.scheme == "file":
        import shutil

        path = local_path(uri, root)
        if path == Path(urlparse(root).path).resolve():
            raise SmtaskError(f"refusing to delete the whole artifacts root {root}")
        count = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
            int(path.exists())
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return count
    prefix, base = uri.rstrip("/"), root.rstrip("/")
    if parsed.scheme != "s3" or not prefix.startswith(base + "/") or "/../" in prefix + "/":
        raise SmtaskError(f"refusing to delete {uri}: it is not under the artifacts root {root}")
    hook = _s3(params)
    keys = hook.list_keys(bucket_name=parsed.netloc, prefix=parsed.path.lstrip("/")) or []
    if keys:
        hook.delete_objects(bucket=parsed.netloc, keys=keys)
    return len(keys)


def _root(params: dict[str, Any] | None) -> str:
    from smtask.paths import artifacts_root

    return str(artifacts_root(params or {"mode": "local"}))
