"""Local mode: the SDK's ``LocalSession``, corrected so that a job cannot hurt the machine.

The SDK's local mode is used as it is, with these corrections, each pinned by a test:

- the compose files it generates use host networking (no bridge network, no ``ports``);
- inputs and code are mounted read-only, a single-file input as that file only; the SDK's
  own scratch folders (outputs, config, the model a server loads) are the only writable mounts;
- every batch-transform server listens on a port of its own, reserved host-wide for the
  server's whole life, so parallel transforms never score with each other's model;
- a batch transform may split RecordIO-protobuf input (``split_type: RecordIO``);
- the containers' output goes to the task log, and a failing container's message carries
  its last error line, its exit code and its last lines; a server that exits fails at once;
- telemetry is not sent; no credentials of the worker reach the containers;
- containers are removed and scratch folders deleted when the session ends, however it ends;
  containers and folders of a process that died (SIGKILL) are removed by the next session
  and by ``smtask cleanup``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import posixpath
import random
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.compose import ROOT_LABEL, bounded_lines
from smtask.errors import SmtaskError
from smtask.naming import smtask_home
from smtask.storage import confined, local_path

LOCAL_IMAGE = "smtask-local:latest"
DEFAULT_REGION = "us-east-1"
LABEL = "smtask.session"
OWNER_LABEL = "smtask.owner"  # "<host>:<pid>:<process start time>" of the task process
SCRATCH_LABEL = "smtask.scratch"  # the session's scratch folder, removed with its containers
OWNER_FILE = ".smtask-owner"
# smtask's own files for a job (its settings) in the scratch folder: mounted read-only, unlike
# the SDK's scratch folders. No job name (the SDK's folders) starts with "_".
READ_ONLY = "_ro"
WHEELS_IN_CONTAINER = "/opt/smtask/wheels"
# Serving ports come from below Linux's ephemeral range (32768-60999), so no outgoing
# connection of the machine holds one; a lock file per port keeps smtask processes apart.
PORT_RANGE = (20000, 32000)
PORT_LOCKS = Path(tempfile.gettempdir()) / "smtask-ports"


class ContainerFailed(RuntimeError):
    """A job's container exited non-zero; ``reason`` quotes its own last error line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --- who owns a container ---------------------------------------------------------------

@dataclass(frozen=True)
class Owner:
    """The process a local session belongs to; its start time tells a reused PID apart."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Owner:
        import psutil

        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        try:
            host, pid, started = text.rsplit(":", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started:.2f}"

    def alive(self) -> bool:
        """False only when this machine's process table says the owner is gone."""
        import psutil

        if self.host != socket.gethostname():
            return True  # another machine's process: not ours to judge
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.NoSuchProcess:
            return False


class EngineUnreachable(SmtaskError):
    """The Docker engine does not answer: what it runs cannot be seen, stopped or removed."""


def _docker(*args: str) -> str:
    """``docker <args>``'s output; :class:`EngineUnreachable` when no engine answers (an
    unanswered ``docker ps`` is not "no containers")."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0 and _ENGINE_GONE.search(done.stderr):
        raise EngineUnreachable(engine_gone(done.stderr))
    return done.stdout


# what the docker CLI and docker-compose say when no engine answers on their socket
_ENGINE_GONE = re.compile(r"(?i)cannot connect to the docker daemon|is the docker daemon running|"
                          r"error during connect|dial unix .*(connection refused|no such file)|"
                          r"error while fetching server api version|couldn't connect to docker")


def engine_gone(detail: str = "") -> str:
    """The one line that says the engine is gone, quoting what the client said of it."""
    last = next((line.strip() for line in reversed(detail.splitlines())
                 if _ENGINE_GONE.search(line)), "")
    return ("the Docker engine stopped answering" + (f" ({last[:160]})" if last else "") +
            "; containers it runs may still be running: once the engine is back, "
            "`smtask cleanup` removes those of stopped tasks")


def engine_answers() -> bool:
    return subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, check=False).returncode == 0


def remove_containers(session_id: str) -> list[str]:
    """``docker rm -f`` every container of one local session; returns their ids."""
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={session_id}").split()
    if ids:
        _docker("rm", "-f", *ids)
    return ids


def _scratch_root() -> Path:
    return smtask_home() / "tmp"


def _remove_scratch(folder: Path) -> None:
    """Delete a session's scratch folder; refuses anything but a folder under the scratch root."""
    shutil.rmtree(confined(folder, _scratch_root()), ignore_errors=True)


