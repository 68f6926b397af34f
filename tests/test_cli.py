"""The CLI answers a bad ``--conf`` with one line and exit code 2, and checks the params before
``run`` starts anything. No Docker: every case here stops before a job."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

EXAMPLE = str(ROOT / "dags" / "churn.py")


def smtask(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m smtask.cli`` of this checkout, with its own Airflow under ``tmp_path``."""
    env = {**os.environ, "SMTASK_HOME": str(tmp_path)}
    env.pop("AIRFLOW_HOME"), env.pop("AIRFLOW__CORE__DAGS_FOLDER")
    return subprocess.run([sys.executable, "-m", "smtask.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


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
    assert "steps.trainr: not a step of this DAG (known steps: data-source, evaluate, " \
           "splitor, trainer, transformer)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "airflow" / "airflow.db").exists()  # no DB, so no dag run


def test_validate_accepts_a_good_conf(tmp_path):
    done = smtask(tmp_path, "validate", EXAMPLE, "-c",
                  '{"mode": "sagemaker", "steps": {"trainer": {"hyperparameters": {"max_depth": 3}}}}')
    assert done.returncode == 0, done.stderr
    assert "churn: params valid for steps splitor, trainer, transformer" in done.stdout
