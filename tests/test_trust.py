"""Trust at the edges: a run's conf cannot run or read anything, every run writes only its own
outputs, and only a completed job's outputs are published. Tried as a hostile user would, in
real containers (local mode) and against moto (sagemaker mode)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, containers_with_label, kinds_of, run_dag, write_config
from test_cloud import (  # noqa: F401
    BUCKET,
    client,
    cloud_config,
    get_s3,
    moto_server,
    put_s3,
    sagemaker,
)

from smtask import params
from smtask.errors import ParamsError

STEPS = kinds_of({"splitor": "processing", "trainer": "training", "transformer": "transform"})


def path(uri: str) -> Path:
    return Path(urlparse(uri).path)


def refusal(conf: dict, config: dict | None = None, steps: dict | None = None) -> str:
    """The one-line refusal of ``conf`` over the example's config (deep-merged with ``config``)."""
    defaults = params.deep_merge(params.load_config(Path(__file__).parent.parent / "config.json"),
                                 config or {})
    with pytest.raises(ParamsError) as refused:
        params.resolve(defaults, conf, kinds_of(steps) if steps else STEPS)
    return str(refused.value)


# --- no conf value is interpreted by a shell, compose or a template ----------------------------

@pytest.mark.parametrize("value", ["x'; echo INJECTED-$(id -u); echo '", "it's"])
def test_a_quote_in_a_scripts_hyperparameter_is_refused_before_any_job(value):
    message = refusal({"steps": {"trainer": {"hyperparameters": {"mode": value}}}})
    assert "steps.trainer.hyperparameters.mode: a script's hyperparameter may not contain '" \
        in message


@pytest.mark.parametrize("name", ["a;id", "a b", "a.b", "x$(id)"])
def test_a_scripts_hyperparameter_name_must_be_a_shell_name(name):
    message = refusal({"steps": {"trainer": {"hyperparameters": {name: 1}}}})
    assert "a script's hyperparameter name is A-Z a-z 0-9 _ - only" in message


def test_a_quote_in_a_tuned_categorical_value_is_refused():
    tuner = {"source_dir": "code", "entry_script": "train.py", "tuning": {
        "objective": {"metric": "acc"}, "metric_definitions": [{"name": "acc", "regex": "a=(.*)"}],
        "strategy": "Grid", "ranges": {"criterion": {"type": "categorical",
                                                     "values": ["gini", "x'; id; '"]}}}}
    message = refusal({}, {"steps": {"tuner": tuner}}, {"tuner": "tuning"})
    assert "steps.tuner.tuning.ranges.criterion: a script's hyperparameter may not contain '" \
        in message


def test_a_built_in_algorithm_takes_any_one_line_hyperparameter():
    """No driver script: the algorithm reads hyperparameters.json."""
    defaults = params.deep_merge(params.load_config(Path(__file__).parent.parent / "config.json"),
                                 {"steps": {"algo": {"image": {"framework": "knn", "version": "1"},
                                                     "hyperparameters": {"k": "it's"}}}})
    params.resolve(defaults, {}, kinds_of({"algo": "training"}))


@pytest.mark.parametrize(("conf", "expected"), [
    ({"hyperparameters": {"note": "two\nlines"}},
     "steps.trainer.hyperparameters.note: 'two\\nlines' is more than one line"),
    ({"environment": {"1ST": "x"}}, "steps.trainer.environment.1ST: '1ST' is not a variable name"),
    ({"environment": {"A-B": "x"}}, "steps.trainer.environment.A-B: 'A-B' is not a variable name"),
    ({"tags": {"aws:owner": "me"}},
     "steps.trainer.tags.'aws:owner': 'aws:owner' has a character AWS's tags refuse"),
    ({"tags": {"team": "ml;rm"}}, "steps.trainer.tags.team: 'ml;rm' has a character AWS's tags"),
])
def test_what_sagemaker_refuses_is_refused_with_the_key_named(conf, expected):
    assert expected in refusal({"steps": {"trainer": conf}})


@pytest.mark.parametrize("name", ["BASH_ENV", "PS4", "LD_PRELOAD", "PYTHONPATH", "PIP_INDEX_URL",
                                  "SAGEMAKER_SUBMIT_DIRECTORY"])
def test_a_run_may_not_set_a_variable_that_makes_the_job_run_something_else(name):
    message = refusal({"steps": {"trainer": {"environment": {name: "/opt/ml/input/x"}}}})
    assert f"steps.trainer.environment.{name}: a run's conf may not change it" in message


