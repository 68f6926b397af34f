"""``@sm_tuning``: local mode runs the search itself in real containers (grid, random,
parallel trials, failed trials, a kill, the best model served by a transform); sagemaker mode
sends one CreateHyperParameterTuningJob to moto; bad tuning settings fail before any job."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import ROOT, containers_with_label, kinds_of, run_dag, write_config, write_dag
from test_cloud import (  # noqa: F401
    BUCKET,
    IMAGE,
    ROLE,
    client,
    cloud_config,
    crash_once,
    moto_server,
    sagemaker,
)
from test_local_safety import Watched, owned_containers, scratch_folders

from smtask.errors import ParamsError

SCRIPT = {"source_dir": "tests/scripts", "entry_script": "tune_score.py",
          "hyperparameters": {"label": "static"}}
SCORE = [{"name": "score", "regex": r"score=([-0-9.]+)"}]


def tuner(**tuning: Any) -> dict[str, Any]:
    return {**SCRIPT, "tuning": {"objective": {"metric": "score", "type": "Maximize"},
                                 "metric_definitions": SCORE, **tuning}}


def train_data(tmp_path: Path) -> str:
    folder = tmp_path / "train"
    folder.mkdir(exist_ok=True)
    (folder / "data.csv").write_text("1,2\n3,4\n5,6\n")
    return str(folder)


TUNE = '''
from smtask import sm_tuning

@sm_tuning(step="tuner")
def tune():
    return {"train": DATA}

tune()
'''


def tune_body(data: str) -> str:
    return TUNE.replace("DATA", repr(data))


def path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


def trial_report(model: Path) -> dict[str, Any]:
    with tarfile.open(model) as tar:
        return json.load(tar.extractfile("trial.json"))  # type: ignore[arg-type]


def trial_reports(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every trial's report, by trial name, from the trials' folders beside the best one's."""
    folder = path(out["model"]).parent.parent
    return {model.parent.name: trial_report(model)
            for model in sorted(folder.glob(f"{out['job_name']}-*/model.tar.gz"))}


# --- local mode, in real containers ---------------------------------------------------------

