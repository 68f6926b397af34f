"""What every job kind shares on its way from params to a job: the step's context (its
settings, job name and prefix, the image it runs, the settings every job has), checks of what
the user function returned, the code and data a job reads (packed and uploaded once per
content), and its outputs' folders.

Imports nothing of Airflow or the SDK at import (the kinds' declarations use it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.images import algorithm_of, local_image, resolve_image
from smtask.naming import INSTANCE_TAG, check_name, quoted
from smtask.paths import SOURCE_IGNORED, artifacts_root, local_path, walk

SETTINGS_FILE = "config.json"

__all__ = ["INSTANCE_TAG", "SETTINGS_FILE", "StepContext"]


@dataclass(frozen=True)
class StepContext:
    """Everything a kind needs to write its job spec: resolved once, before any job."""

    step: str
    params: dict[str, Any]  # the merged, validated params of the run
    job_name: str
    prefix: str  # URI under which this step's outputs go: <artifacts>/<pipeline>/<dag>/<run>/<step>
    instance: str = ""  # the task instance's id (naming.task_instance_id), every job's tag

    @property
    def cfg(self) -> dict[str, Any]:
        return self.params["steps"][self.step]

    @property
    def local(self) -> bool:
        return self.params["mode"] == "local"

    @property
    def settings(self) -> dict[str, Any]:
        """What the job's script reads from its config.json: the pipeline's name and mode and
        this step's settings (no other step's), the keys of ``settings`` at the step's level
        (the params refuse a key that would shadow one of the step's own)."""
        cfg = {k: v for k, v in self.cfg.items() if k != "settings"}
        return {"pipeline_name": self.params["pipeline_name"], "mode": self.params["mode"],
                "steps": {self.step: {**cfg, **self.cfg.get("settings", {})}}}

    def path(self, relative: str) -> str:
        """A path of the step's settings, resolved against the config's folder."""
        return str((Path(self.params.get("code_root") or ".") / relative).resolve())

    def common(self, default_instance: str, scope: str = "training", *,
               needs_image: bool = True) -> dict[str, Any]:
        """The settings every job kind shares, with local mode's substitutions. ``scope`` is
        the image scope an image given as ``{"framework", "version"}`` resolves for
        (``training``, ``inference``, ``processing``). A job whose image comes from elsewhere
        (an existing SageMaker model, a training result) passes ``needs_image=False``."""
        cfg, local = self.cfg, self.local
        image = self.image(scope, default_instance, required=needs_image)
        return {
            "job_name": self.job_name,
            "prefix": self.prefix,
            "artifacts": artifacts_root(self.params),  # the trusted root of every write
            "image": image,
            # the built-in algorithm the image is (knn, xgboost...), if it is one
            "algorithm": algorithm_of(self.given_image()[1]),
            "role": self.params.get("role"),
            # local mode runs one container per instance on this machine
            "instance_type": "local" if local else cfg.get("instance_type", default_instance),
            "instance_count": cfg.get("instance_count", 1),
            "volume_size_gb": cfg.get("volume_size_gb", 30),
            "max_runtime_seconds": cfg.get("max_runtime_seconds", 86400),
            "environment": dict(cfg.get("environment", {})),
            "tags": {**self.params.get("tags", {}), **cfg.get("tags", {}),
                     "smtask:step": self.step, INSTANCE_TAG: self.instance},
        }

    def given_image(self) -> tuple[str, Any]:
        """The image the params give this step, and the key that gives it."""
        if self.cfg.get("image"):
            return f"steps.{self.step}.image", self.cfg["image"]
        return "image", self.params.get("image")

    def image(self, scope: str, default_instance: str = "ml.m5.large",
              required: bool = True) -> str:
        """The image the job runs. SageMaker mode: the step's image, else the top-level one,
        ``{"framework", "version"}`` resolved to its URI. Local mode: the step's own image
        string, unless it is one of AWS's images (a built-in algorithm's URI, or given as
        ``{"framework", ...}``), which the local image stands in for."""
        if self.local:  # a {"framework"} image was resolved when the params were validated
            return local_image(self.params, self.cfg.get("image"))
        key, given = self.given_image()
        resolved = resolve_image(key, given, scope=scope, params=self.params,
                                 instance_type=self.cfg.get("instance_type", default_instance))
        if not resolved and required:
            from smtask.errors import SmtaskError

            raise SmtaskError(f"steps.{self.step}.image: no image for {self.params['mode']} mode")
        return resolved

    def local_image(self, image: Any) -> str:
        """``image`` as local mode runs it (see :meth:`image`)."""
        return local_image(self.params, image) if self.local else image


def pack(source_dir: Path, target: Any) -> None:
    """``source_dir`` as the SDK packs a ``sourcedir.tar.gz`` (its entries at the archive's
    root), reproducibly: names sorted, times and owners zeroed, less :data:`SOURCE_IGNORED`,
    so the same code is the same bytes. ``target``: a path or a binary file."""
    import gzip
    import tarfile

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with (open(target, "wb") if isinstance(target, str | Path) else contextlib.nullcontext(target)) \
            as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w") as tar:
        for folder, folders, files in walk(source_dir, SOURCE_IGNORED):
            for name in sorted(folders + files):
                path = Path(folder, name)
                tar.add(path, arcname=str(path.relative_to(source_dir)), recursive=False,
                        filter=reset)


def model_code(job: dict[str, Any], source_dir: str, entry_script: str) -> dict[str, str]:
    """The inference code a model of ``job`` carries, as the SDK's ``Model`` makes it: the
    entry script, and the URI of a ``sourcedir.tar.gz`` of ``source_dir`` by its content,
    ``<artifacts>/_code/<sha256>/sourcedir.tar.gz`` (put there by :func:`put_model_code`)."""
    import hashlib
    import io

    data = io.BytesIO()
    pack(Path(source_dir), data)
    digest = hashlib.sha256(data.getvalue()).hexdigest()[:32]
    return {"program": entry_script, "source_dir": source_dir,
            "submit_directory": f"{content_prefix(job, 'code')}/{digest}/sourcedir.tar.gz"}


def put_model_code(code: dict[str, str] | None, session: Any) -> None:
    """Put a model's ``sourcedir.tar.gz`` (see :func:`model_code`) where its URI says, unless
    it is there: written whole (local mode: a rename; S3: one PUT)."""
    import io
    import tempfile

    if not code:
        return
    uri = urlparse(code["submit_directory"])
    if uri.scheme == "file":
        target = Path(uri.path)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
            pack(Path(code["source_dir"]), partial)
        os.replace(partial.name, target)
        return
    s3, key = session.s3_client, uri.path.lstrip("/")
    if s3.list_objects_v2(Bucket=uri.netloc, Prefix=key, MaxKeys=1).get("KeyCount", 0):
        return
    data = io.BytesIO()
    pack(Path(code["source_dir"]), data)
    s3.put_object(Bucket=uri.netloc, Key=key, Body=data.getvalue())


def elapsed(description: Mapping[str, Any], start: str, end: str) -> float | None:
    """Seconds between two times of a job's description, if it has both (and both say their
    time zone, or neither)."""
    began, ended = description.get(start), description.get(end)
    if isinstance(began, datetime) and isinstance(ended, datetime) and \
            (began.tzinfo is None) == (ended.tzinfo is None):
        return max(0.0, (ended - began).total_seconds())
    return None


def seconds_of(value: Any) -> float | None:
    """A number of seconds from a description: a finite number, not negative; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def instances_of(value: Any, groups: Any = None) -> int:
    """A job's instance count from a description (a heterogeneous cluster's groups summed);
    1 when it says none."""
    if isinstance(groups, list):
        counts = [g.get("InstanceCount") for g in groups if isinstance(g, Mapping)]
        total = sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool) and c > 0)
        if total:
            return total
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def job_usage(seconds: float | None, instances: int, billable: float | None = None
              ) -> dict[str, Any]:
    """What a finished job used: ``seconds`` it ran, on ``instances``, and the instance-seconds
    SageMaker bills: ``billable`` (SageMaker's own per-instance figure, which a spot job's
    interruptions and discount make smaller) or the run time, times the instances (as the
    Amazon provider counts them). ``{}`` when the run time is unknown."""
    if seconds is None:
        return {}
    return {"seconds": round(seconds), "instances": instances,
            "billable_seconds": round((seconds if billable is None else billable) * instances)}


def aws_tags(job: dict[str, Any]) -> list[dict[str, str]]:
    """The job's tags in the API's ``[{"Key": ..., "Value": ...}]`` form."""
    return [{"Key": key, "Value": value} for key, value in job["tags"].items()]


def check_uri(step: str, name: str, value: Any) -> str:
    """A data location the user function returned: an s3:// or file:// URI, or a local path."""
    if isinstance(value, Path) or (isinstance(value, str) and value.startswith("/")):
        return Path(os.path.realpath(value)).as_uri()  # a link loop: "no file" below, no traceback
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("s3", "file") or not value.startswith(
            ("s3://", "file:///")) or (parsed.scheme == "s3" and not parsed.netloc):
        shown = quoted(value) if isinstance(value, str) else repr(value)[:80]
        raise TypeError(f"step '{step}': {name} must be an s3://bucket/... or file:///... URI, "
                        f"got {shown}")
    return value