def test_the_author_may_set_such_a_variable_and_allow_a_run_to_change_it():
    defaults = params.deep_merge(
        params.load_config(Path(__file__).parent.parent / "config.json"),
        {"steps": {"trainer": {"environment": {"PYTHONPATH": "/opt/ml/code/lib"}}},
         "conf_may_override": ["steps.trainer.environment.PYTHONPATH"]})
    resolved = params.resolve(defaults, {"steps": {"trainer": {"environment": {
        "PYTHONPATH": "/opt/ml/code/other"}}}}, STEPS)
    assert resolved["steps"]["trainer"]["environment"]["PYTHONPATH"] == "/opt/ml/code/other"


def test_a_run_may_not_change_a_jobs_command():
    message = refusal({"steps": {"splitor": {"command": ["bash", "-c", "env"]}}})
    assert "steps.splitor.command: a run's conf may not change it" in message


# (not JSON: the SDK's driver, like AWS's training toolkit, decodes a hyperparameter that is)
LITERALS = ["${SECRET}", "$SECRET", "costs $5", "$(id -u)", "`id -u`", 'say "dq"', "a;b|c&d", "$$"]


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_processing_jobs_arguments_and_environment_arrive_literally(
        tmp_path, loopback_guard, monkeypatch):
    monkeypatch.setenv("SECRET", "worker-secret-4711")  # the worker's environment
    config = write_config(tmp_path, steps={"splitor": {
        "code_path": "tests/scripts/reports_what_it_got.py", "arguments": [],
        "outputs": {"report": {"source": "/opt/ml/processing/report"}}}})
    environment = {f"V{i}": value for i, value in enumerate(LITERALS)}
    conf = {"steps": {"splitor": {"arguments": LITERALS, "environment": {
        **environment, "REPORT_VARIABLES": ",".join(environment)}}}}
    result = run_dag('''
@sm_processing(step="splitor")
def split():
    return {}
split()
''', config=config, conf=conf)
    assert result.ok, result.states
    report = json.loads((path(result.xcom["split"]["outputs"]["report"]) / "report.json").read_text())
    assert report["argv"] == LITERALS
    assert report["env"] == environment
    assert "worker-secret-4711" not in json.dumps(report)
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_training_scripts_hyperparameters_arrive_literally(tmp_path, loopback_guard, monkeypatch):
    monkeypatch.setenv("SECRET", "worker-secret-4711")
    hyperparameters = {f"h{i}": value for i, value in enumerate(LITERALS)}
    config = write_config(tmp_path, steps={"trainer": {
        "source_dir": "tests/scripts", "entry_script": "reports_what_it_got.py",
        "hyperparameters": {}, "environment": {"NOTE": "${SECRET} costs $5",
                                               "REPORT_VARIABLES": "NOTE"}}})
    result = run_dag('''
@sm_training(step="trainer")
def train():
    return {}
train()
''', config=config, conf={"steps": {"trainer": {"hyperparameters": hyperparameters}}})
    assert result.ok, result.states
    with tarfile.open(path(result.xcom["train"]["model"])) as tar:
        report = json.load(tar.extractfile("report.json"))  # type: ignore[arg-type]
    assert {k: v for k, v in report["sm_hps"].items() if k in hyperparameters} == hyperparameters
    assert {k: v for k, v in report["sm_hp"].items() if k.startswith("SM_HP_H")} == {
        f"SM_HP_H{i}": value for i, value in enumerate(LITERALS)}
    assert report["env"] == {"NOTE": "${SECRET} costs $5"}
    args = report["argv"]
    assert {args[args.index(f"--h{i}") + 1] for i in range(len(LITERALS))} == set(LITERALS)
    assert "worker-secret-4711" not in json.dumps(report)


# --- every run writes only its own outputs ------------------------------------------------------

def test_two_dags_sharing_a_pipeline_name_and_a_run_id_write_apart(tmp_path, sagemaker):
    """A copied DAG that kept its config, or two @daily DAGs (both run scheduled__<date>)."""
    from datetime import UTC, datetime

    when = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    config = cloud_config(tmp_path)
    split = '''
@sm_processing(step="splitor")
def split():
    return {"data-source": "s3://smtask-cloud-tests/data/"}
split()
'''
    first, second = (run_dag(split, config=config, logical_date=when) for _ in range(2))
    assert first.ok and second.ok and first.run_id == second.run_id
    outputs = [r.xcom["split"]["outputs"]["train"] for r in (first, second)]
    assert outputs[0] != outputs[1]
    assert all(f"/churn/{dag}/" in uri for uri, dag in zip(
        outputs, (first.dag_id, second.dag_id), strict=True))