@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_grid_search_finds_the_best_trial_whose_model_a_transform_serves(tmp_path,
                                                                          loopback_guard):
    body = TUNE.replace("tune()\n", '''
@sm_transform(step="transformer")
def predict(model):
    return BATCH

predict(tune())
''').replace("DATA", repr(train_data(tmp_path)))
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "rows.csv").write_text("1,2\n3,4\n")
    body = body.replace("BATCH", repr(str(tmp_path / "batch")))
    config = write_config(tmp_path, steps={"tuner": tuner(strategy="Grid", max_parallel_jobs=2,
        ranges={"x": {"type": "categorical", "values": [1, 3]},
                "kind": {"type": "categorical", "values": ["a", "b"]}})})
    result = run_dag(body, config=config)
    assert result.ok, result.states
    out = result.xcom["tune"]
    assert out["hyperparameters"] == {"x": "3", "kind": "b"}  # score 10.5, the known best
    assert out["objective"] == {"metric": "score", "type": "Maximize", "value": 10.5}
    assert out["trials"] == {"completed": 4, "failed": 0, "stopped": 0}, out.get("failed_trials")
    assert out["best_training_job"] == f"{out['job_name']}-004"  # (3, b): the 4th combination
    assert out["model"] == out["outputs"]["model"] and out["image"] == "smtask-local:latest"
    assert out["model"].endswith(f"/tuner/{out['best_training_job']}/model.tar.gz")
    assert len(out["job_name"]) <= 32  # HyperParameterTuningJobName's limit
    reports = trial_reports(out)
    assert [r["hyperparameters"] for r in reports.values()] == [
        {"x": x, "kind": k, "label": "static"} for x in ("1", "3") for k in ("a", "b")]
    # the transform scored with the best trial's model (it predicts x)
    predictions = path(result.xcom["predict"]["outputs"]["predictions"])
    assert (predictions / "rows.csv.out").read_text().split() == ["3", "3"]
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_random_search_stays_within_the_ranges_and_runs_max_jobs_trials_in_parallel(
        tmp_path, loopback_guard):
    config = write_config(tmp_path, steps={"tuner": tuner(
        strategy="Random", max_jobs=3, max_parallel_jobs=3, random_seed=11,
        ranges={"x": {"type": "integer", "min_value": 0, "max_value": 6},
                "rate": {"type": "continuous", "min_value": 0.001, "max_value": 0.1,
                         "scaling_type": "Logarithmic"}})})
    config_json = json.loads(config.read_text())
    config_json["steps"]["tuner"]["hyperparameters"]["sleep"] = 2
    config.write_text(json.dumps(config_json))
    result = run_dag(tune_body(train_data(tmp_path)), config=config)
    assert result.ok, result.states
    out = result.xcom["tune"]
    reports = trial_reports(out)
    assert list(reports) == [f"{out['job_name']}-00{i}" for i in (1, 2, 3)]  # max_jobs
    for report in reports.values():
        hps = report["hyperparameters"]
        assert 0 <= int(hps["x"]) <= 6 and 0.001 <= float(hps["rate"]) <= 0.1
    scores = {name: 10 - (int(r["hyperparameters"]["x"]) - 3) ** 2 for name, r in reports.items()}
    assert out["objective"]["value"] == max(scores.values())
    assert scores[out["best_training_job"]] == max(scores.values())
    # two at a time on this machine's CPUs (min(max_parallel_jobs, CPUs)): 001 and 002 overlap
    first, second = reports[f"{out['job_name']}-001"], reports[f"{out['job_name']}-002"]
    assert first["started"] < second["ended"] and second["started"] < first["ended"]


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_failed_trial_is_reported_and_the_best_of_the_others_returned(tmp_path,
                                                                        loopback_guard):
    config = write_config(tmp_path, steps={"tuner": tuner(strategy="Grid", max_parallel_jobs=2,
        ranges={"x": {"type": "categorical", "values": [3, 4]}})})
    result = run_dag(tune_body(train_data(tmp_path)), config=config,
                     conf={"steps": {"tuner": {"hyperparameters": {"fail_on": "3"}}}})
    assert result.ok, result.states
    out = result.xcom["tune"]
    assert out["hyperparameters"] == {"x": "4"} and out["objective"]["value"] == 9.0
    assert out["trials"] == {"completed": 1, "failed": 1, "stopped": 0}
    (name, error), = out["failed_trials"].items()
    assert name == f"{out['job_name']}-001"
    assert error.startswith("ValueError: x=3 is the value this trial was told to fail on")


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_trial_ending_leaves_its_running_sibling_trials_files_alone(tmp_path, loopback_guard):
    """Parallel trials share the session's scratch folder. When one ends, only its own
    mounts are cleaned of links: the other, still writing and deleting files and reading a
    link in its model folder, is not disturbed (a CI run once lost a trial to that walk).
    Its link is removed when it ends, as every job's is."""
    config = write_config(tmp_path, steps={"tuner": tuner(strategy="Grid", max_parallel_jobs=2,
        ranges={"x": {"type": "categorical", "values": [3, 4, 2]}})})
    conf = {"steps": {"tuner": {"hyperparameters": {"churn_on": "4", "churn_seconds": 8}}}}
    result = run_dag(tune_body(train_data(tmp_path)), config=config, conf=conf)
    assert result.ok, result.states
    out = result.xcom["tune"]
    assert out["trials"] == {"completed": 3, "failed": 0, "stopped": 0}, out.get("failed_trials")
    reports = trial_reports(out)
    churner, quick = reports[f"{out['job_name']}-002"], reports[f"{out['job_name']}-001"]
    assert quick["ended"] < churner["ended"] - 3  # the quick trial ended while it churned
    model = path(out["model"]).parent.parent / f"{out['job_name']}-002" / "model.tar.gz"
    with tarfile.open(model) as tar:
        assert "latest" not in tar.getnames() and "work/state" in tar.getnames()


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_trial_stopped_at_its_max_runtime_publishes_nothing(tmp_path, loopback_guard):
    """Its containers are stopped (exit 130, which the SDK takes for a stopped, not a failed,
    container), so the SDK tarred what the trial left, and smtask published it beside the
    best trial's: <tuner>/<trial>-002/model.tar.gz (55 bytes) and output.tar.gz."""
    config = write_config(tmp_path, steps={"tuner": {
        **tuner(strategy="Grid", max_parallel_jobs=1, ranges={
            "x": {"type": "categorical", "values": ["3"]},
            "sleep": {"type": "categorical", "values": ["0", "60"]}}),
        "max_runtime_seconds": 8}})
    result = run_dag(tune_body(train_data(tmp_path)), config=config)
    assert result.ok, result.states
    out = result.xcom["tune"]
    stopped = [name for name, why in out["failed_trials"].items() if "max_runtime_seconds" in why]
    assert stopped == [f"{out['job_name']}-002"], out
    folder = path(out["model"]).parent.parent
    assert sorted(p.name for p in folder.iterdir()) == [f"{out['job_name']}-001"]
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_when_every_trial_fails_the_task_fails_with_the_trials_own_errors(tmp_path, capfd,
                                                                           loopback_guard):
    config = write_config(tmp_path, steps={"tuner": tuner(strategy="Grid", ranges={
        "x": {"type": "categorical", "values": [3]}})})
    result = run_dag(tune_body(train_data(tmp_path)), config=config,
                     conf={"steps": {"tuner": {"hyperparameters": {"fail_on": "3"}}}})
    assert result.states == {"tune": "failed"}
    out = capfd.readouterr().out
    assert "every trial failed: churn-tuner-" in out
    assert "-001: ValueError: x=3 is the value this trial was told to fail on" in out
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_sigterm_stops_every_running_trial_and_leaves_no_scratch(tmp_path, cli_home):
    config = write_config(tmp_path, steps={"tuner": tuner(strategy="Grid", max_parallel_jobs=2,
        ranges={"x": {"type": "categorical", "values": [1, 2, 3, 4]}})})
    config_json = json.loads(config.read_text())
    config_json["steps"]["tuner"]["hyperparameters"]["sleep"] = 60
    config.write_text(json.dumps(config_json))
    _, dag_path = write_dag(tune_body(train_data(tmp_path)), config=config,
                            folder=tmp_path / "dags")
    run = Watched(cli_home.smtask("run", str(dag_path)))
    run.wait_for(lambda: sum(line.count("decoy") for line in run.lines) >= 2, timeout=180)
    assert len(owned_containers(run.proc.pid)) == 2  # two trials running at once
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    out = run.finish()
    assert time.monotonic() - sent < 30, out[-3000:]
    assert run.proc.returncode == 143, out[-3000:]
    assert "-- tune: failed" in out and "TaskInterrupted" in out
    assert "-003] Creating" not in out  # no trial started after the kill
    assert owned_containers(run.proc.pid) == []
    assert scratch_folders(cli_home) == []