def check_keys(step: str, returned: dict[str, Any], known: tuple[str, ...]) -> None:
    """The function's returned dict holds only ``known`` keys."""
    unknown = sorted(str(k) for k in returned if k not in known)
    if unknown:
        raise TypeError(f"step '{step}': the function returned unknown key(s) "
                        f"{', '.join(unknown)} (known: {', '.join(known)})")


def check_uri_map(step: str, what: str, value: Any,
                  reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """The function's ``{name: URI}`` return value (processing inputs, training channels);
    ``reserved`` names are smtask's own (the settings file, the code)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"step '{step}': the function must return a dict of {what} name -> URI, "
            f"got {type(value).__name__}")
    taken = sorted(set(value) & set(reserved))
    if taken:
        raise TypeError(f"step '{step}': {what} name {taken[0]!r} is reserved (smtask's own "
                        f"{what}s: {', '.join(reserved)}); rename it")
    uris = {check_name(step, what, name): check_uri(step, f"{what} '{name}'", uri)
            for name, uri in value.items()}
    for name, uri in uris.items():
        check_exists(step, f"{what} '{name}'", uri)
    return uris


def check_exists(step: str, what: str, uri: str) -> None:
    """A local path (``file://``) must be there when the job is built, in either mode."""
    if urlparse(uri).scheme == "file" and not os.path.exists(local_path(uri)):
        from smtask.errors import SmtaskError

        raise SmtaskError(f"step '{step}': {what}: no file or folder {local_path(uri)}")


def content_prefix(job: dict[str, Any], what: str) -> str:
    """Where sagemaker mode uploads local ``what`` (``code``, ``data``, ``settings``) by
    content: ``<artifacts>/_<what>/<sha256>/`` (no pipeline name starts with ``_``), so each
    content is uploaded once for every job and run (see :func:`upload_once`)."""
    return f"{job['artifacts'].rstrip('/')}/_{what}"


def remote(session: Any, uri: str, prefix: str) -> str:
    """``uri`` as the job can read it in sagemaker mode: a ``file://`` path is uploaded under
    ``prefix`` once per content (the SDK would upload the string ``file:///...``)."""
    if urlparse(uri).scheme != "file":
        return uri
    return upload_once(session, str(local_path(uri)), prefix)


def settings_source(job: dict[str, Any], session: Any) -> str:
    """The job's config.json (``job["settings"]``, see :attr:`StepContext.settings`) where the
    job can read it: a read-only file of the local session, or an S3 object under
    ``<artifacts>/_settings/<hash of its content>/`` uploaded once per content."""
    import tempfile

    text = json.dumps(job["settings"], indent=2, sort_keys=True)
    if session.local_mode:
        from smtask import local

        return str(local.read_only_file(session, SETTINGS_FILE, text))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, SETTINGS_FILE)
        path.write_text(text)
        return upload_once(session, str(path), content_prefix(job, "settings"))


def prepare_output(uri: str, root: str) -> None:
    """A ``file://`` output must be a folder inside ``root`` (the artifacts root), reached
    through no link. Nothing is emptied here: local mode stages a job's outputs beside their
    folder and renames them into place once the job completed (:func:`smtask.local.publish`),
    so an earlier attempt's outputs are replaced only by a completed job's."""
    if urlparse(uri).scheme == "file":
        local_path(uri, root).parent.mkdir(parents=True, exist_ok=True)


def clear_leftovers(session: Any, uris: list[str], log: Any, left_by: str = "a failed job"
                    ) -> None:
    """Delete what an earlier, failed or stopped, job of this task instance left under its
    ``s3://`` output prefixes (a failed job's outputs are no result), before the next job
    writes there: the outputs a task publishes are its completed job's alone. (And the
    checkpoints of a completed job that a rerun replaces: ``left_by`` says which.)"""
    s3 = session.s3_client
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            continue
        bucket, prefix = parsed.netloc, parsed.path.strip("/") + "/"
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
        if keys:
            log(f"removed {len(keys)} object(s) that {left_by} left under {uri}")


SMALL_FILE = 8 * 1024 * 1024  # boto3's multipart threshold: below it, upload_file is one PUT


def files_of(folder: Path, ignore: Iterable[str] = ()) -> list[Path]:
    """The files below ``folder``, sorted, less what matches ``ignore`` (see
    :func:`smtask.paths.walk`)."""
    return sorted(Path(where, name) for where, _, files in walk(folder, ignore) for name in files)


def upload_once(session: Any, path: str, prefix: str, ignore: Iterable[str] = ()) -> str:
    """Upload a local file or folder to ``<prefix>/<hash of its content>/`` unless it is there
    already, complete; returns the folder's ``s3://`` URI (for a file, the file's). A file
    is one PUT; a folder is marked complete once all its files are up. A folder's entries
    matching ``ignore`` (see :func:`smtask.paths.walk`) are neither uploaded nor hashed."""
    import hashlib

    local = Path(path)
    files = files_of(local, ignore) if local.is_dir() else [local]
    if odd := [file for file in files if not file.is_file()]:  # a named pipe's read never ends
        from smtask.errors import SmtaskError

        raise SmtaskError(f"not uploaded: {odd[0]} is not a file (a named pipe, a socket, a "
                          "device, a dead link)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(local if local.is_dir() else local.parent)).encode())
        digest.update(b"\0" + hashlib.sha256(file.read_bytes()).digest())
    target = urlparse(f"{prefix.rstrip('/')}/{digest.hexdigest()[:32]}")
    bucket, key = target.netloc, target.path.strip("/")
    s3 = session.s3_client
    folder = f"s3://{bucket}/{key}/"

    def absent(name: str) -> bool:
        return s3.list_objects_v2(Bucket=bucket, Prefix=name, MaxKeys=1).get("KeyCount", 0) == 0

    def put(file: Path, name: str) -> None:
        """One PUT for a small file; boto3's upload_file (a transfer manager with threads of
        its own, for each call) only where multipart pays."""
        if file.stat().st_size < SMALL_FILE:
            s3.put_object(Bucket=bucket, Key=name, Body=file.read_bytes())
        else:
            s3.upload_file(str(file), bucket, name)

    if local.is_file():  # one object appears whole or not at all (multipart too): no marker
        if absent(f"{key}/{local.name}"):
            put(local, f"{key}/{local.name}")
        return folder + local.name
    # the marker sits beside the folder, not in it: a job's download of the folder skips it
    marker = f"{key}.complete"
    if absent(marker):
        # side by side: a training job's source dir and the SDK's drivers are ~30 small files
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda file: put(
                file, f"{key}/{file.relative_to(local).as_posix()}"), files))
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    return folder
