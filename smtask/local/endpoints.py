"""Local mode's real-time endpoints: a serving container of the local image per endpoint,
which outlives the task that deployed it, on a loopback port of its own.

Each endpoint has a record, ``$SMTASK_HOME/endpoints/<name>.json``: the config it serves, its
container and port. Only the record says which container serves: an update starts the new
container, waits for its ``/ping``, switches the record (one rename) and only then removes
the old container, so a failed update leaves the old one serving, as SageMaker does. One
deploy or delete of an endpoint at a time (a lock file per endpoint); ``smtask cleanup``
removes the containers of this home's endpoints that no record names (an update that was
killed), never one a deploy is still starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smtask.errors import ContainerFailed, SmtaskError
from smtask.local.containers import docker, ids, remove
from smtask.local.output import ContainerOutput
from smtask.local.serving import exit_of, reserved_port, unpack_uri, wait_healthy
from smtask.local.wheels import PIP_ENVIRONMENT, WHEELS_IN_CONTAINER, wheelhouse
from smtask.naming import name_problem, smtask_home

ENDPOINT_LABEL = "smtask.endpoint"  # the endpoint's name
CONFIG_LABEL = "smtask.endpoint-config"
HOME_LABEL = "smtask.home"  # the SMTASK_HOME whose record it belongs to


class EndpointNotFound(SmtaskError, LookupError):
    """No local endpoint of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no local endpoint {name!r} (known: {', '.join(names()) or 'none'})")


# what a record holds, and each field's type: a record that is not this is unreadable
_FIELDS = {"name": str, "arn": str, "config_name": str, "model_name": str, "image": str,
           "model_data": str, "variant": str, "container": str, "port": int}


def root() -> Path:
    return smtask_home() / "endpoints"


def checked(name: Any) -> str:
    """``name`` if it is an endpoint's name (SageMaker's rule): it names files here."""
    if problem := name_problem("endpoint", name):
        raise SmtaskError(f"endpoint name {problem}")
    return str(name)


def _record_path(name: str) -> Path:
    return root() / f"{checked(name)}.json"


