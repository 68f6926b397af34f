"""The deploy half: ``@sm_register`` (a model registry, SQLite in local mode, SageMaker's on
moto) and ``@sm_endpoint`` (local endpoints in real containers that outlive the task;
SageMaker's create and update on moto, with the wrapper's UpdateEndpoint and statuses), and
the example train -> evaluate -> register -> deploy if better -> invoke."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL_IMAGE, kinds_of, run_dag, run_example, write_config, write_dag
from test_cloud import BUCKET, IMAGE, ROLE, client, cloud_config, moto_server, sagemaker  # noqa: F401
from test_serving import JSON_MODEL_FN, code_tar, model_tar

from smtask import params
from smtask.errors import ContainerFailed, ParamsError

ENDPOINT_LABEL = "smtask.endpoint"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An SMTASK_HOME of the test's own: its registry and endpoints; every endpoint left is
    deleted at the end (they outlive their task by design)."""
    folder = tmp_path / "home"
    monkeypatch.setenv("SMTASK_HOME", str(folder))
    yield folder
    found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=smtask.home={folder}"],
                           capture_output=True, text=True, check=False).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "-f", *found], capture_output=True, check=False)


def endpoint_containers(home: Path, name: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter",
                          f"label={ENDPOINT_LABEL}={name}", "--filter",
                          f"label=smtask.home={home}"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


# --- bad input, before any call -----------------------------------------------------------

STEPS = {"register": "register", "deploy": "endpoint"}


def problems(**steps: Any) -> str:
    base = {"pipeline_name": "p", "mode": "local", "steps": {
        "register": {"group": "churn-models"}, "deploy": {"endpoint_name": "churn-endpoint"}}}
    merged = params.deep_merge(base, {"steps": steps})
    with pytest.raises(ParamsError) as refused:
        params.validate(merged, kinds_of(STEPS))
    return "\n".join(refused.value.problems)


@pytest.mark.parametrize(("steps", "expected"), [
    ({"register": {"group": "churn_models"}},
     "steps.register.group: 'churn_models' is not allowed"),
    ({"register": {"group": "-churn"}}, "steps.register.group: '-churn' is not allowed"),
    ({"register": {"approval_status": "Maybe"}}, "steps.register.approval_status"),
    ({"register": {"content_types": ["text/csv'; id"]}}, "is not a MIME type"),
    ({"deploy": {"instance_count": 0}}, "steps.deploy.instance_count: 0 is less than"),
    ({"deploy": {"serverless": {"memory_size_mb": 2048}, "instance_type": "ml.m5.large"}},
     "steps.deploy.serverless: not together with instance_type"),
    ({"deploy": {"serverless": {"memory_size_mb": 1000}}}, "steps.deploy.serverless.memory_size_mb"),
    ({"deploy": {"endpoint_name": "churn endpoint"}},
     "steps.deploy.endpoint_name: 'churn endpoint' is not allowed"),
    ({"deploy": {"endpoint_nme": "x"}}, "steps.deploy"),
    ({"deploy": {"model_name": "m", "model_package_arn": "arn:aws:sagemaker:us-east-1:1:x"}},
     "model_name or model_package_arn, not both"),
    ({"deploy": {"deployment_config": {"BlueGreen": {}}}}, "steps.deploy.deployment_config"),
])
def test_bad_deploy_settings_are_refused_naming_the_step_and_key(steps, expected):
    assert expected in problems(**steps)


def test_a_missing_group_or_endpoint_name_is_refused():
    base = {"pipeline_name": "p", "mode": "local", "steps": {"register": {}, "deploy": {}}}
    with pytest.raises(ParamsError) as refused:
        params.validate(base, kinds_of(STEPS))
    text = "\n".join(refused.value.problems)
    assert "steps.register.group: required key is missing" in text
    assert "steps.deploy.endpoint_name: required key is missing" in text


@pytest.mark.parametrize("conf", [
    {"deploy": {"endpoint_name": "someone-elses-endpoint"}},
    {"deploy": {"allow_unapproved": True}},
    {"deploy": {"model_package_arn": "arn:aws:sagemaker:us-east-1:1:model-package/g/3"}},
    {"register": {"approval_status": "Approved"}},
    {"register": {"group": "another-teams-models"}},
])
def test_a_runs_conf_may_not_choose_what_serves_where_or_approve_it(conf):
    defaults = {"pipeline_name": "p", "mode": "local", "steps": {
        "register": {"group": "churn-models"}, "deploy": {"endpoint_name": "churn-endpoint"}}}
    with pytest.raises(ParamsError) as refused:
        params.resolve(defaults, {"steps": conf}, kinds_of(STEPS))
    (step, settings), = conf.items()
    assert f"steps.{step}.{next(iter(settings))}: a run's conf may not change it unless the " \
           "DAG's author allows it" in str(refused.value)
    allowed = {**defaults, "conf_may_override": [f"steps.{step}.{next(iter(settings))}"]}
    params.resolve(allowed, {"steps": conf}, kinds_of(STEPS))


UNAPPROVED = '''
@task
def version():
    return {"model_package_arn": "ARN", "group": "g", "version": 1,
            "approval_status": "Approved"}  # as it was: rejected since

@sm_endpoint(step="deploy")
def deploy(version):
    return version

deploy(version())
'''


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_deploying_an_unapproved_version_is_refused_before_any_container(tmp_path, home, capfd):
    from smtask.local import registry

    version = registry.register(
        group="g", client_token="t", approval_status="Approved", description="",
        model="file:///m.tar.gz", image=LOCAL_IMAGE, environment={}, framework=None,
        inference={}, metadata={}, region="us-east-1")
    registry.set_status("g/1", "Rejected")  # a person rejected it after it was registered
    config = write_config(tmp_path, steps={"deploy": {"endpoint_name": "e1"}})
    body = UNAPPROVED.replace("ARN", version["model_package_arn"])
    result = run_dag(body, config=config)
    assert result.states["deploy"] == "failed"
    out = capfd.readouterr().out
    assert f"steps.deploy: model version {version['model_package_arn']} is Rejected, not " \
           "Approved" in out
    assert "allow_unapproved" in out
    assert endpoint_containers(home, "e1") == [] and not (home / "endpoints" / "e1").exists()


# --- the local registry ---------------------------------------------------------------------

def _register_many(home: str, worker: int, count: int, queue: Any) -> None:
    os.environ["SMTASK_HOME"] = home
    from smtask.local import registry

    made = []
    for i in range(count):
        version = registry.register(
            group="g", client_token=f"w{worker}-{i}", approval_status="Approved",
            description="", model="file:///m.tar.gz", image="i", environment={},
            framework=None, inference={}, metadata={"metric:accuracy": str(i)},
            region="us-east-1")
        made.append(version["version"])
    queue.put(made)


def test_two_runs_registering_at_once_never_lose_or_repeat_a_version(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_register_many, args=(str(tmp_path), w, 25, queue))
               for w in range(3)]
    for worker in workers:
        worker.start()
    made = [v for _ in workers for v in queue.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(made) == list(range(1, 76))


def test_a_body_over_sagemakers_6_mb_is_refused_before_any_call(tmp_path, monkeypatch):
    from smtask import endpoints
    from smtask.errors import SmtaskError

    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    with pytest.raises(SmtaskError, match="takes at most 6291456"):
        endpoints.invoke("nowhere", b"1" * (6 * 1024 * 1024 + 1), params={"mode": "sagemaker"})
    with pytest.raises(SmtaskError, match="no local endpoint 'nowhere'"):
        endpoints.invoke("nowhere", b"1,2\n")


def test_a_retry_of_a_registration_gets_the_version_its_first_attempt_made(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    from smtask.local import registry

    fields = dict(group="churn-models", approval_status="PendingManualApproval", description="d",
                  model="file:///m.tar.gz", image="i", environment={"A": "1"}, framework=None,
                  inference={}, metadata={}, region="us-east-1")
    first = registry.register(client_token="task-1", **fields)
    again = registry.register(client_token="task-1", **{**fields, "approval_status": "Approved"})
    other = registry.register(client_token="task-2", **fields)
    assert again == first and first["version"] == 1 and other["version"] == 2
    assert first["model_package_arn"].endswith(":model-package/churn-models/1")
    approved = registry.set_status("churn-models/1", "Approved")
    assert approved["approval_status"] == "Approved"
    assert registry.version(first["model_package_arn"])["approval_status"] == "Approved"
    with pytest.raises(registry.RegistryError, match="no model version churn-models/9"):
        registry.version("churn-models/9")


@pytest.mark.parametrize("which", ["churn-models/99999999999999999999999", "churn-models/\u00b2",
                                   "x'; DROP TABLE versions;--/1", "churn-models/", "/1"])
def test_odd_version_names_are_refused_or_not_found_in_one_line(tmp_path, monkeypatch, which):
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    from smtask.local import registry

    with pytest.raises(registry.RegistryError) as refused:
        registry.version(which)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400
    assert not (tmp_path / "registry.sqlite").exists()  # a read creates nothing
    assert registry.groups() == []


def test_group_names_differing_in_case_are_one_group_as_their_arns_are(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    from smtask.local import registry

    fields = dict(approval_status="Approved", description="", model="file:///m.tar.gz",
                  image="i", environment={}, framework=None, inference={}, metadata={},
                  region="us-east-1")
    first = registry.register(group="churn-models", client_token="a", **fields)
    second = registry.register(group="Churn-Models", client_token="b", **fields)
    assert (first["version"], second["version"]) == (1, 2)
    assert second["group"] == "churn-models"
    assert [v["version"] for v in registry.versions("CHURN-MODELS")] == [1, 2]


def test_registry_cli_lists_shows_and_approves(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTASK_HOME", str(tmp_path))
    from smtask.local import registry

    registry.register(group="churn-models", client_token="t", approval_status="Rejected",
                      description="", model="file:///m.tar.gz", image="i", environment={},
                      framework=None, inference={}, metadata={"metric:accuracy": "0.9"},
                      region="us-east-1")
    env = {**os.environ, "SMTASK_HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smtask.cli", "registry", *args], env=env,
                              capture_output=True, text=True, check=False)

    listed = cli("list", "churn-models")
    assert listed.returncode == 0 and "churn-models/1\tRejected\t{\"accuracy\": 0.9}" in listed.stdout
    approved = cli("approve", "churn-models/1")
    assert approved.stdout.strip() == "churn-models/1: Approved"
    shown = json.loads(cli("show", "churn-models/1").stdout)
    assert shown["approval_status"] == "Approved" and shown["metrics"] == {"accuracy": 0.9}
    missing = cli("show", "churn-models/7")
    assert missing.returncode == 1 and "no model version churn-models/7" in missing.stderr


# --- local endpoints, in real containers ------------------------------------------------------

INVERTED = json.dumps({"weights": [-1.0, 1.0], "bias": 0.0}).encode()  # predicts x1 > x0
RAISES = '''
def model_fn(model_dir):
    raise RuntimeError("this model cannot load")
'''


def model_result(folder: Path, weights: bytes | None = None, code: str = JSON_MODEL_FN) -> dict:
    data = {"weights.json": weights} if weights else {
        "weights.json": json.dumps({"weights": [1.0, -1.0], "bias": 0.0}).encode()}
    return {"job_name": "given", "model": model_tar(folder / "model", data).as_uri(),
            "image": LOCAL_IMAGE, "framework": None,
            "code": {"program": "inference.py",
                     "submit_directory": code_tar(folder / "code", {"inference.py": code}).as_uri()}}


def deploy_dag(result: dict) -> str:
    return f'''
@task
def model():
    return {result!r}

@sm_endpoint(step="deploy")
def deploy(model):
    return model

deploy(model())
'''


def invoke(name: str, rows: str = "3,1\n0,2\n") -> list[int]:
    from smtask import endpoints

    answer = endpoints.invoke(name, rows, "text/csv", "text/csv")
    return [int(float(v)) for v in answer.decode().split()]


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_an_endpoint_outlives_its_task_updates_in_place_and_a_failed_update_keeps_the_old_one(
        tmp_path, home, capfd, loopback_guard):
    from smtask import endpoints
    from smtask.local import endpoints as local

    config = write_config(tmp_path, steps={"deploy": {"endpoint_name": "e1"}})
    first = run_dag(deploy_dag(model_result(tmp_path / "v1")), config=config)
    assert first.ok, first.states
    out = first.xcom["deploy"]
    assert out["endpoint_name"] == "e1" and out["status"] == "InService"
    assert out["endpoint_config_name"] == out["model_name"]
    assert invoke("e1") == [1, 0]  # the task ended; its endpoint serves on
    (v1_container,) = endpoint_containers(home, "e1")

    second = run_dag(deploy_dag(model_result(tmp_path / "v2", INVERTED)), config=config)
    assert second.ok, second.states
    assert invoke("e1") == [0, 1]  # updated in place: the same name serves the new model
    (v2_container,) = endpoint_containers(home, "e1")  # the old container is gone
    assert v2_container != v1_container
    record = local.record("e1")
    assert record["config_name"] == second.xcom["deploy"]["endpoint_config_name"]

    capfd.readouterr()
    failed = run_dag(deploy_dag(model_result(tmp_path / "v3", code=RAISES)), config=config)
    assert failed.states["deploy"] == "failed"
    log = capfd.readouterr().out
    assert "this model cannot load" in log
    assert f"endpoint e1 still serves config {record['config_name']}" in log
    assert invoke("e1") == [0, 1]  # the old one still serves
    assert endpoint_containers(home, "e1") == [v2_container]
    assert local.record("e1") == record

    # a stray container of this home's (a killed update's) is removed by cleanup; the live one stays
    stray = subprocess.run(["docker", "run", "-d", "--network", "host", "--label",
                            f"{ENDPOINT_LABEL}=e1", "--label", f"smtask.home={home}",
                            "--entrypoint", "sleep", LOCAL_IMAGE, "300"],
                           capture_output=True, text=True, check=True).stdout.strip()
    with local.locked("e1"):  # a deploy in progress: its new container is not touched
        assert local.cleanup() == []
    (local.root() / "e1" / "killed-update-config").mkdir()  # a killed update's files
    removed = local.cleanup()
    assert removed == ["files of config killed-update-config of endpoint e1, which no record "
                       "names", f"container {stray[:12]} of endpoint e1, which no record names"]
    assert (local.root() / "e1" / record["config_name"]).is_dir()  # the live one's stay
    assert endpoint_containers(home, "e1") == [v2_container]

    cli = subprocess.run([sys.executable, "-m", "smtask.cli", "endpoints", "invoke", "e1", "-d",
                          "3,1\n0,2\n", "--accept", "text/csv"], capture_output=True, text=True,
                         env={**os.environ, "SMTASK_HOME": str(home)}, check=False)
    assert cli.returncode == 0 and cli.stdout.split() == ["0", "1"], cli.stderr
    listed = subprocess.run([sys.executable, "-m", "smtask.cli", "endpoints", "list"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "SMTASK_HOME": str(home)}).stdout
    assert listed.startswith(f"e1\trunning\thttp://127.0.0.1:{record['port']}\t")
    endpoints.delete("e1")
    assert endpoint_containers(home, "e1") == [] and local.record("e1") is None
    with pytest.raises(local.EndpointNotFound, match="no local endpoint 'e1'"):
        invoke("e1")


def test_endpoint_names_that_would_be_paths_are_refused_touching_nothing(tmp_path, home):
    from smtask import endpoints
    from smtask.errors import SmtaskError

    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "data.json").write_text('{"port": 1}')
    hostile = f"/../../../..{victim}/data"
    for call in (lambda: endpoints.delete(hostile), lambda: endpoints.invoke(hostile, "1"),
                 lambda: endpoints.describe("../../etc"), lambda: endpoints.delete("a" * 64)):
        with pytest.raises(SmtaskError, match="endpoint name .* is not allowed"):
            call()
    assert (victim / "data").is_dir() and (victim / "data.json").is_file()
    assert not (home / "endpoints").exists()


@pytest.mark.docker  # the delete asks the engine for the endpoint's containers
@pytest.mark.usefixtures("docker")
def test_a_record_smtask_did_not_write_is_named_and_the_endpoint_can_still_be_deleted(
        tmp_path, home):
    from smtask import endpoints
    from smtask.local import endpoints as local

    (home / "endpoints").mkdir(parents=True)
    (home / "endpoints" / "e9.json").write_text('{"name": "e9", "port": 1')
    (home / "endpoints" / "e8.json").write_text('{"name": "e8", "port": "1"}')
    for name in ("e9", "e8"):
        with pytest.raises(local.UnreadableRecord,
                           match=f"`smtask endpoints delete {name}` removes the endpoint"):
            endpoints.invoke(name, "1,2\n")
    assert local.records() == [] and local.names() == ["e8", "e9"]
    listed = subprocess.run([sys.executable, "-m", "smtask.cli", "endpoints", "list"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "SMTASK_HOME": str(home)})
    assert listed.returncode == 0 and listed.stdout.startswith("e8\tunreadable\t"), listed
    endpoints.delete("e9")
    assert local.names() == ["e8"]


def test_a_kill_whose_signal_was_swallowed_is_raised_at_the_tasks_next_step():
    """Python discards an exception raised by a signal handler inside a finaliser; the task
    raises it again before it starts anything."""
    from airflow.sdk import DAG

    from smtask import sm_endpoint
    from smtask.errors import TaskInterrupted

    def deploy() -> None:
        return None

    with DAG("kill_swallowed", schedule=None) as dag:
        sm_endpoint(step="deploy")(deploy)()
    operator = dag.tasks[0]
    operator._executing, operator._mode = True, "local"  # the session is still opening
    with pytest.raises(TaskInterrupted) as first:
        operator.on_kill()  # ... and say the raise was lost
    with pytest.raises(TaskInterrupted) as again:
        operator.raise_pending_kill()
    assert again.value is first.value


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_deploy_that_is_retried_leaves_the_endpoint_as_it_is(tmp_path, home):
    """A second deploy of the same config (a retry of the task) starts nothing."""
    from types import SimpleNamespace

    from smtask.local import endpoints as local
    from smtask.local.output import ContainerOutput

    result = model_result(tmp_path / "v1")
    lines: list[str] = []
    fields = dict(name="e2", config_name="c1", model_name="c1", arn="arn:e2", image=LOCAL_IMAGE,
                  model_data=result["model"], variant="AllTraffic", model_package_arn=None,
                  environment={"SAGEMAKER_PROGRAM": "inference.py",
                               "SAGEMAKER_SUBMIT_DIRECTORY": result["code"]["submit_directory"]},
                  log=lines.append, output=ContainerOutput(lines.append))
    session = SimpleNamespace()
    first = local.deploy(session, **fields)
    again = local.deploy(session, **fields)
    assert again == first and lines[-1] == "endpoint e2 already serves config c1: nothing to change"
    assert endpoint_containers(home, "e2") == [first["container"]]
    import psutil

    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == first["port"]}
    assert listening == {"127.0.0.1"}  # loopback only, though the container has host networking

    # a kill after the new container answered, before the switch: the old one serves on
    killed = SimpleNamespace(smtask=SimpleNamespace(killed=True))
    with pytest.raises(ContainerFailed, match="killed before its endpoint switched"):
        local.deploy(killed, **{**fields, "config_name": "c2"})
    assert local.record("e2") == first and endpoint_containers(home, "e2") == [first["container"]]

    # an update removes this endpoint's own containers only, whatever the record says
    dummy = subprocess.run(["docker", "run", "-d", "--network", "host", "--entrypoint", "sleep",
                            LOCAL_IMAGE, "300"], capture_output=True, text=True,
                           check=True).stdout.strip()
    try:
        local._write({**first, "container": dummy})
        second = local.deploy(session, **{**fields, "config_name": "c3"})
        assert endpoint_containers(home, "e2") == [second["container"]]
        assert subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", dummy],
                              capture_output=True, text=True).stdout.strip() == "true"
        assert not (local.root() / "e2" / "c1").exists()  # the old config's files went too
    finally:
        subprocess.run(["docker", "rm", "-f", dummy], capture_output=True, check=False)
    local.delete("e2")