def cleanup_orphans() -> list[str]:
    """Remove containers and scratch folders whose owning process is gone (it was killed).

    Returns what was removed, one line each. Containers of live processes are left alone.
    Without an engine that answers nothing is removed (a scratch folder may be mounted in a
    container that still runs): :class:`EngineUnreachable`.
    """
    removed: list[str] = []
    ids = _docker("ps", "-aq", "--filter", f"label={OWNER_LABEL}").split()
    described = _docker("inspect", "-f", "{{.Id}} {{json .Config.Labels}}", *ids) if ids else ""
    for line in described.splitlines():
        cid, _, labels_json = line.partition(" ")
        labels = json.loads(labels_json or "{}")
        owner = Owner.parse(labels.get(OWNER_LABEL, ""))
        if owner is None or owner.alive():
            continue
        _docker("rm", "-f", cid)
        removed.append(f"container {cid[:12]} of dead process {owner.pid}")
        scratch = Path(labels.get(SCRATCH_LABEL, ""))
        if scratch.name and (scratch / OWNER_FILE).is_file() and not _still_mounted(scratch):
            with contextlib.suppress(SmtaskError):
                _remove_scratch(scratch)
                removed.append(f"scratch folder {scratch} of dead process {owner.pid}")
    root = _scratch_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        marker = folder / OWNER_FILE
        owner = Owner.parse(marker.read_text()) if marker.is_file() else None
        if owner is not None and not owner.alive() and not _still_mounted(folder):
            _remove_scratch(folder)
            removed.append(f"scratch folder {folder} of dead process {owner.pid}")
    return removed


def _still_mounted(scratch: Path) -> bool:
    """Whether a container (of a live process, or one that could not be removed) still has
    the scratch folder: it is not deleted under a running job."""
    return bool(_docker("ps", "-aq", "--filter", f"label={SCRATCH_LABEL}={scratch}").split())


def _stop_compose(scratch: Path) -> None:
    """Stop the compose processes this process started for a session, so that none of them
    creates a container after the session's containers were removed."""
    import psutil

    mine = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(str(scratch) in part for part in child.cmdline()):
                mine.append(child)
    for child in mine:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(mine, timeout=3)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


# --- compose files ----------------------------------------------------------------------

def _mount(volume: str, scratch: Path) -> str:
    """The SDK's scratch folders stay writable; anything else (the user's inputs and code) is
    mounted read-only, and a single file as that one file inside the container folder."""
    host, container, *options = volume.split(":")
    resolved = Path(host).resolve()
    if resolved.is_relative_to(scratch.resolve()) and \
            not resolved.is_relative_to((scratch / READ_ONLY).resolve()):
        return volume
    if os.path.isfile(host) and posixpath.basename(container) != os.path.basename(host):
        container = posixpath.join(container, os.path.basename(host))
    return ":".join([host, container, *(o for o in options if o not in ("ro", "rw")), "ro"])


