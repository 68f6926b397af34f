"""SageMaker's cost levers: managed spot training (its wait, its checkpoints under the run's
prefix, a retry resuming from them, in both modes), warm pools, and what every finished job
used (its seconds, its instances, its billable seconds) in the task's result and its log."""

from __future__ import annotations

import datetime as dt
import json
import stat
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import containers_with_label, kinds_of, run_dag, write_config
from test_cloud import (  # noqa: F401
    BUCKET,
    RETRYING,
    SPLIT,
    TRAIN,
    TRANSFORM,
    client,
    cloud_config,
    crash_once,
    moto_server,
    sagemaker,
)
from test_tuning import tuner, tuning_jobs  # noqa: F401

from smtask.errors import ParamsError

SPOT = {"use_spot_instances": True, "max_runtime_seconds": 600, "max_wait_seconds": 1200}
TUNE = '''
from smtask import sm_tuning

@sm_tuning(step="tuner")
def tune():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}
tune()
'''


def resolve(tmp_path: Path, trainer: dict[str, Any], mode: str = "local") -> dict[str, Any]:
    from smtask.params import load_config, resolve

    defaults = load_config(write_config(tmp_path, mode=mode, steps={"trainer": trainer}))
    return resolve(defaults, None, kinds_of({"trainer": "training"}))


# --- the settings: SageMaker's rules, named before any job -------------------------------------