# --- only a completed job's outputs are published ------------------------------------------------

FAILS_AFTER_WRITING = {"splitor": {
    "code_path": "tests/scripts/writes_then_fails.py", "arguments": [],
    "outputs": {"train": {"source": "/opt/ml/processing/train"}}}}
SPLIT = '''
@sm_processing(step="splitor")
def split():
    return {}
split()
'''


def _published(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_failed_processing_job_publishes_none_of_its_outputs(tmp_path, loopback_guard, capfd):
    artifacts = tmp_path / "artifacts"
    config = write_config(tmp_path, local={"artifacts": artifacts.as_uri()},
                          steps=FAILS_AFTER_WRITING)
    result = run_dag(SPLIT, config=config)
    assert result.states == {"split": "failed"}
    assert "failed after writing the outputs" in capfd.readouterr().out
    assert _published(artifacts) == []  # no part, no _SUCCESS, no temporary folder
    assert containers_with_label() == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system (tmpfs) for the artifacts: the copy of a bigger output hits ENOSPC."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_full_disk_fails_in_one_line_and_publishes_nothing(
        tmp_path, loopback_guard, capfd, small_disk):
    config = write_config(tmp_path, local={"artifacts": small_disk.as_uri()},
                          steps=FAILS_AFTER_WRITING)
    result = run_dag(SPLIT, config=config,
                     conf={"steps": {"splitor": {"arguments": ["--size-mb", "4"]}}})
    assert result.states == {"split": "failed"}
    out = capfd.readouterr().out
    line = next(line for line in out.splitlines() if "while copying the job's outputs" in line)
    assert "step 'splitor' output 'train': No space left on device" in line
    assert "outputs (4.0 MB) to" in line and "MB free of 2.0 MB); nothing was published" in line
    assert "shutil.Error" not in out
    assert _published(small_disk) == []  # neither truncated parts nor the marker
    assert containers_with_label() == []


def test_a_rerun_after_a_failed_job_publishes_only_its_own_outputs(tmp_path, sagemaker):
    """On SageMaker a failed job may have written part of its outputs: they are no result."""
    sagemaker.initial["processing"] = [("Failed", "AlgorithmError: boom"), ("Completed", "")]

    def writes(job):
        for output in job.processing_output_config["Outputs"]:
            status = job.processing_job_status
            put_s3(output["S3Output"]["S3Uri"] + ("/stale.csv" if status == "Failed" else
                                                  "/part-0.csv"), status)

    sagemaker.on_create["processing"] = writes
    config = cloud_config(tmp_path, splitor={"if_job_failed": "rerun"})
    body = SPLIT.replace("return {}", 'return {"data-source": "s3://smtask-cloud-tests/data/"}')
    first = run_dag(body.replace("@sm_processing(", "@sm_processing(retries=1, retry_delay=0, "),
                    config=config)
    assert first.ok, first.states
    names = [name for kind, name in sagemaker.creates if kind == "processing"]
    assert len(names) == 2 and names[1].endswith("-r2-" + names[0][-8:])
    train = first.xcom["split"]["outputs"]["train"]
    keys = [o["Key"] for o in client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix=train.removeprefix(f"s3://{BUCKET}/") + "/")["Contents"]]
    assert [k.rsplit("/", 1)[1] for k in keys] == ["part-0.csv"]
    assert get_s3(f"{train}/part-0.csv") == "Completed"


# --- local mode enforces the time limits as SageMaker does -------------------------------------

@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_local_job_past_its_max_runtime_is_stopped_and_fails_naming_the_limit(
        tmp_path, loopback_guard, capfd):
    import time

    artifacts = tmp_path / "artifacts"
    config = write_config(tmp_path, local={"artifacts": artifacts.as_uri()}, steps={"splitor": {
        "code_path": "tests/scripts/sleeps.py", "arguments": [], "max_runtime_seconds": 4,
        "wait_timeout_seconds": 60, "outputs": {"train": {"source": "/opt/ml/processing/train"}}}})
    started = time.monotonic()
    result = run_dag(SPLIT, config=config)
    took = time.monotonic() - started
    assert result.states == {"split": "failed"}
    assert took < 40, took  # not the script's 120 s
    out = capfd.readouterr().out
    assert "stopped after 4 s: its max_runtime_seconds passed" in out
    assert "MaxRuntimeExceeded" in out and "sleeps.py finished" not in out
    assert _published(artifacts) == []
    assert containers_with_label() == []


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_local_training_past_the_wait_timeout_is_stopped(tmp_path, loopback_guard, capfd):
    config = write_config(tmp_path, steps={"trainer": {
        "source_dir": "tests/scripts", "entry_script": "train_sleeps.py", "hyperparameters": {},
        "wait_timeout_seconds": 4}})
    result = run_dag('''
@sm_training(step="trainer")
def train():
    return {}
train()
''', config=config)
    assert result.states == {"train": "failed"}
    out = capfd.readouterr().out
    assert "still running after the 4 s wait_timeout_seconds; the job was stopped" in out
    assert "train_sleeps.py finished" not in out
    assert containers_with_label() == []