# --- reading the objective from the log lines (no containers) -------------------------------

def job_with(metric: str, definitions: list[dict[str, str]]) -> dict[str, Any]:
    return {"objective": {"metric": metric, "type": "Maximize"},
            "metric_definitions": definitions}


@pytest.mark.parametrize(("metric", "line", "value"), [
    ("validation:binary_classification_accuracy",
     "#quality_metric: host=algo-1, validation binary_classification_accuracy <score>=0.93", 0.93),
    ("test:binary_classification_accuracy",
     "[11/22/2026 00:10:01 INFO 1400] #quality_metric: host=algo-1, test "
     "binary_classification_accuracy <score>=0.875", 0.875),
    ("validation:auc", "[0]#011train-auc:0.8#011validation-auc:0.9", 0.9),
    ("validation:auc", "[3]\ttrain-auc:0.95\tvalidation-auc:0.91", 0.91),  # a local tab
    ("test:accuracy", "#test_score (algo-1) : ('accuracy', 0.96)", 0.96),
])
def test_built_in_algorithms_metric_lines_are_read_without_a_definition(metric, line, value):
    from smtask.local.tuning import TrialOutput, metric_regexes

    output = TrialOutput("t-001", lambda _: None, metric_regexes(job_with(metric, [])))
    output(f"algo-1-xyz12  | {line}\n")
    assert output.metrics == {metric: value}


def test_the_last_match_wins_and_regexes_written_for_cloudwatch_match_a_local_tab():
    from smtask.local.tuning import TrialOutput, metric_regexes

    job = job_with("validation:rmse", [
        {"name": "validation:rmse", "regex": r".*\[[0-9]+\].*#011validation-rmse:([-+]?[0-9.]+)"},
        {"name": "loss", "regex": r"loss: (\S+)"}])
    logged: list[str] = []
    output = TrialOutput("t-001", logged.append, metric_regexes(job))
    for line in ["[0]\tvalidation-rmse:0.5", "loss: 0.3", "[1]\tvalidation-rmse:0.25",
                 "loss: not-a-number"]:
        output(f"algo-1-abc  | {line}")
    assert output.metrics == {"validation:rmse": 0.25, "loss": 0.3}
    assert logged[0] == "[t-001] algo-1-abc  | [0]\tvalidation-rmse:0.5"


