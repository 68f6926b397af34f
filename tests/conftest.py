"""Test harness: a throw-away Airflow (SQLite) and SMTASK_HOME, DAG runs through
``dag.test()``, a Docker gate, and a guard that fails a test on any non-loopback connection.

Under pytest-xdist (``./run test`` uses it) every worker is its own process with its own
temp home (so its own SMTASK_HOME, Airflow DB, DAG folder and moto server); the Airflow DB is
migrated once, by the controller, and copied into each worker's home."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="smtask-tests-"))
DAGS = _HOME / "dags"
DAGS.mkdir()
# Airflow reads its configuration once, at first import: set it before anything imports it.
os.environ.update({
    "AIRFLOW_HOME": str(_HOME / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "SMTASK_HOME": str(_HOME / "smtask"),
    "AWS_EC2_METADATA_DISABLED": "true",
})
os.environ.pop("SMTASK_MODE", None)
LOCAL_IMAGE = "smtask-local:latest"


# --- pytest-xdist -----------------------------------------------------------------------------

def _group(item: pytest.Item) -> str | None:
    """The item's xdist_group: its tests all run on one worker."""
    if item.get_closest_marker("orphans"):
        return "orphans"
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")) if mark else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (every worker sorts alike), the order in which tests are handed out: the
    deployment (the longest, one worker) and the ``orphans`` tests (one worker, while no other
    local session runs) first, then the tests without containers, which fill the other
    workers meanwhile, then the ``docker`` tests, those that start ``smtask`` processes
    first. Each worker also tells the controller every test's group."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("deployment"):
            return 0
        if item.get_closest_marker("orphans"):
            return 1
        if not item.get_closest_marker("docker"):
            return 2
        return 3 if "cli_home" in getattr(item, "fixturenames", ()) else 4

    items.sort(key=rank)
    groups = Path(workerinput["smtask_groups"])
    mine = groups.with_suffix(f".{workerinput['workerid']}")
    mine.write_text(json.dumps({item.nodeid: group for item in items if (group := _group(item))}))
    mine.replace(groups)  # the same content from every worker, each written whole


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist load`` (-n alone) and ``loadgroup``: tests handed out one at a time, but those
    of one xdist_group to one worker. (xdist's own loadgroup renames the tests' node ids,
    which pytest 9 ignores: every test went its own way.)"""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups: dict[str, str] = {}

    class GroupScheduling(LoadScopeScheduling):
        # LoadScopeScheduling hands out bigger scopes first: the deployment, then the orphans
        def _split_scope(self, nodeid: str) -> str:
            if not groups:  # read once: every worker has collected by now
                groups.update(json.loads(_GROUPS.read_text()) if _GROUPS.exists() else {})
                groups.setdefault("", "")
            return f"group:{groups[nodeid]}" if nodeid in groups else nodeid

    return GroupScheduling(config, log)


_GROUPS = _HOME / "xdist-groups.json"  # every test's xdist_group, written by the workers
_MIGRATED = _HOME / "migrated" / "airflow.db"  # a fresh Airflow DB, copied for each use


def pytest_sessionstart(session: pytest.Session) -> None:
    """One ``airflow db migrate`` per test run (seconds of CPU): an xdist worker copies the
    DB that its controller migrated before it started the workers."""
    global _MIGRATED
    _TEST_ROOTS.append(os.path.join(str(session.config._tmp_path_factory.getbasetemp()), ""))
    template = getattr(session.config, "workerinput", {}).get("smtask_airflow_db")
    if template:
        _MIGRATED = Path(template)
    else:
        _MIGRATED.parent.mkdir()
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       env={**os.environ, "AIRFLOW_HOME": str(_MIGRATED.parent)},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (_HOME / "airflow").mkdir()
    shutil.copy(_MIGRATED, _HOME / "airflow" / "airflow.db")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller: the DB each worker copies, how tests are handed out."""
    node.workerinput["smtask_airflow_db"] = str(_MIGRATED)
    node.workerinput["smtask_groups"] = str(_GROUPS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test of the deployment shows the end of every process's log."""
    outcome = yield
    report = outcome.get_result()
    deployment = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and deployment is not None and report.when == "call":
        report.sections.append(("deployment: the end of each process's log",
                                deployment.stack.tails()))


# --- Docker ---------------------------------------------------------------------------------

def _docker_problem() -> str | None:
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers (run scripts/runtime.sh up)"
    if subprocess.run(["docker", "image", "inspect", LOCAL_IMAGE], capture_output=True).returncode:
        return f"image {LOCAL_IMAGE} missing (run scripts/runtime.sh up)"
    return None


@pytest.fixture(scope="session")
def docker() -> None:
    """Skips without Docker on a user's machine; CI sets SMTASK_REQUIRE_DOCKER=1 to fail."""
    problem = _docker_problem()
    if problem:
        if os.environ.get("SMTASK_REQUIRE_DOCKER") == "1":
            pytest.fail(f"Docker is required (SMTASK_REQUIRE_DOCKER=1): {problem}")
        pytest.skip(problem)


# where this test run's local sessions keep their scratch folders (SMTASK_HOME, or this
# session's tmp_path base: other pytest sessions on the machine share /tmp/pytest-of-<user>)
_TEST_ROOTS = [os.path.join(str(_HOME), "")]


def containers_with_label(label: str = "smtask.session") -> list[str]:
    """Containers with ``label`` that this process's tests made (the other xdist workers,
    or another smtask user of the machine's engine, may be running jobs at the same time)."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}", "--format",
                          '{{.ID}} {{.Label "smtask.scratch"}}'],
                         capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines()
            if not line.split()[1:] or line.split()[1].startswith(tuple(_TEST_ROOTS))]


# Every local session, when it starts, removes the containers of dead processes (smtask/local.py
# cleanup_orphans), whoever's they are. A test marked ``orphans`` leaves such a container on
# purpose, for its own clean-up to find: it runs alone among the tests that start local
# sessions (those marked ``docker``), in this run and any other on the machine.
_ENGINE_LOCKS = Path(tempfile.gettempdir()) / "smtask-tests-locks"


@contextlib.contextmanager
def _engine_lock(exclusive: bool) -> Iterator[None]:
    """A host-wide readers-writer lock: many ``docker`` tests at once, or one ``orphans``
    test. A waiting writer holds the turnstile, so new readers queue behind it."""
    _ENGINE_LOCKS.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        _ENGINE_LOCKS.chmod(0o1777)
    with contextlib.ExitStack() as held:
        def open_lock(name: str) -> int:
            fd = os.open(_ENGINE_LOCKS / name, os.O_RDWR | os.O_CREAT, 0o666)
            held.callback(os.close, fd)  # closing the descriptor releases its lock
            return fd

        turnstile, sessions = open_lock("turnstile.lock"), open_lock("sessions.lock")
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(sessions, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


@pytest.fixture(autouse=True)
def _orphans_survive(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    with _engine_lock(exclusive=request.node.get_closest_marker("orphans") is not None):
        yield
        # a completed job's containers and scratch are removed beside the next task: the
        # test's own are gone before the next test looks (as a process waits at its exit)
        from smtask.local.containers import JANITOR

        JANITOR.settle()


# --- loopback guard ------------------------------------------------------------------------

# Airflow looks up this machine's own name for every task record; a connect to whatever it
# resolves to is still checked below.
_OWN_NAMES = {"localhost", "localhost.localdomain", "", None, socket.gethostname()}


def is_loopback(host: Any) -> bool:
    if host in _OWN_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # any other name needs a DNS lookup, which is itself a connection


@dataclass
class LoopbackGuard:
    attempts: list[str] = field(default_factory=list)

    def check(self, what: str, host: Any) -> None:
        if not is_loopback(host):
            self.attempts.append(f"{what} {host}")
            raise OSError(f"loopback guard: {what} to {host} refused in a test")


@pytest.fixture
def loopback_guard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Refuses and records every DNS lookup or connect outside 127.0.0.0/8 and ::1 from this
    process (the SDK's telemetry runs on a thread and swallows errors: hence the record)."""
    guard = LoopbackGuard()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            guard.check("connect", address[0])
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            guard.check("connect", address[0])
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        guard.check("getaddrinfo", host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield guard
    assert not guard.attempts, f"connections outside loopback: {guard.attempts}"


# --- DAG runs ------------------------------------------------------------------------------

def kinds_of(steps: dict[str, str]) -> dict[str, Any]:
    """A DAG's steps as params' checks are handed them: each step's job kind."""
    from smtask.kinds import by_name

    return {step: by_name(kind) for step, kind in steps.items()}


def local_state(scratch: Path, **fields: Any) -> Any:
    """A stand-in for an SDK ``LocalSession``: only the smtask state smtask's corrections read."""
    from types import SimpleNamespace

    from smtask.local.state import LocalState, Owner

    fields.setdefault("output", SimpleNamespace(sink=print))
    return SimpleNamespace(smtask=LocalState("s1", Owner("h", 1, 2.0), scratch, **fields))


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    """The example's config.json, deep-merged with ``overrides``, code paths kept."""
    from smtask.params import deep_merge

    config = json.loads((ROOT / "config.json").read_text())
    config["code_root"] = str(ROOT)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(deep_merge(config, overrides)))
    return path


@dataclass
class DagResult:
    state: str
    run_id: str
    states: dict[str, str]
    xcom: dict[str, Any]
    dag_id: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "success"


def write_dag(body: str, *, config: Path, folder: Path = DAGS) -> tuple[str, Path]:
    """A DAG file of ``body`` (the inside of the ``@dag`` function) in ``folder``."""
    dag_id = f"t_{uuid.uuid4().hex[:10]}"
    source = textwrap.dedent('''\
        from airflow.sdk import dag, task
        from smtask import (pipeline_params, sm_endpoint, sm_processing, sm_register,
                            sm_training, sm_transform)

        @dag(dag_id=DAG_ID, schedule=None, params=pipeline_params(CONFIG))
        def pipeline():
        ''').replace("DAG_ID", repr(dag_id)).replace("CONFIG", repr(str(config)))
    source += textwrap.indent(textwrap.dedent(body), "    ") + "\nthe_dag = pipeline()\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id}.py"
    path.write_text(source)
    return dag_id, path


def run_dag(body: str, *, config: Path, conf: dict[str, Any] | None = None,
            logical_date: Any = None) -> DagResult:
    """Write a DAG file into the dags folder (dag.test needs it there), run it once. The
    folder fills up with every test's DAG: dag.test parses only this one, as ``smtask run``.
    The same ``logical_date`` gives two DAGs the same run id."""
    from smtask.cli import in_process_run, xcom_results

    dag_id, path = write_dag(body, config=config)
    spec = importlib.util.spec_from_file_location(dag_id, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with in_process_run(path):
        dag_run = module.the_dag.test(run_conf=conf or {},
                                      **({"logical_date": logical_date, "run_after": logical_date}
                                         if logical_date else {}))
    return DagResult(
        state=str(getattr(dag_run.state, "value", dag_run.state)),
        run_id=dag_run.run_id,
        states={ti.task_id: str(getattr(ti.state, "value", ti.state))
                for ti in dag_run.get_task_instances()},
        xcom=xcom_results(dag_id, dag_run.run_id),
        dag_id=dag_id,
    )


@dataclass
class CliHome:
    """An SMTASK_HOME for ``smtask`` subprocesses, its Airflow DB migrated once per session."""

    root: Path

    def env(self, airflow_home: Path | None = None) -> dict[str, str]:
        env = {**os.environ, "SMTASK_HOME": str(self.root)}
        env.pop("AIRFLOW__CORE__DAGS_FOLDER")
        env["AIRFLOW_HOME"] = str(airflow_home or self.root / "airflow")
        return env

    def own_airflow(self, name: str) -> Path:
        """A separate Airflow home (a copy of the migrated DB) for a run beside others."""
        home = self.root / f"airflow-{name}"
        home.mkdir()
        shutil.copy(self.root / "airflow" / "airflow.db", home / "airflow.db")
        return home

    started: list[subprocess.Popen] = field(default_factory=list)

    def smtask(self, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "smtask.cli", *args], env=env or self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
        self.started.append(proc)
        return proc

    def end_started(self) -> None:
        """Stop what a failed test left running (SIGTERM: smtask removes its containers), so
        that the next tests do not see its containers."""
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.started.clear()


@pytest.fixture(scope="session")
def _cli_home() -> CliHome:
    home = CliHome(_HOME / "cli")
    (home.root / "airflow").mkdir(parents=True)
    shutil.copy(_MIGRATED, home.root / "airflow" / "airflow.db")
    return home


@pytest.fixture
def cli_home(_cli_home: CliHome) -> Iterator[CliHome]:
    yield _cli_home
    _cli_home.end_started()


def run_example(name: str, *, conf: dict[str, Any] | None = None, **overrides: Any) -> DagResult:
    """Run the example ``dags/<name>.py`` unchanged, with its own ``<name>.json`` deep-merged
    with ``overrides`` (code paths kept): both copied into a folder of their own in the dags
    folder (dag.test needs the file there; the DAG reads the config beside it)."""
    from smtask.cli import in_process_run, xcom_results
    from smtask.params import deep_merge

    config = json.loads((ROOT / "dags" / f"{name}.json").read_text())
    config["code_root"] = str(ROOT)
    folder = DAGS / f"example-{uuid.uuid4().hex[:10]}"
    folder.mkdir()
    shutil.copy(ROOT / "dags" / f"{name}.py", folder / f"{name}.py")
    (folder / f"{name}.json").write_text(json.dumps(deep_merge(config, overrides)))
    spec = importlib.util.spec_from_file_location(f"{name}_{folder.name[8:]}", folder / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with in_process_run(folder / f"{name}.py"):
        dag_run = getattr(module, name)().test(run_conf=conf or {})
    return DagResult(
        state=str(getattr(dag_run.state, "value", dag_run.state)),
        run_id=dag_run.run_id,
        states={ti.task_id: str(getattr(ti.state, "value", ti.state))
                for ti in dag_run.get_task_instances()},
        xcom=xcom_results(dag_run.dag_id, dag_run.run_id),
        dag_id=dag_run.dag_id,
    )