# --- a lost create answer re-attaches in the same attempt --------------------------------------

TRAIN = '''
@sm_training(step="trainer")
def train():
    return {"train": "s3://smtask-cloud-tests/splits/train/"}
train()
'''


@pytest.mark.parametrize("kind", ["processing", "training"])
def test_a_lost_create_answer_reattaches_to_the_jobs_own_job(tmp_path, sagemaker, capfd, kind):
    sagemaker.lose_answers[kind] = 1
    body = TRAIN if kind == "training" else SPLIT.replace(
        "return {}", 'return {"data-source": "s3://smtask-cloud-tests/data/"}')
    result = run_dag(body, config=cloud_config(tmp_path))  # no retries: the same attempt
    assert result.ok, result.states
    assert [k for k, _ in sagemaker.creates] == [kind]  # one job, no -r2
    assert "the answer was lost: re-attaching to it" in capfd.readouterr().out


def test_a_lost_create_model_answer_uses_the_model_this_task_made(tmp_path, sagemaker,
                                                                   monkeypatch):
    """CreateModel's answer lost (botocore retries it: ResourceInUse): the model carries this
    task instance's tag, so the transform goes on with it; another's model fails the task."""
    from moto.sagemaker.models import SageMakerModelBackend
    from test_cloud import TRANSFORM, lost_answer

    real, lost = SageMakerModelBackend.create_model, []

    def create_model(backend, *args, **kwargs):
        model = real(backend, *args, **kwargs)
        if not lost:
            lost.append(kwargs.get("model_name"))
            raise lost_answer()
        return model

    monkeypatch.setattr(SageMakerModelBackend, "create_model", create_model)
    result = run_dag(TRANSFORM, config=cloud_config(tmp_path))
    assert result.ok, result.states
    assert result.xcom["predict"]["model_name"] == lost[0]
    assert [k for k, _ in sagemaker.creates] == ["transform"]


def test_a_job_of_the_same_name_that_another_made_is_left_alone(tmp_path, sagemaker, capfd):
    """ResourceInUse for a job without this task instance's tag (made between the task's look
    for its job and its create): not this task's, so neither adopted nor stopped."""
    def made_by_another(job):
        job.tags = [t for t in job.tags if t["Key"] != "smtask:task-instance"]

    sagemaker.on_create["training"] = made_by_another
    sagemaker.lose_answers["training"] = 1
    result = run_dag(TRAIN, config=cloud_config(tmp_path))
    assert result.states == {"train": "failed"}
    out = capfd.readouterr().out
    assert "a job of this name exists that this task instance did not create" in out
    (name,) = [n for _, n in sagemaker.creates]
    assert client().describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Completed"


# --- a job someone else stopped -----------------------------------------------------------------

SPLIT_S3 = '''
@sm_processing(step="splitor", retries=1, retry_delay=0)
def split():
    return {"data-source": "s3://smtask-cloud-tests/data/"}
split()
'''


def test_a_job_stopped_by_hand_fails_with_when_and_stays_stopped(tmp_path, sagemaker, capfd):
    sagemaker.initial["processing"] = ("InProgress", "")
    sagemaker.after["processing"] = (1.0, "Stopped")  # a person stops it in the console
    result = run_dag(SPLIT_S3, config=cloud_config(tmp_path))
    assert result.states == {"split": "failed"}
    out = capfd.readouterr().out
    assert "the job was stopped at 20" in out and "not by this task" in out
    assert "if_job_stopped is 'fail' (the default): a job stopped by hand stays stopped" in out
    assert len(sagemaker.creates) == 1  # the retry started no new job


