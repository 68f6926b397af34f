"""Local mode's model registry: SageMaker's model package groups and versions, kept in one
SQLite file under ``$SMTASK_HOME`` (``registry.sqlite``).

Every change is one transaction that takes the write lock first (``BEGIN IMMEDIATE``), so two
runs registering at once get versions 1 and 2, never one twice or one lost. A version is
created once per ``client_token`` (the task instance's name, as SageMaker's ``ClientToken``):
a retry gets the version its first attempt made. Group names compare without case, as their
ARNs (lower case) do; reads take no write lock and create nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smtask.errors import SmtaskError
from smtask.naming import smtask_home

ACCOUNT = "000000000000"  # local mode's account in the ARNs it makes
STATUSES = ("PendingManualApproval", "Approved", "Rejected")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY COLLATE NOCASE, description TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    arn TEXT PRIMARY KEY, group_name TEXT NOT NULL COLLATE NOCASE REFERENCES groups(name),
    version INTEGER NOT NULL, client_token TEXT NOT NULL, approval_status TEXT NOT NULL,
    description TEXT NOT NULL, model TEXT NOT NULL, image TEXT NOT NULL,
    environment TEXT NOT NULL, framework TEXT, inference TEXT NOT NULL,
    metadata TEXT NOT NULL, created REAL NOT NULL, modified REAL NOT NULL,
    UNIQUE (group_name, version), UNIQUE (group_name, client_token));
"""


class RegistryError(SmtaskError, LookupError):
    """No such group or version (the CLI and the tasks name what was asked for)."""


def path() -> Path:
    return smtask_home() / "registry.sqlite"


@contextlib.contextmanager
def _transaction(write: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction; a write takes the lock at its start (waiting up to 60 s for another).
    A read of a registry that does not exist reads an empty one, creating nothing."""
    target = path()
    if not write and not target.is_file():
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        db.executescript(_SCHEMA)
        try:
            yield db
        finally:
            db.close()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(target, timeout=60, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def arn(group: str, version: int, region: str) -> str:
    return f"arn:aws:sagemaker:{region}:{ACCOUNT}:model-package/{group.lower()}/{version}"


def register(*, group: str, client_token: str, approval_status: str, description: str,
             model: str, image: str, environment: dict[str, str], framework: str | None,
             inference: dict[str, Any], metadata: dict[str, str], region: str) -> dict[str, Any]:
    """The version this ``client_token`` made in ``group`` (creating the group, and the
    version, numbered after the group's last, if there is none yet)."""
    now = time.time()
    with _transaction() as db:
        db.execute("INSERT OR IGNORE INTO groups VALUES (?, ?, ?)", (group, "", now))
        (group,) = db.execute("SELECT name FROM groups WHERE name = ?", (group,)).fetchone()
        row = db.execute("SELECT * FROM versions WHERE group_name = ? AND client_token = ?",
                         (group, client_token)).fetchone()
        if row is None:
            (last,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE "
                                 "group_name = ?", (group,)).fetchone()
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (arn(group, last + 1, region), group, last + 1, client_token, approval_status,
                 description, model, image, json.dumps(environment), framework,
                 json.dumps(inference), json.dumps(metadata), now, now))
            row = db.execute("SELECT * FROM versions WHERE group_name = ? AND client_token = ?",
                             (group, client_token)).fetchone()
        return _version(row)


def _version(row: sqlite3.Row) -> dict[str, Any]:
    return {"model_package_arn": row["arn"], "group": row["group_name"],
            "version": row["version"], "approval_status": row["approval_status"],
            "description": row["description"], "model": row["model"], "image": row["image"],
            "environment": json.loads(row["environment"]), "framework": row["framework"],
            "inference": json.loads(row["inference"]), "metadata": json.loads(row["metadata"]),
            "created": row["created"], "modified": row["modified"]}


def groups() -> list[dict[str, Any]]:
    with _transaction(write=False) as db:
        return [{"group": r["name"], "versions": r["versions"], "latest": r["latest"]}
                for r in db.execute(
                    "SELECT g.name, COUNT(v.arn) AS versions, MAX(v.version) AS latest FROM "
                    "groups g LEFT JOIN versions v ON v.group_name = g.name GROUP BY g.name "
                    "ORDER BY g.name")]


def versions(group: str) -> list[dict[str, Any]]:
    with _transaction(write=False) as db:
        if db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone() is None:
            raise RegistryError(f"no model package group {group!r} in the local registry "
                                f"({path()})")
        return [_version(r) for r in db.execute(
            "SELECT * FROM versions WHERE group_name = ? ORDER BY version", (group,))]


def _where(which: str) -> tuple[str, tuple[Any, ...]]:
    """A version named by its ARN or as ``group/version``."""
    if which.startswith("arn:"):
        return "arn = ?", (which,)
    group, _, number = which.rpartition("/")
    if not group or not (number.isascii() and number.isdigit()) or len(number) > 9:
        raise RegistryError(f"{which[:200]!r}: name a version by its ARN or as GROUP/VERSION "
                            "(a number)")
    return "group_name = ? AND version = ?", (group, int(number))


def version(which: str) -> dict[str, Any]:
    clause, args = _where(which)
    with _transaction(write=False) as db:
        row = db.execute(f"SELECT * FROM versions WHERE {clause}", args).fetchone()
    if row is None:
        raise RegistryError(f"no model version {which[:200]} in the local registry ({path()})")
    return _version(row)


def set_status(which: str, approval_status: str) -> dict[str, Any]:
    """Approve or reject a version (SageMaker's UpdateModelPackage)."""
    if approval_status not in STATUSES:
        raise RegistryError(f"approval status {approval_status!r}: one of {', '.join(STATUSES)}")
    clause, args = _where(which)
    with _transaction() as db:
        changed = db.execute(f"UPDATE versions SET approval_status = ?, modified = ? WHERE "
                             f"{clause}", (approval_status, time.time(), *args)).rowcount
        row = db.execute(f"SELECT * FROM versions WHERE {clause}", args).fetchone()
    if not changed or row is None:
        raise RegistryError(f"no model version {which[:200]} in the local registry ({path()})")
    return _version(row)