KILLED = '''
@task
def model():
    return RESULT

@sm_endpoint(step="deploy")
def deploy(model):
    return model

deploy(model())
'''
SLOW = '''
import time

def model_fn(model_dir):
    time.sleep(120)
'''


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_a_killed_update_removes_its_new_container_and_the_old_one_serves_on(
        tmp_path, cli_home, monkeypatch):
    from smtask.local import endpoints as local

    home = cli_home.root
    env = cli_home.env()
    monkeypatch.setenv("SMTASK_HOME", str(home))  # the CLI runs' home: read their endpoint
    config = write_config(tmp_path, steps={"deploy": {"endpoint_name": "e3"}})
    _, good = write_dag(KILLED.replace("RESULT", repr(model_result(tmp_path / "v1"))),
                        config=config)
    _, slow = write_dag(KILLED.replace("RESULT", repr(model_result(tmp_path / "v2", code=SLOW))),
                        config=config)
    try:
        assert cli_home.smtask("run", str(good), env=env).wait(timeout=300) == 0
        live = local.record("e3")
        run = cli_home.smtask("run", str(slow), env=env)
        deadline = time.monotonic() + 120
        while len(endpoint_containers(home, "e3")) < 2:  # the update's container started
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.3)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) != 0
        assert endpoint_containers(home, "e3") == [live["container"]]
        assert local.record("e3") == live
        assert invoke("e3") == [1, 0]
    finally:
        with contextlib.suppress(local.EndpointNotFound):
            local.delete("e3")  # a failed test's endpoint would outlive it too
        left = endpoint_containers(home, "e3")
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_example_deploys_a_better_model_and_keeps_the_endpoint_on_a_worse_one(home, capfd):
    from smtask import endpoints
    from smtask.local import registry

    first = run_example("deploy")
    assert first.ok, first.states
    version = first.xcom["register"]
    assert version["approval_status"] == "Approved" and version["version"] == 1
    assert version["metrics"] == first.xcom["evaluate"]
    assert first.xcom["deploy"]["model_package_arn"] == version["model_package_arn"]
    assert first.xcom["smoke-test"]["rows"] == 20
    served = endpoints.serving_version("churn-endpoint")
    assert served["model_package_arn"] == version["model_package_arn"]

    second = run_example("deploy")  # the same data and seed: no better
    assert second.ok, second.states
    assert second.states["deploy"] == "skipped" and second.states["smoke-test"] == "success"
    assert second.xcom["register"]["approval_status"] == "Rejected"
    assert second.xcom["register"]["version"] == 2
    assert endpoints.serving_version("churn-endpoint")["version"] == 1  # still the first
    assert [v["approval_status"] for v in registry.versions("churn-models")] == [
        "Approved", "Rejected"]
    assert len(endpoint_containers(home, "churn-endpoint")) == 1
    endpoints.delete("churn-endpoint")


