"""``smtask``: run a DAG file locally (``dag.test()`` on a project-local SQLite DB), or
validate its params, without a scheduler.

    smtask run dags/churn.py [-c '{"steps": {...}}'] [--mode local|sagemaker] [--dag-id ID]
    smtask validate dags/churn.py [-c '{...}'] [--mode local|sagemaker] [--dag-id ID]
    smtask cleanup        remove local containers and scratch folders of killed processes,
                          and local endpoint containers that no endpoint's record names
    smtask registry list [GROUP] | show VERSION | approve VERSION [--reject]
    smtask endpoints list | invoke NAME [-d BODY] | delete NAME

VERSION is a model version's ARN or GROUP/NUMBER. registry and endpoints read local mode's
registry and endpoints under $SMTASK_HOME, or with --mode sagemaker SageMaker's, through the
Airflow AWS connection --conn-id (default aws_default).

A bad ``-c`` (not a JSON object, or an unknown mode) exits 2; bad params exit 1, before any run.
SIGINT or SIGTERM stops ``smtask run``: the running task is interrupted (an smtask task
stops its job's containers first), no other task starts, the run is marked failed, and the
exit code is 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn

from smtask.sdk import quiet_imports  # imports no Airflow, no SDK


class RunInterrupted(BaseException):
    """``smtask run`` received SIGINT or SIGTERM (a BaseException: nothing may swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _prepare_airflow(dag_file: Path) -> None:
    """A project-local Airflow, configured before Airflow is first imported."""
    from smtask.naming import smtask_home  # imports no Airflow

    if "airflow" in sys.modules:
        raise RuntimeError("smtask's CLI must configure Airflow before importing it")
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(smtask_home() / "airflow")))
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dag_file.parent)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
    # every task runs in this process: local mode's artifacts are this machine's, whatever
    # executor the Airflow config names (smtask.sessions.spread_problem)
    os.environ["SMTASK_IN_PROCESS"] = "1"
    home.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def one_file_bundle(dag_file: Path) -> Iterator[None]:
    """``dag.test()`` first syncs its DAG's whole bundle to the DB: every DAG file in the
    folder is parsed on every run (6 s for this project's dags/). While inside, a sync of
    the folder holding ``dag_file`` parses that file alone; paths stay as deployed (relative
    to the folder, which stays on ``sys.path``)."""
    from airflow.dag_processing import dagbag

    real = dagbag.BundleDagBag
    path = Path(os.path.abspath(dag_file))

    class OneFile(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, dag_folder: Any = None, **kwargs: Any) -> None:
            if dag_folder is not None and any(path.is_relative_to(folder) for folder in (
                    Path(os.path.abspath(dag_folder)), Path(dag_folder).resolve())):
                dag_folder = str(path)
            super().__init__(*args, dag_folder=dag_folder, **kwargs)

    dagbag.BundleDagBag = OneFile  # type: ignore[misc]
    try:
        yield
    finally:
        dagbag.BundleDagBag = real  # type: ignore[misc]


@contextlib.contextmanager
def latest_api_only() -> Iterator[None]:
    """``dag.test()`` runs its tasks through an in-process execution API whose first request
    builds the routes of every API version Airflow still serves (nine, 4-5 s here), though
    this process's only client, the Task SDK installed beside it, speaks the latest. While
    inside, that app builds the latest version's routes alone (0.8 s); a request in another
    version gets 404, not a silent answer. Should cadwyn's bundle not end in the SDK's
    version (or cadwyn builds its routers otherwise), every version is built as before."""
    from airflow.sdk.api.datamodels._generated import API_VERSION
    from cadwyn import applications
    from fastapi import APIRouter

    from smtask.sdk import replaced

    generate = applications.generate_versioned_routers

    def latest_only(router: Any, versions: Any, *, webhooks: Any = None,
                    api_version_parameter_name: str = "X-API-Version",
                    api_version_location: Any = "custom_header") -> Any:
        def every_version() -> Any:
            return generate(router, versions, webhooks=webhooks,
                            api_version_parameter_name=api_version_parameter_name,
                            api_version_location=api_version_location)

        if versions.versions[0].value != API_VERSION:
            return every_version()
        latest = copy.copy(versions)  # the same version changes, bound to the whole bundle
        latest.versions = latest.reversed_versions = versions.versions[:1]
        latest.version_values = latest.reversed_version_values = (API_VERSION,)
        try:
            from cadwyn.route_generation import _EndpointTransformer

            transformer = _EndpointTransformer(
                router, latest, APIRouter() if webhooks is None else webhooks,
                api_version_parameter_name, api_version_location)
        except (ImportError, TypeError, AttributeError):  # another cadwyn: slower, not wrong
            return every_version()
        # a route the latest version removed is restored by an older one, not built here
        transformer.routes_that_never_existed = []
        return transformer.transform()

    with replaced((applications, "generate_versioned_routers", latest_only)):
        yield


