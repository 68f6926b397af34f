"""The mode switch: an SDK ``LocalSession`` (hardened) or a cloud ``Session``.

Local mode runs the SDK's own local mode with these corrections, each pinned by a test:

- the compose files the SDK generates use host networking (no bridge network, no ``ports``);
- telemetry is not sent (the SDK sends it to an amazonaws.com host on every call; cloud
  mode turns it off too unless the ``sdk_telemetry`` param is true);
- containers are removed and the SDK's temp folders deleted after every job;
- no credentials of the worker reach the containers (``file://`` needs none);
- the containers' output goes to the task log, not to stdout;
- the serving container's /ping is polled every 0.1-1 s, not every 5 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from smtask.errors import ParamsError
from smtask.naming import smtask_home

LOCAL_IMAGE = "smtask-local:latest"
DEFAULT_REGION = "us-east-1"


def artifacts_root(params: Mapping[str, Any]) -> str:
    """The URI under which a run's artifacts go, for the params' mode."""
    if params["mode"] == "local":
        local = params.get("local") or {}
        return local.get("artifacts") or (smtask_home() / "artifacts").as_uri()
    if not params.get("artifacts", "").startswith("s3://"):
        raise ParamsError("artifacts: sagemaker mode needs an s3:// URI")
    return params["artifacts"]


class _Compose:
    """Rewrites the SDK's compose files for host networking and labels every container, so
    the containers of a session can be removed even after the SDK deleted its compose files."""

    LABEL = "smtask.session"
    _lock = threading.Lock()
    _installed = False
    session_id = ""

    @classmethod
    def harden(cls, content: dict[str, Any]) -> dict[str, Any]:
        content.pop("networks", None)
        for service in content.get("services", {}).values():
            service.pop("networks", None)
            service.pop("ports", None)  # with host networking the server binds 8080 itself
            service["network_mode"] = "host"
            service["labels"] = {cls.LABEL: cls.session_id}
        return content

    @classmethod
    def install(cls) -> None:
        """Wrap ``_generate_compose_file`` of the SDK's two local container classes."""
        from sagemaker.core.local.image import _SageMakerContainer
        from sagemaker.train.local.local_container import _LocalContainer

        with cls._lock:
            if cls._installed:
                return
            for klass in (_SageMakerContainer, _LocalContainer):
                klass._generate_compose_file = cls._wrap(klass._generate_compose_file)
            cls._installed = True

    @classmethod
    def _wrap(cls, generate: Any) -> Any:
        import yaml

        def generate_hardened(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            content = cls.harden(generate(self, *args, **kwargs))
            with open(os.path.join(self.container_root, "docker-compose.yaml"), "w") as f:
                yaml.safe_dump(content, f, default_flow_style=False)
            return content

        generate_hardened.__wrapped__ = generate  # type: ignore[attr-defined]
        return generate_hardened

    @classmethod
    @contextlib.contextmanager
    def labelled(cls) -> Iterator[str]:
        """Label the containers started inside; stop and remove them all on exit."""
        cls.session_id = uuid.uuid4().hex
        try:
            yield cls.session_id
        finally:
            remove_containers(cls.session_id)


def remove_containers(session_id: str) -> list[str]:
    """``docker rm -f`` every container of one local session; returns their ids."""
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={_Compose.LABEL}={session_id}"],
                            capture_output=True, text=True, check=False)
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    return ids