@contextlib.contextmanager
def locked(name: str, wait: bool = True) -> Iterator[bool]:
    """The endpoint's lock (one deploy or delete at a time); without ``wait``, yields False
    when another process holds it."""
    root().mkdir(parents=True, exist_ok=True)
    fd = os.open(root() / f".{checked(name)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class UnreadableRecord(SmtaskError):
    """A record that is not one smtask wrote (edited by hand, cut short)."""


def record(name: str) -> dict[str, Any] | None:
    """The endpoint's record, or None when it has none. A record that cannot be read raises
    :class:`UnreadableRecord`, naming how to remove the endpoint."""
    path = _record_path(name)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UnreadableRecord(f"local endpoint {name}: its record {path} cannot be read "
                               f"({exc}); `smtask endpoints delete {name}` removes the "
                               "endpoint") from exc
    if not isinstance(entry, dict) or entry.get("name") != name or any(
            not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
            for k, t in _FIELDS.items()):
        raise UnreadableRecord(f"local endpoint {name}: its record {path} is not one smtask "
                               f"wrote; `smtask endpoints delete {name}` removes the endpoint")
    return entry


def names() -> list[str]:
    """The names of this home's endpoints (their records' files)."""
    found = sorted(root().glob("*.json")) if root().is_dir() else []
    return [p.stem for p in found if name_problem("endpoint", p.stem) is None]


def records() -> list[dict[str, Any]]:
    """The readable records (see :func:`names` for all)."""
    found = []
    for name in names():
        with contextlib.suppress(UnreadableRecord):
            if (entry := record(name)) is not None:
                found.append(entry)
    return found


def _write(entry: dict[str, Any]) -> None:
    target = _record_path(entry["name"])
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_text(json.dumps(entry, indent=2, sort_keys=True))
    os.replace(partial, target)  # the switch: readers see the old record or the new one


def state(container: str) -> str:
    """The container's state (``running``, ``exited``, ...), or ``gone``."""
    if not container:
        return "gone"
    return docker("inspect", "-f", "{{.State.Status}}", container).strip() or "gone"


def description(entry: dict[str, Any]) -> dict[str, Any]:
    """The record as SageMaker's DescribeEndpoint would say it."""
    running = state(entry["container"]) == "running"
    return {"EndpointName": entry["name"], "EndpointArn": entry["arn"],
            "EndpointConfigName": entry["config_name"],
            "EndpointStatus": "InService" if running else "OutOfService",
            "ProductionVariants": [{"VariantName": entry["variant"], "CurrentInstanceCount": 1}],
            "Url": f"http://127.0.0.1:{entry['port']}"}


def deploy(session: Any, *, name: str, config_name: str, model_name: str, arn: str,
           image: str, model_data: str, environment: dict[str, str], variant: str,
           model_package_arn: str | None, log: Callable[[str], None],
           output: ContainerOutput, timeout: float = 300) -> dict[str, Any]:
    """Serve the model as endpoint ``name`` under ``config_name``: create it, or update it
    (start the new container, wait for its /ping, switch the record, remove the old one).
    When the endpoint already serves ``config_name`` (a retry), it is left as it is."""
    with locked(name):
        try:
            current = record(name)
        except UnreadableRecord as exc:
            raise SmtaskError(f"{exc}; nothing was deployed") from exc
        if current and current["config_name"] == config_name and \
                state(current["container"]) == "running":
            log(f"endpoint {name} already serves config {config_name}: nothing to change")
            return current
        folder = root() / name / config_name
        shutil.rmtree(folder, ignore_errors=True)
        unpack_uri(session, model_data, folder / "model", f"the model data {model_data}")
        mounts = [(folder / "model", "/opt/ml/model")]
        environment = dict(environment)
        submit = environment.get("SAGEMAKER_SUBMIT_DIRECTORY")
        if submit:
            unpack_uri(session, submit, folder / "code", f"the model's code {submit}")
            mounts.append((folder / "code", "/opt/ml/code"))
            environment["SAGEMAKER_SUBMIT_DIRECTORY"] = "/opt/ml/code"
            if (folder / "code" / "requirements.txt").is_file():
                mounts.append((wheelhouse(folder / "code" / "requirements.txt"),
                               WHEELS_IN_CONTAINER))
                environment.update(PIP_ENVIRONMENT)
        with reserved_port() as port:
            # loopback only: the container shares the machine's network
            environment.update(SAGEMAKER_BIND_TO_PORT=str(port), SMTASK_BIND_ADDRESS="127.0.0.1")
            # named before it exists: a kill while `docker run` runs still finds it
            container = f"smtask-endpoint-{name}-{uuid.uuid4().hex[:12]}"
            switched = False
            try:
                container = _start(container, name, config_name, image, mounts, environment,
                                   folder)
                wait_healthy(port, lambda: _exited(container), output, timeout)
                if getattr(getattr(session, "smtask", None), "killed", False):
                    raise ContainerFailed("the task was killed before its endpoint switched")
                entry = {"name": name, "arn": arn, "config_name": config_name,
                         "model_name": model_name, "model_package_arn": model_package_arn,
                         "image": image, "model_data": model_data, "variant": variant,
                         "container": container, "port": port,
                         "created": (current or {}).get("created", time.time()),
                         "updated": time.time()}
                _write(entry)
                switched = True
            except ContainerFailed as exc:
                still = (f"endpoint {name} still serves config {current['config_name']}"
                         if current else f"endpoint {name} was not created")
                raise ContainerFailed(f"{exc.reason}; {still}") from exc
            finally:
                if not switched:  # a failed start, or a kill: the old one serves on
                    remove([container])
                    shutil.rmtree(folder, ignore_errors=True)
        # every other container of this endpoint (the old one, a killed update's) goes
        old = [c for c in ids(f"{ENDPOINT_LABEL}={name}", f"{HOME_LABEL}={smtask_home()}")
               if not entry["container"].startswith(c)]
        remove(old)
        for folder in (root() / name).iterdir():
            if folder.is_dir() and folder.name != config_name:
                shutil.rmtree(folder, ignore_errors=True)
        if current:
            log(f"endpoint {name}: config {config_name} serves now (was "
                f"{current['config_name']}); its old container is removed")
        return entry


def _start(container: str, name: str, config_name: str, image: str,
           mounts: list[tuple[Path, str]], environment: dict[str, str], folder: Path) -> str:
    """``docker run -d`` of the serving container ``container``: host networking (its port is
    loopback's own choice), read-only model and code, restarted with the engine. Its id."""
    from smtask.local.compose import environment_args

    args = ["run", "-d", "--pull", "never", "--name", container, "--network", "host",
            "--restart", "unless-stopped",
            "--log-driver", "local", "--label", f"{ENDPOINT_LABEL}={name}",
            "--label", f"{CONFIG_LABEL}={config_name}", "--label", f"{HOME_LABEL}={smtask_home()}",
            *environment_args(environment, str(folder / ".env"))]
    for source, target in mounts:
        args += ["-v", f"{source}:{target}:ro"]
    done = subprocess.run(["docker", *args, image, "serve"], capture_output=True, text=True,
                          check=False)
    (folder / ".env").unlink(missing_ok=True)  # read by the engine when the container was made
    if done.returncode != 0:
        raise ContainerFailed(f"the serving container did not start: {done.stderr.strip()[:500]}")
    return done.stdout.strip()


def _exited(container: str) -> tuple[int, list[str]] | None:
    """An exited (or restarting: it exited and the engine starts it again) container's end."""
    return exit_of(container) if state(container) in ("exited", "dead", "restarting") else None


def delete(name: str) -> dict[str, Any]:
    """Remove the endpoint: its container, its record and its files."""
    with locked(name):
        try:
            entry = record(name)
        except UnreadableRecord:  # removed all the same: its containers carry its name
            entry = {"name": name}
        if entry is None:
            raise EndpointNotFound(name)
        remove(ids(f"{ENDPOINT_LABEL}={name}", f"{HOME_LABEL}={smtask_home()}"))
        _record_path(name).unlink(missing_ok=True)
        shutil.rmtree(root() / name, ignore_errors=True)
        return entry


def invoke(name: str, body: bytes, content_type: str, accept: str | None) -> tuple[bytes, str]:
    """POST the body to the endpoint's /invocations: its answer and content type. An error
    answer raises, with the model server's own words (SageMaker's ModelError)."""
    import urllib3

    entry = record(name)
    if entry is None:
        raise EndpointNotFound(name)
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    try:
        answer = urllib3.PoolManager().request(
            "POST", f"http://127.0.0.1:{entry['port']}/invocations", body=body,
            headers=headers, retries=False, timeout=60)
    except urllib3.exceptions.HTTPError as exc:
        raise SmtaskError(f"local endpoint {name} did not answer ({exc}); its container is "
                          f"{state(entry['container'])}") from exc
    if answer.status >= 400:
        text = answer.data.decode(errors="replace").strip()
        raise SmtaskError(f"local endpoint {name}: the model server answered {answer.status}: "
                          f"{text.splitlines()[0][:500] if text else ''}")
    return answer.data, answer.headers.get("Content-Type", "")


def cleanup() -> list[str]:
    """Remove this home's endpoint containers that no record names (a killed update's), and
    the files of configs no record names, except while their endpoint's deploy runs (it
    holds the lock)."""
    removed: list[str] = []
    found = ids(ENDPOINT_LABEL, f"{HOME_LABEL}={smtask_home()}")
    for folder in sorted(p for p in root().iterdir() if p.is_dir()) if root().is_dir() else []:
        if name_problem("endpoint", folder.name):
            continue
        with locked(folder.name, wait=False) as free:
            try:
                entry = record(folder.name)
            except UnreadableRecord:
                continue
            for config in sorted(c for c in folder.iterdir() if c.is_dir()) if free else []:
                if entry is None or config.name != entry["config_name"]:
                    shutil.rmtree(config, ignore_errors=True)
                    removed.append(f"files of config {config.name} of endpoint {folder.name}, "
                                   "which no record names")
    if not found:
        return removed
    described = docker("inspect", "-f", "{{.Id}} {{json .Config.Labels}}", *found)
    for line in described.splitlines():
        cid, _, labels_json = line.partition(" ")
        name = json.loads(labels_json or "{}").get(ENDPOINT_LABEL, "")
        if name_problem("endpoint", name):
            continue  # not a container smtask made
        with locked(name, wait=False) as free:
            try:
                entry = record(name)
            except UnreadableRecord:
                continue  # which container serves cannot be told: none is removed
            if not free or (entry is not None and entry["container"] == cid):
                continue
            remove([cid])
            removed.append(f"container {cid[:12]} of endpoint {name}, which no record names")
    return removed
