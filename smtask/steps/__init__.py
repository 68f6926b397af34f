"""Job kinds: each module turns a step's settings + the user function's value into a job spec
(plain JSON), then runs that spec with the SDK and returns the job's outputs (plain JSON).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.errors import SmtaskError
from smtask.storage import local_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepContext:
    """Everything a kind needs to write its job spec: resolved once, before any job."""

    step: str
    params: dict[str, Any]  # the merged, validated params of the run
    job_name: str
    prefix: str  # URI under which this step's outputs go: <artifacts>/<pipeline>/<run>/<step>

    @property
    def cfg(self) -> dict[str, Any]:
        return self.params["steps"][self.step]

    @property
    def local(self) -> bool:
        return self.params["mode"] == "local"

    @property
    def code_prefix(self) -> str:
        """Where code goes in sagemaker mode, by content: ``<artifacts>/_code/<sha256>/``
        (no pipeline name starts with ``_``), so it is uploaded once for every job and run."""
        from smtask.sessions import artifacts_root

        return f"{artifacts_root(self.params).rstrip('/')}/_code"

    def path(self, relative: str) -> str:
        """A path of the step's settings, resolved against the config's folder."""
        return str((Path(self.params.get("code_root") or ".") / relative).resolve())

    def common(self, default_instance: str, *, needs_image: bool = True) -> dict[str, Any]:
        """The settings every job kind shares, with local mode's substitutions. A job whose
        image comes from elsewhere (an existing SageMaker model) passes ``needs_image=False``."""
        from smtask.local import LOCAL_IMAGE

        cfg, local = self.cfg, self.local
        image = cfg.get("image") or (
            (self.params.get("local") or {}).get("image", LOCAL_IMAGE) if local
            else self.params.get("image"))
        if not image and needs_image:
            raise SmtaskError(f"steps.{self.step}.image: no image for {self.params['mode']} mode")
        from smtask.sessions import artifacts_root

        return {
            "job_name": self.job_name,
            "prefix": self.prefix,
            "artifacts": artifacts_root(self.params),  # the trusted root of every write
            "image": image,
            "role": self.params.get("role"),
            # local mode runs one container per instance on this machine
            "instance_type": "local" if local else cfg.get("instance_type", default_instance),
            "instance_count": cfg.get("instance_count", 1),
            "volume_size_gb": cfg.get("volume_size_gb", 30),
            "max_runtime_seconds": cfg.get("max_runtime_seconds", 86400),
            "environment": dict(cfg.get("environment", {})),
            "tags": {**self.params.get("tags", {}), **cfg.get("tags", {}),
                     "smtask:step": self.step},
        }


def aws_tags(job: dict[str, Any]) -> list[dict[str, str]]:
    """The job's tags in the API's ``[{"Key": ..., "Value": ...}]`` form."""
    return [{"Key": key, "Value": value} for key, value in job["tags"].items()]


def check_uri(step: str, name: str, value: Any) -> str:
    """A data location the user function returned: an s3:// or file:// URI, or a local path."""
    from smtask.params import quoted

    if isinstance(value, Path) or (isinstance(value, str) and value.startswith("/")):
        return Path(value).resolve().as_uri()
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("s3", "file") or not value.startswith(
            ("s3://", "file:///")) or (parsed.scheme == "s3" and not parsed.netloc):
        shown = quoted(value) if isinstance(value, str) else repr(value)[:80]
        raise TypeError(f"step '{step}': {name} must be an s3://bucket/... or file:///... URI, "
                        f"got {shown}")
    return value


def check_uri_map(step: str, what: str, value: Any) -> dict[str, str]:
    """The function's ``{name: URI}`` return value (processing inputs, training channels)."""
    from smtask.params import check_name

    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"step '{step}': the function must return a dict of {what} name -> URI, "
            f"got {type(value).__name__}")
    return {check_name(step, what, name): check_uri(step, f"{what} '{name}'", uri)
            for name, uri in value.items()}


def prepare_output(uri: str, root: str) -> None:
    """A file:// output starts empty: the SDK merges into what is there, so an earlier
    attempt's files of the same run and step would otherwise survive beside the new ones.
    Only a folder inside ``root`` (the artifacts root), reached through no link, is emptied."""
    if urlparse(uri).scheme != "file":
        return
    path = local_path(uri, root)
    if path.exists() and any(path.iterdir()):
        log.warning("replacing the outputs an earlier attempt of this step wrote in %s", path)
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def upload_once(session: Any, path: str, prefix: str) -> str:
    """Upload a local file or folder to ``<prefix>/<hash of its content>/`` unless it is there
    already, complete; returns the folder's ``s3://`` URI (for a file, the file's)."""
    import hashlib

    local = Path(path)
    files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(local if local.is_dir() else local.parent)).encode())
        digest.update(b"\0" + hashlib.sha256(file.read_bytes()).digest())
    target = urlparse(f"{prefix.rstrip('/')}/{digest.hexdigest()[:32]}")
    bucket, key = target.netloc, target.path.strip("/")
    s3 = session.s3_client
    # the marker sits beside the folder, not in it: a job's download of the folder skips it
    marker = f"{key}.complete"
    if s3.list_objects_v2(Bucket=bucket, Prefix=marker, MaxKeys=1).get("KeyCount", 0) == 0:
        session.upload_data(str(local), bucket=bucket, key_prefix=key)
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    folder = f"s3://{bucket}/{key}/"
    return folder + local.name if local.is_file() else folder
