"""The Docker engine, and the containers and scratch folders of local sessions: who owns
them, how a session's are stopped, and how a dead process's are cleaned up."""

from __future__ import annotations

import _signal
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from smtask.errors import EngineUnreachable, SmtaskError
from smtask.local.compose import ROOT_LABEL
from smtask.local.state import LABEL, OWNER_FILE, OWNER_LABEL, SCRATCH_LABEL, Owner, of
from smtask.naming import smtask_home
from smtask.paths import confined

# what the docker CLI says when no engine answers on its socket
_ENGINE_GONE = re.compile(r"(?i)cannot connect to the docker daemon|is the docker daemon running|"
                          r"error during connect|dial unix .*(connection refused|no such file)|"
                          r"error while fetching server api version|couldn't connect to docker")


def docker(*args: str) -> str:
    """``docker <args>``'s output; :class:`EngineUnreachable` when no engine answers (an
    unanswered ``docker ps`` is not "no containers")."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0 and _ENGINE_GONE.search(done.stderr):
        raise EngineUnreachable(engine_gone(done.stderr))
    if done.returncode != 0 and args[:1] == ("ps",):
        # any other failure (a bad DOCKER_CONTEXT, a socket it may not open) is no answer either
        said = " ".join(done.stderr.split())[:200] or f"exit code {done.returncode}"
        raise EngineUnreachable(f"`docker ps` failed ({said}): which containers run cannot be "
                                "told, so none is removed and no scratch folder deleted")
    return done.stdout


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


def ids(*labels: str) -> list[str]:
    """The containers (running or not) that carry every label (``key=value``)."""
    return docker("ps", "-aq", *(f"--filter=label={label}" for label in labels)).split()


def remove(container_ids: list[str]) -> list[str]:
    if container_ids:
        docker("rm", "-f", *container_ids)
    return container_ids


def scratch_root() -> Path:
    return smtask_home() / "tmp"


def remove_scratch(folder: Path) -> None:
    """Delete a session's scratch folder; refuses anything but a folder under the scratch root."""
    shutil.rmtree(confined(folder, scratch_root()), ignore_errors=True)


def cleanup_orphans() -> list[str]:
    """Remove containers and scratch folders whose owning process is gone (it was killed).

    Returns what was removed, one line each. Containers of live processes are left alone.
    Without an engine that answers nothing is removed (a scratch folder may be mounted in a
    container that still runs): :class:`EngineUnreachable`.
    """
    removed: list[str] = []
    found = ids(OWNER_LABEL)
    described = docker("inspect", "-f", "{{.Id}} {{json .Config.Labels}}", *found) if found else ""
    for line in described.splitlines():
        cid, _, labels_json = line.partition(" ")
        labels = json.loads(labels_json or "{}")
        owner = Owner.parse(labels.get(OWNER_LABEL, ""))
        if owner is None or owner.alive():
            continue
        remove([cid])
        removed.append(f"container {cid[:12]} of dead process {owner.pid}")
        scratch = Path(labels.get(SCRATCH_LABEL, ""))
        if scratch.name and (scratch / OWNER_FILE).is_file() and not _still_mounted(scratch):
            with contextlib.suppress(SmtaskError):
                remove_scratch(scratch)
                removed.append(f"scratch folder {scratch} of dead process {owner.pid}")
    root = scratch_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        marker = folder / OWNER_FILE
        owner = Owner.parse(marker.read_text()) if marker.is_file() else None
        if owner is not None and not owner.alive() and not _still_mounted(folder):
            remove_scratch(folder)
            removed.append(f"scratch folder {folder} of dead process {owner.pid}")
    return removed


SETTLE_SECONDS = 60.0  # how long a run's end waits for the removals beside it


class _Janitor:
    """Clean-ups that need not hold up the next task: a completed job's exited containers
    and scratch folder, the sweep of later sessions. One thread per process; the process
    waits for what is left of them when it exits (atexit: ``smtask run`` ends by os._exit
    after the exit handlers), and a process killed first leaves them to the next sweep."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.last: Future[Any] | None = None
        self.pid = 0
        self.swept = 0  # the process whose first session swept synchronously

    def later(self, work: Callable[[], Any]) -> Future[Any]:
        with self.lock:
            if self.pool is None or self.pid != os.getpid():  # none yet, or a forked child's
                self.pool, self.pid = ThreadPoolExecutor(1, "smtask-cleanup"), os.getpid()
                atexit.register(self.settle)
            self.last = self.pool.submit(_reported, work)  # one thread: they end in order
            return self.last

    def settle(self, timeout: float = SETTLE_SECONDS) -> None:
        """Wait for the clean-ups handed over so far. A SIGINT or SIGTERM meanwhile (a run's,
        a process's exit: the default action would leave them half done) is acted on once
        they are done, or after ``timeout`` seconds (an engine that hangs)."""
        with self.lock:
            last = self.last if self.pid == os.getpid() else None
        if last is None:
            return
        with _signals_held():
            with contextlib.suppress(TimeoutError):
                last.result(timeout)

    def sweep(self) -> None:
        """:func:`cleanup_orphans` at a session's start: in the first of the process before
        any job (an engine that does not answer is named there), beside the job after."""
        if self.swept == os.getpid():
            self.later(_sweep_quietly)
            return
        cleanup_orphans()
        self.swept = os.getpid()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held while inside (the main thread's), then delivered to the
    handlers there were. Set through ``_signal`` itself: ``smtask run`` chains the handlers
    set through ``signal.signal`` while a task runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: _signal.signal(signum, lambda got, _: held.append(got))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


def _reported(work: Callable[[], Any]) -> Any:
    """``work``, whose failure is said on stderr (no task is there to fail): what it left is
    removed by a later sweep once this process is gone, or by ``smtask cleanup``."""
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - a background clean-up has no caller to raise to
        print(f"smtask: a clean-up beside the run failed ({exc}); `smtask cleanup` removes "
              "what it left once this process has ended", file=sys.stderr)
        return None


def _sweep_quietly() -> None:
    with contextlib.suppress(SmtaskError):  # the next job's own docker calls will say it
        cleanup_orphans()


JANITOR = _Janitor()


def _still_mounted(scratch: Path) -> bool:
    """Whether a container (of a live process, or one that could not be removed) still has
    the scratch folder: it is not deleted under a running job."""
    return bool(ids(f"{SCRATCH_LABEL}={scratch}"))


def _stop_runners(folder: Path) -> None:
    """Stop the processes this process started to run a session's compose files (under
    ``folder``), so that none of them creates a container after they were removed."""
    import psutil

    mine = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(str(folder) in part for part in child.cmdline()):
                mine.append(child)
    for child in mine:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(mine, timeout=3)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def stop(session: Any, root: str | None = None) -> list[str]:
    """Stop a session's jobs now (or only the one whose compose file is in ``root``): the
    processes running their compose files, then their containers."""
    state = of(session)
    _stop_runners(Path(root or state.scratch))
    labels = [f"{LABEL}={state.session_id}", *([f"{ROOT_LABEL}={root}"] if root else [])]
    return remove(ids(*labels))