def literal(value: Any) -> Any:
    """``value`` with every ``$`` doubled in its strings: compose would otherwise substitute
    ``${VAR}``/``$VAR`` from the worker's environment into a job's arguments and environment
    (and refuse a lone ``$``); ``$$`` is compose's literal ``$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [literal(item) for item in value]
    if isinstance(value, dict):
        return {key: literal(item) for key, item in value.items()}
    return value


def harden(content: dict[str, Any], session: Any, root: str = "") -> dict[str, Any]:
    """A copy of an SDK compose file (written in ``root``): host networking, read-only inputs,
    labels, own port, every value literal (no compose interpolation)."""
    content = copy.deepcopy(content)
    content.pop("networks", None)
    scratch = Path(session.smtask_scratch)
    for service in content.get("services", {}).values():
        service.pop("networks", None)
        service.pop("ports", None)  # with host networking the server binds its port itself
        service["network_mode"] = "host"
        service["labels"] = {LABEL: session.smtask_session_id, OWNER_LABEL: str(session.smtask_owner),
                             SCRATCH_LABEL: str(scratch), ROOT_LABEL: str(root)}
        service["volumes"] = [_mount(v, scratch) for v in service.get("volumes", [])]
        if "entrypoint" not in service and "command" not in service:
            # an image without user code (a built-in algorithm): SageMaker runs `<image> train`
            service["command"] = "train"
        service["volumes"] += [f"{host}:{container}:ro" for host, container in
                               getattr(session, "smtask_mounts", [])]
        if service.get("command") == "serve" and session.smtask_serving_port:
            service.setdefault("environment", []).append(
                f"SAGEMAKER_BIND_TO_PORT={session.smtask_serving_port}")
    content["services"] = literal(content.get("services", {}))
    return content


def compose_command() -> list[str]:
    """What the SDK runs as ``docker-compose`` (``<this> -f FILE up ...``)."""
    import sys

    return [sys.executable, "-m", "smtask.compose"]


class _SDKPatches:
    """Wraps the SDK's compose-file generators and processing volumes, once per process.

    The wrapped generator writes the hardened file but hands the SDK its own content back:
    the SDK parses its volumes again later (``host:container``) to collect the model.
    """

    installed = False

    @classmethod
    def install(cls) -> None:
        from sagemaker.core.local.image import _SageMakerContainer
        from sagemaker.train.local.local_container import _LocalContainer

        if cls.installed:
            return
        for klass in (_SageMakerContainer, _LocalContainer):
            klass._generate_compose_file = cls._compose(klass._generate_compose_file)
        # compose files run by smtask.compose (docker run), not docker-compose: see there
        _SageMakerContainer._get_compose_cmd_prefix = staticmethod(compose_command)
        _LocalContainer._get_compose_cmd_prefix = lambda self: compose_command()
        _SageMakerContainer._prepare_processing_volumes = cls._single_files(
            _SageMakerContainer._prepare_processing_volumes)
        cls.installed = True

    @staticmethod
    def _compose(generate: Any) -> Any:
        import yaml

        def generate_hardened(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            content = generate(self, *args, **kwargs)
            with open(os.path.join(self.container_root, "docker-compose.yaml"), "w") as f:
                yaml.safe_dump(harden(content, self.sagemaker_session, self.container_root), f,
                               default_flow_style=False)
            return content

        generate_hardened.__wrapped__ = generate  # type: ignore[attr-defined]
        return generate_hardened

    @staticmethod
    def _single_files(prepare: Any) -> Any:
        from urllib.parse import urlparse

        def prepare_volumes(self: Any, data_dir: str, inputs: Any, outputs: Any) -> list[Any]:
            """The SDK mounts a file input's whole parent folder; mount the file itself."""
            volumes = prepare(self, data_dir, inputs, outputs)
            sources = {i["S3Input"]["LocalPath"]: urlparse(i["DataUri"]) for i in inputs or []}
            files = {where: uri.path for where, uri in sources.items()
                     if uri.scheme == "file" and os.path.isfile(uri.path)}
            for volume in volumes:
                if volume.container_dir in files:
                    volume.host_dir = files[volume.container_dir]
                    volume.map = f"{volume.host_dir}:{volume.container_dir}"
            return volumes

        prepare_volumes.__wrapped__ = prepare  # type: ignore[attr-defined]
        return prepare_volumes


def read_only_file(session: Any, name: str, text: str) -> Path:
    """A file of the session's own (e.g. a job's settings), mounted read-only into the job."""
    area = Path(session.smtask_scratch) / READ_ONLY
    area.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=area)) / name
    path.write_text(text)
    return path


def serving_code(session: Any, environment: dict[str, str], framework: str | None) -> dict[str, str]:
    """A model's environment as the local serving container gets it. Its code (the
    ``SAGEMAKER_SUBMIT_DIRECTORY`` tarball, ``file://``, or ``s3://`` through
    ``local.s3_endpoint``) is unpacked into a read-only folder of the session, which the SDK
    mounts at ``/opt/ml/code``, as SageMaker unpacks it there; its ``requirements.txt`` is
    installable with no index (:func:`install_from_wheels`); ``SMTASK_FRAMEWORK`` names the
    framework image whose serving defaults the local image keeps (``sklearn``, ``xgboost``)."""
    import tarfile

    environment = dict(environment)
    if framework:
        environment["SMTASK_FRAMEWORK"] = framework
    submit = environment.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if not submit:
        return environment
    area = Path(session.smtask_scratch) / READ_ONLY
    area.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=area)) / "code"
    uri = urlparse(submit)
    if uri.scheme == "s3":
        tarball = folder.parent / "sourcedir.tar.gz"
        session.s3_client.download_file(uri.netloc, uri.path.lstrip("/"), str(tarball))
    elif uri.scheme == "file" or not uri.scheme:
        tarball = Path(uri.path)
    else:
        raise SmtaskError(f"SAGEMAKER_SUBMIT_DIRECTORY {submit}: local mode reads a model's code "
                          "from file:// or s3:// (local.s3_endpoint)")
    if tarball.is_dir():
        shutil.copytree(tarball, folder)
    else:
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(folder, filter="data")  # nothing outside the folder, no devices
        except (OSError, tarfile.TarError) as exc:
            raise SmtaskError(f"the model's code {submit} cannot be unpacked: {exc}") from exc
    if (folder / "requirements.txt").is_file():
        environment.update(install_from_wheels(session, folder / "requirements.txt"))
    environment["SAGEMAKER_SUBMIT_DIRECTORY"] = folder.as_uri()
    return environment