# --- sagemaker mode, on moto ------------------------------------------------------------------

REGISTER = '''
@task
def model():
    return {"job_name": "t", "model": "s3://smtask-cloud-tests/m/model.tar.gz", "image": "IMAGE",
            "framework": "sklearn",
            "code": {"program": "train.py",
                     "submit_directory": "s3://smtask-cloud-tests/_code/abc/sourcedir.tar.gz"}}

@sm_register(step="register", retries=1, retry_delay=0)
def register(model):
    return {"model": model, "metrics": {"accuracy": 0.9}, "approval_status": "Approved"}

@sm_endpoint(step="deploy", retries=1, retry_delay=0)
def deploy(version):
    return version

deploy(register(model()))
'''.replace("IMAGE", IMAGE)


def deploy_config(tmp_path, **deploy: Any):
    return cloud_config(tmp_path, register={"group": "churn-models"},
                        deploy={"endpoint_name": "churn-endpoint", **deploy})


def test_sagemaker_registers_a_version_and_creates_the_endpoint_from_it(tmp_path, sagemaker):
    result = run_dag(REGISTER, config=deploy_config(tmp_path))
    assert result.ok, result.states
    version, deployed = result.xcom["register"], result.xcom["deploy"]
    sm = client()
    package = sm.describe_model_package(ModelPackageName=version["model_package_arn"])
    container = package["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == "s3://smtask-cloud-tests/m/model.tar.gz"
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "train.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"].endswith("sourcedir.tar.gz")
    assert package["CustomerMetadataProperties"] == {"metric:accuracy": "0.9"}
    assert version["approval_status"] == "Approved" and version["group"] == "churn-models"
    assert sagemaker.endpoint_calls == [("create", "churn-endpoint",
                                         deployed["endpoint_config_name"])]
    model = sm.describe_model(ModelName=deployed["model_name"])
    assert model["PrimaryContainer"]["ModelPackageName"] == version["model_package_arn"]
    variant = sm.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config_name"])[
        "ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert deployed == {"endpoint_name": "churn-endpoint", "status": "InService",
                        "endpoint_config_name": deployed["endpoint_config_name"],
                        "model_name": deployed["model_name"],
                        "model_package_arn": version["model_package_arn"]}
    from smtask import endpoints

    served = endpoints.serving_version("churn-endpoint", {"mode": "sagemaker"})
    assert served["model_package_arn"] == version["model_package_arn"]
    assert served["metrics"] == {"accuracy": 0.9}


