"""Serving in local mode: a port of its own for each server, held host-wide for its whole
life (parallel transforms never score with each other's model); the model's code as
SageMaker gives it to the server; a health wait that fails at once, with the server's own
error, when the server exits; and a model server's error answer failing the transform."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.errors import ContainerFailed, SmtaskError
from smtask.local.containers import docker
from smtask.local.output import ContainerOutput, cause
from smtask.local.state import LABEL, of
from smtask.local.wheels import install_from_wheels

# Serving ports come from below Linux's ephemeral range (32768-60999), so no outgoing
# connection of the machine holds one; a lock file per port keeps smtask processes apart.
PORT_RANGE = (20000, 32000)
PORT_LOCKS = Path(tempfile.gettempdir()) / "smtask-ports"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def reserved_port(attempts: int = 200) -> Iterator[int]:
    """A port no other smtask process holds while inside (an exclusive lock file per port,
    host-wide) and that nothing listened on when it was taken."""
    PORT_LOCKS.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        PORT_LOCKS.chmod(0o1777)  # every user of the machine shares the locks
    for _ in range(attempts):
        port = random.randrange(*PORT_RANGE)
        fd = os.open(PORT_LOCKS / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if _bindable(port):
                yield port
                return
        finally:
            os.close(fd)  # closing the descriptor releases the lock
    raise SmtaskError(f"no free port for a local batch-transform server in {PORT_RANGE}")


def serve_on_own_port(session: Any) -> int:
    """Give the session's serving container a port of its own, held until the session ends."""
    state = of(session)
    if not state.serving_port:
        state.serving_port = state.exit.enter_context(reserved_port())
        session.config["local"]["serving_port"] = state.serving_port
        # where the SDK sends the data
        session.sagemaker_runtime_client.serving_port = state.serving_port
    return int(state.serving_port)


def scratch_copy(session: Any, uri: str) -> str:
    """A copy of a ``file://`` artifact in the session's scratch folder, for the SDK to
    unpack and mount (it unpacks a model next to its ``model.tar.gz``: the training
    output must not change, nor be writable to the server)."""
    from urllib.parse import urlparse

    if urlparse(uri).scheme != "file":
        return uri
    source = Path(urlparse(uri).path)
    target = Path(tempfile.mkdtemp(dir=of(session).scratch)) / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target.as_uri()


def serving_code(session: Any, environment: dict[str, str], framework: str | None) -> dict[str, str]:
    """A model's environment as the local serving container gets it. Its code (the
    ``SAGEMAKER_SUBMIT_DIRECTORY`` tarball, ``file://``, or ``s3://`` through
    ``local.s3_endpoint``) is unpacked into a read-only folder of the session, which the SDK
    mounts at ``/opt/ml/code``, as SageMaker unpacks it there; its ``requirements.txt`` is
    installable with no index (:func:`install_from_wheels`); ``SMTASK_FRAMEWORK`` names the
    framework image whose serving defaults the local image keeps (``sklearn``, ``xgboost``)."""
    environment = local_serving_environment(environment, framework)
    submit = environment.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if not submit:
        return environment
    folder = Path(tempfile.mkdtemp(dir=of(session).read_only)) / "code"
    unpack_uri(session, submit, folder, f"the model's code {submit}")
    if (folder / "requirements.txt").is_file():
        environment.update(install_from_wheels(session, folder / "requirements.txt"))
    environment["SAGEMAKER_SUBMIT_DIRECTORY"] = folder.as_uri()
    return environment


def local_serving_environment(environment: dict[str, str],
                              framework: str | None) -> dict[str, str]:
    """A local model server's own variables: ``SMTASK_FRAMEWORK`` names the framework image
    whose serving defaults the local image keeps (``sklearn``, ``xgboost``), and
    ``SMTASK_BIND_ADDRESS`` keeps it on loopback (its container shares the machine's network:
    on 0.0.0.0 it would answer every interface)."""
    return {**environment, "SMTASK_BIND_ADDRESS": "127.0.0.1",
            **({"SMTASK_FRAMEWORK": framework} if framework else {})}