def test_if_job_stopped_rerun_starts_a_new_job(tmp_path, sagemaker):
    sagemaker.initial["processing"] = [("InProgress", ""), ("Completed", "")]
    sagemaker.after["processing"] = (1.0, "Stopped")
    result = run_dag(SPLIT_S3, config=cloud_config(tmp_path, splitor={"if_job_stopped": "rerun"}))
    assert result.ok, result.states
    first, second = (name for _, name in sagemaker.creates)
    assert second.endswith("-r2-" + first[-8:])


def test_a_job_this_task_stopped_at_its_wait_timeout_is_rerun_by_the_retry(tmp_path, sagemaker):
    sagemaker.initial["processing"] = [("InProgress", ""), ("Completed", "")]
    result = run_dag(SPLIT_S3, config=cloud_config(tmp_path, splitor={"wait_timeout_seconds": 1}))
    assert result.ok, result.states
    first, second = (name for _, name in sagemaker.creates)
    assert second.endswith("-r2-" + first[-8:])
    arn = client().describe_processing_job(ProcessingJobName=first)["ProcessingJobArn"]
    assert {"Key": "smtask:stopped-by", "Value": "smtask"} in client().list_tags(
        ResourceArn=arn)["Tags"]


# --- refusals a person can read ------------------------------------------------------------------

