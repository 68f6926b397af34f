"""The SDK's compose files: hardened as the SDK writes them, and run, as
``<this file> -f docker-compose.yaml up [--build] --abort-on-container-exit | --detach``
(:func:`command`), with ``docker run``.

Hardened (:func:`harden`): host networking only (no bridge network, no published ports),
the user's inputs and code mounted read-only (a single file as that one file), the SDK's own
scratch folders and a training job's checkpoint folder the only writable mounts, smtask's
labels on every container, the session's own serving port, and every value literal (compose
would substitute ``${VAR}`` from the worker's environment into a job's arguments and
environment).

Run (:func:`main`): the SDK runs every local job as ``docker-compose up`` over the file.
docker-compose 1.29 takes 0.5-0.9 s to start, and while it attaches to a job's output it
keeps what it has not yet printed in memory: 1.3 GB for a job printing 600 MB. This runs the
same file with one attached ``docker run`` per service, streams each one's output (lines
cut at :data:`LINE_MAX`), and ends as compose does: when the first container exits the
others are killed, ``<container> exited with code N`` is printed and that code is the exit
code; SIGTERM (the SDK's stop of a server, a kill) removes them. It takes only what the
SDK's (hardened) files hold, and refuses any other key by name, so an SDK that writes
something new fails loudly here. A job's environment reaches its container through an env
file (:func:`environment_args`), never the docker CLI's own environment nor a command line.
Images are never pulled (``--pull never``: local mode reaches no registry).

Imports the standard library only: the runner is a process of every local job.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import posixpath
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

LINE_MAX = 64 * 1024
ROOT_LABEL = "smtask.root"  # set by smtask.local on a job's containers: its compose file's folder
SERVICE_KEYS = {"image", "container_name", "stdin_open", "tty", "volumes", "environment",
                "command", "entrypoint", "network_mode", "labels", "deploy"}


# --- hardening the SDK's compose files ----------------------------------------------------------

def _mount(volume: str, scratch: Path) -> str:
    """The SDK's scratch folders stay writable; anything else (the user's inputs and code) is
    mounted read-only, and a single file as that one file inside the container folder."""
    from pathlib import Path  # not in the runner, whose start it would slow

    from smtask.local.state import READ_ONLY

    host, container, *options = volume.split(":")
    resolved = Path(host).resolve()
    if resolved.is_relative_to(scratch.resolve()) and \
            not resolved.is_relative_to((scratch / READ_ONLY).resolve()):
        return volume
    if os.path.isfile(host) and posixpath.basename(container) != os.path.basename(host):
        container = posixpath.join(container, os.path.basename(host))
    return ":".join([host, container, *(o for o in options if o not in ("ro", "rw")), "ro"])


def _each_string(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` (a compose value: strings, lists, mappings) with ``change`` made to every
    string in it."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_each_string(item, change) for item in value]
    if isinstance(value, dict):
        return {key: _each_string(item, change) for key, item in value.items()}
    return value


def literal(value: Any) -> Any:
    """``value`` with every ``$`` doubled in its strings: compose's literal ``$``."""
    return _each_string(value, lambda text: text.replace("$", "$$"))


def harden(content: dict[str, Any], session: Any, root: str = "") -> dict[str, Any]:
    """A copy of an SDK compose file (written in ``root``) as smtask runs it (see above)."""
    from smtask.local.state import LABEL, OWNER_LABEL, SCRATCH_LABEL, of

    state = of(session)
    content = copy.deepcopy(content)
    content.pop("networks", None)
    for service in content.get("services", {}).values():
        service.pop("networks", None)
        service.pop("ports", None)  # with host networking the server binds its port itself
        service["network_mode"] = "host"
        service["labels"] = {LABEL: state.session_id, OWNER_LABEL: str(state.owner),
                             SCRATCH_LABEL: str(state.scratch), ROOT_LABEL: str(root)}
        service["volumes"] = [_mount(v, state.scratch) for v in service.get("volumes", [])]
        if "entrypoint" not in service and "command" not in service:
            # an image without user code (a built-in algorithm): SageMaker runs `<image> train`
            service["command"] = "train"
        service["volumes"] += [f"{host}:{container}:ro" for host, container in state.mounts]
        service["volumes"] += [f"{host}:{container}" for host, container in
                               state.job_mounts.get(str(root), [])]
        if service.get("command") == "serve" and state.serving_port:
            service.setdefault("environment", []).append(
                f"SAGEMAKER_BIND_TO_PORT={state.serving_port}")
    content["services"] = literal(content.get("services", {}))
    return content