# --- settings ------------------------------------------------------------------------------

def resolve(tmp_path: Path, tuner_cfg: dict[str, Any], conf: dict[str, Any] | None = None,
            mode: str = "local") -> dict[str, Any]:
    from smtask.params import load_config, resolve

    defaults = load_config(write_config(tmp_path, mode=mode, steps={"tuner": tuner_cfg}))
    return resolve(defaults, conf, kinds_of({"tuner": "tuning", "trainer": "training"}))


GOOD = {"objective": {"metric": "score"}, "metric_definitions": SCORE, "max_jobs": 4,
        "ranges": {"x": {"type": "integer", "min_value": 0, "max_value": 6}}}


@pytest.mark.parametrize(("tuning", "expected"), [
    ({"ranges": {"x": {"type": "float", "min_value": 0, "max_value": 1}}},
     "steps.tuner.tuning.ranges.x.type: 'float' is not one of"),
    ({"ranges": {"x": {"type": "integer", "min_value": 5, "max_value": 1}}},
     "steps.tuner.tuning.ranges.x.min_value: 5 is greater than max_value 1"),
    ({"ranges": {"x": {"type": "integer", "min_value": 0.5, "max_value": 2}}},
     "steps.tuner.tuning.ranges.x: an integer range needs whole min_value and max_value"),
    ({"ranges": {"x": {"type": "continuous", "max_value": None}}},
     "steps.tuner.tuning.ranges.x: a numeric range needs min_value and max_value"),
    ({"ranges": {"x": {"type": "categorical", "min_value": 0, "max_value": 1}}},
     "steps.tuner.tuning.ranges.x.values: required for a categorical range"),
    ({"ranges": {"x": {"type": "continuous", "min_value": 0, "max_value": 1,
                       "scaling_type": "Logarithmic"}}},
     "steps.tuner.tuning.ranges.x.scaling_type: Logarithmic needs min_value > 0, got 0"),
    ({"metric_definitions": [{"name": "loss", "regex": "loss=(.*)"}]},
     "steps.tuner.tuning.objective.metric: 'score' has no metric definition"),
    ({"metric_definitions": [{"name": "score", "regex": "score=(["}]},
     "steps.tuner.tuning.metric_definitions.0.regex: not a regular expression"),
    ({"max_parallel_jobs": 5}, "steps.tuner.tuning.max_parallel_jobs: 5 is more than max_jobs 4"),
    ({"max_jobs": None}, "steps.tuner.tuning.max_jobs: required for the Random strategy"),
    ({"strategy": "Grid"},
     "steps.tuner.tuning.ranges.x: the Grid strategy searches categorical ranges only"),
    ({"strategy": "Bayesian"}, "steps.tuner.tuning.strategy: local mode runs Random and Grid "
                               "searches only; Bayesian needs SageMaker (mode: sagemaker)"),
    ({"objective": {"metric": "score", "type": "Maximise"}},
     "steps.tuner.tuning.objective.type: 'Maximise' is not one of ['Maximize', 'Minimize']"),
    ({"early_stopping": "Auto"}, "steps.tuner.tuning.early_stopping: unknown key"),
    ({"ranges": None}, "steps.tuner.tuning.ranges: required key is missing"),
])
def test_bad_tuning_settings_are_refused_naming_the_step_and_key(tmp_path, tuning, expected):
    from smtask.params import deep_merge

    with pytest.raises(ParamsError) as caught:
        resolve(tmp_path, {**SCRIPT, "tuning": deep_merge(GOOD, tuning)})
    assert expected in str(caught.value)


def test_bayesian_is_accepted_in_sagemaker_mode(tmp_path):
    params = resolve(tmp_path, {**SCRIPT, "tuning": {**GOOD, "strategy": "Bayesian"}},
                     mode="sagemaker")
    assert params["steps"]["tuner"]["tuning"]["strategy"] == "Bayesian"