# --- packages (a step's requirements) ---------------------------------------------------

# The local image's interpreter and platform: the host's pip downloads wheels for it.
WHEEL_TARGET = ("--only-binary=:all:", "--python-version", "3.11", "--platform",
                "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
                "--implementation", "cp")


def _pip() -> list[str]:
    """The host's pip (the worker's venv may have none): its configuration (index, mirror,
    credentials, CA bundle) is the host's, used on the host only."""
    import importlib.util
    import sys

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("python3", "pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found, "-m", "pip"] if name == "python3" else [found]
    raise SmtaskError("requirements in local mode need pip on the worker (none found)")


def _redacted(text: str) -> str:
    """pip's output with any credentials in URLs removed."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def wheelhouse(requirements: Path) -> Path:
    """The wheels of ``requirements`` (and their dependencies) for the local image, downloaded
    once per content of the file by the host's pip into ``$SMTASK_HOME/wheels/<hash>/``."""
    import hashlib

    digest = hashlib.sha256(requirements.read_bytes() + " ".join(WHEEL_TARGET).encode())
    root = smtask_home() / "wheels"
    target = root / digest.hexdigest()[:32]
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    try:
        done = subprocess.run([*_pip(), "download", "--disable-pip-version-check", "--quiet",
                               *WHEEL_TARGET, "-d", str(partial), "-r", str(requirements)],
                              capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            lines = _redacted(done.stderr + done.stdout).strip().splitlines()[-8:]
            raise SmtaskError(f"requirements {requirements.name}: the host's pip could not "
                              f"download wheels for the local image: {' | '.join(lines)}")
        (partial / ".complete").write_text("")
        with contextlib.suppress(OSError):  # another process may have finished first
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def install_from_wheels(session: Any, requirements: Path) -> dict[str, str]:
    """Let the session's job install ``requirements`` with no index: the wheels (downloaded on
    the host, see :func:`wheelhouse`) are mounted read-only; returns the job's pip env."""
    mount = (str(wheelhouse(requirements)), WHEELS_IN_CONTAINER)
    mounts = getattr(session, "smtask_mounts", [])
    if mount not in mounts:  # e.g. a tuning job's trials: one session, the same wheels
        session.smtask_mounts = [m for m in mounts if m[1] != WHEELS_IN_CONTAINER] + [mount]
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_IN_CONTAINER,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


# --- serving ports ----------------------------------------------------------------------

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
    if not session.smtask_serving_port:
        port = session.smtask_exit.enter_context(reserved_port())
        session.smtask_serving_port = port
        session.config["local"]["serving_port"] = port
        session.sagemaker_runtime_client.serving_port = port  # where the SDK sends the data
    return int(session.smtask_serving_port)


def scratch_copy(session: Any, uri: str) -> str:
    """A copy of a ``file://`` artifact in the session's scratch folder, for the SDK to
    unpack and mount (it unpacks a model next to its ``model.tar.gz``: the training
    output must not change, nor be writable to the server)."""
    from urllib.parse import urlparse

    if urlparse(uri).scheme != "file":
        return uri
    source = Path(urlparse(uri).path)
    target = Path(tempfile.mkdtemp(dir=session.smtask_scratch)) / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target.as_uri()


# --- outputs: published only once the job completed ---------------------------------------

class OutputsNotWritten(SmtaskError):
    """A local job's outputs could not be copied to the artifacts (a full disk): nothing of
    them was published."""


def _copy_tree(source: Path, target: Path) -> None:
    """``source`` copied to the new folder ``target``, stopping at the first error (shutil's
    copytree goes on past a full disk and reports every file)."""
    target.mkdir(parents=True)
    for folder, folders, files in os.walk(source):
        here = target / Path(folder).relative_to(source)
        for name in sorted(folders):
            (here / name).mkdir()
        for name in sorted(files):
            shutil.copyfile(Path(folder, name), here / name)


def stage(session: Any, source: Path, destination: str, output: str) -> None:
    """Copy a job's ``output`` (a folder, or one file) towards ``destination`` (a ``file://``
    URI inside the artifacts root) under a temporary name beside it; :func:`publish` renames
    it into place once the job completed. A full disk fails with one line naming the step, the
    output and the free space, and leaves nothing behind."""
    final = local_path(destination, session.smtask_artifacts)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        if source.is_dir():
            _copy_tree(source, staging)
        else:
            shutil.copyfile(source, staging)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else \
            staging.unlink(missing_ok=True)
        usage = shutil.disk_usage(final.parent)
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) \
            if source.is_dir() else source.stat().st_size
        raise OutputsNotWritten(
            f"step '{session.smtask_step}' output '{output}': {exc.strerror or exc} while copying "
            f"the job's outputs ({size / 2**20:.1f} MB) to {final.parent} ({usage.free / 2**20:.1f}"
            f" MB free of {usage.total / 2**20:.1f} MB); nothing was published") from None
    session.smtask_staged.append((staging, final))


def publish(session: Any) -> None:
    """Put every staged output in place, each by one rename (an earlier attempt's outputs of
    the same step, a completed job's, are replaced only now)."""
    for staging, final in session.smtask_staged:
        if final.exists():
            log_replaced = final.is_dir() and any(final.iterdir())
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
            if log_replaced:
                session.smtask_output.sink(f"smtask: replaced the outputs an earlier attempt of "
                                           f"this step wrote in {final}")
        else:
            staging.rename(final)
    session.smtask_staged.clear()


def _discard_staged(session: Any) -> None:
    for staging, _ in session.smtask_staged:
        shutil.rmtree(staging, ignore_errors=True) if staging.is_dir() else \
            staging.unlink(missing_ok=True)
    session.smtask_staged.clear()


def _move_to_destination(real: Callable[..., str]) -> Callable[..., str]:
    """The SDK's ``move_to_destination``, which copies a local job's outputs to their URI
    (processing: even after the job failed, in a ``finally``; transform: once it is done).
    A failed, stopped or timed-out job's outputs are dropped; ``file://`` outputs are staged
    (see :func:`stage`)."""

    def move(source: str, destination: str, job_name: str, sagemaker_session: Any,
             prefix: str = "") -> str:
        session = sagemaker_session
        if getattr(session, "smtask_staged", None) is None:
            return real(source, destination, job_name, sagemaker_session, prefix)
        try:
            if session.smtask_job_failed or session.smtask_killed:
                return destination  # a failed job's outputs are not a result
            if urlparse(destination).scheme != "file":
                return real(source, destination, job_name, sagemaker_session, prefix)
            stage(session, Path(source), destination, local_path(destination).name)
            return destination
        finally:
            shutil.rmtree(source, ignore_errors=True)

    return move


# --- container output and health --------------------------------------------------------

# A job's output in the task log: its first LOG_BUDGET bytes, then (when it ends) its last
# LAST_LINES lines; a line is cut at LINE_MAX bytes. A job printing gigabytes neither grows
# the worker's memory nor takes the task hours to log (each line logged costs ~70 us).
LOG_BUDGET = int(float(os.environ.get("SMTASK_LOG_MAX_MB", "32")) * 2**20)
LAST_LINES = 200


class ContainerOutput:
    """The containers' output: each line to ``sink`` (the task log) up to :data:`LOG_BUDGET`
    bytes, then only the last :data:`LAST_LINES` lines, sent when the job ends
    (:meth:`flush`); the last lines kept so a failure message can quote the script's own
    error."""

    def __init__(self, sink: Callable[[str], None], keep: int = 40,
                 budget: int | None = None) -> None:
        self.sink = sink
        self.tail: deque[str] = deque(maxlen=keep)
        self.budget = LOG_BUDGET if budget is None else budget
        self.held: deque[str] = deque(maxlen=LAST_LINES)
        self.skipped = self.skipped_bytes = 0

    def __call__(self, line: str) -> None:
        line = line.replace("\r", "").rstrip("\n")
        if not line.strip():
            return
        self.tail.append(line)
        if self.budget > 0:
            self.budget -= len(line) + 1
            self.sink(line)
            if self.budget <= 0:
                self.sink(f"smtask: the job's output passed {LOG_BUDGET / 2**20:g} MB "
                          f"(SMTASK_LOG_MAX_MB): its last {LAST_LINES} lines follow when it ends")
            return
        if len(self.held) == self.held.maxlen:
            self.skipped += 1
            self.skipped_bytes += len(self.held[0]) + 1
        self.held.append(line)

    def flush(self) -> None:
        """Send the held last lines (once the output passed its budget), after a line that
        says how much was left out."""
        if not self.held:
            return
        if self.skipped:
            self.sink(f"smtask: {self.skipped} lines ({self.skipped_bytes / 2**20:.1f} MB) of "
                      f"the job's output are not in the task log; its last {len(self.held)}:")
        while self.held:
            self.sink(self.held.popleft())
        self.skipped = self.skipped_bytes = 0

    def failure(self, exit_code: int | None, lines: list[str] | None = None) -> str:
        """``<the container's last error line> (exit code N; last lines: ...)``."""
        raw = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in
               (lines if lines is not None else self.tail)]
        # compose prefixes the container's own lines with "<container> | "; its own are noise
        own = [m.group(1).strip() for m in map(_CONTAINER_LINE.match, raw) if m]
        own = [line for line in own or raw if line]
        last = " | ".join(own[-5:]) or "no output"
        code = f"exit code {exit_code}; " if exit_code is not None else ""
        return f"{_cause(own)} ({code}last lines: {last})"