# The runner is this file run by an isolated interpreter (-I: no PYTHON* variables, no user
# site; -S: no site-packages, whose .pth files cost a job's start 20 ms), from its cached
# bytecode: the standard library is all it needs.
_RUNNER = ("import importlib.util as u, sys; s = u.spec_from_file_location('smtask_compose', "
           "{!r}); m = u.module_from_spec(s); s.loader.exec_module(m); sys.exit(m.main(sys.argv[1:]))")


def command() -> list[str]:
    """What the SDK runs as ``docker-compose`` (``<this> -f FILE up ...``)."""
    return [sys.executable, "-I", "-S", "-c", _RUNNER.format(os.path.abspath(__file__))]


def install() -> None:
    """The SDK writes hardened compose files, which this module runs (once per process; see
    smtask.sdk). The wrapped generator writes the hardened file but hands the SDK its own
    content back: the SDK parses its volumes again later (``host:container``)."""
    from smtask import sdk

    def hardened(generate: Any) -> Any:
        def generate_hardened(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            content = generate(self, *args, **kwargs)
            with open(os.path.join(self.container_root, "docker-compose.yaml"), "w") as f:
                # JSON, which is YAML too: the runner reads it with the standard library
                json.dump(harden(content, self.sagemaker_session, self.container_root), f,
                          indent=1)
            return dict(content)

        return generate_hardened

    for generator in ("sagemaker.core.local.image:_SageMakerContainer._generate_compose_file",
                      "sagemaker.train.local.local_container:_LocalContainer._generate_compose_file"):
        sdk.install(generator, hardened)
    sdk.install("sagemaker.core.local.image:_SageMakerContainer._get_compose_cmd_prefix",
                lambda _: staticmethod(command))
    sdk.install("sagemaker.train.local.local_container:_LocalContainer._get_compose_cmd_prefix",
                lambda _: lambda self: command())
    sdk.install("sagemaker.core.local.image:_SageMakerContainer._prepare_processing_volumes",
                _single_files)


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
        return list(volumes)

    return prepare_volumes


# --- running them -------------------------------------------------------------------------------

def bounded_lines(stream: IO[bytes], limit: int = LINE_MAX) -> Iterator[bytes]:
    """The lines of ``stream``, each at most ``limit`` bytes: the rest of a longer line is
    read and dropped, and the line says how much was cut."""
    while chunk := stream.readline(limit):
        if len(chunk) < limit or chunk.endswith(b"\n"):
            yield chunk
            continue
        dropped = 0
        while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
            dropped += len(rest)
        dropped += len(rest.rstrip(b"\r\n"))
        yield chunk.rstrip(b"\r") + f" ... [{dropped} more bytes of this line cut]\n".encode()


def _unescaped(value: Any) -> Any:
    """A compose value as the container gets it: ``$$`` is ``$``."""
    return _each_string(value, lambda text: text.replace("$$", "$"))


def container_name(project: str, name: str, service: dict[str, Any]) -> str:
    """The service's ``container_name``, else compose's own ``<project>_<service>_1``."""
    return str(service.get("container_name") or f"{project}_{name}_1")


def run_args(project: str, name: str, service: dict[str, Any], *,
             detach: bool = True) -> tuple[list[str], dict[str, str]]:
    """``docker run`` arguments for one compose service (attached, or ``-d``), and its
    environment (handed to the container by :func:`environment_args`, never to the CLI)."""
    unknown = sorted(set(service) - SERVICE_KEYS)
    if unknown:
        raise SystemExit(f"smtask.local.compose: service {name}: unsupported compose key(s) "
                         f"{', '.join(unknown)}")
    service = _unescaped(service)
    args = ["run", *(["-d"] if detach else []), "--pull", "never",
            "--name", container_name(project, name, service)]
    if service.get("network_mode"):
        args += ["--network", service["network_mode"]]
    if service.get("tty"):
        args.append("-t")
    if service.get("stdin_open") and detach:  # attached, the job reads no stdin (the task's)
        args.append("-i")
    for key, value in (service.get("labels") or {}).items():
        args += ["--label", f"{key}={value}"]
    for volume in service.get("volumes") or []:
        args += ["-v", volume]
    environment = service.get("environment") or []
    pairs = environment.items() if isinstance(environment, dict) else \
        (entry.split("=", 1) if "=" in entry else (entry, "") for entry in environment)
    variables = {key: "" if value is None else str(value) for key, value in pairs}
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations")
               or {}).get("devices") or []
    if any("gpu" in (d.get("capabilities") or []) for d in devices):
        args += ["--gpus", "all"]
    entrypoint, command = service.get("entrypoint"), service.get("command")
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint or [])
    command = shlex.split(command) if isinstance(command, str) else list(command or [])
    if entrypoint:
        args += ["--entrypoint", entrypoint[0]]
    return [*args, service["image"], *entrypoint[1:], *command], variables