def test_a_tuning_step_reuses_its_training_steps_settings_under_its_own(tmp_path):
    params = resolve(tmp_path, {"training_step": "trainer", "instance_type": "ml.c5.xlarge",
                                "hyperparameters": {"seed": 11}, "tuning": GOOD},
                     conf={"steps": {"trainer": {"hyperparameters": {"max_depth": 3}}}})
    tuned = params["steps"]["tuner"]
    assert tuned["source_dir"] == "code" and tuned["entry_script"] == "train.py"  # inherited
    assert tuned["instance_type"] == "ml.c5.xlarge"  # its own wins
    assert tuned["hyperparameters"] == {"n_estimators": 100, "max_depth": 3, "seed": 11,
                                        "label_column": "label"}  # the run's conf reached it
    assert "tuning" not in params["steps"]["trainer"]


def test_a_run_cannot_give_a_tuning_step_another_image_through_training_step(tmp_path):
    from smtask.params import load_config, resolve

    defaults = load_config(write_config(tmp_path, steps={
        "tuner": {"training_step": "trainer", "tuning": GOOD},
        "other": {**SCRIPT, "image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/other:1"}}))
    steps = kinds_of({"tuner": "tuning", "trainer": "training", "other": "training"})
    with pytest.raises(ParamsError, match=r"steps.tuner.image: a run's conf may not change it"):
        resolve(defaults, {"steps": {"tuner": {"training_step": "other"}}}, steps)


@pytest.mark.parametrize(("training_step", "expected"), [
    ("trainr", "steps.tuner.training_step: 'trainr' is not another step of the params"),
    ("tuner", "steps.tuner.training_step: 'tuner' is not another step of the params"),
])
def test_a_training_step_that_is_not_there_is_refused(tmp_path, training_step, expected):
    with pytest.raises(ParamsError, match=expected):
        resolve(tmp_path, {"training_step": training_step, "tuning": GOOD})


def test_a_bad_tuning_setting_fails_the_task_before_any_trial(tmp_path, capfd):
    config = write_config(tmp_path, steps={"tuner": tuner(max_jobs=2, ranges={
        "x": {"type": "integer", "min_value": 4, "max_value": 2}})})
    result = run_dag(tune_body(train_data(tmp_path)), config=config)
    assert result.states == {"tune": "failed"}
    out = capfd.readouterr().out
    assert "steps.tuner.tuning.ranges.x.min_value: 4 is greater than max_value 2" in out
    assert "smtask: tuning job" not in out  # no trial planned, no container


# --- sagemaker mode on moto ----------------------------------------------------------------

