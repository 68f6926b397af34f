"""Path safety: every path smtask writes or deletes is confined to a root first; and the root
of a run's artifacts. Imports no Airflow (the kinds' declarations use it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.naming import smtask_home


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
        from smtask.errors import SmtaskError

        raise SmtaskError(f"refusing to write or delete {target}: it is outside {base} "
                          "(or reaches it through a symlink)")
    return resolved


def local_path(uri: str, root: str | None = None) -> Path:
    """The path of a ``file://`` URI; with ``root`` (a URI or path), confined to it."""
    path = Path(urlparse(uri).path)
    return confined(path, urlparse(root).path) if root else path


def artifacts_root(params: Any) -> str:
    """The URI under which a run's artifacts go, for the params' mode: local mode's
    ``local.artifacts`` (default ``$SMTASK_HOME/artifacts``), else the ``s3://`` artifacts."""
    if params["mode"] == "local":
        local = params.get("local") or {}
        return str(local.get("artifacts") or (smtask_home() / "artifacts").as_uri())
    if not str(params.get("artifacts", "")).startswith("s3://"):
        from smtask.errors import ParamsError

        raise ParamsError("artifacts: sagemaker mode needs an s3:// URI")
    return str(params["artifacts"])