def test_sagemaker_updates_an_endpoint_in_place_with_blue_green_settings(tmp_path, sagemaker):
    policy = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "CANARY", "WaitIntervalInSeconds": 60,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "churn-5xx"}]}}
    first = run_dag(REGISTER, config=deploy_config(tmp_path))
    second = run_dag(REGISTER, config=deploy_config(tmp_path, deployment_config=policy))
    assert first.ok and second.ok, (first.states, second.states)
    new_config = second.xcom["deploy"]["endpoint_config_name"]
    assert [c[0] for c in sagemaker.endpoint_calls] == ["create", "update"]
    update = sagemaker.requests["update_endpoint"][0]
    assert update["EndpointConfigName"] == new_config and update["DeploymentConfig"] == policy
    assert client().describe_endpoint(EndpointName="churn-endpoint")["EndpointConfigName"] == \
        new_config
    assert len(sagemaker.packages_created) == 2  # one version per task instance


def test_sagemaker_failed_update_fails_the_task_naming_the_config_still_live(
        tmp_path, sagemaker, capfd):
    first = run_dag(REGISTER, config=deploy_config(tmp_path))
    live = first.xcom["deploy"]["endpoint_config_name"]
    sagemaker.failing_updates[:] = ["CapacityError: no ml.m5.large capacity"] * 2
    second = run_dag(REGISTER, config=deploy_config(tmp_path))
    assert second.states["deploy"] == "failed"
    out = capfd.readouterr().out
    assert "CapacityError: no ml.m5.large capacity; the endpoint still serves its old config " \
           f"{live}" in out
    assert client().describe_endpoint(EndpointName="churn-endpoint")["EndpointConfigName"] == live
    assert [c[0] for c in sagemaker.endpoint_calls] == ["create", "update", "update"]  # a retry


