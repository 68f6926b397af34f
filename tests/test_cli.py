"""The CLI answers a bad ``--conf`` with one line and exit code 2, and checks the params before
``run`` starts anything, and runs its tasks through the execution API version they speak. No
Docker: every case here stops before a job."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT

EXAMPLE = str(ROOT / "dags" / "churn.py")


def smtask(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m smtask.cli`` of this checkout, with its own Airflow under ``tmp_path``."""
    env = {**os.environ, "SMTASK_HOME": str(tmp_path)}
    env.pop("AIRFLOW_HOME"), env.pop("AIRFLOW__CORE__DAGS_FOLDER")
    return subprocess.run([sys.executable, "-m", "smtask.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def succeeded(cli_home: Any, *args: str) -> str:
    """The output of ``smtask <args>`` (the cli_home fixture's), which must succeed."""
    done = cli_home.smtask(*args)
    said: str = done.communicate(timeout=300)[0]
    assert done.returncode == 0, said[-3000:]
    return said


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_conf_that_is_not_json_is_one_line_and_exit_2(tmp_path, command):
    done = smtask(tmp_path, command, EXAMPLE, "-c", "{bad")
    assert done.returncode == 2
    assert one_line(done) == ("smtask: --conf is not valid JSON: Expecting property name "
                              "enclosed in double quotes: line 1 column 2 (char 1)")


@pytest.mark.parametrize(("conf", "got"), [("[1]", "list"), ('"x"', "str")])
def test_conf_that_is_not_an_object_is_one_line_and_exit_2(tmp_path, conf, got):
    done = smtask(tmp_path, "validate", EXAMPLE, "-c", conf)
    assert done.returncode == 2
    assert one_line(done) == f"smtask: --conf must be a JSON object, got {got}"


@pytest.mark.parametrize("command", ["run", "validate"])
def test_unknown_mode_in_conf_is_one_line_naming_the_modes_and_exit_2(tmp_path, command):
    done = smtask(tmp_path, command, EXAMPLE, "-c", '{"mode": "cloud"}')
    assert done.returncode == 2
    assert one_line(done) == "smtask: --conf: mode must be one of local, sagemaker, got 'cloud'"


def test_run_with_bad_params_fails_before_any_dag_run(tmp_path):
    done = smtask(tmp_path, "run", EXAMPLE, "-c", '{"steps": {"trainr": {"max_depth": 3}}}')
    assert done.returncode == 1
    assert "steps.trainr: unknown step (known: data-source, evaluate, " \
           "splitor, trainer, transformer)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "airflow" / "airflow.db").exists()  # no DB, so no dag run


def test_validate_accepts_a_good_conf(tmp_path):
    done = smtask(tmp_path, "validate", EXAMPLE, "-c",
                  '{"mode": "sagemaker", "steps": {"trainer": {"hyperparameters": {"max_depth": 3}}}}')
    assert done.returncode == 0, done.stderr
    assert "churn: params valid for steps splitor, trainer, transformer" in done.stdout


def test_validate_checks_an_authors_own_param_in_the_conf(tmp_path):
    """An author's own Param beside pipeline_params: a bad value in the conf passes
    ``smtask validate`` (exit 0), and ``smtask run`` dies in dag.test with Airflow's
    traceback (ParamValidationError), not the one-line refusal naming the key."""
    dag_file = tmp_path / "authored.py"
    dag_file.write_text(
        "from airflow.sdk import Param, dag, task\n"
        "from smtask import pipeline_params, sm_training\n"
        "@dag(dag_id='authored', schedule=None, params={"
        f"**pipeline_params({str(ROOT / 'config.json')!r}),"
        " 'threshold': Param(0.5, type='number')})\n"
        "def authored():\n"
        "    @sm_training(step='trainer')\n"
        "    def train():\n"
        "        return {'train': 's3://b/train/'}\n"
        "    train()\n"
        "authored()\n")
    done = smtask(tmp_path, "validate", str(dag_file), "-c", '{"threshold": "high"}')
    assert done.returncode == 1, done.stdout
    assert "threshold" in done.stderr and "Traceback" not in done.stderr


def test_a_dag_importing_a_helper_beside_it_validates_from_any_folder(tmp_path):
    """The scheduler has the DAGs folder on sys.path, so a DAG may import a module beside
    it. ``smtask validate``/``run`` found it only when started from that folder (cwd is on
    sys.path with ``-m``): from elsewhere, "No module named 'helper_for_trial'"."""
    folder = tmp_path / "my dags"
    folder.mkdir()
    (folder / "helper_for_trial.py").write_text("STEP = 'trainer'\n")
    (folder / "uses_helper.py").write_text(
        "from airflow.sdk import dag\n"
        "from helper_for_trial import STEP\n"
        "from smtask import pipeline_params, sm_training\n"
        "@dag(dag_id='uses_helper', schedule=None, "
        f"params=pipeline_params({str(ROOT / 'config.json')!r}))\n"
        "def uses_helper():\n"
        "    @sm_training(step=STEP)\n"
        "    def train():\n"
        "        return {'train': 's3://b/train/'}\n"
        "    train()\n"
        "uses_helper()\n")
    done = smtask(tmp_path, "validate", str(folder / "uses_helper.py"))  # cwd: the project
    assert done.returncode == 0, done.stderr[-800:]
    assert "uses_helper: params valid for steps trainer" in done.stdout


def _execution_api(api_version: str) -> tuple[Any, int, int]:
    """An in-process execution API, as ``dag.test()`` makes one, built inside
    ``latest_api_only``: (its app, the status of /health asked in ``api_version`` and in the
    oldest version the app serves)."""
    import httpx
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

    from smtask.cli import latest_api_only

    with latest_api_only():
        api = InProcessExecutionAPI()
        client = httpx.Client(transport=api.transport, base_url="http://in-process.invalid./")
        asked = client.get("/health", headers={"Airflow-API-Version": api_version}).status_code
        oldest = api.app.versions.version_values[-1]
        old = client.get("/health", headers={"Airflow-API-Version": oldest}).status_code
    return api.app, asked, old


def _built(app: Any) -> list[str]:
    return [version for version, router in app.router.versioned_routers.items() if router.routes]


def test_run_builds_only_the_execution_api_version_its_task_sdk_speaks():
    from airflow.sdk.api.datamodels._generated import API_VERSION
    from cadwyn import applications

    real = applications.generate_versioned_routers
    app, latest, old = _execution_api(API_VERSION)
    assert applications.generate_versioned_routers is real  # put back once dag.test() ends
    assert (latest, old) == (200, 404)  # an older client is told, not answered by a wrong version
    assert _built(app) == [API_VERSION]
    # a route the latest version removed (and an older one restores) is not served
    routes = app.router.versioned_routers[API_VERSION].routes
    names = {route.name for route in routes}
    assert "get_previous_dagrun_compat" not in names
    assert "/task-instances/{task_instance_id}/run" in {route.path for route in routes}


def test_run_builds_every_version_when_its_task_sdk_is_not_the_latest(monkeypatch):
    from airflow.sdk.api.datamodels import _generated

    monkeypatch.setattr(_generated, "API_VERSION", "2025-04-28")
    app, asked, old = _execution_api("2025-04-28")
    assert (asked, old) == (200, 200)
    assert _built(app) == list(app.versions.version_values)


def test_run_runs_a_plain_airflow_dag_through_the_latest_api_version(tmp_path, cli_home):
    """A DAG without smtask steps or params has nothing of smtask's to check (before, its
    missing ``pipeline_name`` and ``steps`` refused it). Its tasks call the execution API's
    routes of the one version ``smtask run`` builds: a Variable set and read, an XCom pulled,
    the previous successful run looked up."""
    dag_file = tmp_path / "plain_api.py"
    dag_file.write_text(
        "from airflow.sdk import Variable, dag, get_current_context, task\n"
        "@dag(dag_id='plain_api', schedule=None)\n"
        "def plain_api():\n"
        "    @task\n"
        "    def put():\n"
        "        Variable.set('smtask_cli_trial', 'kept')\n"
        "        return Variable.get('smtask_cli_trial')\n"
        "    @task\n"
        "    def pull(value):\n"
        "        context = get_current_context()\n"
        "        return [value, context['ti'].xcom_pull(task_ids='put'),\n"
        "                str(context['prev_data_interval_start_success'])]\n"
        "    pull(put())\n"
        "plain_api()\n")
    said = succeeded(cli_home, "validate", str(dag_file))
    assert "plain_api: no smtask steps, no smtask params: nothing to check" in said
    said = succeeded(cli_home, "run", str(dag_file))
    assert "-- pull: success" in said
    assert '"kept",\n  "kept",\n  "None"' in said  # no earlier successful run


def test_a_run_keeps_no_garbage_of_the_dags_parse_nor_of_its_tasks(tmp_path, cli_home):
    """smtask run freezes the heap (gc.freeze) once Airflow's modules and its execution API
    are made, so no full collection walks them again (nine did: 1.5 s of a local run). A
    frozen object is never freed: what the DAG's parse dropped is collected before, and
    nothing a task makes is frozen, so a cycle one task keeps and the next drops is freed
    (found by a hostile trial: a module-level cache replaced by each task grew the run by
    300 MB a task)."""
    dag_file = tmp_path / "cycles.py"
    dag_file.write_text(
        "import gc, sys, weakref\n"
        "from airflow.sdk import dag, task\n"
        "class Data:\n"
        "    pass\n"
        "def cycle():\n"
        "    data = Data()\n"
        "    data.me = data\n"
        "    return data\n"
        "PARSED = weakref.ref(cycle())  # the parse's garbage\n"
        "@dag(dag_id='cycles', schedule=None)\n"
        "def cycles():\n"
        "    @task\n"
        "    def keep():\n"
        "        sys.modules[__name__].CACHE = cycle()\n"
        "        sys.modules[__name__].KEPT = weakref.ref(sys.modules[__name__].CACHE)\n"
        "    @task\n"
        "    def drop():\n"
        "        module = sys.modules[__name__]\n"
        "        del module.CACHE\n"
        "        gc.collect()\n"
        "        return [PARSED() is None, module.KEPT() is None]\n"
        "    keep() >> drop()\n"
        "cycles()\n")
    said = succeeded(cli_home, "run", str(dag_file))
    assert "-- drop: success" in said and "[\n  true,\n  true\n]" in said, said[-1500:]


def test_a_run_stopped_while_it_makes_the_db_leaves_none_half_made(tmp_path):
    """The first run makes Airflow's DB; stopped then (Ctrl-C in its first seconds), it left
    a half-made airflow.db that every later run failed on ("no such table: task_instance").
    Now the DB is made in a file of its own and moved into place once whole; the next run
    removes what a stopped one left and makes it again."""
    import json

    home = tmp_path / "airflow"
    probe = f"""
import json, os, subprocess, sys
os.environ["AIRFLOW_HOME"] = {str(home)!r}
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.makedirs({str(home)!r}, exist_ok=True)
from smtask import cli
real = subprocess.run
def stopped(command, **kwargs):  # the migration writes some tables, then Ctrl-C
    path = kwargs["env"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with open(path, "w") as half:
        half.write("half a database")
    raise KeyboardInterrupt
subprocess.run = stopped
try:
    cli._migrate()
except KeyboardInterrupt:
    pass
left = sorted(os.listdir({str(home)!r}))
subprocess.run = real
cli._migrate()
print(json.dumps({{"left": left, "after": sorted(os.listdir({str(home)!r}))}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert "airflow.db" not in found["left"] and any(
        name.endswith(".partial") for name in found["left"])
    assert "airflow.db" in found["after"] and not any(".partial" in n for n in found["after"])
    import sqlite3

    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
    assert "task_instance" in tables