@pytest.mark.parametrize(("trainer", "expected"), [
    ({"use_spot_instances": True},
     "steps.trainer.use_spot_instances: needs max_wait_seconds (how long the job may wait for "
     "spot capacity and run, at least max_runtime_seconds: 1800)"),
    ({"max_wait_seconds": 3600},
     "steps.trainer.max_wait_seconds: only with use_spot_instances"),
    ({"use_spot_instances": True, "max_wait_seconds": 900},
     "steps.trainer.max_wait_seconds: 900 is less than max_runtime_seconds 1800"),
    ({"use_spot_instances": True, "max_wait_seconds": 3600, "max_runtime_seconds": 7200},
     "steps.trainer.max_wait_seconds: 3600 is less than max_runtime_seconds 7200"),
    ({"use_spot_instances": "yes"}, "steps.trainer.use_spot_instances: 'yes' is not of type"),
    ({"keep_alive_period_seconds": 3601},
     "steps.trainer.keep_alive_period_seconds: 3601 is greater than the maximum of 3600"),
    ({"keep_alive_period_seconds": -1}, "steps.trainer.keep_alive_period_seconds: -1 is less"),
    ({"checkpoints": {"local_path": "/opt/ml/model"}},
     "steps.trainer.checkpoints.local_path: /opt/ml/model overlaps /opt/ml/model"),
    ({"checkpoints": {"local_path": "/opt/ml/input/data/ck"}},
     "steps.trainer.checkpoints.local_path: /opt/ml/input/data/ck overlaps /opt/ml/input"),
    ({"checkpoints": {"local_path": "/opt/ml"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml' is not a folder under /opt/ml/ of "),
    ({"checkpoints": {"local_path": "/opt/ml/ck/../model"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml/ck/../model' is not a folder under "),
    ({"checkpoints": {"s3_uri": "s3://elsewhere/ck"}}, "steps.trainer.checkpoints.s3_uri: "),
    ({"checkpoints": {"local_path": "/opt/ml/./model"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml/./model' is not a plain path (write "
     "/opt/ml/model)"),
    ({"checkpoints": {"local_path": "/opt/ml//input"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml//input' is not a plain path"),
    ({"checkpoints": {"local_path": "/opt/ml/ck:ro"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml/ck:ro' is not a folder under /opt/ml/ of"),
    ({"checkpoints": {"local_path": "/opt/ml/ck\x00x"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml/ck\\x00x' is not a folder under "),
    ({"checkpoints": {"local_path": "/opt/ml/ck\nx"}},
     "steps.trainer.checkpoints.local_path: '/opt/ml/ck\\nx' is not a folder under "),
    ({"use_spot_instances": True, "max_wait_seconds": 10**30},
     "steps.trainer.max_wait_seconds: 1000000000000000000000000000000 is greater than the "
     "maximum of 2419200"),
])
def test_bad_cost_settings_are_refused_naming_the_step_and_key(tmp_path, trainer, expected):
    from smtask.params import deep_merge

    cfg = deep_merge(json.loads((Path(__file__).parents[1] / "config.json").read_text())
                     ["steps"]["trainer"], trainer)
    with pytest.raises(ParamsError) as refused:
        resolve(tmp_path, {k: v for k, v in cfg.items() if v is not None})
    assert expected in str(refused.value), str(refused.value)


def test_the_wait_is_checked_against_the_default_max_runtime():
    from smtask.kinds.training import check

    assert list(check("trainer", {"use_spot_instances": True, "max_wait_seconds": 3600}, {})) == [
        "steps.trainer.max_wait_seconds: 3600 is less than max_runtime_seconds 86400 "
        "(SageMaker's rule: the wait includes the run)"]


def test_local_checkpoints_need_file_artifacts():
    from smtask.kinds.training import check

    shared = {"mode": "local", "local": {"artifacts": "s3://b/a", "s3_endpoint": "http://x"}}
    assert list(check("trainer", {**SPOT}, shared)) == [
        "steps.trainer.checkpoints: local mode keeps checkpoints under file:// artifacts only "
        "(local.artifacts is s3://); set checkpoints to false"]
    assert list(check("trainer", {**SPOT, "checkpoints": False}, shared)) == []
    assert list(check("trainer", {**SPOT}, {**shared, "mode": "sagemaker"})) == []


def test_good_cost_settings_pass_and_checkpoints_default_on_for_spot(tmp_path):
    from smtask.kinds.common import StepContext
    from smtask.kinds.training import checkpoints

    params = resolve(tmp_path, {**SPOT, "keep_alive_period_seconds": 0}, mode="sagemaker")
    ctx = StepContext("trainer", params, "churn-trainer-x", "s3://b/p/churn/d/r/trainer")
    assert checkpoints(ctx) == {"uri": "s3://b/p/churn/d/r/trainer/checkpoints",
                                "local_path": "/opt/ml/checkpoints"}
    params["steps"]["trainer"]["checkpoints"] = False
    assert checkpoints(ctx) is None
    params["steps"]["trainer"]["checkpoints"] = {}  # on, at the default folder
    assert checkpoints(ctx) == {"uri": "s3://b/p/churn/d/r/trainer/checkpoints",
                                "local_path": "/opt/ml/checkpoints"}
    params["steps"]["trainer"] = {"checkpoints": {"local_path": "/opt/ml/ck"}}
    assert checkpoints(ctx) == {"uri": "s3://b/p/churn/d/r/trainer/checkpoints",
                                "local_path": "/opt/ml/ck"}


@pytest.mark.parametrize("description", [
    {"ResourceConfig": {"InstanceCount": None}, "TrainingTimeInSeconds": 10},
    {"TrainingTimeInSeconds": "100"}, {"TrainingTimeInSeconds": float("nan")},
    {"TrainingTimeInSeconds": -5}, {"ResourceConfig": "x", "TrainingTimeInSeconds": 10},
    {"TrainingStartTime": dt.datetime(2026, 1, 1), "TrainingEndTime": dt.datetime.now(dt.UTC)},
    {"TrainingTimeInSeconds": 100, "BillableTimeInSeconds": 150,
     "EnableManagedSpotTraining": True},
], ids=["no-count", "string", "nan", "negative", "bad-resources", "mixed-zones", "over-billed"])
def test_odd_descriptions_give_what_can_be_read_and_never_fail(description):
    """The figures are a report: what a description holds that is no number is left out."""
    from smtask.kinds import processing, training, transform, tuning

    used = training.usage(description)
    assert used == {} or (used["seconds"] >= 0 and used["instances"] >= 1
                          and used["billable_seconds"] >= 0), used
    assert "spot_savings_percent" not in used  # never a negative saving
    for odd in ({"ProcessingResources": "x"}, {"TransformResources": {"InstanceCount": None}},
                {"ConsumedResources": {"RuntimeInSeconds": "5"}}):
        for kind in (processing, transform, tuning):
            assert isinstance(kind.usage(odd), dict)


def test_a_heterogeneous_clusters_instances_are_counted():
    from smtask.kinds import training

    assert training.usage({"TrainingTimeInSeconds": 10, "ResourceConfig": {"InstanceGroups": [
        {"InstanceCount": 2}, {"InstanceCount": 3}]}}) == {
            "seconds": 10, "instances": 5, "billable_seconds": 50}


def test_a_usage_that_raises_is_said_and_fails_nothing():
    from dataclasses import replace

    from smtask import waiting
    from smtask.kinds import training

    said: list[str] = []
    broken = replace(training.KIND, usage=lambda d: 1 / 0)
    assert waiting.usage_of(broken, {"TrainingJobName": "j"}, said.append) == {}
    assert said and "ZeroDivisionError" in said[0]


# --- sagemaker mode, on moto --------------------------------------------------------------------

def _ran(seconds: float, **fields: Any) -> Any:
    """What a job's description says once it ran ``seconds`` (moto's start and end are equal)."""
    def complete(job: Any) -> None:
        end = dt.datetime.now(dt.UTC)
        for prefix in ("training", "processing", "transform"):
            setattr(job, f"{prefix}_start_time", end - dt.timedelta(seconds=seconds))
            setattr(job, f"{prefix}_end_time", end)
        for name, value in fields.items():
            setattr(job, name, value)
    return complete


def test_a_spot_job_asks_for_spot_its_wait_checkpoints_and_warm_pool_and_reports_its_bill(
        tmp_path, sagemaker, capfd):
    sagemaker.on_complete["training"] = _ran(100, training_time_in_seconds=100,
                                             billable_time_in_seconds=30)
    config = cloud_config(tmp_path, trainer={**SPOT, "instance_count": 2,
                                             "keep_alive_period_seconds": 600})
    result = run_dag(TRAIN, config=config)
    assert result.ok, result.states
    request = sagemaker.request("create_training_job")
    model = result.xcom["train"]["model"]
    prefix = model.rsplit("/", 3)[0]  # <prefix>/<job>/output/model.tar.gz
    assert prefix.endswith("/trainer"), model
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 600,
                                            "MaxWaitTimeInSeconds": 1200}
    assert request["CheckpointConfig"] == {"S3Uri": f"{prefix}/checkpoints",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 600
    # SageMaker's own per-instance figures, times the instances
    assert result.xcom["train"]["usage"] == {"seconds": 100, "instances": 2,
                                             "billable_seconds": 60, "spot": True,
                                             "spot_savings_percent": 70.0}
    out = capfd.readouterr().out
    assert "Training seconds: 100 on 2 instance(s)" in out
    assert "Billable seconds: 60 (managed spot training savings: 70.0%)" in out


def test_a_job_without_the_levers_sends_none_of_them(tmp_path, sagemaker):
    sagemaker.on_complete["training"] = _ran(42)
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.ok, result.states
    request = sagemaker.request("create_training_job")
    assert not request.get("EnableManagedSpotTraining")
    assert "CheckpointConfig" not in request
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]
    # no SageMaker figures: its start to its end, as the Amazon provider counts them
    assert result.xcom["train"]["usage"] == {"seconds": 42, "instances": 1, "billable_seconds": 42}


def test_a_retry_of_a_failed_spot_job_resumes_from_the_same_checkpoints(tmp_path, sagemaker):
    sagemaker.initial["training"] = [("Failed", "CapacityError: spot capacity lost"),
                                     ("Completed", "")]
    config = cloud_config(tmp_path, trainer=SPOT)
    result = run_dag(TRAIN.replace("@sm_training(", "@sm_training(retries=1, retry_delay=0, "),
                     config=config)
    assert result.ok, result.states
    first, second = sagemaker.requests["create_training_job"]
    assert first["TrainingJobName"] != second["TrainingJobName"]  # a new attempt's job
    assert first["CheckpointConfig"] == second["CheckpointConfig"]  # the same checkpoints
    assert first["CheckpointConfig"]["S3Uri"].endswith("/trainer/checkpoints")


def test_a_failed_job_is_billed_too_and_its_seconds_are_logged(tmp_path, sagemaker, capfd):
    sagemaker.initial["training"] = ("Failed", "AlgorithmError: out of memory")
    sagemaker.on_create["training"] = _ran(55, training_time_in_seconds=55,
                                           billable_time_in_seconds=55)
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.states["train"] == "failed", result.states
    out = capfd.readouterr().out
    assert "AlgorithmError: out of memory" in out
    assert "Training seconds: 55 on 1 instance(s)" in out and "Billable seconds: 55" in out


def test_a_deferred_job_that_failed_logs_its_bill_through_the_trigger(tmp_path, sagemaker,
                                                                       capfd):
    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.0, "Failed")
    sagemaker.on_create["training"] = _ran(9)
    result = run_dag(TRAIN, config=cloud_config(tmp_path, trainer={"deferrable": True}))
    assert result.states["train"] == "failed", result.states
    out = capfd.readouterr().out
    assert "Training seconds: 9 on 1 instance(s)" in out and "Billable seconds: 9" in out


def _put_checkpoint(sagemaker: Any, job: Any) -> None:
    """What a training job leaves in its checkpoint folder (moto's jobs write none)."""
    uri = urlparse(sagemaker.requests["create_training_job"][-1]["CheckpointConfig"]["S3Uri"])
    client("s3").put_object(Bucket=uri.netloc, Key=f"{uri.path.strip('/')}/state.json",
                            Body=job.training_job_name.encode())


def _checkpoints_left(sagemaker: Any) -> list[str]:
    uri = urlparse(sagemaker.requests["create_training_job"][-1]["CheckpointConfig"]["S3Uri"])
    found = client("s3").list_objects_v2(Bucket=uri.netloc, Prefix=uri.path.strip("/") + "/")
    return [o["Key"].rsplit("/", 1)[-1] for o in found.get("Contents", [])]


def test_a_rerun_of_a_completed_job_trains_anew_and_a_retry_resumes(tmp_path, sagemaker,
                                                                    crash_once, capfd):
    """The first attempt's job completes (leaving checkpoints) and the task dies after it.
    With if_job_completed: rerun the retry's new job starts from no checkpoint; a retry
    after a failed job resumes from the checkpoints it left."""
    crash_once("outputs")
    sagemaker.on_create["training"] = lambda job: _put_checkpoint(sagemaker, job)
    config = cloud_config(tmp_path, trainer={**SPOT, "if_job_completed": "rerun"})
    result = run_dag(RETRYING, config=config)
    assert result.ok, result.states
    first, second = sagemaker.requests["create_training_job"]
    assert first["CheckpointConfig"] == second["CheckpointConfig"]
    assert "that the completed job this rerun replaces left under" in capfd.readouterr().out
    # only the rerun's own checkpoint is there: the completed job's was removed before it
    assert _checkpoints_left(sagemaker) == ["state.json"]
    (_, rerun_name), = sagemaker.creates[1:]
    key = urlparse(second["CheckpointConfig"]["S3Uri"]).path.strip("/") + "/state.json"
    body = client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    assert body == rerun_name


def test_a_rerun_of_a_completed_transform_says_whose_outputs_it_removed(
        tmp_path, sagemaker, crash_once, capfd):
    crash_once("outputs", "transform")  # the first attempt dies after its job

    def predictions(job: Any) -> None:
        uri = urlparse(sagemaker.requests["create_transform_job"][-1]["TransformOutput"][
            "S3OutputPath"])
        client("s3").put_object(Bucket=uri.netloc, Key=uri.path.strip("/") + "/batch.csv.out",
                                Body=b"0.9\n")

    sagemaker.on_create["transform"] = predictions
    body = TRANSFORM.replace('@sm_transform(step="transformer")',
                             '@sm_transform(step="transformer", retries=1, retry_delay=0)')
    assert body != TRANSFORM
    result = run_dag(body, config=cloud_config(tmp_path, transformer={
        "if_job_completed": "rerun"}))
    assert result.ok, result.states
    out = capfd.readouterr().out
    assert "object(s) that the completed job this rerun replaces left under" in out, out[-3000:]
    assert "that a failed job left" not in out


def test_a_local_rerun_of_a_completed_job_mounts_no_checkpoint_of_it(tmp_path):
    from conftest import local_state

    from smtask.kinds.training import _checkpoints_mounted

    artifacts = tmp_path / "artifacts"
    folder = artifacts / "run" / "trainer" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "epoch-9.pt").write_text("the completed job's last state")
    session = local_state(tmp_path / "scratch")
    job = {"artifacts": artifacts.as_uri(), "checkpoints": {
        "uri": folder.as_uri(), "local_path": "/opt/ml/checkpoints"}}
    with _checkpoints_mounted(job, session, tmp_path / "job"):  # a retry: resumes
        assert (folder / "epoch-9.pt").exists()
    rerun = {**job, "checkpoints": {**job["checkpoints"], "fresh": True}}
    with _checkpoints_mounted(rerun, session, tmp_path / "job"):  # a rerun: trains anew
        assert folder.is_dir() and list(folder.iterdir()) == []
        assert session.smtask.job_mounts[str(tmp_path / "job")] == [
            (str(folder), "/opt/ml/checkpoints")]


def test_a_retry_after_a_failed_job_keeps_its_checkpoints(tmp_path, sagemaker, capfd):
    sagemaker.initial["training"] = [("Failed", "CapacityError: spot capacity lost"),
                                     ("Completed", "")]
    sagemaker.on_create["training"] = lambda job: (
        _put_checkpoint(sagemaker, job) if len(sagemaker.creates) == 1 else None)
    result = run_dag(RETRYING, config=cloud_config(tmp_path, trainer=SPOT))
    assert result.ok, result.states
    assert _checkpoints_left(sagemaker) == ["state.json"]  # the failed attempt's, resumed from
    assert "rerun replaces" not in capfd.readouterr().out


def test_processing_reports_its_instances_seconds(tmp_path, sagemaker, capfd):
    # SageMaker describes the job's resources as they were asked for (moto keeps none)
    sagemaker.on_complete["processing"] = lambda job: _ran(10, processing_resources=(
        sagemaker.request("create_processing_job")["ProcessingResources"]))(job)
    result = run_dag(SPLIT, config=cloud_config(tmp_path, splitor={"instance_count": 3}))
    assert result.ok, result.states
    assert result.xcom["split"]["usage"] == {"seconds": 10, "instances": 3, "billable_seconds": 30}
    out = capfd.readouterr().out
    assert "Processing seconds: 10 on 3 instance(s)" in out and "Billable seconds: 30" in out


def test_a_deferred_job_reports_its_bill_through_the_trigger(tmp_path, sagemaker):
    sagemaker.initial["training"] = ("InProgress", "")
    sagemaker.after["training"] = (1.0, "Completed")
    sagemaker.on_complete["training"] = _ran(7)
    result = run_dag(TRAIN, config=cloud_config(tmp_path, trainer={"deferrable": True}))
    assert result.ok, result.states
    assert result.xcom["train"]["usage"] == {"seconds": 7, "instances": 1, "billable_seconds": 7}


def test_a_tuning_step_turning_off_its_trainers_spot_takes_no_wait(tmp_path):
    from smtask.params import load_config, resolve

    steps = {"trainer": SPOT, "tuner": {**tuner(max_jobs=2, ranges={"x": {
        "type": "integer", "min_value": 0, "max_value": 3}}), "training_step": "trainer"}}
    kinds = kinds_of({"trainer": "training", "tuner": "tuning"})
    defaults = load_config(write_config(tmp_path, mode="sagemaker", steps=steps))
    assert resolve(defaults, None, kinds)["steps"]["tuner"]["max_wait_seconds"] == 1200
    off = resolve(defaults, {"steps": {"tuner": {"use_spot_instances": False}}}, kinds)
    assert "max_wait_seconds" not in off["steps"]["tuner"]  # not the trainer's wait
    assert off["steps"]["trainer"]["max_wait_seconds"] == 1200  # which keeps its own
    # a wait the tuning step sets itself, without spot, is still refused
    with pytest.raises(ParamsError, match=r"steps.tuner.max_wait_seconds: only with "):
        resolve(defaults, {"steps": {"tuner": {"use_spot_instances": False,
                                               "max_wait_seconds": 1200}}}, kinds)


def test_a_tuning_jobs_trials_get_spot_checkpoints_and_the_warm_pool(tmp_path, tuning_jobs):  # noqa: F811
    config = cloud_config(tmp_path, tuner={
        **tuner(max_jobs=2, ranges={"x": {"type": "integer", "min_value": 0, "max_value": 3}}),
        **SPOT, "keep_alive_period_seconds": 300})
    result = run_dag(TUNE, config=config)
    assert result.ok, result.states
    definition = tuning_jobs.request("create_hyper_parameter_tuning_job")["TrainingJobDefinition"]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 600,
                                               "MaxWaitTimeInSeconds": 1200}
    assert definition["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 300
    assert definition["CheckpointConfig"]["S3Uri"].endswith("/tuner/checkpoints")
    assert result.xcom["tune"]["usage"] == {"seconds": 123}  # moto's ConsumedResources


# --- local mode, in real containers -----------------------------------------------------------

def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_local_retry_resumes_from_the_checkpoints_its_first_attempt_left(
        tmp_path, loopback_guard, capfd):
    config = write_config(tmp_path, local={"artifacts": (tmp_path / "artifacts").as_uri()},
                          steps={"trainer": {"source_dir": "tests/scripts",
                                             "entry_script": "train_checkpoints.py",
                                             "hyperparameters": {}, **SPOT,
                                             "keep_alive_period_seconds": 60}})
    result = run_dag('''
@sm_training(step="trainer", retries=1, retry_delay=0)
def train():
    return {}
train()
''', config=config)
    assert result.ok, result.states
    out = capfd.readouterr().out
    # said before the first container started
    said = out.index("use_spot_instances, max_wait_seconds, keep_alive_period_seconds take "
                     "effect on SageMaker only")
    assert said < out.index("attempt 1, resumed from 0")
    assert "attempt 2, resumed from 1" in out and "3 file(s) from an earlier attempt" in out
    model = _path(result.xcom["train"]["model"])
    with tarfile.open(model) as tar:
        resumed = json.load(tar.extractfile("resumed.json"))  # type: ignore[arg-type]
    assert resumed["resumed_from"] == 1
    # the checkpoints stay under the run's prefix, the job's link to a host file removed
    folder = model.parent / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["open-file", "state.json", "suid-tool"]
    assert json.loads((folder / "state.json").read_text()) == {"attempts": 2}
    assert "removed passwd-link" in out
    for name in ("open-file", "suid-tool"):  # no setuid root program, nothing world-writable
        mode = (folder / name).stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), (name, oct(mode))
    usage = result.xcom["train"]["usage"]
    assert usage["billable_seconds"] == 0 and usage["instances"] == 1 and usage["seconds"] >= 0
    assert "(local mode: nothing is billed)" in out
    assert containers_with_label() == []


def test_code_is_uploaded_once_per_content_small_files_in_one_put_large_ones_multipart(
        tmp_path, sagemaker):
    from types import SimpleNamespace

    from smtask.kinds.common import SMALL_FILE, upload_once

    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text("print('train')\n")
    (code / "pkg" / "util.py").write_text("X = 1\n")
    big = bytes(range(256)) * (SMALL_FILE // 256 + 4096)  # past the multipart threshold
    (code / "weights.bin").write_bytes(big)
    s3 = client("s3")
    session = SimpleNamespace(s3_client=s3)
    folder = upload_once(session, str(code), f"s3://{BUCKET}/_code")
    key = urlparse(folder).path.strip("/")
    body = lambda name: s3.get_object(Bucket=BUCKET, Key=f"{key}/{name}")["Body"].read()  # noqa: E731
    assert body("train.py") == b"print('train')\n" and body("pkg/util.py") == b"X = 1\n"
    assert body("weights.bin") == big
    assert s3.head_object(Bucket=BUCKET, Key=f"{key}/weights.bin")["ETag"].endswith('-2"')
    assert s3.head_object(Bucket=BUCKET, Key=f"{key}/train.py")["ETag"].count("-") == 0
    # the same content again: found complete, nothing uploaded
    s3.delete_object(Bucket=BUCKET, Key=f"{key}/train.py")
    assert upload_once(session, str(code), f"s3://{BUCKET}/_code") == folder
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{key}/train.py")
    single = upload_once(session, str(code / "train.py"), f"s3://{BUCKET}/_code")
    assert single.endswith("/train.py") and single != f"{folder}train.py"