def _serialized_example() -> object:
    """The example DAG as Airflow's API server holds it (serialized, then deserialized)."""
    import importlib.util

    from airflow.serialization.serialized_objects import DagSerialization

    spec = importlib.util.spec_from_file_location("churn_dag", ROOT / "dags" / "churn.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return DagSerialization.from_dict(DagSerialization.to_dict(module.churn()))


REFUSED_AT_TRIGGER = [
    ({"steps": {"trainr": {}}}, "Invalid input for param steps: steps.trainr: unknown step (known: "
                                "data-source, evaluate, splitor, trainer, transformer)"),
    ({"steps": {"trainer": {"hyperparameters": {f"h{i}": "x" * 40 for i in range(2000)}}}},
     "Invalid input for param steps: steps.trainer.hyperparameters: 2000 keys, at most 100"),
    ({"steps": {"trainer": {"instance_count": "two"}}},
     "Invalid input for param steps: steps.trainer.instance_count: 'two' is not of type "
     "'integer'"),
    ({"steps": {"trainer": {"hyperparameters": {"note": "x" * 100_000}}}},
     "Invalid input for param steps: steps.trainer.hyperparameters.note: 100000 characters, "
     "at most 2500"),
    ({"steps": {"data-source": {f"k{i}": i for i in range(500)}}},
     "Invalid input for param steps: steps.data-source: 500 keys, at most 100"),
]


@pytest.mark.parametrize(("conf", "refused"), REFUSED_AT_TRIGGER,
                         ids=["unknown-step", "2000-keys", "type", "long-value", "plain-step"])
def test_a_refusal_at_trigger_time_is_one_short_line(conf, refused):
    """What the API server answers (HTTP 400) and the trigger form shows: the serialized
    DAG's params, deep-merged with the conf, validated."""
    from airflow.exceptions import ParamValidationError

    dag = _serialized_example()
    with pytest.raises(ParamValidationError) as excinfo:
        dag.params.deep_merge(conf).validate()  # type: ignore[attr-defined]
    assert str(excinfo.value) == refused


@pytest.mark.parametrize(("conf", "refused"), REFUSED_AT_TRIGGER,
                         ids=["unknown-step", "2000-keys", "type", "long-value", "plain-step"])
def test_the_same_refusal_at_run_time_is_at_most_three_short_lines(conf, refused):
    message = refusal(conf, steps={"splitor": "processing", "trainer": "training",
                                   "transformer": "transform"})
    assert len(message.splitlines()) <= 3 and len(message) < 500
    key, rule = refused.split(": ", 2)[1:]
    # the first problem is the trigger's (a plain step's unknown keys may follow it)
    first = message.splitlines()[0]
    assert first.startswith("bad params") and f": {key}: " in first
    assert first.endswith(rule.split(" keys")[-1])


def test_a_plain_steps_settings_are_size_limited():
    message = refusal({"steps": {"data-source": {"blob": "x" * 70_000}}})
    assert "steps.data-source: 70065 bytes as JSON, at most 65536" in message  # with its own keys


# --- a second hostile trial: what else a run's conf could reach ---------------------------------

INJECTED_CONTENT_TYPE = "text/csv'$(touch /opt/ml/model/pwned)'"


def test_a_quote_in_a_scripts_channel_content_type_is_refused():
    """ModelTrainer's driver writes SM_INPUT_DATA_CONFIG (each channel's ContentType) as
    export NAME='<json>' into a file it sources: a ' ends the quoting, the rest runs as shell."""
    message = refusal({"steps": {"trainer": {"channels": {"train": {
        "content_type": INJECTED_CONTENT_TYPE}}}}})
    assert "steps.trainer.channels.train.content_type" in message and "MIME type" in message
    # a real one with parameters passes
    params.resolve(params.load_config(ROOT / "config.json"), {"steps": {"trainer": {"channels": {
        "train": {"content_type": "text/csv; label_size=0"}}}}}, STEPS)


@pytest.mark.parametrize("name", ["DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG"])
def test_a_run_may_not_set_a_variable_the_workers_docker_cli_reads(name):
    """A job's environment once reached the docker CLI's own: DOCKER_HOST in a conf chose the
    engine the job ran on (one the worker's clean-up never looks at)."""
    message = refusal({"steps": {"splitor": {"environment": {name: "unix:///tmp/other.sock"}}}})
    assert f"steps.splitor.environment.{name}" in message


def test_the_compose_runner_hands_no_job_variable_to_the_docker_cli(monkeypatch, tmp_path):
    """The job's variables once passed through the docker CLI's own environment: DOCKER_HOST
    chose the engine, SSH_ASKPASS (for an ssh:// engine) the program ssh runs, OTEL_* where
    the CLI exports its telemetry. They now reach the container through a 0600 env file."""
    import stat

    from smtask.local import compose

    started = []

    class Popen:
        def __init__(self, args, env=None, **kwargs):
            started.append((args, env))

    monkeypatch.setattr(compose.subprocess, "Popen", Popen)
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    environment = {"DOCKER_HOST": "tcp://elsewhere:1", "SSH_ASKPASS": "/tmp/evil",
                   "OTEL_EXPORTER_OTLP_HEADERS": "a=b", "SECRET_TOKEN": "t", "EMPTY": "",
                   "TWO_LINES": "a\nb"}
    job = compose.Job("p", {"s": {"image": "i", "environment": environment}}, str(tmp_path))
    job.start()
    (args, env), = started
    assert env is None  # the CLI runs in the worker's own environment, untouched
    env_file = Path(args[args.index("--env-file") + 1])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text().splitlines() == [
        "DOCKER_HOST=tcp://elsewhere:1", "SSH_ASKPASS=/tmp/evil", "OTEL_EXPORTER_OTLP_HEADERS=a=b",
        "SECRET_TOKEN=t", "EMPTY="]
    assert not any("SECRET_TOKEN" in a or "DOCKER_HOST" in a for a in args)
    assert "TWO_LINES=a\nb" in args  # an env file cannot hold it


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_containers_environment_arrives_as_written_through_the_env_file(tmp_path):
    """What docker makes of the env file: values with spaces, =, quotes, # and $ as written."""
    import subprocess

    from conftest import LOCAL_IMAGE

    from smtask.local import compose

    values = {"A": " lead and trail ", "B": "x=y", "C": "'q' \"d\"", "D": "#not a comment",
              "E": "$HOME", "F": "a\nb"}
    args = ["run", "--rm", "--network", "host", *compose.environment_args(
        values, str(tmp_path / "env")), LOCAL_IMAGE, "python3", "-c",
        "import os, json; print(json.dumps({k: os.environ[k] for k in 'ABCDEF'}))"]
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == values


@pytest.mark.parametrize(("conf", "key"), [
    ({"steps": {"splitor": {"arguments": ["--label-column", "a\x00b"]}}}, "steps.splitor.arguments.1"),
    ({"steps": {"splitor": {"environment": {"X": "a\x00b"}}}}, "steps.splitor.environment.X"),
    ({"steps": {"trainer": {"hyperparameters": {"x": "a\x00b"}}}}, "steps.trainer.hyperparameters.x"),
])
def test_a_nul_byte_is_refused_before_any_job(conf, key):
    """No process takes a NUL in its arguments or environment: the job started and failed
    with 'ValueError: embedded null byte'."""
    message = refusal(conf)
    assert f"{key}: contains a NUL byte" in message


def test_a_lone_surrogate_or_a_nul_key_is_refused_in_one_named_line():
    """A lone surrogate (valid JSON: "\\ud800") failed the run's first task, one that did not
    even use the step, with an execution API 500 (UnicodeEncodeError)."""
    message = refusal({"steps": {"splitor": {"arguments": ["--x", "\ud800"]}}})
    assert "steps.splitor.arguments.1: contains a lone surrogate" in message
    assert "the run's conf: a key contains a NUL byte" in refusal({"a\x00": 1})


def _deep(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [40, 400, 5000])
def test_deeply_nested_settings_are_refused_in_one_line(depth):
    """600 levels were a RecursionError (3,000 lines) in the merge; 400 passed validation and
    failed the first task in Airflow's API server ('Maximum serialization depth exceeded')."""
    message = refusal({"steps": {"trainer": {"settings": _deep(depth)}}})
    assert "steps.trainer.settings.a: nested more than 32 deep" in message
    assert len(message) < 500


def test_a_too_deep_conf_on_the_command_line_is_one_line_and_exit_2():
    import subprocess
    import sys

    conf = '{"a":' * 5000 + "{}" + "}" * 5000  # json.loads: RecursionError
    done = subprocess.run([sys.executable, "-m", "smtask.cli", "validate",
                           str(ROOT / "dags/churn.py"), "-c", conf],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-500:]
    assert "nested too deeply" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("key", ["source_dir", "code_path"])
def test_a_code_path_may_not_hold_the_workers_own_state(tmp_path, monkeypatch, key):
    """./run keeps SMTASK_HOME (airflow.cfg with the fernet key and JWT secret, airflow.db,
    the artifacts) in the repository, the example's code root: source_dir "." shipped it into
    the training container (sagemaker mode: uploaded it to S3)."""
    home = tmp_path / "code" / ".smtask"
    (home / "airflow").mkdir(parents=True)
    (home / "airflow" / "airflow.cfg").write_text("[core]\nfernet_key = x\n")
    (tmp_path / "code" / "train.py").write_text("")
    monkeypatch.setenv("SMTASK_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_HOME", str(home / "airflow"))
    value = "." if key == "source_dir" else ".smtask/airflow/airflow.cfg"
    step = "trainer" if key == "source_dir" else "splitor"
    extra = {"entry_script": "train.py"} if key == "source_dir" else {}
    message = refusal({"steps": {step: {key: value, **extra}}},
                      config={"code_root": str(tmp_path / "code")})
    assert f"steps.{step}.{key}: '{value}' holds the worker's own state {home}" in message


def test_two_outputs_of_one_container_folder_are_refused_before_any_job():
    """Docker refused the job ('Duplicate mount point'), quoted as "Run 'docker run --help'"."""
    message = refusal({"steps": {"splitor": {"outputs": {
        "train": {"source": "/opt/ml/processing/train"},
        "again": {"source": "/opt/ml/processing/train/"}}}}})
    assert "steps.splitor.outputs.train.source: /opt/ml/processing/train is output again's" \
        in message


def test_a_kill_mid_copy_leaves_no_partial_output(tmp_path, monkeypatch):
    """A SIGTERM to `smtask run` while a 1.5 GB output was being staged left 765 MB of it in
    the artifacts: the staging folder was registered only after the copy."""
    from conftest import local_state

    from smtask.errors import TaskInterrupted
    from smtask.local import staging

    produced = tmp_path / "job"
    produced.mkdir()
    for i in range(3):
        (produced / f"part-{i}").write_text("x")
    final = tmp_path / "artifacts" / "run" / "step" / "out"
    session = local_state(tmp_path / "scratch", artifacts=(tmp_path / "artifacts").as_uri(),
                          step="step")
    real, copied = staging.shutil.copyfile, []

    def copyfile(src, dst, **kwargs):
        if copied:
            raise TaskInterrupted("killed")  # what on_kill raises from the signal handler
        copied.append(src)
        return real(src, dst, **kwargs)

    monkeypatch.setattr(staging.shutil, "copyfile", copyfile)
    with pytest.raises(TaskInterrupted):
        staging.stage(session, produced, final.as_uri(), "out")
    staging.discard(session)  # what the local session's exit does
    assert list(final.parent.iterdir()) == []


def test_a_failing_docker_ps_is_no_answer_and_cleanup_removes_nothing(tmp_path, monkeypatch):
    """With DOCKER_CONTEXT=bogus (or a socket it may not open) `docker ps` fails with words
    the engine-gone rule did not know: a dead owner's scratch folder that a running container
    still mounted was deleted, and `smtask cleanup` exited 0."""
    import socket
    import subprocess

    from smtask.errors import EngineUnreachable
    from smtask.local import containers, state

    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    scratch = tmp_path / "tmp" / "orphan"
    scratch.mkdir(parents=True)
    (scratch / state.OWNER_FILE).write_text(str(state.Owner(socket.gethostname(), 2**22 + 7, 1.0)))

    def run(args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", 'context "bogus": context not found\n')

    monkeypatch.setattr(containers.subprocess, "run", run)
    with pytest.raises(EngineUnreachable, match=r"`docker ps` failed .context .bogus.: "
                                                r"context not found.: which containers run "
                                                "cannot be told"):
        containers.cleanup_orphans()
    assert scratch.is_dir()


@pytest.mark.parametrize(("conf", "both"), [
    ({"steps": {"splitor": {"outputs": {"bad name": {"source": "/opt/ml/processing/x"}},
                            "code_path": "code/missing.py"}}},
     ("steps.splitor.outputs: output name", "steps.splitor.code_path: no file")),
    ({"steps": {"trainer": {"hyperparameters": {"bad name": "1"}, "source_dir": "nowhere"}}},
     ("steps.trainer.hyperparameters.'bad name': a script's hyperparameter name",
      "steps.trainer.source_dir: no folder")),
])
def test_a_kinds_own_check_does_not_hide_a_missing_file(conf, both):
    """A kind's own checks (output names, the driver's rules) and the files a step names are
    looked at together: one refusal names both."""
    message = refusal(conf)
    assert all(part in message for part in both), message


@pytest.mark.parametrize(("conf", "key"), [
    ({"steps": {"transformer": {"accept": "text/csv\n"}}}, "steps.transformer.accept"),
    ({"steps": {"trainer": {"hyperparameters": {"max_depth": "3\n"}}}},
     "steps.trainer.hyperparameters.max_depth"),
    ({"steps": {"splitor": {"environment": {"PATH\n": "/x"}}}}, "steps.splitor.environment"),
    ({"steps": {"splitor": {"tags": {"k": "v\n"}}}}, "steps.splitor.tags.k"),
])
def test_a_last_newline_does_not_pass_a_pattern_that_ends_with_dollar(conf, key):
    """JSON Schema's $ is the end of the text; Python's also matches before a last newline:
    "text/csv\\n" passed, then failed the transform with 'Invalid header value'."""
    assert key in refusal(conf)


@pytest.mark.parametrize("state", ["airflow-default", "airflow-config", "artifacts"])
def test_a_code_path_may_not_hold_airflows_default_home_its_config_or_the_artifacts(
        tmp_path, monkeypatch, state):
    """Only AIRFLOW_HOME was checked: unset, Airflow uses ~/airflow (the standard layout, where
    the code root is often ~/airflow itself), and source_dir "." packed airflow.cfg in."""
    home = tmp_path / "home"
    folder = home / "airflow"
    folder.mkdir(parents=True)
    (home / "train.py").write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path / "smtask"))
    config: dict = {"code_root": str(home)}
    if state == "airflow-config":
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "elsewhere"))
        monkeypatch.setenv("AIRFLOW_CONFIG", str(folder / "airflow.cfg"))
    elif state == "artifacts":
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "elsewhere"))
        config["local"] = {"artifacts": folder.as_uri()}
    message = refusal({"steps": {"trainer": {"source_dir": ".", "entry_script": "train.py"}}},
                      config=config)
    assert f"steps.trainer.source_dir: '.' holds the worker's own state {folder}" in message


