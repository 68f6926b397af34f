"""A real Airflow deployment on this machine, for tests/test_deployment.py: PostgreSQL, the
api-server, scheduler (LocalExecutor), dag-processor and triggerer, and a moto server acting
as SageMaker (tests/deployment/moto_server.py), each its own process and process group. With
``executor="CeleryExecutor"`` (tests/test_celery.py) it adds Redis (Debian's) as the broker and
Celery workers, each with an Airflow hostname, an SMTASK_HOME and a TMPDIR of its own.

Every process is started by this module, in a new session, its PID recorded; :meth:`Stack.stop`
ends each by its process group, never by name. All of it listens on 127.0.0.1 only, on ports
the OS picks (never 8080), and all state lives under one temp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
AIRFLOW_KEY = "AKIDAIRFLOWDEPLOYMENT"  # the connection's access key: moto's log tells its calls


class StackError(AssertionError):
    """Something of the deployment did not come up or did not answer in time."""


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL program, from the folder of the ``initdb`` on PATH (a link is followed),
    else of Debian's newest ``/usr/lib/postgresql/<version>/bin``: one version for all."""
    initdb = shutil.which("initdb")
    folders = [Path(os.path.realpath(initdb)).parent] if initdb else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
        if p.parent.name.isdigit() else 0, reverse=True)
    for folder in folders:
        if (folder / "initdb").is_file():
            return str(folder / name) if (folder / name).is_file() else None
    return None


def _pg(name: str) -> str:
    found = postgres_bin(name)
    if found is None:
        raise StackError(f"PostgreSQL's {name} is not installed")
    return found


def missing_parts() -> list[str]:
    """What this machine lacks to run the deployment (empty: nothing)."""
    problems = [f"{name} (PostgreSQL; ./run's set-up installs it)" for name in
                ("initdb", "postgres", "createdb") if postgres_bin(name) is None]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            problems.append("a 'postgres' user to run PostgreSQL as (initdb refuses root)")
    for module in ("psycopg2", "asyncpg", "moto"):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"the Python package {module} (pip install -e '.[test]')")
    if not (Path(sys.executable).parent / "airflow").exists():
        problems.append(f"the airflow command beside {sys.executable}")
    return problems


def require(problems: list[str], what: str) -> None:
    """Skip the module for what this machine lacks, unless SMTASK_REQUIRE_DEPLOYMENT=1 (CI),
    which fails it."""
    import pytest

    if problems:
        message = f"{what} needs " + "; ".join(problems)
        if os.environ.get("SMTASK_REQUIRE_DEPLOYMENT") == "1":
            pytest.fail(f"{message} (SMTASK_REQUIRE_DEPLOYMENT=1)")
        pytest.skip(message)