@pytest.fixture
def tuning_jobs(sagemaker, monkeypatch):  # noqa: F811 - test_cloud's fixture
    """moto creates a tuning job Completed at once, its best training job a made-up name that
    does not exist. Here it completes as SageMaker's would: its best trial is a real training
    job (named as SageMaker names trials) with model artifacts under the job's output path."""
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    monkeypatch.setattr(SageMakerResponse, "create_hyper_parameter_tuning_job", sagemaker._record(
        "create_hyper_parameter_tuning_job", SageMakerResponse.create_hyper_parameter_tuning_job))
    create, state = SageMakerModelBackend.create_hyper_parameter_tuning_job, {"initial": "Completed"}

    def complete(backend: Any, name: str) -> None:
        job = backend.hyper_parameter_tuning_jobs[name]
        definition, best = job.training_job_definition, f"{name}-003-1a2b3c4d"
        backend.create_training_job(
            training_job_name=best, hyper_parameters={**definition["StaticHyperParameters"],
                                                      "max_depth": "4"},
            algorithm_specification=definition["AlgorithmSpecification"],
            role_arn=definition["RoleArn"], input_data_config=definition["InputDataConfig"],
            output_data_config=definition["OutputDataConfig"],
            resource_config=definition["ResourceConfig"], vpc_config=None,
            stopping_condition=definition["StoppingCondition"], tags=[],
            enable_network_isolation=False, enable_inter_container_traffic_encryption=False,
            enable_managed_spot_training=False, checkpoint_config=None, debug_hook_config=None,
            debug_rule_configurations=None, tensor_board_output_config=None,
            experiment_config=None)
        job.hyper_parameter_tuning_job_status = "Completed"
        job.training_job_status_counters = {"Completed": 3, "InProgress": 0, "RetryableError": 0,
                                            "NonRetryableError": 1, "Stopped": 0}
        trial = backend.training_jobs[best]
        job.best_training_job = {
            "TrainingJobName": best, "TrainingJobArn": trial.arn,
            "CreationTime": trial.creation_time, "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"max_depth": "4"},
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Maximize", "MetricName": "validation:accuracy", "Value": 0.97}}

    def create_job(backend: Any, *args: Any, **kwargs: Any) -> Any:
        arn = create(backend, *args, **kwargs)
        name = kwargs["hyper_parameter_tuning_job_name"]
        sagemaker.creates.append(("tuning", name))
        if state["initial"] == "Completed":
            complete(backend, name)
        else:
            backend.hyper_parameter_tuning_jobs[name].hyper_parameter_tuning_job_status = \
                "InProgress"
            if state["initial"] == "InProgress, then Completed":
                threading.Timer(1.0, complete, (backend, name)).start()
        return arn

    def stop_job(response: Any) -> Any:  # moto has no StopHyperParameterTuningJob
        from moto.core.responses import EmptyResult

        name = response._get_param("HyperParameterTuningJobName")
        tuning_jobs.requests.setdefault("stop_hyper_parameter_tuning_job", []).append(name)
        job = response.sagemaker_backend.hyper_parameter_tuning_jobs[name]
        job.hyper_parameter_tuning_job_status = "Stopped"
        return EmptyResult()

    tuning_jobs = sagemaker
    monkeypatch.setattr(SageMakerModelBackend, "create_hyper_parameter_tuning_job", create_job)
    monkeypatch.setattr(SageMakerResponse, "stop_hyper_parameter_tuning_job", stop_job,
                        raising=False)
    sagemaker.tuning = state
    return sagemaker


CLOUD_TUNING = {
    "training_step": "trainer", "instance_type": "ml.c5.xlarge",
    "hyperparameters": {"n_estimators": 50},
    "tuning": {
        "objective": {"metric": "validation:accuracy", "type": "Maximize"},
        "metric_definitions": [{"name": "validation:accuracy", "regex": "accuracy=([0-9.]+)"}],
        "ranges": {"max_depth": {"type": "integer", "min_value": 2, "max_value": 8},
                   "min_samples_leaf": {"type": "continuous", "min_value": 0.01,
                                        "max_value": 0.2, "scaling_type": "Logarithmic"},
                   "criterion": {"type": "categorical", "values": ["gini", "entropy"]}},
        "strategy": "Bayesian", "max_jobs": 6, "max_parallel_jobs": 2, "random_seed": 7}}
CLOUD_TUNE = '''
from smtask import sm_tuning

@sm_tuning(step="tuner", deferrable=DEFERRABLE)
def tune():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}

@sm_transform(step="transformer")
def predict(model):
    return "s3://smtask-cloud-tests/splits/batch/"

predict(tune())
'''


def test_sagemaker_tuning_job_is_created_from_the_steps_settings(tmp_path, tuning_jobs):
    result = run_dag(CLOUD_TUNE.replace("DEFERRABLE", "False"),
                     config=cloud_config(tmp_path, tuner=CLOUD_TUNING))
    assert result.ok, result.states
    out = result.xcom["tune"]
    request = tuning_jobs.request("create_hyper_parameter_tuning_job")
    assert request["HyperParameterTuningJobName"] == out["job_name"]
    assert len(out["job_name"]) <= 32 and out["job_name"].startswith("churn-tuner-")
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["RandomSeed"] == 7
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": "validation:accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6,
                                        "MaxParallelTrainingJobs": 2}
    ranges = config["ParameterRanges"]
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "max_depth", "MinValue": "2", "MaxValue": "8", "ScalingType": "Auto"}]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "min_samples_leaf", "MinValue": "0.01", "MaxValue": "0.2",
         "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "criterion", "Values": ["gini", "entropy"]}]
    definition = request["TrainingJobDefinition"]
    spec = definition["AlgorithmSpecification"]
    assert spec["TrainingImage"] == IMAGE
    assert spec["MetricDefinitions"] == [{"Name": "validation:accuracy",
                                          "Regex": "accuracy=([0-9.]+)"}]
    static = definition["StaticHyperParameters"]
    # the training step's, under the tuning step's own; the tuned ones are not static
    assert static["n_estimators"] == "50" and static["label_column"] == "label"
    assert "max_depth" not in static and "criterion" not in static
    assert static["sagemaker_program"] == "train.py"
    # the source dir as one tarball, uploaded by content beside the other code
    code = static["sagemaker_submit_directory"].removeprefix(f"s3://{BUCKET}/")
    assert code.startswith("pipelines/_code/") and code.endswith("/sourcedir.tar.gz")
    packed = client("s3").get_object(Bucket=BUCKET, Key=code)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert tar.extractfile("train.py").read() == (ROOT / "code" / "train.py").read_bytes()
    assert not [o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])
                if not o["Key"].startswith(("pipelines/", "splits/", "m/"))]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in definition["InputDataConfig"]}
    assert channels["train"] == "s3://smtask-cloud-tests/splits/train/"
    assert channels["sm_drivers"].startswith(f"s3://{BUCKET}/pipelines/_code/")
    assert definition["ResourceConfig"]["InstanceType"] == "ml.c5.xlarge"
    assert definition["RoleArn"] == ROLE
    assert definition["OutputDataConfig"]["S3OutputPath"].startswith(
        f"s3://{BUCKET}/pipelines/churn/") and \
        definition["OutputDataConfig"]["S3OutputPath"].endswith("/tuner")
    assert {"Key": "smtask:step", "Value": "tuner"} in request["Tags"]
    # the result: the best training job's model, in a training result's shape
    best = f"{out['job_name']}-003-1a2b3c4d"
    model = client().describe_training_job(TrainingJobName=best)["ModelArtifacts"][
        "S3ModelArtifacts"]
    assert out == {"job_name": out["job_name"], "model": model, "image": IMAGE,
                   "outputs": {"model": model}, "best_training_job": best,
                   "hyperparameters": {"max_depth": "4"},
                   "objective": {"metric": "validation:accuracy", "type": "Maximize",
                                 "value": 0.97},
                   "trials": {"completed": 3, "failed": 1, "stopped": 0},
                   # its models serve with the code its trials ran: the same tarball
                   "framework": None, "code": {"program": "train.py", "submit_directory":
                                               static["sagemaker_submit_directory"]},
                   "usage": {"seconds": 123}}  # moto's ConsumedResources.RuntimeInSeconds
    # a transform takes it as it takes a training result
    assert tuning_jobs.request("create_model")["PrimaryContainer"]["ModelDataUrl"] == model


