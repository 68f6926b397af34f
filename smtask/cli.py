"""``smtask``: run a DAG file locally (``dag.test()`` on a project-local SQLite DB), or
validate its params, without a scheduler.

    smtask run dags/churn.py [-c '{"steps": {...}}'] [--mode local|sagemaker] [--dag-id ID]
    smtask validate dags/churn.py [-c '{...}'] [--mode local|sagemaker] [--dag-id ID]

A bad ``-c`` (not a JSON object, or an unknown mode) exits 2; bad params exit 1, before any run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn


def _prepare_airflow(dag_file: Path) -> None:
    """A project-local Airflow, configured before Airflow is first imported."""
    from smtask.naming import smtask_home  # imports no Airflow

    if "airflow" in sys.modules:
        raise RuntimeError("smtask's CLI must configure Airflow before importing it")
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(smtask_home() / "airflow")))
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dag_file.parent)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
    home.mkdir(parents=True, exist_ok=True)


def _migrate() -> None:
    """The project-local Airflow DB, made on first use."""
    if not (Path(os.environ["AIRFLOW_HOME"]) / "airflow.db").exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL)


def _load_dag(dag_file: Path, dag_id: str | None) -> Any:
    """Parse the file the way the scheduler does (a DagBag), so what runs is what deploys."""
    from airflow.dag_processing.dagbag import DagBag

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
    if not isinstance(conf, dict):
        _usage_error(f"--conf must be a JSON object, got {type(conf).__name__}")
    if args.mode:
        conf["mode"] = args.mode
    return conf


def _check_params(dag: Any, conf: dict[str, Any]) -> dict[str, str]:
    """The DAG's smtask steps, once the params pass the check every task makes. A bad mode is
    a usage error (exit 2) like a bad ``--mode``; other bad params exit 1."""
    from smtask import params
    from smtask.errors import ParamsError

    if conf.get("mode", params.MODES[0]) not in params.MODES:
        _usage_error(f"--conf: mode must be one of {', '.join(params.MODES)}, "
                     f"got {conf['mode']!r}")
    steps = params.smtask_steps(dag)
    try:
        params.resolve(dag.params.dump(), conf, steps)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return steps


def cmd_run(args: argparse.Namespace) -> int:
    dag_file = Path(args.dag_file).resolve()
    conf = _conf(args)
    _prepare_airflow(dag_file)
    dag = _load_dag(dag_file, args.dag_id)
    _check_params(dag, conf)  # before the DB, so a bad conf creates no dag run
    _migrate()
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf)
    elapsed = time.monotonic() - started
    results = xcom_results(dag.dag_id, dag_run.run_id)
    print(f"\n== {dag.dag_id} {dag_run.run_id}: {dag_run.state} in {elapsed:.1f} s")
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: t.start_date or dag_run.start_date):
        print(f"-- {ti.task_id}: {ti.state} ({ti.duration or 0:.1f} s)")
        if ti.task_id in results:
            print(json.dumps(results[ti.task_id], indent=2))
    return 0 if str(dag_run.state) in ("success", "DagRunState.SUCCESS") else 1


def cmd_validate(args: argparse.Namespace) -> int:
    dag_file = Path(args.dag_file).resolve()
    conf = _conf(args)
    _prepare_airflow(dag_file)
    dag = _load_dag(dag_file, args.dag_id)
    steps = _check_params(dag, conf)
    print(f"{dag.dag_id}: params valid for steps {', '.join(sorted(steps))}")
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
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