_CONTAINER_LINE = re.compile(r"^[\w.-]+\s+\|(.*)$")
# Drivers that run the user's script re-raise its failure as their own; the user's error is
# the one to quote.
_WRAPPERS = ("subprocess.CalledProcessError", "ExecuteUserScriptError", "SystemExit")


def _cause(lines: list[str]) -> str:
    errors = [line for line in lines
              if re.match(r"^([\w.]+\.)?\w*(Error|Exception|Interrupt|Exit)\b", line)
              and not line.startswith(_WRAPPERS)]
    return (errors or lines or ["the container exited without output"])[-1]


def keep_only_files(scratch: Path, log: Callable[[str], None]) -> None:
    """Remove every symlink and every special file (device, fifo, socket) a container left in
    the session's scratch folder. The SDK copies outputs and tars the model on the host,
    following links: a job could otherwise copy any host file (a link to ~/.aws, a device
    node of a disk) into its outputs, or hang the copy on a fifo."""
    for folder, folders, files in os.walk(scratch):  # does not follow links into folders
        for name in folders + files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                path.unlink()
                log(f"smtask: removed {path.relative_to(scratch)} from the job's outputs: only "
                    "regular files and folders leave a local job")


def _stream_output(output: ContainerOutput, session: Any) -> Callable[[subprocess.Popen], int]:
    """The SDK's ``_stream_output`` (it prints to stdout), sending each line to ``output`` and
    failing with the container's own reason (the job is then marked failed: its outputs are
    not copied). Once the container has exited, and before the SDK copies anything, only
    regular files and folders are left in the scratch folder."""
    scratch = Path(session.smtask_scratch)

    def stream_output(process: subprocess.Popen) -> int:
        own: deque[str] = deque(maxlen=40)
        try:
            for raw in bounded_lines(process.stdout):  # type: ignore[arg-type]
                line = raw.decode("utf-8", "replace")
                own.append(line)
                output(line)
        finally:
            output.flush()
        exit_code = process.wait()
        keep_only_files(scratch, output)
        if exit_code not in (0, 130):  # the SDK's own rule: 130 is a stopped container
            session.smtask_job_failed = True
            if not engine_answers():  # compose lost its engine: say so, not compose's traceback
                raise EngineUnreachable(engine_gone("".join(own)))
            container_code = _container_exit_code(list(own))
            raise ContainerFailed(output.failure(container_code or exit_code, list(own)))
        return exit_code

    return stream_output