@pytest.mark.parametrize(("source", "refused"), [
    ("/opt/ml/processing/input/data-source", "overlaps the inputs' folder /opt/ml/processing/input"),
    ("/opt/ml/processing/input/config", "overlaps the inputs' folder"),
    ("/opt/ml/processing/input/data-source/sub", "overlaps the inputs' folder"),
    ("/opt/ml/processing", "overlaps the inputs' folder"),
    ("/opt/ml/../../usr/bin", "may not hold a .. segment"),
])
def test_an_output_may_not_take_an_inputs_place(source, refused):
    """An output on an input's folder failed in Docker ('Duplicate mount point'); one inside
    a read-only input could not be created; /opt/ml/../.. was never normalized."""
    message = refusal({"steps": {"splitor": {"outputs": {"extra": {"source": source}}}}})
    assert "steps.splitor.outputs.extra.source" in message and refused in message, message


def test_instance_counts_are_bounded_before_any_container():
    """100,000 passed: local mode would start every instance's container at once."""
    assert "steps.trainer.instance_count: 9, at most 8 in local mode" in refusal(
        {"steps": {"trainer": {"instance_count": 9}}})
    assert "steps.splitor.instance_count" in refusal(
        {"mode": "sagemaker", "steps": {"splitor": {"instance_count": 101}}},
        config={"role": "arn:aws:iam::123456789012:role/r", "artifacts": "s3://b/p"})
