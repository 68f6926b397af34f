"""Path safety: every path smtask writes or deletes is confined to a root first; and the root
of a run's artifacts. Imports no Airflow (the kinds' declarations use it)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
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


# What the SDK leaves out of a training job's source dir when it uploads it: the default of
# ``SourceCode.ignore_patterns`` (tests/test_cloud.py checks they agree). A model's code
# leaves out the same: it is the code its job ran, without a ``.env``'s secrets or ``.git``.
SOURCE_IGNORED = (".env", ".git", "__pycache__", ".DS_Store", ".cache", ".ipynb_checkpoints")


def walk(folder: Path, ignore: Iterable[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(folder)`` (folders and files sorted) less any entry, at any depth, whose name
    matches one of the ``ignore`` patterns, an ignored folder with all below it: the SDK's
    ``shutil.ignore_patterns`` rule for a source dir's upload. Linked folders are listed, not
    entered."""
    patterns = tuple(ignore)

    def kept(name: str) -> bool:
        return not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)

    for where, folders, files in os.walk(folder):
        folders[:] = sorted(filter(kept, folders))
        yield where, folders, sorted(filter(kept, files))


def stray_links(folder: Path, ignore: Iterable[str] = SOURCE_IGNORED) -> Iterator[str]:
    """The symlinks in a source dir that its job would not get as they are on the worker,
    each as ``name -> target``: a link the job gets is a relative link to a file inside the
    same folder. SageMaker mode uploads what a link points at, and local mode mounts the
    folder, where an absolute link or one out of the folder points at nothing (and on
    SageMaker would carry a file of the worker's, such as its credentials, to S3); a linked
    folder is neither uploaded nor hashed."""
    base = folder.resolve()
    for where, folders, files in walk(folder, ignore):
        for name in folders + files:
            path = Path(where, name)
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            resolved = Path(os.path.realpath(path))  # a loop is no error here, and no file
            if os.path.isabs(target) or not resolved.is_relative_to(base) or \
                    not resolved.is_file():
                yield f"{path.relative_to(folder)} -> {target}"


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