def _container_exit_code(lines: list[str]) -> int | None:
    """Compose's ``<container> exited with code N`` line, if it printed one."""
    for line in reversed(lines):
        match = re.search(r"exited with code (\d+)", line)
        if match:
            return int(match.group(1))
    return None


def _exited_container(session_id: str) -> tuple[int, list[str]] | None:
    """The exit code and last log lines of a container of the session that has exited."""
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={session_id}",
                  "--filter", "status=exited").split()
    if not ids:
        return None
    code = _docker("inspect", "-f", "{{.State.ExitCode}}", ids[0]).strip()
    logs = subprocess.run(["docker", "logs", "--tail", "40", ids[0]], capture_output=True,
                          text=True, check=False)
    return int(code or -1), (logs.stdout + logs.stderr).splitlines()


def _wait_for_serving_container(session: Any, output: ContainerOutput) -> Callable[..., None]:
    """The SDK's health wait, polling /ping from 0.1 s up to 1 s instead of every 5 s, and
    failing at once, with the server's own reason, if the serving container exits."""

    def wait(serving_port: int, timeout: float = 120) -> None:
        import urllib3

        http, delay, deadline = urllib3.PoolManager(), 0.1, time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                answer = http.request("GET", f"http://localhost:{serving_port}/ping",
                                      retries=False, timeout=2)
                if answer.status == 200:
                    return
                last = f"/ping answered {answer.status}: {answer.data.decode(errors='replace')[:200]}"
            except urllib3.exceptions.HTTPError as exc:
                last = f"/ping: {exc}"
            exited = _exited_container(session.smtask_session_id)
            if exited is not None:
                code, lines = exited
                raise ContainerFailed("the serving container exited before it was healthy: "
                                      + output.failure(code, lines))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise ContainerFailed(f"the serving container was not healthy after {timeout:g} s ({last})")

    return wait