@contextlib.contextmanager
def deployed(prefix: str, bring_up: Callable[[Stack], Any], **settings: Any) -> Iterator[Any]:
    """A Stack (``settings``) in a new temp folder, brought up by ``bring_up(stack)``, whose
    value is yielded; everything is stopped however the test ends (a CI timeout's SIGTERM
    unwinds like Ctrl-C), the folder removed unless SMTASK_KEEP_DEPLOYMENT, and a connection
    outside loopback fails the test."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack(root, **settings)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            value = bring_up(stack)
        except StackError:
            raise
        except Exception as exc:
            raise StackError(f"bringing the deployment up: {exc!r}" + stack.tails()) from exc
        yield value
        guarded = stack.loopback_log.read_text() if stack.loopback_log.exists() else ""
        assert not guarded, f"connections outside loopback:\n{guarded}"
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        if not os.environ.get("SMTASK_KEEP_DEPLOYMENT"):
            shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 8080:  # local batch transform serves there
            return int(port)


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.3,
             stack: Stack | None = None) -> Any:
    """``check()``'s first truthy value; a StackError naming ``what`` (and, with ``stack``,
    the tail of every process's log) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except StackError:
            raise  # a check that knows it will never succeed
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if stack is not None:
            stack.check_alive()
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
                     + (stack.tails() if stack else ""))


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM  # how it is asked to stop

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Stack:
    root: Path
    processes: dict[str, Process] = field(default_factory=dict)
    stopped: list[Process] = field(default_factory=list)
    pg_port: int = 0
    api_port: int = 0
    moto: str = ""
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _moto_endpoint: Callable[[], str | None] | None = None
    log_ports: tuple[int, int] = (0, 0)
    executor: str = "LocalExecutor"
    redis_port: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user reaches its data dir through here
        for name in ("logs", "airflow", "project", "control"):
            (self.root / name).mkdir(exist_ok=True)

    # --- processes ----------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              user: str | None = None, stop_signal: int = signal.SIGTERM) -> Process:
        """``argv`` in a new session (its own process group), output to logs/<name>.log."""
        if name in self.processes:
            raise StackError(f"{name} is already running")
        log = self.root / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                                     start_new_session=True, user=user)
        if os.geteuid() == 0:
            # the rest of the suite runs beside it (xdist workers): the deployment's processes,
            # and the children they fork, come first for the CPU, so its waits do not starve
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, popen.pid, -5)
        self.processes[name] = process = Process(name, popen, log, stop_signal)
        return process

    def stop_process(self, name: str, timeout: float = 20) -> tuple[int | None, bool]:
        """Ask the process group ``name`` started in to stop, then kill what is left of it.
        Returns the leader's exit code and whether it had to be killed (it did not stop
        within ``timeout`` seconds)."""
        return self.stop_processes([name], timeout)[name]

    def stop_processes(self, names: list[str],
                       timeout: float = 20) -> dict[str, tuple[int | None, bool]]:
        """:meth:`stop_process` for several at once: all are asked first, then waited for."""
        asked = []
        for name in names:
            process = self.processes.pop(name)
            self.stopped.append(process)
            # Airflow runs each task in a session of its own: known now, killed below if left
            asked.append((process, _descendants(process.pid), _size(process.log)))
            _signal_group(process.pid, process.stop_signal)  # new session: its PID is the group's ID
        deadline, results = time.monotonic() + timeout, {}
        for process, descendants, logged in asked:
            forced = _wait_for_exit(process, deadline, logged)
            # the leader has gone (or would not): whatever is left of its group goes too
            grace = time.monotonic() + 5
            while _group_alive(process.pid) and time.monotonic() < grace:
                time.sleep(0.1)
            if _group_alive(process.pid):
                _signal_group(process.pid, signal.SIGKILL)
            if process.popen.poll() is None:
                process.popen.wait(5)
            for pid, started in descendants:
                if _start_time(pid) == started:  # the same process, not a reused PID
                    _kill(pid)
            results[process.name] = (process.popen.returncode, forced)
        return results

    def stop(self) -> None:
        """Stop everything still running: PostgreSQL after the others."""
        for group in ([n for n in self.processes if n != "postgres"], ["postgres"]):
            try:
                self.stop_processes([n for n in group if n in self.processes])
            except Exception as exc:  # noqa: BLE001 - stop the others regardless
                print(f"stopping {group}: {exc}", file=sys.stderr)

    def check_alive(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise StackError(f"{process.name} (PID {process.pid}) exited with "
                                 f"{process.popen.returncode}" + self.tails())

    def tails(self, lines: int = 40) -> str:
        """The end of every process's log, for a failure message."""
        out = []
        for process in [*self.stopped, *self.processes.values()]:
            text = process.log.read_text(errors="replace").splitlines() if process.log.exists() else []
            state = "running" if process.popen.poll() is None else f"exit {process.popen.returncode}"
            out.append(f"\n----- {process.name} (PID {process.pid}, {state}): last "
                       f"{min(lines, len(text))} lines of {process.log}\n" + "\n".join(text[-lines:]))
        return "".join(out)

    # --- PostgreSQL ---------------------------------------------------------------------------
    def start_postgres(self) -> None:
        """PostgreSQL with its own data dir and socket dir under the temp folder, on
        127.0.0.1:<free port>, run as the postgres user when we are root; then ``airflow``."""
        user = "postgres" if os.geteuid() == 0 else None
        pg = self.root / "pg"
        pg.mkdir()
        if user:
            shutil.chown(pg, user)
        data = pg / "data"
        initdb = subprocess.run(
            [_pg("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"], user=user, capture_output=True, text=True, cwd=pg)
        if initdb.returncode:
            raise StackError(f"initdb failed: {initdb.stdout}{initdb.stderr}")
        self.pg_port = free_port()
        # fast shutdown on SIGINT; fsync off: the data lives as long as the test
        self.start("postgres", [_pg("postgres"), "-D", str(data), "-p", str(self.pg_port),
                                "-k", str(pg), "-c", "listen_addresses=127.0.0.1",
                                "-c", "fsync=off", "-c", "max_connections=200"],
                   user=user, stop_signal=signal.SIGINT)
        createdb = [_pg("createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port),
                    "-U", "postgres", "airflow"]
        wait_for("PostgreSQL to create the airflow database",
                 lambda: subprocess.run(createdb, capture_output=True).returncode == 0, 30,
                 stack=self)

    @property
    def pythonpath(self) -> str:
        """The worktree's smtask first, whatever the venv has installed; then the loopback
        guard (a sitecustomize)."""
        return os.pathsep.join([str(ROOT), str(HERE / "guard"), str(HERE),
                                *filter(None, [os.environ.get("PYTHONPATH")])])

    @property
    def loopback_log(self) -> Path:
        """Where the guard records refused lookups and connections (none, or the test fails)."""
        return self.root / "logs" / "loopback-guard.log"

    # --- moto ---------------------------------------------------------------------------------
    @property
    def control(self) -> Path:
        """The folder the moto server reads its hold/release files from, and logs events to."""
        return self.root / "control"

    def start_moto(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
        env.update(PYTHONPATH=self.pythonpath, SMTASK_LOOPBACK_LOG=str(self.loopback_log))
        process = self.start("moto", [sys.executable, str(HERE / "moto_server.py"),
                                       str(self.control)], env=env)

        def endpoint() -> str | None:
            for line in process.log.read_text().splitlines():
                if line.startswith("moto listening on "):
                    return line.removeprefix("moto listening on ").strip()
            return None

        self._moto_endpoint = endpoint

    def wait_moto(self) -> str:
        """The moto server's endpoint, once it has printed it (it starts in a few seconds)."""
        if not self.moto:
            if self._moto_endpoint is None:
                raise StackError("the moto server was not started")
            self.moto = wait_for("the moto server's port", self._moto_endpoint, 60, stack=self)
        return self.moto

    def events(self) -> list[dict[str, Any]]:
        """What the moto server recorded: every job created, stopped, ended."""
        path = self.control / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def aws(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.wait_moto(),
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    # --- Airflow ------------------------------------------------------------------------------
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def dags(self) -> Path:
        return self.root / "project" / "dags"

    def airflow_env(self, *, aws: bool = True) -> dict[str, str]:
        """The environment every Airflow process gets: nothing of the caller's Airflow, AWS or
        smtask settings; the AWS connection is the only place that names moto."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW", "AWS_", "SMTASK_", "SAGEMAKER_"))}
        if not self.api_port:
            self.api_port = free_port()
            self.log_ports = (free_port(), free_port())
        home = self.airflow_home
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({"admin": "admin"}))
        env.update({
            # the worktree's smtask, whatever the venv has installed
            "PYTHONPATH": self.pythonpath,
            "SMTASK_LOOPBACK_LOG": str(self.loopback_log),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg2://postgres@127.0.0.1:{self.pg_port}/airflow",
            "AIRFLOW__API__BASE_URL": self.api,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_ports[1]),
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            # a task killed by a restart is retried, soon
            "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
            # a task whose worker died unannounced is failed (and retried) within the test
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # the DAG never changes
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "SMTASK_HOME": str(self.root / "smtask"),
        })
        if self.executor == "CeleryExecutor":
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND":
                    f"db+postgresql+psycopg2://postgres@127.0.0.1:{self.pg_port}/airflow",
                # a worker's hostname is its own name (two workers share this machine)
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker.hostname",
                # each worker imports smtask and the SDK once, before it forks its tasks (every
                # component reads the option, as from a shared airflow.cfg)
                "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "smtask.preload.CELERY_CONFIG",
            })
        if aws:  # the one place that names moto
            env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
                "conn_type": "aws", "login": AIRFLOW_KEY, "password": "testing",
                "extra": {"region_name": REGION, "endpoint_url": self.wait_moto()}})
        return env

    def airflow(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).parent / "airflow"), *args]

    def migrate(self) -> None:
        env = self.airflow_env(aws=False)  # migrating needs no moto: it may still be starting
        done = subprocess.run(self.airflow("db", "migrate"), env=env,
                              capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            raise StackError(f"airflow db migrate failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    COMMANDS = {
        "api-server": ("api-server", "--host", "127.0.0.1", "--port", "{api_port}"),
        "scheduler": ("scheduler", "--skip-serve-logs"),
        "dag-processor": ("dag-processor",),
        "triggerer": ("triggerer", "--skip-serve-logs"),
    }

    def start_redis(self) -> None:
        """Redis (Debian's redis-server) as Celery's broker: 127.0.0.1, a free port, no disk."""
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("redis-server is not installed (./run's set-up installs it)")
        self.redis_port = free_port()
        self.start("redis", [server, "--bind", "127.0.0.1", "--port", str(self.redis_port),
                             "--save", "", "--appendonly", "no", "--dir", str(self.root)])

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
            return False

        wait_for("Redis to answer", answers, 30, stack=self)

    def start_worker(self, name: str, concurrency: int = 4) -> Process:
        """A Celery worker whose tasks report ``name`` as their hostname, with an SMTASK_HOME
        and a TMPDIR of its own: what one worker keeps, the other cannot see."""
        env = self.airflow_env()
        for key, folder in (("SMTASK_HOME", f"smtask-{name}"), ("TMPDIR", f"tmp-{name}")):
            (self.root / folder).mkdir(exist_ok=True)
            env[key] = str(self.root / folder)
        env["SMTASK_TEST_WORKER"] = name
        return self.start(name, self.airflow(
            "celery", "worker", "--celery-hostname", f"{name}@127.0.0.1",
            "--concurrency", str(concurrency), "--skip-serve-logs", "--without-mingle",
            "--without-gossip"), env=env)

    def start_airflow(self, component: str, name: str | None = None) -> Process:
        argv = [arg.format(api_port=self.api_port) for arg in self.COMMANDS[component]]
        return self.start(name or component, self.airflow(*argv), env=self.airflow_env())

    # --- the example project --------------------------------------------------------------------
    def copy_example(self) -> dict[str, Any]:
        """dags/churn.py (and the DAG scheduled on its model), config.json and code/ as the
        example lays them out (churn.py reads ../config.json); returns the config."""
        project = self.root / "project"
        self.dags.mkdir(exist_ok=True)
        for dag in ("churn.py", "churn_model_report.py"):
            shutil.copy(ROOT / "dags" / dag, self.dags / dag)
        shutil.copy(ROOT / "config.json", project / "config.json")
        shutil.copytree(ROOT / "code", project / "code", dirs_exist_ok=True)
        return dict(json.loads((project / "config.json").read_text()))


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# Airflow's scheduler leaves on SIGTERM by raising SystemExit from its signal handler; when the
# signal lands while the interpreter runs a garbage-collection callback (SQLAlchemy's
# _collection_gced), Python prints "Exception ignored in ..." and the scheduler carries on.
_EXIT_SWALLOWED = re.compile(r"Exception ignored in.*?\n(?:.*\n){0,12}?SystemExit", re.S)


def _wait_for_exit(process: Process, deadline: float, logged: int) -> bool:
    """Wait for the leader until ``deadline``; whether it had to be killed. A stop signal
    whose exit Python swallowed (see above) is sent to the leader again, once, as an
    operator would who saw it ignored; nothing else is sent again."""
    resent = False
    while time.monotonic() < deadline:
        try:
            process.popen.wait(0.5)
            return False
        except subprocess.TimeoutExpired:
            pass
        if not resent and process.log.exists():
            with process.log.open("rb") as file:
                file.seek(logged)
                said = file.read().decode("utf-8", "replace")
            if _EXIT_SWALLOWED.search(said):
                os.kill(process.pid, process.stop_signal)
                resent = True
    try:
        process.popen.wait(0)
        return False
    except subprocess.TimeoutExpired:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        started = _start_time(child)
        if started is not None:
            found.append((child, started))
        todo.extend(children.get(child, []))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies of the group count as gone: only our own direct child can be one, and
    # Popen.wait reaps it
    return True