@contextlib.contextmanager
def in_process_run(dag_file: Path) -> Iterator[None]:
    """What ``smtask run`` (and the tests' runs) change around ``dag.test()`` of ``dag_file``:
    only that file parsed, one execution API version built. It ends once the completed jobs'
    containers and scratch folders, removed beside the next task, are gone."""
    with one_file_bundle(dag_file), latest_api_only():
        try:
            yield
        finally:
            containers = sys.modules.get("smtask.local.containers")  # else no local session
            if containers is not None:
                containers.JANITOR.settle()


def _migrate() -> None:
    """The project-local Airflow DB, made on first use: into a file of its own, moved into
    place once whole, one run at a time. A run stopped while it was made (Ctrl-C in the
    first seconds) left a half-made ``airflow.db`` that every later run failed on ("no such
    table"), and two first runs at once made one DB twice. A DB configured elsewhere
    (``sql_alchemy_conn``) is migrated in place, as before."""
    import fcntl

    from airflow.configuration import conf

    home = Path(os.environ["AIRFLOW_HOME"])
    db = home / "airflow.db"

    def migrate(**env: str) -> None:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, **env})

    if db.exists():
        return
    if conf.get("database", "sql_alchemy_conn") != f"sqlite:///{db}":
        migrate()
        return
    with open(home / "airflow.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another first run's migration ends first
        if db.exists():
            return
        for stale in home.glob("airflow.db.*.partial*"):  # a stopped run's, and its journal
            stale.unlink(missing_ok=True)
        partial = home / f"airflow.db.{os.getpid()}.partial"
        migrate(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{partial}")
        os.replace(partial, db)


def _load_dag(dag_file: Path, dag_id: str | None) -> Any:
    """Parse the file the way the scheduler does (a DagBag), so what runs is what deploys:
    with the DAG's folder on ``sys.path`` (a bundle's is), where its helper modules are."""
    from airflow.dag_processing.dagbag import DagBag

    if str(dag_file.parent) not in sys.path:
        sys.path.append(str(dag_file.parent))
    bag = DagBag(dag_folder=str(dag_file), safe_mode=False)
    if bag.import_errors:
        raise SystemExit("\n".join(f"{f}: {e}" for f, e in bag.import_errors.items()))
    if dag_id:
        if dag_id not in bag.dags:
            raise SystemExit(f"no DAG {dag_id!r} in {dag_file} (found: {', '.join(bag.dags)})")
        return bag.dags[dag_id]
    if len(bag.dags) != 1:
        raise SystemExit(f"{dag_file} defines {len(bag.dags)} DAGs ({', '.join(bag.dags)}); "
                         "pass --dag-id")
    return next(iter(bag.dags.values()))


def xcom_results(dag_id: str, run_id: str) -> dict[str, Any]:
    """The return value of every task of one run, by task id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.key == "return_value").all()
        return {row.task_id: row.value for row in rows}


def _usage_error(message: str) -> NoReturn:
    """One line and exit code 2, as argparse does for a bad option: no traceback."""
    print(f"smtask: {message}", file=sys.stderr)
    raise SystemExit(2)


def _conf(args: argparse.Namespace) -> dict[str, Any]:
    """The run's conf from ``-c`` and ``--mode``; checked before Airflow is imported (which
    takes seconds), so a typo is answered at once."""
    try:
        conf = json.loads(args.conf) if args.conf else {}
    except json.JSONDecodeError as exc:
        _usage_error(f"--conf is not valid JSON: {exc}")
    except RecursionError:
        _usage_error("--conf is nested too deeply to read")
    if not isinstance(conf, dict):
        _usage_error(f"--conf must be a JSON object, got {type(conf).__name__}")
    if args.mode:
        conf["mode"] = args.mode
    return conf


def _running_task() -> Any:
    """The task ``dag.test()`` is running now, told that a kill stops its job (SageMaker's
    too: a run interrupted here is never resumed); None between tasks."""
    try:
        from airflow.sdk import get_current_context

        task = get_current_context()["task"]
    except Exception:  # noqa: BLE001 - between tasks: nothing to kill
        return None
    if hasattr(task, "kill_mode"):
        task.kill_mode = "stop"
    return task


def _kill_running_task() -> None:
    """The running task's ``on_kill``, as for a user's kill: an smtask task stops its job and
    may raise to stop."""
    task = _running_task()
    if task is not None:
        getattr(task, "on_kill", lambda: None)()


@contextlib.contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` inside the running task and again
    between tasks, so that it leaves ``dag.test()``, which catches only ``Exception``.

    Airflow's in-process task runner installs its own SIGTERM handler for each task (it calls
    the task's ``on_kill`` and lets the task go on); that handler is chained, not lost.
    """
    from airflow.sdk.definitions import dag as dag_module

    from smtask.sdk import replaced

    received: list[int] = []
    real_signal, real_run_task = signal.signal, dag_module._run_task

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        _kill_running_task()
        raise RunInterrupted(signum)

    def install(signum: int, handler: Any) -> Any:
        if signum != signal.SIGTERM or not callable(handler) or handler is interrupt:
            return real_signal(signum, handler)

        def chained(signum: int, frame: Any) -> None:
            received.append(signum)
            _running_task()  # told first: its on_kill stops the job
            handler(signum, frame)  # Airflow's: the task's on_kill (an smtask task raises)
            raise RunInterrupted(signum)

        return real_signal(signum, chained)

    def run_task(**kwargs: Any) -> Any:
        if received:
            raise RunInterrupted(received[0])
        result = real_run_task(**kwargs)
        if received:  # the task caught the interruption and failed; start no other
            raise RunInterrupted(received[0])
        return result

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        real_signal(signum, interrupt)
    try:
        with replaced((signal, "signal", install), (dag_module, "_run_task", run_task)):
            yield
    finally:
        for signum, handler in previous.items():
            real_signal(signum, handler)


def _fail_run(dag_id: str, since: float) -> Any:
    """Mark the run that ``dag.test()`` left running failed, as Airflow's "mark failed" does:
    unfinished tasks that started fail, the others are skipped."""
    from datetime import datetime

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    started = datetime.fromtimestamp(since, tz=UTC)
    with create_session() as session:
        dag_run = (session.query(DagRun)
                   .filter(DagRun.dag_id == dag_id, DagRun.state == DagRunState.RUNNING,
                           DagRun.start_date >= started)
                   .order_by(DagRun.id.desc()).first())
        if dag_run is None:
            return None
        for ti in dag_run.get_task_instances(session=session):
            if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED,
                            TaskInstanceState.UP_FOR_RETRY, TaskInstanceState.DEFERRED):
                ti.state = TaskInstanceState.FAILED
            elif ti.state is None or ti.state == TaskInstanceState.SCHEDULED:
                ti.state = TaskInstanceState.SKIPPED
        dag_run.state = DagRunState.FAILED
        dag_run.end_date = datetime.now(tz=UTC)
        run_id = dag_run.run_id
    return DagRun.find(dag_id=dag_id, run_id=run_id)[0]


