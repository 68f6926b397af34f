"""The example DAG on a real Airflow deployment: PostgreSQL 15, the api-server, a scheduler
with LocalExecutor, a dag-processor and a triggerer, each its own process, with moto over
HTTP as SageMaker (tests/deployment/moto_server.py) and the AWS connection the only place
that names it. Runs are triggered and checked over REST v2, as a user would.

The four runs start at once (a deployment runs them side by side, and so the whole module
takes about two minutes on two idle cores); each test follows one of them:

- a running SageMaker task (the processing step) marked failed over REST stops its job;
- with a deferrable trainer the training wait runs in the triggerer;
- the example with ``{"mode": "sagemaker"}`` succeeds, every SageMaker task's XCom holds its
  S3 outputs, ``evaluate`` the metric, and each task instance made exactly one job;
- restarting the scheduler (SIGTERM to its process group) while the training job runs ends
  the task at once, and its retry, under a new scheduler, re-attaches to the same job;
- and, over all four, Airflow's processes made only the AWS calls the README's permission
  list allows, and none to IAM or STS.

Needs PostgreSQL (``initdb``, ``postgres``; ./run's set-up installs it) and the test extras.
Without them the module is skipped, unless SMTASK_REQUIRE_DEPLOYMENT=1 (CI), which fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deployment.stack import (
    AIRFLOW_KEY,
    Stack,
    StackError,
    deployed,
    missing_parts,
    require,
    wait_for,
)

# one deployment for the module: under xdist its tests stay on one worker (--dist loadgroup)
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("deployment")]

DAG_ID = "churn"
REPORT_DAG = "churn_model_report"  # dags/churn_model_report.py: scheduled on churn's model
# task -> (step, job kind) of the example's SageMaker tasks
SAGEMAKER_TASKS = {"split": ("splitor", "processing"), "train": ("trainer", "training"),
                   "predict": ("transformer", "transform")}
# run id -> (conf, the task whose job is held InProgress until the test releases it); a
# released job is noticed within poll_max_seconds
RUNS: dict[str, tuple[dict[str, Any], str | None]] = {
    "plain": ({"mode": "sagemaker"}, None),
    "mark-failed": ({"mode": "sagemaker"}, "split"),
    "deferred": ({"mode": "sagemaker", "steps": {"trainer": {"deferrable": True,
                                                             "poll_max_seconds": 2}}}, "train"),
    "restart": ({"mode": "sagemaker", "steps": {"trainer": {"poll_max_seconds": 2}}}, "train"),
}


class Airflow:
    """The REST API v2, as the admin user of the simple auth manager."""

    def __init__(self, stack: Stack) -> None:
        import requests

        self.stack, self.http = stack, requests.Session()
        token = self.call("POST", "/auth/token", json={"username": "admin", "password": "admin"},
                          ok=(200, 201))
        self.http.headers["Authorization"] = f"Bearer {token['access_token']}"

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self.http.request(method, self.stack.api + path, timeout=30, **kwargs)
        if response.status_code not in ok:
            raise StackError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json()

    def trigger(self, run_id: str, conf: dict[str, Any]) -> None:
        self.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                  json={"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def run_state(self, run_id: str) -> str:
        return str(self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"])

    def task(self, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def states(self, run_id: str) -> dict[str, str]:
        found = self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}

    def xcom(self, run_id: str, task_id: str) -> Any:
        entry = self.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}"
                                 "/xcomEntries/return_value")
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value

    def mark(self, run_id: str, task_id: str, state: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}",
                  json={"new_state": state})


@dataclass
class Deployment:
    stack: Stack
    airflow: Airflow
    artifacts: str  # the example's s3://bucket/prefix

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
        return wait_for(what, check, timeout, interval=1.0, stack=self.stack)

    def wait_run(self, run_id: str, timeout: float = 150) -> str:
        """The run's final state; the task states are in the failure message otherwise."""
        final = ("success", "failed")
        try:
            return str(self.wait(f"run {run_id} to end",
                                 lambda: (state := self.airflow.run_state(run_id)) in final and state,
                                 timeout))
        except StackError as exc:
            raise StackError(f"{exc}\ntask states: {self.airflow.states(run_id)}") from None

    def wait_task(self, run_id: str, task_id: str, state: str, timeout: float = 120,
                  try_number: int | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            ti = self.airflow.task(run_id, task_id)
            if ti["state"] == state and try_number in (None, ti["try_number"]):
                return ti
            if ti["state"] in ("failed", "upstream_failed") and state != "failed":
                raise StackError(f"{task_id} of {run_id} is {ti['state']}: "
                                 f"{self.airflow.states(run_id)}" + self.stack.tails())
            return None

        return dict(self.wait(f"{task_id} of run {run_id} to be {state}", reached, timeout))

    @staticmethod
    def job_name(run_id: str, task_id: str) -> str:
        """The first job name of a task instance, as smtask derives it."""
        from smtask.naming import job_name

        return job_name("churn", SAGEMAKER_TASKS[task_id][0], dag_id=DAG_ID, run_id=run_id,
                        task_id=task_id)

    def jobs(self, run_id: str, task_id: str, event: str = "create") -> list[dict[str, Any]]:
        """The moto server's ``event`` records of this task instance's jobs (any attempt)."""
        from smtask.naming import attempt_name

        first = self.job_name(run_id, task_id)
        names = {attempt_name(first, n) for n in range(1, 10)}
        kind = SAGEMAKER_TASKS[task_id][1]
        return [e for e in self.stack.events()
                if e["event"] == event and e["kind"] == kind and e["name"] in names]

    def hold(self, run_id: str, task_id: str) -> None:
        (self.stack.control / f"hold-{self.job_name(run_id, task_id)}").touch()

    def release(self, run_id: str, task_id: str) -> None:
        (self.stack.control / f"release-{self.job_name(run_id, task_id)}").touch()

    def job_running(self, run_id: str, task_id: str) -> dict[str, Any]:
        """Waits until the task instance runs and its job exists; the task instance."""
        self.wait(f"the {task_id} job of {run_id} to be created",
                  lambda: self.jobs(run_id, task_id), 150)
        return self.wait_task(run_id, task_id, "running", 60)

    def task_log(self, run_id: str, task_id: str, try_number: int) -> str:
        """The task log file (JSON lines) as the worker wrote it."""
        path = (self.stack.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
                / f"task_id={task_id}" / f"attempt={try_number}.log")
        return path.read_text() if path.exists() else ""

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        title = kind.capitalize()
        return dict(getattr(self.stack.aws("sagemaker"), f"describe_{kind}_job")(
            **{f"{title}JobName": name}))

    def s3_keys(self, uri: str) -> list[str]:
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        listed = self.stack.aws("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]


def _bring_up(stack: Stack) -> Deployment:
    """PostgreSQL, moto, the example project, ``airflow db migrate``, the four Airflow
    processes; waits until all report healthy and the example DAG is parsed, then unpauses it."""
    import requests

    stack.start_moto()  # it starts while PostgreSQL does and Airflow migrates its database
    stack.start_postgres()
    config = stack.copy_example()
    stack.migrate()
    stack.aws("s3").create_bucket(Bucket=config["artifacts"].removeprefix("s3://").split("/")[0])
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        stack.start_airflow(component)

    def healthy() -> bool:
        health = requests.get(f"{stack.api}/api/v2/monitor/health", timeout=5).json()
        return all(health[part]["status"] == "healthy"
                   for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    wait_for("the Airflow components to report healthy", healthy, 150, stack=stack)
    airflow = Airflow(stack)
    wait_for("the example DAG to be parsed",
             lambda: airflow.call("GET", f"/api/v2/dags/{DAG_ID}", ok=(200, 404)).get("dag_id"),
             60, stack=stack)
    wait_for("the DAG scheduled on the example's model to be parsed",
             lambda: airflow.call("GET", f"/api/v2/dags/{REPORT_DAG}", ok=(200, 404)).get("dag_id"),
             60, stack=stack)
    for dag_id in (DAG_ID, REPORT_DAG):
        airflow.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    return Deployment(stack, airflow, config["artifacts"])


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """The running deployment with the four runs triggered; everything is stopped after."""
    require(missing_parts(), "the deployment test")

    def bring_up(stack: Stack) -> Deployment:
        deployment = _bring_up(stack)
        for run_id, (conf, held) in RUNS.items():
            if held:
                deployment.hold(run_id, held)
            deployment.airflow.trigger(run_id, conf)
        return deployment

    with deployed("smtask-deploy-", bring_up) as deployment:
        yield deployment


def test_marking_a_running_task_failed_stops_its_job(deployment):
    dep, run = deployment, "mark-failed"
    dep.job_running(run, "split")
    (job,) = dep.jobs(run, "split")
    dep.airflow.mark(run, "split", "failed")
    dep.wait("SageMaker to be asked to stop the job", lambda: dep.jobs(run, "split", "stop"), 60)
    assert dep.describe("processing", job["name"])["ProcessingJobStatus"] in ("Stopping", "Stopped")
    assert dep.wait_run(run, 60) == "failed"
    ti = dep.airflow.task(run, "split")
    assert (ti["state"], ti["try_number"]) == ("failed", 1)  # a user's kill is not retried
    assert f"killed: asked SageMaker to stop processing job {job['name']}" in \
        dep.task_log(run, "split", 1)
    assert len(dep.jobs(run, "split")) == 1 and dep.jobs(run, "train") == []


def test_a_deferrable_trainer_waits_in_the_triggerer(deployment):
    dep, run = deployment, "deferred"
    ti = dep.wait_task(run, "train", "deferred", timeout=150)
    # handed to the triggerer while the job runs: no worker holds the task
    assert ti["trigger"]["classpath"] == "smtask.triggers.SageMakerJobTrigger", ti["trigger"]
    (job,) = dep.jobs(run, "train")
    assert dep.describe("training", job["name"])["TrainingJobStatus"] == "InProgress"
    dep.wait("the triggerer to pick the trigger up",
             lambda: dep.airflow.task(run, "train").get("triggerer_job"), 30)
    dep.release(run, "train")
    assert dep.wait_run(run) == "success", dep.airflow.states(run)
    train = dep.airflow.xcom(run, "train")
    assert train["job_name"] == job["name"] and train["model"].endswith("/model.tar.gz")
    assert dep.airflow.xcom(run, "evaluate")["value"] == 1.0
    assert all(len(dep.jobs(run, task)) == 1 for task in SAGEMAKER_TASKS)
    assert "Pausing task as DEFERRED" in dep.task_log(run, "train", 1)


def test_the_example_runs_on_the_deployment_with_one_job_per_task(deployment):
    dep, run = deployment, "plain"
    assert dep.wait_run(run) == "success", dep.airflow.states(run)
    results = {task: dep.airflow.xcom(run, task) for task in (*SAGEMAKER_TASKS, "evaluate")}
    prefix = f"{dep.artifacts}/churn/{DAG_ID}/{run}"
    # the SageMaker tasks' XCom: their job and its S3 outputs, which the jobs wrote
    split, train, predict = results["split"], results["train"], results["predict"]
    assert split["outputs"] == {name: f"{prefix}/splitor/{name}" for name in ("train", "test", "batch")}
    assert all(dep.s3_keys(uri) for uri in split["outputs"].values())
    assert train["model"].startswith(f"{prefix}/trainer/") and train["model"].endswith("/model.tar.gz")
    assert train["outputs"] == {"model": train["model"]} and dep.s3_keys(train["model"])
    assert predict["outputs"] == {"predictions": f"{prefix}/transformer/predictions"}
    assert dep.s3_keys(predict["outputs"]["predictions"])
    # evaluate scored the transform's predictions against the processing job's test split
    assert results["evaluate"] == {"metric": "accuracy", "value": 1.0, "rows": 4}
    # exactly one job per task instance, the one its XCom names, completed
    for task, (_, kind) in SAGEMAKER_TASKS.items():
        created = dep.jobs(run, task)
        assert [job["name"] for job in created] == [results[task]["job_name"]], (task, created)
        status = dep.describe(kind, results[task]["job_name"])[f"{kind.capitalize()}JobStatus"]
        assert status == "Completed"
    assert [e["name"] for e in dep.stack.events()
            if e["event"] == "create" and e["kind"] == "model"
            and e["name"] == predict["job_name"]] == [predict["model_name"]]
    # the training job's CloudWatch lines are in the task log
    assert f"{train['job_name']}/algo-1-1700000000] training job {train['job_name']} starting" \
        in dep.task_log(run, "train", 1)


def test_a_scheduler_restart_mid_job_reattaches_to_the_same_job(deployment):
    dep, run = deployment, "restart"
    dep.job_running(run, "train")
    (job,) = dep.jobs(run, "train")
    # LocalExecutor's workers are the scheduler's children, in its process group
    started = time.monotonic()
    _, forced = dep.stack.stop_process("scheduler", timeout=60)
    assert not forced, "the scheduler did not stop within 60 s of SIGTERM" + dep.stack.tails()
    assert time.monotonic() - started < 30  # the task ended at once; it did not wait for the job
    first = dep.task_log(run, "train", 1)
    assert f"training job {job['name']} is left running" in first
    assert dep.describe("training", job["name"])["TrainingJobStatus"] == "InProgress"
    dep.stack.start_airflow("scheduler", name="scheduler-2")
    dep.wait_task(run, "train", "running", 120, try_number=2)
    dep.wait("the retry to re-attach to the job",
             lambda: f"re-attaching to training job {job['name']}" in dep.task_log(run, "train", 2),
             60)
    dep.release(run, "train")
    assert dep.wait_run(run) == "success", dep.airflow.states(run)
    assert [e["name"] for e in dep.jobs(run, "train")] == [job["name"]]  # only ever one job
    assert all(len(dep.jobs(run, task)) == 1 for task in SAGEMAKER_TASKS)
    assert dep.jobs(run, "train", "stop") == []
    assert dep.airflow.xcom(run, "train")["job_name"] == job["name"]
    assert dep.airflow.xcom(run, "evaluate")["value"] == 1.0


# What the README's "Deploying" section says the workers' and triggerer's role needs.
WORKER_PERMISSIONS = {
    *(f"sagemaker:{verb}{kind}Job" for verb in ("Create", "Describe", "Stop")
      for kind in ("Processing", "Training", "Transform")),
    "sagemaker:CreateModel", "sagemaker:AddTags", "sagemaker:ListTags",
    "s3:GetObject", "s3:PutObject", "s3:ListBucket",
    "logs:DescribeLogStreams", "logs:GetLogEvents",
}


def test_the_api_server_refuses_a_bad_conf_in_one_line(deployment):
    """REST's 400 (what the trigger form shows) names the step, the key and the rule: the API
    server validates with smtask's params dialect (registered through the provider info)."""
    dep = deployment
    for conf, refused in (
            ({"steps": {"trainr": {}}}, "Invalid input for param steps: steps.trainr: unknown "
                                        "step (known: data-source, evaluate, splitor, trainer, "
                                        "transformer)"),
            ({"steps": {"trainer": {"hyperparameters": {f"h{i}": i for i in range(2000)}}}},
             "Invalid input for param steps: steps.trainer.hyperparameters: 2000 keys, at most 100")):
        response = dep.airflow.http.request(
            "POST", dep.stack.api + f"/api/v2/dags/{DAG_ID}/dagRuns", timeout=30,
            json={"dag_run_id": f"refused-{len(conf)}-{time.time()}", "logical_date": None,
                  "conf": conf})
        assert response.status_code == 400, response.text[:500]
        assert response.json()["detail"] == refused


def test_airflow_made_only_the_calls_the_documented_permissions_allow(deployment):
    """Every request Airflow's processes sent moto, in all four runs, as the IAM action it
    needs: all are in the README's list; no IAM or STS call at all (smtask checks no role)."""
    dep = deployment
    for run in RUNS:
        dep.wait_run(run)
    requests = [e for e in dep.stack.events() if e["event"] == "request"]
    assert [e for e in requests if e["kind"] in ("iam", "sts")] == []
    used = {e["name"] for e in requests if e["key"] == AIRFLOW_KEY}
    assert used <= WORKER_PERMISSIONS, sorted(used - WORKER_PERMISSIONS)
    assert {"sagemaker:CreateTrainingJob", "sagemaker:StopProcessingJob", "sagemaker:CreateModel",
            "s3:PutObject", "s3:GetObject", "logs:GetLogEvents"} <= used, sorted(used)


@pytest.fixture(scope="module")
def ui(deployment: Deployment) -> Iterator[Any]:
    """Airflow's UI in Chromium (Debian's) driven by Playwright, logged in as admin."""
    from deployment import browser

    require(browser.missing(), "the browser test")
    with browser.browser(deployment.stack.api) as page:
        page.log_in()
        yield page


MAX_DEPTH = "steps.trainer.hyperparameters.max_depth"


def test_the_trigger_form_has_typed_fields_refuses_a_bad_value_in_one_line_and_runs_an_override(
        deployment, ui):
    """In Chromium: the trainer's max_depth is an integer field of its own with the config's
    default, in the trainer's section, not required; a value the schema refuses is refused by
    the API server in smtask's one line, shown in the dialog; a valid override triggers a run
    whose training job takes it. The dialog's picture is README's (SMTASK_SCREENSHOTS=docs)."""
    dep, dialog = deployment, ui.trigger_form(DAG_ID)
    ui.section(dialog, "step trainer")
    depth = ui.field(dialog, MAX_DEPTH)
    assert depth.get_attribute("role") == "spinbutton" and depth.input_value() == "6"
    row = ui.row(dialog, MAX_DEPTH)
    label = row.locator("label[data-part=label]").first
    assert label.inner_text().strip() == "Maximum depth"
    assert label.get_attribute("data-required") is None  # nothing is required
    assert "how deep each tree may grow" in row.inner_text()
    shots = dep.stack.root / "trigger-form.png"
    ui.screenshot(dialog, shots)
    if os.environ.get("SMTASK_SCREENSHOTS"):
        shutil.copy(shots, Path(os.environ["SMTASK_SCREENSHOTS"]) / "trigger-form.png")

    ui.section(dialog, "infrastructure")
    ui.choose(dialog, "mode", "sagemaker")  # moto is the deployment's SageMaker
    ui.section(dialog, "step trainer")
    depth.fill("2.5")  # a number, not an integer: only the schema knows
    refused = ui.submit(dialog)
    assert refused.status == 400
    alert = dialog.get_by_test_id("error-alert")
    alert.wait_for()
    line = f"Invalid input for param {MAX_DEPTH}: {MAX_DEPTH}: 2.5 is not of type 'integer'"
    assert line in alert.inner_text()
    assert refused.json()["detail"] == line and len(line.splitlines()) == 1

    depth.fill("3")
    accepted = ui.submit(dialog)
    assert accepted.status in (200, 201), accepted.text()
    run_id = accepted.json()["dag_run_id"]
    assert accepted.request.post_data_json["conf"][MAX_DEPTH] == 3
    assert dep.wait_run(run_id) == "success", dep.airflow.states(run_id)
    (job,) = dep.jobs(run_id, "train")
    hyperparameters = dep.describe("training", job["name"])["HyperParameters"]
    assert hyperparameters["max_depth"] == "3" and hyperparameters["n_estimators"] == "100"


def test_a_finished_smtask_task_shows_its_extra_links(deployment, ui):
    dep, run = deployment, "plain"
    assert dep.wait_run(run) == "success"
    train = dep.airflow.xcom(run, "train")
    links = ui.extra_links(DAG_ID, run, "train")
    assert {"SageMaker console", "CloudWatch logs", "Outputs"} <= set(links), links
    assert links["SageMaker console"] == ("https://console.aws.amazon.com/sagemaker/home?region="
                                          f"us-east-1#/jobs/{train['job_name']}")
    assert f"$3D{train['job_name']}$252F" in links["CloudWatch logs"]
    assert links["Outputs"].startswith("https://s3.console.aws.amazon.com/s3/buckets/")
    assert "Best training job" not in links  # a tuning step's only
    # the links are the XCom the worker stored, which REST serves too
    served = dep.airflow.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/train/"
                                     "links")["extra_links"]
    assert {name: served[name] for name in links} == links
    # a plain task has none of smtask's links
    assert "SageMaker console" not in dep.airflow.call(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/evaluate/links")["extra_links"]


def test_a_dag_scheduled_on_the_model_asset_runs_on_each_new_model(deployment):
    """Each output of an smtask task is an Asset (smtask.lineage): a run's new model is an
    event of ``churn/churn/trainer/model`` whose extra holds that run's model URI, and the
    DAG scheduled on it runs and reads it."""
    dep = deployment
    assert dep.wait_run("plain") == "success"
    model = dep.airflow.xcom("plain", "train")["model"]
    events = dep.airflow.call("GET", "/api/v2/assets/events", params={
        "source_dag_id": DAG_ID, "source_run_id": "plain", "source_task_id": "train"})
    (event,) = events["asset_events"]
    assert event["extra"]["uri"] == model and event["extra"]["mode"] == "sagemaker"
    asset = dep.airflow.call("GET", f"/api/v2/assets/{event['asset_id']}")
    assert asset["uri"].endswith("/churn/churn/trainer/model") and asset["group"] == "model"

    def reported() -> list[Any]:
        runs = dep.airflow.call("GET", f"/api/v2/dags/{REPORT_DAG}/dagRuns")["dag_runs"]
        done = [r["dag_run_id"] for r in runs if r["state"] == "success"]
        values = [dep.airflow.call("GET", f"/api/v2/dags/{REPORT_DAG}/dagRuns/{run}/"
                                   "taskInstances/report/xcomEntries/return_value")["value"]
                  for run in done]
        return [m for v in values for m in (json.loads(v) if isinstance(v, str) else v)]

    models = dep.wait("the report DAG to run on the new model",
                      lambda: [m for m in reported() if m["uri"] == model], 120)
    assert models[0]["run_id"] == "plain" and models[0]["job_name"] == \
        dep.airflow.xcom("plain", "train")["job_name"]
