"""The decorators without Docker: parse-time checks, bad params stop a run before any job,
the user function's return value is checked, and importing/parsing stays SDK-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, run_dag, write_config

import smtask
from smtask import sessions


@pytest.fixture
def sessions_opened(monkeypatch):
    """Records every session (hence every job) a run tries to open, and opens none."""
    opened = []

    def refuse(params, *args, **kwargs):
        opened.append(params["mode"])
        raise AssertionError("a session was opened")

    monkeypatch.setattr(sessions, "open_session", refuse)
    return opened


SPLIT_ONLY = '''
@sm_processing(step="splitor")
def split():
    return {"data-source": "file:///tmp"}
split()
'''


def test_step_is_required_when_the_dag_is_parsed():
    with pytest.raises(TypeError, match="needs step="):
        smtask.sm_processing(lambda: {})


def test_mode_is_checked_when_the_dag_is_parsed():
    from airflow.sdk import DAG

    with DAG("parse_check", schedule=None), pytest.raises(TypeError, match="mode must be one of"):
        smtask.sm_training(step="trainer", mode="cloud")(lambda: {})()


@pytest.mark.parametrize("step", ["..", "../x", "/abs", "a/b", "x y", "name\n", "", "a" * 300,
                                  "spl\u0456tor"])
def test_hostile_step_is_refused_when_the_dag_is_parsed_naming_it(step):
    with pytest.raises(TypeError) as excinfo:
        smtask.sm_processing(step=step)
    assert f"@sm_processing: step {ascii(step)[:40]}" in str(excinfo.value)


def test_hostile_step_given_by_override_is_refused_when_the_task_is_made():
    from airflow.sdk import DAG

    with DAG("parse_override", schedule=None), \
            pytest.raises(TypeError, match=r"@sm_training: step '\.\./x' is not allowed"):
        smtask.sm_training(step="trainer")(lambda: {}).override(step="../x")()


def test_task_id_defaults_to_the_function_name_and_operator_shows_the_decorator():
    from airflow.sdk import DAG

    def score():
        return "s3://b/k"

    with DAG("parse_names", schedule=None) as dag:
        smtask.sm_transform(step="transformer")(score)()
    task = dag.tasks[0]
    assert task.task_id == "score" and task.step == "transformer"
    assert task.custom_operator_name == "@sm_transform"


@pytest.mark.parametrize(("conf", "refused"), [
    ({"steps": {"splitor": {"instance_count": "two"}}}, "'two' is not of type 'integer'"),
    ({"steps": {"splitor": {"arguments": "--seed 1"}}}, "'--seed 1' is not of type 'array'"),
    ({"steps": {"splitr": {}}}, r"steps\.splitr: unknown step \(known: data-source, evaluate, "
                                r"splitor, trainer, transformer\)$"),
    ({"code_root": "/"}, "param code_root"),
])
def test_a_bad_run_conf_is_refused_when_the_run_is_triggered(tmp_path, sessions_opened, conf,
                                                             refused):
    """The params carry the steps' JSON schemas: Airflow refuses the conf (REST: 400)."""
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=refused):
        run_dag(SPLIT_ONLY, config=write_config(tmp_path), conf=conf)
    assert sessions_opened == []


def test_what_only_the_merged_params_show_fails_the_task_before_any_job(tmp_path, sessions_opened):
    # null removes a key (a run may fall back to a default): valid at trigger time, but the
    # merged step then lacks its required outputs
    result = run_dag(SPLIT_ONLY, config=write_config(tmp_path), conf={"steps": {"splitor": {
        "outputs": None}}})
    assert result.states == {"split": "failed"}
    assert sessions_opened == []


def test_unknown_mode_is_refused_when_the_run_is_triggered(tmp_path, sessions_opened):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param mode"):
        run_dag(SPLIT_ONLY, config=write_config(tmp_path), conf={"mode": "cloud"})
    assert sessions_opened == []


def test_a_bad_step_later_in_the_dag_fails_the_first_task(tmp_path, sessions_opened):
    body = SPLIT_ONLY.replace("\nsplit()\n", '''
@sm_training(step="trainer")
def train(splits):
    return {"train": splits["outputs"]["train"]}
train(split())
''')
    # valid when triggered (null removes a key); the merged trainer lacks its entry_script
    result = run_dag(body, config=write_config(tmp_path),
                     conf={"steps": {"trainer": {"entry_script": None}}})
    assert result.states == {"split": "failed", "train": "upstream_failed"}
    assert sessions_opened == []


@pytest.mark.parametrize(("returned", "message"), [
    ('"file:///tmp"', "must return a dict of input name -> URI"),
    ('{"data-source": "ftp://host/x"}', "must be an s3://bucket/... or file:///... URI"),
    ('{"data-source": "file://relative/x"}', "must be an s3://bucket/... or file:///... URI"),
    ('{"train": "file:///tmp"}', "are also output names"),
    ('{"../../x": "file:///tmp"}', "input name '../../x' is not allowed"),
], ids=["not-a-dict", "not-a-uri", "file-uri-with-a-host", "input-is-output",
        "hostile-input-name"])
def test_wrong_return_value_fails_before_any_job(tmp_path, sessions_opened, returned, message,
                                                 capfd):
    body = f'''
@sm_processing(step="splitor")
def split():
    return {returned}
split()
'''
    result = run_dag(body, config=write_config(tmp_path))
    assert result.states == {"split": "failed"}
    assert sessions_opened == []
    assert message in capfd.readouterr().out


def test_bad_run_conf_for_a_mapped_task_is_refused_at_trigger_time(tmp_path, sessions_opened):
    """.expand() skips the operator's __init__: the decorator describes the step itself, so
    the trigger schema knows the kind's keys (a valid key the config lacks passes)."""
    from airflow.sdk.exceptions import ParamValidationError

    body = '''
@sm_processing(step="splitor")
def split(source):
    return {"data-source": source}
split.expand(source=["file:///tmp/a", "file:///tmp/b"])
'''
    with pytest.raises(ParamValidationError, match="steps.splitor.instance_count: 'two' is not "
                                                   "of type 'integer'$"):
        run_dag(body, config=write_config(tmp_path),
                conf={"steps": {"splitor": {"instance_count": "two"}}})
    assert sessions_opened == []
    # a key of the kind's that the config lacks: accepted at trigger time, the run starts
    result = run_dag(body, config=write_config(tmp_path),
                     conf={"steps": {"splitor": {"volume_size_gb": 5}}})
    assert list(result.states) == ["split"]


def test_import_and_example_dag_parse_do_not_import_the_sdk():
    code = (
        "import sys, runpy; import smtask; assert 'sagemaker' not in sys.modules;"
        f"runpy.run_path({str(ROOT / 'dags' / 'churn.py')!r});"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sagemaker', 'sklearn'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_smtask_imports_no_airflow():
    code = "import sys, smtask; sys.exit('airflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_provider_registers_the_three_decorators_under_task():
    from airflow.providers_manager import ProvidersManager

    decorators = ProvidersManager().taskflow_decorators
    assert {"sm_processing", "sm_training", "sm_transform"} <= set(decorators)
