"""smtask on Airflow's distributed executor: the CeleryExecutor with Redis (Debian's) as its
broker, two Celery workers and a triggerer beside the api-server, scheduler and dag-processor
(tests/deployment/stack.py), PostgreSQL, and moto over HTTP as SageMaker. Each worker reports a
hostname, and keeps an SMTASK_HOME and a TMPDIR, of its own.

- 50 mapped smtask tasks in sagemaker mode are spread over both workers, one job each;
- a worker killed with SIGKILL (with every process it started) mid-job: the task's retry, on
  the other worker, re-attaches to the same job;
- local mode, whose artifacts here are the worker's disk, is refused before any job, naming
  the executor and what to set; with its artifacts on S3 (moto, through local.s3_endpoint)
  the example runs in containers on the workers.

Needs what the deployment test needs, and redis-server (./run's set-up installs both). Skipped
without them unless SMTASK_REQUIRE_DEPLOYMENT=1 (CI), which fails it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import test_deployment as td
from deployment.stack import (
    Stack,
    _descendants,
    _kill,
    deployed,
    missing_parts,
    require,
    wait_for,
)

# one Airflow deployment at a time on this machine: the deployment module's group
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("deployment")]

WORKERS = ("worker-a", "worker-b")
SHARED = "churn_shared"  # the example, its local mode's artifacts on S3
FANOUT, FANOUT_TASK, PARTS = "fanout", "train", 50
FANOUT_DAG = '''
from pathlib import Path

from airflow.sdk import dag
from smtask import pipeline_params, sm_training


CONFIG = Path(__file__).parent.parent / "config.json"


@dag(dag_id="fanout", schedule=None, params=pipeline_params(CONFIG))
def fanout():
    @sm_training(step="trainer")
    def train(part):
        return {"train": f"s3://BUCKET/fanout/{part}/"}

    train.expand(part=list(range(PARTS)))


fanout()
'''


def _bring_up(stack: Stack) -> td.Deployment:
    """The deployment of tests/test_deployment.py on the CeleryExecutor: Redis, two workers."""
    import requests

    stack.start_moto()
    stack.start_postgres()
    stack.start_redis()
    config = stack.copy_example()
    bucket = config["artifacts"].removeprefix("s3://").split("/")[0]
    (stack.dags / "fanout.py").write_text(
        FANOUT_DAG.replace("BUCKET", bucket).replace("PARTS", str(PARTS)))
    # the example again, its local mode's artifacts on S3 (moto) through local.s3_endpoint
    shared = {**config, "local": {**config["local"], "s3_endpoint": stack.wait_moto(),
                                  "artifacts": f"s3://{bucket}/shared"}}
    (stack.root / "project" / "shared.json").write_text(json.dumps(shared))
    example = (stack.dags / "churn.py").read_text()
    shared_dag = example.replace('dag_id="churn"', f'dag_id="{SHARED}"').replace(
        '"config.json"', '"shared.json"')
    assert shared_dag.count(SHARED) == 1 and '"shared.json"' in shared_dag
    (stack.dags / f"{SHARED}.py").write_text(shared_dag)
    stack.migrate()
    s3 = stack.aws("s3")
    s3.create_bucket(Bucket=bucket)
    for part in range(PARTS):  # each training job's channel (moto's job fails on none)
        s3.put_object(Bucket=bucket, Key=f"fanout/{part}/data.csv", Body=b"label,x\n1,0.9\n")
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        stack.start_airflow(component)
    for worker in WORKERS:
        stack.start_worker(worker, concurrency=4)

    def healthy() -> bool:
        health = requests.get(f"{stack.api}/api/v2/monitor/health", timeout=5).json()
        return all(health[part]["status"] == "healthy"
                   for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    wait_for("the Airflow components to report healthy", healthy, 150, stack=stack)
    airflow = td.Airflow(stack)
    for dag_id in (td.DAG_ID, FANOUT, SHARED):
        wait_for(f"the {dag_id} DAG to be parsed", lambda dag_id=dag_id: airflow.call(
            "GET", f"/api/v2/dags/{dag_id}", ok=(200, 404)).get("dag_id"), 90, stack=stack)
        airflow.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    return td.Deployment(stack, airflow, config["artifacts"])


@pytest.fixture(scope="module")
def celery() -> Iterator[td.Deployment]:
    problems = missing_parts() + ([] if shutil.which("redis-server") else
                                  ["redis-server (Debian's; ./run's set-up installs it)"])
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        problems.append("the Celery provider (pip install -e '.[test]')")
    require(problems, "the Celery deployment test")
    with deployed("smtask-celery-", _bring_up, executor="CeleryExecutor") as deployment:
        yield deployment


def _fanout_tasks(dep: td.Deployment, run_id: str) -> list[dict[str, Any]]:
    found = dep.airflow.call("GET", f"/api/v2/dags/{FANOUT}/dagRuns/{run_id}/taskInstances",
                             params={"limit": 100})
    return [ti for ti in found["task_instances"] if ti["task_id"] == FANOUT_TASK]


def _fanout_log(dep: td.Deployment, run_id: str, map_index: int, try_number: int = 1) -> str:
    path = (dep.stack.airflow_home / "logs" / f"dag_id={FANOUT}" / f"run_id={run_id}"
            / f"task_id={FANOUT_TASK}" / f"map_index={map_index}" / f"attempt={try_number}.log")
    return path.read_text() if path.exists() else f"(no log at {path})"


def test_fifty_sagemaker_tasks_spread_over_both_workers_one_job_each(celery):
    dep, run = celery, "fifty"
    dep.airflow.call("POST", f"/api/v2/dags/{FANOUT}/dagRuns",
                     json={"dag_run_id": run, "logical_date": None,
                           "conf": {"mode": "sagemaker",
                                    "steps": {"trainer": {"poll_max_seconds": 2}}}})
    state = dep.wait(f"run {run} to end", lambda: (s := dep.airflow.call(
        "GET", f"/api/v2/dags/{FANOUT}/dagRuns/{run}")["state"]) in ("success", "failed") and s,
        420)
    tis = _fanout_tasks(dep, run)
    assert state == "success", ({ti["map_index"]: ti["state"] for ti in tis},
                                _fanout_log(dep, run, 0)[-3000:], dep.stack.tails(15))
    assert sorted(ti["map_index"] for ti in tis) == list(range(PARTS))
    hosts = {ti["hostname"] for ti in tis}
    assert hosts == set(WORKERS), hosts  # spread over both workers, and nowhere else
    for worker in WORKERS:  # each imported smtask and the SDK once, before forking its tasks
        log = (dep.stack.root / "logs" / f"{worker}.log").read_text()
        assert re.search(r"smtask: preloaded \d+ modules", log), log[-3000:]
    from smtask.naming import job_name

    names = {job_name("churn", "trainer", dag_id=FANOUT, run_id=run, task_id=FANOUT_TASK,
                      map_index=index) for index in range(PARTS)}
    created = [e["name"] for e in dep.stack.events()
               if e["event"] == "create" and e["kind"] == "training" and e["name"] in names]
    assert sorted(created) == sorted(names)  # one job per task instance, none twice
    for ti in tis[:3]:
        entry = dep.airflow.call(
            "GET", f"/api/v2/dags/{FANOUT}/dagRuns/{run}/taskInstances/{FANOUT_TASK}/xcomEntries/"
                   f"return_value", params={"map_index": ti["map_index"]})
        value = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
        assert value["job_name"] in names and value["model"].endswith("/model.tar.gz")
        assert value["usage"]["instances"] == 1


def test_local_mode_with_shared_artifacts_runs_on_the_workers(celery):
    """Local mode's containers run on whichever worker takes each task; the artifacts they
    pass on are S3 objects (moto) that every worker reaches."""
    dep, run = celery, "shared-local"
    dep.airflow.call("POST", f"/api/v2/dags/{SHARED}/dagRuns",
                     json={"dag_run_id": run, "logical_date": None, "conf": {}})
    path = f"/api/v2/dags/{SHARED}/dagRuns/{run}"
    state = dep.wait(f"run {run} to end", lambda: (s := dep.airflow.call("GET", path)["state"])
                     in ("success", "failed") and s, 300)
    tis = dep.airflow.call("GET", f"{path}/taskInstances")["task_instances"]
    hosts = {ti["task_id"]: ti["hostname"] for ti in tis}
    assert state == "success", ({ti["task_id"]: ti["state"] for ti in tis}, dep.stack.tails(30))
    assert set(hosts.values()) <= set(WORKERS), hosts

    def result(task: str) -> Any:
        value = dep.airflow.call("GET", f"{path}/taskInstances/{task}/xcomEntries/return_value")[
            "value"]
        return value if isinstance(value, dict) else json.loads(value)

    shared = f"{dep.artifacts.split('/pipelines')[0]}/shared/churn/{SHARED}/{run}"
    train = result("train")
    assert train["model"].startswith(f"{shared}/trainer/") and dep.s3_keys(train["model"])
    assert train["usage"]["billable_seconds"] == 0  # a local job
    assert result("predict")["outputs"]["predictions"] == f"{shared}/transformer/predictions"
    assert result("evaluate")["metric"] == "accuracy" and result("evaluate")["value"] > 0.9


def _kill_worker(stack: Stack, name: str) -> None:
    """SIGKILL to the worker's process group and to every process it started (Airflow runs
    each task in a session of its own): the machine is gone, nothing is told."""
    process = stack.processes.pop(name)
    stack.stopped.append(process)
    children = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid, _ in children:
        _kill(pid)
    process.popen.wait(10)


def test_a_worker_killed_mid_job_the_retry_on_the_other_reattaches(celery):
    dep, run = celery, "killed-worker"
    dep.hold(run, "train")
    dep.airflow.trigger(run, {"mode": "sagemaker", "steps": {"trainer": {"poll_max_seconds": 2}}})
    ti = dep.job_running(run, "train")
    (job,) = dep.jobs(run, "train")
    victim = ti["hostname"]
    assert victim in WORKERS, ti
    _kill_worker(dep.stack, victim)
    # the scheduler finds the task without heartbeat, fails the attempt, and retries it
    retry = dep.wait_task(run, "train", "running", 180, try_number=2)
    (survivor,) = set(WORKERS) - {victim}
    assert retry["hostname"] == survivor, retry
    dep.wait("the retry to re-attach to the job",
             lambda: f"re-attaching to training job {job['name']}" in dep.task_log(run, "train", 2),
             90)
    dep.release(run, "train")
    assert dep.wait_run(run, 240) == "success", dep.airflow.states(run)
    assert [e["name"] for e in dep.jobs(run, "train")] == [job["name"]]  # only ever one job
    assert dep.jobs(run, "train", "stop") == []
    assert dep.airflow.xcom(run, "train")["job_name"] == job["name"]
    assert dep.airflow.xcom(run, "evaluate")["value"] == 1.0


def test_local_mode_on_several_workers_is_refused_before_any_job(celery):
    dep, run = celery, "local-refused"
    dep.airflow.trigger(run, {"mode": "local"})
    assert dep.wait_run(run, 180) == "failed", dep.airflow.states(run)
    split = dep.airflow.task(run, "split")
    assert (split["state"], split["try_number"]) == ("failed", 1)  # bad params: no retry
    log = dep.task_log(run, "split", 1)
    assert "local.artifacts: local mode under the CeleryExecutor, whose tasks run on several " \
           "workers, needs artifacts every worker reaches" in log, log[-3000:]
    assert "set local.artifacts to an s3:// URI with local.s3_endpoint" in log
    assert dep.jobs(run, "split") == []  # no job was created