@contextlib.contextmanager
def _replaced(*swaps: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``obj.name = value`` for each swap while inside; restore the originals after."""
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in swaps]
    for obj, name, value in swaps:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in originals:
            setattr(obj, name, value)


def _stream_output(sink: Callable[[str], None]) -> Callable[[subprocess.Popen], int]:
    """The SDK's ``_stream_output`` (it prints to stdout), sending each line to ``sink``."""

    def stream_output(process: subprocess.Popen) -> int:
        for raw in iter(process.stdout.readline, b""):  # type: ignore[union-attr]
            sink(raw.decode("utf-8", "replace"))
        exit_code = process.wait()
        if exit_code not in (0, 130):  # the SDK's own rule: 130 is a stopped container
            raise RuntimeError(f"Failed to run: {process.args!r}. Process exited with code: "
                               f"{exit_code}")
        return exit_code

    return stream_output


def _wait_for_serving_container(serving_port: int, timeout: float = 120) -> None:
    """The SDK's health wait, polling /ping from 0.1 s up to 1 s instead of every 5 s."""
    import urllib3

    http, delay, deadline = urllib3.PoolManager(), 0.1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.request("GET", f"http://localhost:{serving_port}/ping", retries=False,
                            timeout=2).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise RuntimeError("Giving up, endpoint didn't launch correctly")


def _telemetry_off() -> list[tuple[Any, str, Any]]:
    """The SDK sends an HTTPS GET to an amazonaws.com host after every call it decorates."""
    from sagemaker.core.telemetry import telemetry_logging

    return [(telemetry_logging, "_send_telemetry_request", lambda *args, **kwargs: None),
            (telemetry_logging, "_telemetry_msg_shown", True)]  # its opt-out notice is moot


def _sdk_corrections(output: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
    from sagemaker.core.local import entities, image
    from sagemaker.train.local import local_container

    stream = _stream_output(output)
    return _replaced(
        *_telemetry_off(),
        (image, "_stream_output", stream),
        (local_container, "_stream_output", stream),
        (entities, "_wait_for_serving_container", _wait_for_serving_container),
    )


@contextlib.contextmanager
def local_session(params: Mapping[str, Any],
                  output: Callable[[str], None] = print) -> Iterator[Any]:
    """A ``LocalSession`` whose jobs run in Docker on this machine, cleaned up on exit;
    the containers' output goes to ``output``, a line at a time."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    import boto3
    from sagemaker.core.local import LocalSession

    local = params.get("local") or {}
    # Static placeholder credentials: the SDK copies the session's credentials into every
    # container's environment, and file:// artifacts need none.
    boto = boto3.Session(
        region_name=params.get("region_name") or DEFAULT_REGION,
        aws_access_key_id="smtask-local",
        aws_secret_access_key="smtask-local",
    )
    _Compose.install()
    with _sdk_corrections(output), _Compose.labelled() as session_id:
        # the SDK leaves its temp folders behind: give them one folder per session to remove
        container_root = smtask_home() / "tmp" / session_id
        container_root.mkdir(parents=True)
        session = LocalSession(boto_session=boto, s3_endpoint_url=local.get("s3_endpoint"),
                               default_bucket="smtask-local")
        session.config = {"local": {"local_code": True, "container_root": str(container_root)}}
        session.smtask_session_id = session_id  # what on_kill removes
        try:
            yield session
        finally:
            shutil.rmtree(container_root, ignore_errors=True)


@contextlib.contextmanager
def cloud_session(params: Mapping[str, Any]) -> Iterator[Any]:
    """A SageMaker ``Session`` over the Airflow AWS connection's boto3 session."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from sagemaker.core.helper.session_helper import Session

    hook = AwsBaseHook(aws_conn_id=params.get("aws_conn_id", "aws_default"),
                       region_name=params.get("region_name"), client_type="sagemaker")
    bucket = params["artifacts"].removeprefix("s3://").split("/", 1)[0]
    telemetry = [] if params.get("sdk_telemetry") else _telemetry_off()
    with _replaced(*telemetry):
        # An explicit bucket: the SDK's default-bucket lookup would call STS.
        yield Session(boto_session=hook.get_session(region_name=params.get("region_name")),
                      default_bucket=bucket)


def open_session(params: Mapping[str, Any],
                 output: Callable[[str], None] = print) -> contextlib.AbstractContextManager[Any]:
    if params["mode"] == "local":
        return local_session(params, output)
    return cloud_session(params)