# --- the session ------------------------------------------------------------------------

def _split_recordio(splitter: Any, file: str) -> Iterator[bytes]:
    """Each record of a RecordIO file, framed as it was: a batch transform with
    ``split_type: RecordIO`` sends whole records (SDK v3's local splitter only raises)."""
    import io

    from smtask import recordio

    with open(file, "rb") as f:
        for data in recordio.read_recordio(f):
            framed = io.BytesIO()
            recordio._write_recordio(framed, data)
            yield framed.getvalue()


def _sdk_corrections(session: Any, output: ContainerOutput) -> contextlib.AbstractContextManager[None]:
    from sagemaker.core.local import data, entities, image
    from sagemaker.core.local import utils as local_utils
    from sagemaker.train.local import local_container

    from smtask.sessions import replaced, telemetry_off

    stream = _stream_output(output, session)
    move = _move_to_destination(local_utils.move_to_destination)
    from sagemaker.core.local import local_session as sdk_session

    runtime = sdk_session.LocalSagemakerRuntimeClient
    return replaced(
        # a batch transform writes whatever the server answered, a 500's error text too
        (runtime, "invoke_endpoint", _answered_or_failed(runtime.invoke_endpoint, output)),
        # `docker context inspect` on every request, to learn that the server is on localhost
        (sdk_session, "get_docker_host", lambda: "localhost"),
        *telemetry_off(),
        (image, "_stream_output", stream),
        (local_container, "_stream_output", stream),
        (entities, "_wait_for_serving_container", _wait_for_serving_container(session, output)),
        (data.RecordIOSplitter, "split", _split_recordio),
        (local_utils, "move_to_destination", move),  # processing outputs (image.py)
        (entities, "move_to_destination", move),  # batch transform's predictions
    )


def _answered_or_failed(invoke: Callable[..., Any], output: ContainerOutput) -> Callable[..., Any]:
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
        raise ContainerFailed(f"{_cause(lines)[:500]} (the model server answered {status}, "
                              "which fails a batch transform on SageMaker too)")

    return invoke_endpoint


def stop(session: Any, root: str | None = None) -> list[str]:
    """Stop a session's jobs now (or only the one whose compose file is in ``root``): its
    compose processes, then its containers."""
    _stop_compose(Path(root or session.smtask_scratch))
    if root is None:
        return remove_containers(session.smtask_session_id)
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={session.smtask_session_id}",
                  "--filter", f"label={ROOT_LABEL}={root}").split()
    if ids:
        _docker("rm", "-f", *ids)
    return ids


