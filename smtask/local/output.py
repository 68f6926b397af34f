"""A local job's output: each line to the task log (bounded: a flood neither grows the
worker nor takes hours to log), its own last error line quoted when it fails, and only
regular files left in what it wrote before the SDK copies anything."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import stat
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smtask.errors import ContainerFailed, EngineUnreachable
from smtask.local import compose
from smtask.local.compose import bounded_lines
from smtask.local.containers import engine_answers, engine_gone
from smtask.local.state import of

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
        return f"{cause(own)} ({code}last lines: {last})"


_CONTAINER_LINE = re.compile(r"^[\w.-]+\s+\|(.*)$")
# Drivers that run the user's script re-raise its failure as their own; the user's error is
# the one to quote.
_WRAPPERS = ("subprocess.CalledProcessError", "ExecuteUserScriptError", "SystemExit")


def cause(lines: list[str]) -> str:
    # the docker CLI's own refusal (the container never ran): "docker: Error response from
    # daemon: ...", not its "Run 'docker run --help' for more information"
    refused = [line for line in lines if line.startswith("docker: ")]
    if refused:
        return refused[-1]
    errors = [line for line in lines
              if re.match(r"^([\w.]+\.)?\w*(Error|Exception|Interrupt|Exit)\b", line)
              and not line.startswith(_WRAPPERS)]
    return (errors or lines or ["the container exited without output"])[-1]


def keep_only_files(scratch: Path, log: Callable[[str], None], named_from: Path | None = None) -> None:
    """Remove every symlink and every special file (device, fifo, socket) a container left in
    the session's scratch folder (or a job's checkpoint folder), and clear the setuid, setgid
    and world-write bits of what is left. The SDK copies outputs and tars the model on the host,
    following links: a job could otherwise copy any host file (a link to ~/.aws, a device
    node of a disk) into its outputs, or hang the copy on a fifo. The log names each path
    from ``named_from`` (a folder above ``scratch``), else from ``scratch``."""
    base = named_from if named_from is not None and scratch.is_relative_to(named_from) else scratch
    for folder, folders, files in os.walk(scratch):  # does not follow links into folders
        for name in folders + files:
            path = Path(folder, name)
            try:
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    path.unlink()
                    log(f"smtask: removed {path.relative_to(base)} from the job's outputs: "
                        "only regular files and folders leave a local job")
                elif mode & _UNSAFE:  # a container's root may leave a setuid copy of a shell
                    path.chmod(stat.S_IMODE(mode) & ~_UNSAFE)
                    log(f"smtask: cleared the setuid, setgid and world-write bits of "
                        f"{path.relative_to(base)}")
            except FileNotFoundError:  # gone since it was listed: nothing of it is copied
                continue


_UNSAFE = stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH


def stream_output(output: ContainerOutput, session: Any) -> Callable[[subprocess.Popen], int]:
    """The SDK's ``_stream_output`` (it prints to stdout), sending each line to ``output`` and
    failing with the container's own reason (the job is then marked failed: its outputs are
    not copied). Once the container has exited, and before the SDK copies anything, only
    regular files and folders are left in the scratch folder."""
    state = of(session)

    def stream_output(process: subprocess.Popen) -> int:
        own: deque[str] = deque(maxlen=40)
        warming = warm_up(state)
        try:
            for raw in bounded_lines(process.stdout):  # type: ignore[arg-type]
                line = raw.decode("utf-8", "replace")
                own.append(line)
                output(line)
        finally:
            try:
                output.flush()
            finally:  # its imports end before the task's own go on, however this ends
                if warming is not None:
                    joined(warming)
        exit_code = process.wait()
        for folder in writable_mounts(process, state.scratch):
            keep_only_files(folder, output, state.scratch)
        if exit_code not in (0, 130):  # the SDK's own rule: 130 is a stopped container
            state.job_failed = True
            if not engine_answers():  # compose lost its engine: say so, not compose's traceback
                raise EngineUnreachable(engine_gone("".join(own)))
            container_code = _container_exit_code(list(own))
            if _serving_thread():
                # the serving container's thread: its failure is the health wait's or the
                # transform's to report (see serving); raised here it is a stray traceback
                return exit_code
            raise ContainerFailed(output.failure(container_code or exit_code, list(own)))
        return exit_code

    return stream_output


def warm_up(state: Any) -> threading.Event | None:
    """While a job's container runs, the task's main thread only reads its output: a thread
    imports the session's ``warm_up`` modules then (once per session; those not imported
    yet), so that the next tasks of an in-process run (``smtask run``) find the SDK modules
    of their kinds imported. The Event returned is set once it is done; the caller waits for
    it (:func:`joined`) before going on, so no import of the task's own ever runs beside it
    (two threads importing the same modules may find one half done). Only from the main
    thread: a tuning trial's or a serving container's thread runs beside a main thread that
    is not waiting. An import that fails here is the job's that needs it to report."""
    names = [name for name in state.warm_up if name not in sys.modules]
    state.warm_up = ()
    if not names or threading.current_thread() is not threading.main_thread():
        return None

    done = threading.Event()

    def imports() -> None:
        from smtask import sdk

        try:
            with sdk.quiet_imports(freeze=False):
                for name in names:
                    with contextlib.suppress(Exception):
                        importlib.import_module(name)
                sdk.build_models()
        finally:
            done.set()

    threading.Thread(target=imports, name="smtask-warm-up", daemon=True).start()
    return done


def joined(done: threading.Event) -> None:
    """Wait until ``done`` is set, though a signal's exception (a second SIGTERM) interrupts
    the wait: the wait goes on, then the exception is raised. (An Event, not the thread:
    Python 3.11's ``Thread.join`` cut short by an exception may leave ``is_alive()`` False
    while the thread still runs.)"""
    interrupted: BaseException | None = None
    while not done.is_set():
        try:
            done.wait()
        except BaseException as exc:  # noqa: BLE001 - raised once the event is set
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def writable_mounts(process: subprocess.Popen, scratch: Path) -> list[Path]:
    """The host folders a job's containers could write (its compose file's mounts that are
    not read-only): those are what the job leaves. Only this job's: the other trials of a
    tuning job run in the same session's scratch folder, and a walk over theirs would see
    their files come and go (and take a link away under a running trial). Without a compose
    file to read, the whole scratch folder."""
    args = [str(arg) for arg in process.args] if isinstance(process.args, list) else []
    if "-f" not in args[:-1]:
        return [scratch]
    try:
        services = compose.read(args[args.index("-f") + 1]).get("services") or {}
    except (OSError, ValueError):
        return [scratch]
    folders = {Path(volume.split(":")[0]) for service in services.values()
               for volume in service.get("volumes") or []
               if "ro" not in volume.split(":")[2:]}
    return sorted(folder for folder in folders if folder.is_dir())


def _serving_thread() -> bool:
    """Whether this is the thread the SDK runs a serving container's compose file in."""
    from sagemaker.core.local.image import _HostingContainer

    return isinstance(threading.current_thread(), _HostingContainer)


def _container_exit_code(lines: list[str]) -> int | None:
    """Compose's ``<container> exited with code N`` line, if it printed one."""
    for line in reversed(lines):
        match = re.search(r"exited with code (\d+)", line)
        if match:
            return int(match.group(1))
    return None