def test_a_deferrable_tuning_task_waits_in_a_trigger_and_collects_the_best_model(
        tmp_path, tuning_jobs, capfd):
    tuning_jobs.tuning["initial"] = "InProgress, then Completed"
    result = run_dag(CLOUD_TUNE.replace("DEFERRABLE", "True"),
                     config=cloud_config(tmp_path, tuner=CLOUD_TUNING))
    assert result.ok, result.states
    out = result.xcom["tune"]
    assert out["best_training_job"] == f"{out['job_name']}-003-1a2b3c4d"
    assert out["model"].endswith(f"/{out['best_training_job']}/output/model.tar.gz")
    assert [kind for kind, _ in tuning_jobs.creates].count("tuning") == 1
    captured = capfd.readouterr()
    assert "new_state=deferred" in captured.out + captured.err


def test_a_retried_tuning_task_reuses_its_completed_job(tmp_path, tuning_jobs, crash_once):
    calls = crash_once("outputs", "tuning")
    body = CLOUD_TUNE.replace("DEFERRABLE", "False").replace(
        'step="tuner",', 'step="tuner", retries=1, retry_delay=0,')
    result = run_dag(body, config=cloud_config(tmp_path, tuner=CLOUD_TUNING))
    assert result.ok, result.states
    assert [kind for kind, _ in tuning_jobs.creates].count("tuning") == 1
    assert len(calls) == 2


def test_a_tuning_job_past_its_wait_timeout_is_stopped(tmp_path, tuning_jobs, capfd):
    tuning_jobs.tuning["initial"] = "InProgress"
    result = run_dag(TUNE.replace("DATA", '"s3://smtask-cloud-tests/splits/train/"'),
                     config=cloud_config(tmp_path, tuner={**CLOUD_TUNING,
                                                          "wait_timeout_seconds": 1}))
    assert result.states == {"tune": "failed"}
    (_, name), = tuning_jobs.creates
    assert tuning_jobs.requests["stop_hyper_parameter_tuning_job"] == [name]
    assert client().describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
        "HyperParameterTuningJobStatus"] == "Stopped"
    assert f"tuning job {name} failed: still InProgress after the 1 s wait_timeout_seconds" in \
        capfd.readouterr().out