def test_sagemaker_retry_reattaches_to_its_update_in_progress(tmp_path, sagemaker, monkeypatch):
    from smtask import waiting

    run_dag(REGISTER, config=deploy_config(tmp_path))
    sagemaker.endpoint_seconds = 1.5
    real, calls = waiting.wait, []

    def once(client: Any, kind: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kind.name)
        if kind.name == "endpoint" and calls.count("endpoint") == 1:
            raise ConnectionError("worker lost its connection (first attempt)")
        return real(client, kind, *args, **kwargs)

    monkeypatch.setattr(waiting, "wait", once)
    second = run_dag(REGISTER, config=deploy_config(tmp_path))
    assert second.ok, second.states
    assert [c[0] for c in sagemaker.endpoint_calls] == ["create", "update"]  # not a second one
    assert len(sagemaker.packages_created) == 2  # the register task was not retried


def test_sagemaker_register_retry_makes_no_second_version(tmp_path, sagemaker, monkeypatch):
    from smtask.kinds import register

    real, calls = register.outputs, []

    def once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("worker lost its connection (first attempt)")
        return real(*args)

    import dataclasses

    from smtask.decorators import OPERATORS

    operator = OPERATORS["register"]
    monkeypatch.setattr(operator, "job_kind", dataclasses.replace(operator.job_kind, outputs=once))
    result = run_dag(REGISTER, config=deploy_config(tmp_path))
    assert result.ok, result.states
    assert len(calls) == 2 and len(sagemaker.packages_created) == 1
    versions = client().list_model_packages(ModelPackageGroupName="churn-models")
    assert len(versions["ModelPackageSummaryList"]) == 1