def environment_args(environment: dict[str, str], env_file: str) -> list[str]:
    """``docker run`` arguments that give the container ``environment``: an ``--env-file``
    (0600) holding the values, so that none is on a command line (``ps``) nor in the docker
    CLI's own environment (where DOCKER_HOST, SSH_ASKPASS, OTEL_* and the like would steer the
    CLI itself); a value with a line break, which an env file cannot hold, as ``-e NAME=value``."""
    lines, args = [], []
    for key, value in environment.items():
        if "\n" in value or "\r" in value:
            args += ["-e", f"{key}={value}"]
        else:
            lines.append(f"{key}={value}\n")
    if lines:
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.writelines(lines)
        args = ["--env-file", env_file, *args]
    return args


class Job:
    """The containers of one compose file: each an attached ``docker run`` whose output is
    streamed (the daemon's, not a re-read of its log file), the first to exit ending all."""

    def __init__(self, project: str, services: dict[str, Any], scratch: str) -> None:
        self.project, self.services, self.scratch = project, services, scratch
        first: dict[str, Any] = next(iter(services.values()), {})
        labels = first.get("labels") or {}
        # smtask's label of the compose file's folder: every container of this job has it
        self.label = f"{ROOT_LABEL}={labels[ROOT_LABEL]}" if ROOT_LABEL in labels else None
        self.runs: list[tuple[str, subprocess.Popen[bytes], str]] = []  # name, process, cidfile
        self.lock = threading.Lock()
        self.out = sys.stdout.buffer

    def start(self, detach: bool = False) -> None:
        for number, (name, service) in enumerate(self.services.items()):
            args, environment = run_args(self.project, name, service, detach=detach)
            cidfile = os.path.join(self.scratch, f".cid-{os.getpid()}-{number}")
            env_file = os.path.join(self.scratch, f".env-{os.getpid()}-{number}")
            # the daemon keeps a bounded, rotated log of each job (docker logs --tail works)
            args[1:1] = ["--cidfile", cidfile, "--log-driver", "local",
                         *environment_args(environment, env_file)]
            process = subprocess.Popen(["docker", *args],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
            self.runs.append((container_name(self.project, name, service), process, cidfile))

    def _stream(self, name: str, process: subprocess.Popen[bytes]) -> None:
        prefix = f"{name}  | ".encode()
        for line in bounded_lines(process.stdout):  # type: ignore[arg-type]
            with self.lock:
                self.out.write(prefix + line.replace(b"\r\n", b"\n"))

    def _flush(self, done: threading.Event) -> None:
        """The output reaches the SDK (and the task log) within 0.2 s, not per line."""
        while not done.wait(0.2):
            with self.lock:
                self.out.flush()

    def attach(self) -> int:
        streams = [threading.Thread(target=self._stream, args=(name, process), daemon=True)
                   for name, process, _ in self.runs]
        done = threading.Event()
        flusher = threading.Thread(target=self._flush, args=(done,), daemon=True)
        for thread in (*streams, flusher):
            thread.start()
        ended: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        for name, process, _ in self.runs:  # told the moment each one exits, not polled
            threading.Thread(target=lambda n=name, p=process: ended.put((n, p.wait())),
                             daemon=True).start()
        exited: list[tuple[str, int]] = []
        while not exited:  # --abort-on-container-exit: the first container to exit ends them all
            with contextlib.suppress(queue.Empty):  # a signal's handler runs between waits
                exited.append(ended.get(timeout=1))
        self.kill([run for run in self.runs if run[1].poll() is None])
        for name, process, _ in self.runs:
            code = process.wait()
            if name not in dict(exited):
                exited.append((name, code))
        for thread in streams:
            thread.join()  # every line the containers printed is read
        done.set()
        with self.lock:
            for name, code in exited:
                self.out.write(f"{name} exited with code {code}\n".encode())
            self.out.flush()
        return exited[0][1]

    def ids(self, runs: list[tuple[str, subprocess.Popen[bytes], str]] | None = None) -> list[str]:
        found = []
        for _, _, cidfile in self.runs if runs is None else runs:
            with contextlib.suppress(OSError):
                found.append(open(cidfile).read().strip())
        return [cid for cid in found if cid]

    def kill(self, runs: list[tuple[str, subprocess.Popen[bytes], str]]) -> None:
        ids = self.ids(runs)
        if ids:
            subprocess.run(["docker", "kill", *ids], capture_output=True, check=False)

    def remove(self) -> None:
        """Remove the job's containers, the docker CLIs first (a ``docker run`` left alone
        would still start the container it is creating)."""
        for _, process, _ in self.runs:
            with contextlib.suppress(OSError):
                process.kill()
        for _, process, _ in self.runs:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.wait(timeout=5)
        ids = set(self.ids())
        if self.label:  # also one created while its CLI was killed (it never starts)
            ids.update(subprocess.run(["docker", "ps", "-aq", "--filter", f"label={self.label}"],
                                      capture_output=True, text=True, check=False).stdout.split())
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        for _, _, cidfile in self.runs:
            with contextlib.suppress(OSError):
                os.unlink(cidfile)


def read(path: str) -> dict[str, Any]:
    """A compose file as :func:`install` writes it (JSON); ``ValueError`` if it is not."""
    with open(path) as f:
        content = json.load(f)
    if not isinstance(content, dict):
        raise ValueError(f"a JSON {type(content).__name__}, not an object")
    return content


def main(argv: list[str]) -> int:
    if "-f" not in argv or "up" not in argv:
        raise SystemExit(f"smtask.local.compose: only '-f FILE up' is supported, got {argv}")
    path = argv[argv.index("-f") + 1]
    try:
        content = read(path)
    except ValueError as exc:
        raise SystemExit(f"smtask.local.compose: {path} is not a compose file smtask wrote "
                         f"(JSON): {exc}") from None
    # compose's project: the file's folder, lower case, [a-z0-9] only
    project = re.sub(r"[^a-z0-9]", "", os.path.basename(os.path.dirname(os.path.abspath(path)))
                     .lower()) or "default"
    job = Job(project, content.get("services") or {}, os.path.dirname(os.path.abspath(path)))

    def stop(signum: int, frame: Any) -> None:
        job.remove()
        os._exit(130)  # a stopped job, in the SDK's words

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    detach = "--detach" in argv or "-d" in argv
    job.start(detach)
    if detach:
        codes = [process.wait() for _, process, _ in job.runs]
        return max(codes, default=0)
    try:
        return job.attach()
    finally:
        for _, _, cidfile in job.runs:
            with contextlib.suppress(OSError):
                os.unlink(cidfile)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