def unpack_uri(session: Any, where: str, folder: Path, what: str) -> None:
    """An artifact (``file://``, a path, or ``s3://`` through ``local.s3_endpoint``), a
    tarball or a folder, unpacked into ``folder`` (see :func:`unpack`)."""
    uri = urlparse(where)
    if uri.scheme == "s3":
        folder.parent.mkdir(parents=True, exist_ok=True)
        source = folder.parent / Path(uri.path).name
        session.s3_client.download_file(uri.netloc, uri.path.lstrip("/"), str(source))
    elif uri.scheme == "file" or not uri.scheme:
        source = Path(uri.path)
    else:
        raise SmtaskError(f"{what}: local mode reads file:// or s3:// (local.s3_endpoint)")
    unpack(source, folder, what)


def unpack(source: Path, folder: Path, what: str) -> None:
    """A folder as it is, or a tarball (a ``model.tar.gz``, a ``sourcedir.tar.gz``) unpacked
    into ``folder``: nothing outside it, no devices or links out (tarfile's data filter)."""
    import tarfile

    if source.is_dir():
        shutil.copytree(source, folder, dirs_exist_ok=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(source) as tar:
            tar.extractall(folder, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise SmtaskError(f"{what} cannot be unpacked: {exc}") from exc


def _exited_container(session_id: str) -> tuple[int, list[str]] | None:
    """The exit code and last log lines of a container of the session that has exited."""
    found = docker("ps", "-aq", "--filter", f"label={LABEL}={session_id}",
                   "--filter", "status=exited").split()
    return exit_of(found[0]) if found else None


def exit_of(container: str) -> tuple[int, list[str]]:
    """A container's exit code and its last 40 lines of output."""
    code = docker("inspect", "-f", "{{.State.ExitCode}}", container).strip()
    logs = subprocess.run(["docker", "logs", "--tail", "40", container], capture_output=True,
                          text=True, check=False)
    return int(code or -1), (logs.stdout + logs.stderr).splitlines()


def wait_for_server(session: Any, output: ContainerOutput) -> Callable[..., None]:
    """The SDK's health wait, polling /ping from 0.1 s up to 1 s instead of every 5 s, and
    failing at once, with the server's own reason, if the serving container exits."""

    def wait(serving_port: int, timeout: float = 120) -> None:
        wait_healthy(serving_port, lambda: _exited_container(of(session).session_id), output,
                     timeout)

    return wait


def wait_healthy(port: int, exited: Callable[[], tuple[int, list[str]] | None],
                 output: ContainerOutput, timeout: float = 120) -> None:
    """Poll the server's /ping on ``port`` from 0.1 s up to 1 s until it answers 200; fail at
    once, with the server's own reason, when ``exited()`` says its container exited (its
    exit code and last lines)."""
    import urllib3

    http, delay, deadline = urllib3.PoolManager(), 0.1, time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = http.request("GET", f"http://127.0.0.1:{port}/ping", retries=False,
                                  timeout=2)
            if answer.status == 200:
                return
            last = f"/ping answered {answer.status}: {answer.data.decode(errors='replace')[:200]}"
        except urllib3.exceptions.HTTPError as exc:
            last = f"/ping: {exc}"
        ended = exited()
        if ended is not None:
            code, lines = ended
            raise ContainerFailed("the serving container exited before it was healthy: "
                                  + output.failure(code, lines))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise ContainerFailed(f"the serving container was not healthy after {timeout:g} s ({last})")


def split_recordio(splitter: Any, file: str) -> Iterator[bytes]:
    """Each record of a RecordIO file, framed as it was: a batch transform with
    ``split_type: RecordIO`` sends whole records (SDK v3's local splitter only raises)."""
    import io

    from smtask import recordio

    with open(file, "rb") as f:
        for data in recordio.read_recordio(f):
            framed = io.BytesIO()
            recordio._write_recordio(framed, data)
            yield framed.getvalue()


def answered_or_failed(invoke: Callable[..., Any], output: ContainerOutput) -> Callable[..., Any]:
    """The SDK's local InvokeEndpoint, failing (as SageMaker fails a batch transform) when the
    model server answers an error: the SDK would write the error's text as predictions."""

    def invoke_endpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = invoke(self, *args, **kwargs)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200
        if status < 400:
            return response
        body = response["Body"].read().decode("utf-8", "replace")
        response["Body"].close()
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        output(f"the model server answered {status}: {body[-4000:]}")
        raise ContainerFailed(f"{cause(lines)[:500]} (the model server answered {status}, "
                              "which fails a batch transform on SageMaker too)")

    return invoke_endpoint