def test_sagemaker_serverless_endpoint_and_a_kill_that_never_deletes(tmp_path, sagemaker):
    serverless = {"serverless": {"memory_size_mb": 2048, "max_concurrency": 4}}
    result = run_dag(REGISTER, config=deploy_config(tmp_path, **serverless))
    assert result.ok, result.states
    variant = client().describe_endpoint_config(
        EndpointConfigName=result.xcom["deploy"]["endpoint_config_name"])["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 4}
    assert "InstanceType" not in variant

    from smtask import waiting
    from smtask.kinds import by_name

    waiting.stop(client(), by_name("endpoint"), "churn-endpoint")  # what a kill calls
    assert client().describe_endpoint(EndpointName="churn-endpoint")["EndpointStatus"] == \
        "InService"


def test_sagemaker_unapproved_version_is_refused_before_any_endpoint_call(tmp_path, sagemaker):
    body = REGISTER.replace('"approval_status": "Approved"',
                            '"approval_status": "PendingManualApproval"')
    result = run_dag(body, config=deploy_config(tmp_path))
    assert result.states["deploy"] == "failed" and result.states["register"] == "success"
    assert sagemaker.endpoint_calls == []
    allowed = run_dag(body, config=deploy_config(tmp_path, allow_unapproved=True))
    assert allowed.ok, allowed.states


def test_sagemaker_deferrable_endpoint_resumes_with_its_outputs(tmp_path, sagemaker):
    result = run_dag(REGISTER, config=deploy_config(tmp_path, deferrable=True))
    assert result.ok, result.states
    assert result.xcom["deploy"]["status"] == "InService"


def test_deploy_example_on_sagemaker_deploys_then_updates_to_a_better_model(
        tmp_path, sagemaker, moto_server):
    """The example unchanged on moto: run 1 registers and creates the endpoint; run 2's model
    is better (its predictions are), so it is registered Approved and the endpoint updated."""
    import requests
    from test_cloud import put_s3

    rows = [(i % 2, 0.8 if i % 2 else 0.2) for i in range(24)]
    scored: list[int] = []

    def splits(job: Any) -> None:
        texts = {"train": "label,x\n" + "".join(f"{y},{x}\n" for y, x in rows),
                 "test": "label,x\n" + "".join(f"{y},{x}\n" for y, x in rows),
                 "batch": "".join(f"{x}\n" for _, x in rows)}
        for output in job.processing_output_config["Outputs"]:
            name = output["OutputName"]
            put_s3(f"{output['S3Output']['S3Uri'].rstrip('/')}/{name}.csv", texts[name])

    def predictions(job: Any) -> None:  # moto runs no container: the first model errs more
        scored.append(1)
        wrong = 6 if len(scored) == 1 else 0
        labels = [1 - y if i < wrong else y for i, (y, _) in enumerate(rows)]
        put_s3(job.transform_output["S3OutputPath"].rstrip("/") + "/batch.csv.out",
               "".join(f"{y}\n" for y in labels))

    sagemaker.on_complete.update(processing=splits, transform=predictions)
    answer = "".join(f"{y}\n" for y, _ in rows[:20])
    requests.post(f"{moto_server}/moto-api/static/sagemaker/endpoint-results", timeout=10,
                  json={"results": [{"Body": answer, "ContentType": "text/csv"}] * 2})
    settings = dict(artifacts=f"s3://{BUCKET}/pipelines", image=IMAGE, role=ROLE)
    first = run_example("deploy", conf={"mode": "sagemaker"}, **settings)
    assert first.ok, first.states
    assert first.xcom["evaluate"] == {"accuracy": 0.75}
    assert first.xcom["register"]["approval_status"] == "Approved"
    second = run_example("deploy", conf={"mode": "sagemaker"}, **settings)
    assert second.ok, second.states
    assert second.xcom["register"]["approval_status"] == "Approved"  # 1.0 beats 0.75
    assert [c[0] for c in sagemaker.endpoint_calls] == ["create", "update"]
    live = client().describe_endpoint(EndpointName="churn-endpoint")["EndpointConfigName"]
    assert live == second.xcom["deploy"]["endpoint_config_name"]
    assert second.xcom["smoke-test"] == {"rows": 20, "accuracy": 1.0}
    versions = client().list_model_packages(ModelPackageGroupName="churn-models")
    assert len(versions["ModelPackageSummaryList"]) == 2


def test_registry_cli_in_sagemaker_mode_goes_through_the_connection(tmp_path, sagemaker):
    body = REGISTER.replace('"approval_status": "Approved"',
                            '"approval_status": "PendingManualApproval"')
    result = run_dag(body, config=deploy_config(tmp_path))
    assert result.states["register"] == "success"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smtask.cli", "registry", *args, "--mode",
                               "sagemaker"], capture_output=True, text=True, check=False)

    listed = cli("list", "churn-models")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("churn-models/1\tPendingManualApproval\t{\"accuracy\": 0.9}")
    assert "AWS Connection" in listed.stderr  # Airflow's log lines: not among the results
    assert cli("approve", "churn-models/1").stdout.strip() == "churn-models/1: Approved"
    arn = result.xcom["register"]["model_package_arn"]
    assert client().describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == \
        "Approved"
    approved = run_dag(BY_ARN, config=deploy_config(tmp_path, model_package_arn=arn))
    assert approved.ok, approved.states  # approved since it was registered: deployed
    assert approved.xcom["deploy"]["model_package_arn"] == arn


BY_ARN = '''
@sm_endpoint(step="deploy")
def deploy():
    return None

deploy()
'''


def test_a_users_kill_of_an_endpoint_task_deletes_and_stops_nothing():
    from unittest import mock

    from airflow.sdk import DAG

    from smtask import sm_endpoint
    from smtask.errors import TaskInterrupted

    def deploy() -> None:
        return None

    with DAG("kill_endpoint", schedule=None) as dag:
        sm_endpoint(step="deploy")(deploy)()
    operator = dag.tasks[0]
    session = mock.Mock(local_mode=False)
    operator._active, operator._executing = (session, "churn-endpoint"), True
    operator._on_kill = "stop"  # the user's kill, without asking Airflow
    with pytest.raises(TaskInterrupted, match="its endpoint churn-endpoint is left as it is"):
        operator.on_kill()
    assert session.sagemaker_client.method_calls == []  # no delete, no update, no describe