def _print_run(dag: Any, dag_run: Any, summary: str) -> None:
    results = xcom_results(dag.dag_id, dag_run.run_id)
    print(f"\n== {dag.dag_id} {dag_run.run_id}: {summary}")
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: t.start_date or dag_run.start_date):
        print(f"-- {ti.task_id}: {ti.state} ({ti.duration or 0:.1f} s)")
        if ti.task_id in results:
            print(json.dumps(results[ti.task_id], indent=2))


def _check_params(dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """The DAG's smtask steps, once the params pass the check every task makes. A bad mode is
    a usage error (exit 2) like a bad ``--mode``; other bad params exit 1."""
    from smtask import params
    from smtask.errors import ParamsError

    if conf.get("mode", params.MODES[0]) not in params.MODES:
        _usage_error(f"--conf: mode must be one of {', '.join(params.MODES)}, "
                     f"got {conf['mode']!r}")
    steps = params.smtask_steps(dag)
    if not steps and "steps" not in dag.params:  # not an smtask pipeline: nothing of ours to check
        return steps
    try:
        params.resolve(params.dag_defaults(dag), conf, steps)
        params.check_authors_params(dag, conf)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return steps


def cmd_run(args: argparse.Namespace) -> int:
    dag_file = Path(args.dag_file).resolve()
    conf = _conf(args)
    _prepare_airflow(dag_file)
    with quiet_imports():  # Airflow's, frozen before any code of the DAG's runs
        from airflow.dag_processing.dagbag import DagBag  # noqa: F401
    dag = _load_dag(dag_file, args.dag_id)
    _check_params(dag, conf)  # before the DB, so a bad conf creates no dag run
    _migrate()
    started, since = time.monotonic(), time.time()
    dag_run = None
    try:
        with _signals_stop_the_run(), in_process_run(dag_file):
            _before_the_first_task(dag)
            dag_run = dag.test(run_conf=conf)
    except RunInterrupted as stopped:
        _stop_listeners()
        name = signal.Signals(stopped.signum).name
        if dag_run is not None:  # while the finished jobs' containers were removed (all were)
            _print_run(dag, dag_run, f"{dag_run.state}, then stopped by {name}")
            print(f"smtask: stopped by {name} once the run had ended", file=sys.stderr)
            return 128 + stopped.signum
        dag_run = _fail_run(dag.dag_id, since - 1)
        if dag_run is not None:
            _print_run(dag, dag_run, f"failed: stopped by {name}")
        print(f"smtask: stopped by {name}; " + ("the run is marked failed" if dag_run is not None
              else "no dag run had started"), file=sys.stderr)
        return 128 + stopped.signum
    _stop_listeners()
    elapsed = time.monotonic() - started
    _print_run(dag, dag_run, f"{dag_run.state} in {elapsed:.1f} s")
    return 0 if str(dag_run.state) in ("success", "DagRunState.SUCCESS") else 1


def _before_the_first_task(dag: Any) -> None:
    """What every task of the run would make on the way, made before the first: the execution
    API (1.3 s; the first task would build it) and, for a DAG with smtask steps, the SDK's
    core (its pydantic models built on use; the warm-up builds them beside the first
    container). All of it is frozen (gc.freeze) with Airflow's modules and the DAG's parse,
    so that no full collection walks it again (nine did, 1.5 s of a run); what the parse
    dropped is freed first. Nothing a task makes is ever frozen: an object frozen is never
    freed, and a task may drop what an earlier one kept."""
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    from smtask import params, sdk

    gc.collect()
    with quiet_imports():
        in_process_api_server().app  # noqa: B018 - a cached property, built here
        if params.smtask_steps(dag):
            # a broken SDK is the first smtask task's to report, in its log
            with sdk.models_built_on_use(), contextlib.suppress(ImportError):
                importlib.import_module("sagemaker.core.local")


def _stop_listeners() -> None:
    """Let Airflow's listeners end what they started, as its components do when they stop:
    OpenLineage's pool of processes (the DAG run's event) would otherwise keep this process
    from exiting (console() leaves by os._exit after the atexit handlers)."""
    from airflow.listeners.listener import get_listener_manager

    get_listener_manager().hook.before_stopping(component=None)


def cmd_validate(args: argparse.Namespace) -> int:
    dag_file = Path(args.dag_file).resolve()
    conf = _conf(args)
    _prepare_airflow(dag_file)
    dag = _load_dag(dag_file, args.dag_id)
    steps = _check_params(dag, conf)
    print(f"{dag.dag_id}: params valid for steps {', '.join(sorted(steps))}" if steps else
          f"{dag.dag_id}: no smtask steps, no smtask params: nothing to check")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from smtask.errors import EngineUnreachable
    from smtask.local import cleanup_orphans, endpoints

    try:
        removed = cleanup_orphans() + endpoints.cleanup()
    except EngineUnreachable as exc:
        print(f"smtask cleanup: nothing removed: {exc}", file=sys.stderr)
        return 1
    for line in removed:
        print(f"removed {line}")
    print(f"smtask cleanup: removed {len(removed)} orphan(s) of killed processes")
    return 0


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"mode": args.mode, "aws_conn_id": args.conn_id,
            **({"region_name": args.region} if args.region else {})}


