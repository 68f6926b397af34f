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
    try:
        base, resolved = Path(root).resolve(), Path(target).resolve()
    except RuntimeError as exc:  # Python 3.11's Path.resolve on a symlink loop
        problem = f"{exc} (a link that leads back to itself)"
    else:
        lexical = Path(os.path.normpath(target))
        try:
            expected: Path | None = base / lexical.relative_to(os.path.normpath(root))
        except ValueError:
            expected = None
        if expected == resolved and resolved.is_relative_to(base):
            return resolved
        problem = f"it is outside {base} (or reaches it through a symlink)"
    from smtask.errors import SmtaskError

    raise SmtaskError(f"refusing to write or delete {target}: {problem}")


# What the SDK leaves out of a training job's source dir when it uploads it: the default of
# ``SourceCode.ignore_patterns`` (tests/test_cloud.py checks they agree). A model's code
# leaves out the same: it is the code its job ran, without a ``.env``'s secrets or ``.git``.
SOURCE_IGNORED = (".env", ".git", "__pycache__", ".DS_Store", ".cache", ".ipynb_checkpoints")


def ignored(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches one of ``patterns`` (``shutil.ignore_patterns``' rule)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def walk(folder: Path, ignore: Iterable[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(folder)`` (folders and files sorted) less any entry, at any depth, whose name
    matches one of the ``ignore`` patterns, an ignored folder with all below it: the SDK's
    ``shutil.ignore_patterns`` rule for a source dir's upload. Linked folders are listed, not
    entered. A folder it cannot read raises (``os.walk`` would skip it: a job without it)."""
    patterns = tuple(ignore)

    def kept(name: str) -> bool:
        return not ignored(name, patterns)

    def unreadable(error: OSError) -> None:
        raise error

    for where, folders, files in os.walk(folder, onerror=unreadable):
        folders[:] = sorted(filter(kept, folders))
        yield where, folders, sorted(filter(kept, files))


def stray_links(folder: Path, ignore: Iterable[str] = SOURCE_IGNORED
                ) -> Iterator[tuple[str, str | None]]:
    """What a source dir holds that its job would not get as it is on the worker: each stray
    symlink as (name, target), each entry that is neither a file, a folder nor a link (a
    named pipe, a socket, a device: reading one may never end) as (name, None). A link the
    job gets is relative and leads, as written and with no other link on the way, to a file
    of the same folder that the job gets too, through no left-out folder (not even one it
    leaves again by ``..``): then SageMaker mode's upload (which carries what a link points
    at), local mode's mount and a model's ``sourcedir.tar.gz`` (which keeps the link) all
    give the job that file. Any other would point at nothing in the container, or carry a
    file of the worker's (its credentials, a ``.env``) to S3; a linked folder is neither
    uploaded nor hashed. The OS follows each link: a loop or a dead end is no file."""
    base = Path(os.path.realpath(folder))
    patterns = tuple(ignore)
    for where, folders, files in walk(folder, patterns):
        for name in folders + files:
            path = Path(where, name)
            if not path.is_symlink():
                if not (path.is_file() or path.is_dir()):
                    yield str(path.relative_to(folder)), None
                continue
            target = os.readlink(path)
            joined = os.path.join(os.path.relpath(where, folder), target)
            written = os.path.normpath(joined)
            passes = {*Path(joined).parts, *Path(written).parts}
            # where the OS lands must be where the text says, inside the folder (base / a
            # written ``../x`` keeps its ``..``, which no real path has)
            if os.path.isabs(target) or not os.path.isfile(path) \
                    or any(ignored(part, patterns) for part in passes) \
                    or Path(os.path.realpath(path)) != base / written:
                yield str(path.relative_to(folder)), target


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