class TimeLimit:
    """A local job's limit, enforced as SageMaker enforces it: when it passes, the job's
    compose processes and containers are stopped (its outputs are not published) and
    ``reason`` says which limit ended it. ``root``: only the job whose compose file is there
    (one tuning trial), else the session's every job."""

    def __init__(self, session: Any, seconds: float | None, reason: str,
                 root: str | None = None) -> None:
        self.session, self.seconds, self.reason, self.root = session, seconds, reason, root
        self.expired = False
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        self.expired = True
        if self.root is None:
            self.session.smtask_job_failed = True
        self.session.smtask_output.sink(f"smtask: {self.reason}")
        stop(self.session, self.root)

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()


def max_runtime(seconds: int) -> str:
    return (f"stopped after {seconds} s: its max_runtime_seconds passed (SageMaker stops a "
            "job at its MaxRuntimeInSeconds: MaxRuntimeExceeded)")


def wait_timeout(seconds: float) -> str:
    return f"still running after the {seconds:g} s wait_timeout_seconds; the job was stopped"


def time_limit(session: Any, kind: str, cfg: Mapping[str, Any]) -> TimeLimit:
    """The limit of a task's local job: the sooner of the step's ``max_runtime_seconds`` (a
    processing or training job's; a tuning job's trials each have their own, and a batch
    transform has none, as on SageMaker) and ``wait_timeout_seconds`` (the whole job)."""
    limits = []
    if cfg.get("max_runtime_seconds") and kind in ("processing", "training"):
        limits.append((cfg["max_runtime_seconds"], max_runtime(cfg["max_runtime_seconds"])))
    if cfg.get("wait_timeout_seconds"):
        limits.append((cfg["wait_timeout_seconds"], wait_timeout(cfg["wait_timeout_seconds"])))
    seconds, reason = min(limits, key=lambda limit: limit[0]) if limits else (None, "")
    return TimeLimit(session, seconds, reason)


@contextlib.contextmanager
def local_session(params: Mapping[str, Any], output: ContainerOutput,
                  step: str = "") -> Iterator[Any]:
    """A ``LocalSession`` whose jobs run in Docker on this machine. On exit, however it
    comes (an error, a signal), its compose processes and containers are stopped and its
    scratch folder deleted; orphans of killed processes are removed on entry."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    import boto3
    from sagemaker.core.local import LocalSession

    cleanup_orphans()
    local = params.get("local") or {}
    # Static placeholder credentials: the SDK copies the session's credentials into every
    # container's environment, and file:// artifacts need none.
    boto = boto3.Session(region_name=params.get("region_name") or DEFAULT_REGION,
                         aws_access_key_id="smtask-local", aws_secret_access_key="smtask-local")
    _SDKPatches.install()
    session_id, owner = uuid.uuid4().hex, Owner.current()
    scratch = _scratch_root() / session_id
    scratch.mkdir(parents=True)
    (scratch / OWNER_FILE).write_text(str(owner))
    with contextlib.ExitStack() as exit_stack:
        session = LocalSession(boto_session=boto, s3_endpoint_url=local.get("s3_endpoint"),
                               default_bucket="smtask-local")
        session.config = {"local": {"local_code": True, "container_root": str(scratch)}}
        session.smtask_session_id, session.smtask_owner = session_id, owner
        session.smtask_scratch, session.smtask_serving_port = str(scratch), None
        session.smtask_exit, session.smtask_closing = exit_stack, False
        session.smtask_killed, session.smtask_mounts = False, []
        session.smtask_output = output  # where jobs run by smtask itself (tuning trials) log
        # the job's outputs, staged until it completed (see stage, publish)
        session.smtask_step, session.smtask_staged, session.smtask_job_failed = step, [], False
        from smtask.sessions import artifacts_root

        session.smtask_artifacts = artifacts_root(params)
        try:
            with _sdk_corrections(session, output):
                yield session
        finally:
            session.smtask_closing = True  # a signal from here on must not cut the clean-up short
            _discard_staged(session)  # what was not published is no result
            try:
                stop(session)
            except EngineUnreachable as exc:
                # its containers may still run on the scratch folder: both stay for cleanup
                output.sink(f"smtask: {exc}; the job's scratch folder {scratch} is kept")
            else:
                _remove_scratch(scratch)