def _emit(args: argparse.Namespace, text: str | bytes) -> None:
    """A result line on standard output (Airflow's log lines go to standard error meanwhile,
    see :func:`_results_only`)."""
    data = text.encode() if isinstance(text, str) else text
    args.out.write(data if data.endswith(b"\n") else data + b"\n")
    args.out.flush()


@contextlib.contextmanager
def _results_only() -> Iterator[Any]:
    """Standard output for the command's results alone: Airflow's loggers (the AWS hook's)
    print to standard output, which goes to standard error while the command runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(os.dup(saved), "wb")
    try:
        yield out
    finally:
        sys.stdout.flush()
        out.close()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_registry(args: argparse.Namespace) -> int:
    from smtask import registry

    params = _params(args)
    if args.action == "list" and not args.target:
        for group in registry.groups(params):
            _emit(args, "\t".join(str(group.get(k, "")) for k in ("group", "versions", "latest")))
    elif args.action == "list":
        for version in registry.versions(args.target, params):
            _emit(args, f"{version['group']}/{version['version']}\t{version['approval_status']}\t"
                  f"{json.dumps(version['metrics'], sort_keys=True)}\t"
                  f"{version['model_package_arn']}")
    elif args.action == "show":
        _emit(args, json.dumps(registry.version(_needs(args.target, "show"), params), indent=2,
                               sort_keys=True, default=str))
    else:
        status = "Rejected" if args.reject else "Approved"
        version = registry.set_status(_needs(args.target, "approve"), status, params)
        _emit(args, f"{version['group']}/{version['version']}: {version['approval_status']}")
    return 0


def _needs(target: str | None, action: str) -> str:
    if not target:
        _usage_error(f"registry {action}: name a version (its ARN or GROUP/VERSION)")
    return target


def cmd_endpoints(args: argparse.Namespace) -> int:
    from smtask import endpoints

    params = _params(args)
    if args.action == "list":
        if args.mode != "local":
            _usage_error("endpoints list: local endpoints only (SageMaker's: the console, or "
                         "`aws sagemaker list-endpoints`)")
        from smtask.local import endpoints as local_endpoints

        for name in local_endpoints.names():
            try:
                entry = local_endpoints.record(name)
            except local_endpoints.UnreadableRecord as exc:
                _emit(args, f"{name}\tunreadable\t{exc}")
                continue
            if entry is not None:
                _emit(args, f"{name}\t{local_endpoints.state(entry['container'])}\t"
                      f"http://127.0.0.1:{entry['port']}\t{entry['config_name']}\t"
                      f"{entry.get('model_package_arn') or entry['model_name']}")
        return 0
    name = args.name or _usage_error(f"endpoints {args.action}: name an endpoint")
    if args.action == "delete":
        endpoints.delete(name, params)
        _emit(args, f"endpoint {name} deleted")
        return 0
    body = sys.stdin.buffer.read() if args.data in (None, "-") else args.data.encode()
    answer = endpoints.invoke(name, body, args.content_type, args.accept, params)
    _emit(args, answer)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smtask", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (("run", cmd_run, "run a DAG once, in this process"),
                              ("validate", cmd_validate, "check a DAG's params, run nothing")):
        sub = commands.add_parser(name, help=help_)
        sub.add_argument("dag_file")
        sub.add_argument("-c", "--conf", help="the run's conf, JSON (deep-merged into params)")
        sub.add_argument("--mode", choices=("local", "sagemaker"))
        sub.add_argument("--dag-id")
        sub.set_defaults(func=func)
    cleanup = commands.add_parser("cleanup", help="remove local containers and scratch folders "
                                  "whose owning process was killed")
    cleanup.set_defaults(func=cmd_cleanup)
    registry = commands.add_parser("registry", help="list, show and approve model versions")
    registry.add_argument("action", choices=("list", "show", "approve"))
    registry.add_argument("target", nargs="?", help="a group (list) or a version (show, approve)")
    registry.add_argument("--reject", action="store_true", help="approve: reject it instead")
    registry.set_defaults(func=cmd_registry)
    endpoint = commands.add_parser("endpoints", help="list, invoke and delete endpoints")
    endpoint.add_argument("action", choices=("list", "invoke", "delete"))
    endpoint.add_argument("name", nargs="?")
    endpoint.add_argument("-d", "--data", help="invoke: the body (default: standard input)")
    endpoint.add_argument("--content-type", default="text/csv")
    endpoint.add_argument("--accept")
    endpoint.set_defaults(func=cmd_endpoints)
    for sub in (registry, endpoint):
        sub.add_argument("--mode", choices=("local", "sagemaker"),
                         default=os.environ.get("SMTASK_MODE") or "local")
        sub.add_argument("--conn-id", default="aws_default", help="sagemaker mode's connection")
        sub.add_argument("--region")
    args = parser.parse_args(argv)
    if args.command not in ("registry", "endpoints"):
        return int(args.func(args))
    from smtask.errors import SmtaskError  # imports Airflow: run and validate configure it first

    with _results_only() as args.out:
        try:
            return int(args.func(args))
        except SmtaskError as exc:
            print(f"smtask {args.command}: {exc}", file=sys.stderr)
            return 1


def console() -> NoReturn:
    """The ``smtask`` command: :func:`main`, then an exit without the interpreter's teardown.
    Freeing a finished run's Airflow and SDK modules one by one took 3 s; the exit handlers
    (logging's flush among them) still run first."""
    import atexit

    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C before `run` handles signals (Airflow's import, the DB)
        print("smtask: interrupted", file=sys.stderr)
        code = 128 + signal.SIGINT
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
