"""``smtask``: run a DAG file locally (``dag.test()`` on a project-local SQLite DB), or
validate its params, without a scheduler.

    smtask run dags/churn.py [-c '{"steps": {...}}'] [--mode local|sagemaker]
    smtask validate dags/churn.py [-c '{...}']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _prepare_airflow(dag_file: Path, *, migrate: bool) -> None:
    """A project-local Airflow: configured before Airflow is first imported, migrated once."""
    from smtask.naming import smtask_home  # imports no Airflow

    if "airflow" in sys.modules:
        raise RuntimeError("smtask's CLI must configure Airflow before importing it")
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(smtask_home() / "airflow")))
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dag_file.parent)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
    home.mkdir(parents=True, exist_ok=True)
    if migrate and not (home / "airflow.db").exists():
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


def _conf(args: argparse.Namespace) -> dict[str, Any]:
    conf = json.loads(args.conf) if args.conf else {}
    if not isinstance(conf, dict):
        raise SystemExit("--conf must be a JSON object")
    if args.mode:
        conf["mode"] = args.mode
    return conf


def cmd_run(args: argparse.Namespace) -> int:
    dag_file = Path(args.dag_file).resolve()
    _prepare_airflow(dag_file, migrate=True)
    dag = _load_dag(dag_file, args.dag_id)
    started = time.monotonic()
    dag_run = dag.test(run_conf=_conf(args))
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
    _prepare_airflow(dag_file, migrate=False)
    from smtask import params
    from smtask.errors import ParamsError

    dag = _load_dag(dag_file, args.dag_id)
    steps = params.smtask_steps(dag)
    try:
        params.resolve(dag.params.dump(), _conf(args), steps)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return 1
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
