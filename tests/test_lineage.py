"""Links, assets and lineage of smtask's tasks (smtask.lineage): the SageMaker console, the
CloudWatch logs, a tuning job's best training job and the outputs as extra links; each output
an Airflow Asset whose event holds the run's URI; the job's datasets for OpenLineage."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
from test_cloud import moto_server, run_churn_on_moto, sagemaker  # noqa: F401  (fixtures)

from smtask import lineage

ROOT = Path(__file__).resolve().parent.parent


def test_console_links_name_the_job_in_its_region_and_partition():
    assert lineage.job_url("training", "churn-trainer-1", "eu-west-1") == \
        "https://console.aws.amazon.com/sagemaker/home?region=eu-west-1#/jobs/churn-trainer-1"
    assert lineage.job_url("processing", "p", "cn-north-1").startswith(
        "https://console.amazonaws.cn/sagemaker/home?region=cn-north-1#/processing-jobs/p")
    assert lineage.job_url("transform", "t", "us-gov-west-1").startswith(
        "https://console.amazonaws-us-gov.com/")
    assert lineage.job_url("register", "arn:aws:x", "us-east-1") == ""  # no console page known
    assert lineage.logs_url("/aws/sagemaker/TrainingJobs", "job-1/", "us-east-1") == (
        "https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/"
        "log-group/$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3Djob-1$252F")


def test_each_kinds_links_or_none_where_a_link_would_be_dead():
    from smtask.kinds import KINDS

    kinds = {kind.name: kind for kind in KINDS}
    cloud = {"mode": "sagemaker", "region": "eu-west-1", "s3_endpoint": None, "job_name": "j"}
    endpoint = lineage.LogsLink().url(kinds["endpoint"], {"endpoint_name": "churn-live"}, cloud)
    assert endpoint.endswith("log-group/$252Faws$252Fsagemaker$252FEndpoints$252Fchurn-live")
    assert lineage.JobLink().url(kinds["endpoint"], {"endpoint_name": "churn-live"}, cloud) \
        .endswith("#/endpoints/churn-live")
    # a failed job has no result: its links name the job the task created
    assert lineage.JobLink().url(kinds["training"], {}, cloud).endswith("#/jobs/j")
    assert lineage.LogsLink().url(kinds["tuning"], {}, cloud) == ""  # no best trial yet
    # a local run has no console's links, nor an outputs link without a URL for its
    # artifacts: none is asked for, and Airflow stores none (it stores each one it is given)
    local = {**cloud, "mode": "local"}
    outputs = {"outputs": {"model": "file:///tmp/a/model.tar.gz"}, "job_name": "j"}

    class Ran:
        job_kind, link_context, _lineage = kinds["training"], local, ({}, outputs)

    assert [link.get_link(Ran(), ti_key=None) for link in lineage.links(kinds["training"])] \
        == ["", "", ""]
    assert lineage.run_links(lineage.links(kinds["training"]), local) == ()
    s3_local = {**local, "s3_endpoint": "http://127.0.0.1:5000"}
    assert [type(link).__name__ for link in lineage.run_links(
        lineage.links(kinds["training"]), s3_local)] == ["OutputsLink"]
    assert len(lineage.run_links(lineage.links(kinds["tuning"]), cloud)) == 4
    assert lineage.OutputsLink().url(kinds["training"], {"outputs": {
        "model": "s3://b/p/model.tar.gz"}}, s3_local) == "http://127.0.0.1:5000/b?list-type=2&prefix=p%2F"
    assert [type(link).__name__ for link in lineage.links(kinds["register"])] == \
        ["JobLink", "LogsLink"]  # both empty: no console page, no log group
    assert lineage.JobLink().url(kinds["register"], {"job_name": "arn:x"}, cloud) == ""


def test_the_outputs_link_is_their_common_folder_or_none_for_local_files():
    uris = ["s3://b/pipelines/churn/churn/run-1/splitor/train",
            "s3://b/pipelines/churn/churn/run-1/splitor/test/"]
    assert lineage.outputs_url(["s3://b/p/run-1/trainer/job-1/output/model.tar.gz"], None,
                               None).endswith("prefix=p%2Frun-1%2Ftrainer%2Fjob-1%2Foutput%2F")
    assert lineage.outputs_url(uris, "us-east-1", None) == (
        "https://s3.console.aws.amazon.com/s3/buckets/b?region=us-east-1&"
        "prefix=pipelines%2Fchurn%2Fchurn%2Frun-1%2Fsplitor%2F")
    assert lineage.outputs_url(uris, None, "http://127.0.0.1:5000") == (
        "http://127.0.0.1:5000/b?list-type=2&prefix=pipelines%2Fchurn%2Fchurn%2Frun-1%2Fsplitor%2F")
    assert lineage.outputs_url(["file:///tmp/a/model.tar.gz"], None, None) == ""
    assert lineage.outputs_url([], "us-east-1", None) == ""


def test_datasets_are_named_as_the_providers_are():
    assert lineage.dataset("s3://bucket/a/b.csv") == ("s3://bucket", "a/b.csv")
    assert lineage.dataset("file:///tmp/x") == ("file", "/tmp/x")
    job = {"inputs": {"data": {"source": "s3://b/in"}}, "channels": {"train": "s3://b/train"},
           "data": "s3://b/batch", "model_data": "s3://b/model.tar.gz"}
    assert lineage.inputs(job) == ["s3://b/in", "s3://b/train", "s3://b/batch", "s3://b/model.tar.gz"]


def stored(dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """task id -> XCom key -> value, for one run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    found: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for row in session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                                   XComModel.run_id == run_id):
            found.setdefault(row.task_id, {})[row.key] = row.value
    return found


def asset_events(dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """asset URI's last three parts (dag/step/output) -> the extra of its event from this run."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent, AssetModel).join(
            AssetModel, AssetEvent.asset_id == AssetModel.id).filter(
            AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id).all()
        return {"/".join(model.uri.rsplit("/", 3)[-3:]): dict(event.extra or {})
                for event, model in rows}


def test_the_examples_tasks_link_their_jobs_and_publish_their_outputs_as_assets(sagemaker):
    dag, dag_run = run_churn_on_moto(sagemaker)
    assert str(getattr(dag_run.state, "value", dag_run.state)) == "success"
    xcom = stored(dag.dag_id, dag_run.run_id)
    console = "https://console.aws.amazon.com/sagemaker/home?region=us-east-1#/"
    for task, page in (("split", "processing-jobs"), ("train", "jobs"),
                       ("predict", "transform-jobs")):
        result, links = xcom[task]["return_value"], xcom[task]
        # built from the result the task returned: its job, its region, its outputs' folder
        assert links["_link_JobLink"] == f"{console}{page}/{result['job_name']}"
        assert f"$3FlogStreamNameFilter$3D{result['job_name']}$252F" in links["_link_LogsLink"]
        assert links["_link_OutputsLink"].startswith(
            "https://s3.console.aws.amazon.com/s3/buckets/smtask-example-artifacts?region="
            "us-east-1&prefix=pipelines%2Fchurn%2Fchurn%2F")
    assert "_link_JobLink" not in xcom["evaluate"]  # a plain task has none of smtask's links
    # each output an asset, its URI by pipeline, DAG, step and output; its event: the run's URI
    events = asset_events(dag.dag_id, dag_run.run_id)
    outputs = {f"churn/{step}/{name}": uri
               for task, step in (("split", "splitor"), ("train", "trainer"),
                                  ("predict", "transformer"))
               for name, uri in xcom[task]["return_value"]["outputs"].items()}
    assert sorted(events) == sorted(outputs) == [
        "churn/splitor/batch", "churn/splitor/test", "churn/splitor/train",
        "churn/trainer/model", "churn/transformer/predictions"]
    for name, extra in events.items():
        assert extra["uri"] == outputs[name] and extra["mode"] == "sagemaker"
        assert extra["run_id"] == dag_run.run_id
    # the declared asset is where the config's mode (local) keeps them, without the run; a
    # DAG scheduled on the model names it from the same config (dags/churn_model_report.py)
    (model,) = dag.get_task("train").outlets
    assert model.uri.endswith("/artifacts/churn/churn/trainer/model") and \
        model.uri.startswith("file:///") and model.name == model.uri and model.group == "model"
    from smtask import output_asset

    assert output_asset(ROOT / "config.json", "churn", "trainer") == model
    report = runpy.run_path(str(ROOT / "dags" / "churn_model_report.py"))["churn_model_report"]()
    assert list(report.timetable.asset_condition.objects) == [model]


@pytest.mark.docker
def test_a_local_run_stores_no_link_where_none_could_be(docker, tmp_path):
    """Airflow stores each extra link's URL as an XCom when a task ends (10 ms each, "" for
    none): a local run whose artifacts have no URL stores none (sagemaker mode: above)."""
    from conftest import run_dag, write_config
    from test_local_safety import SPLIT

    config = write_config(tmp_path, steps={"splitor": {
        "code_path": "tests/scripts/reports_what_it_got.py", "arguments": [],
        "outputs": {"report": {"source": "/opt/ml/processing/report"}}}})
    result = run_dag(SPLIT, config=config)
    assert result.state == "success", result.states
    keys = stored(result.dag_id, result.run_id)["split"]
    assert "return_value" in keys and [k for k in keys if k.startswith("_link_")] == []


@pytest.mark.docker
def test_openlineage_gets_each_jobs_datasets_from_a_local_run(docker, cli_home, tmp_path):
    """Airflow's OpenLineage provider with its file transport, as a deployment configures it
    (before Airflow is imported: a process of its own): ``smtask run`` of the example, in
    containers, writes one COMPLETE event per smtask task with the job's inputs and outputs,
    and exits (OpenLineage's process pool once kept it from exiting)."""
    import subprocess

    events = tmp_path / "openlineage.jsonl"
    env = {**cli_home.env(cli_home.own_airflow(tmp_path.name)),
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
               {"type": "file", "log_file_path": str(events), "append": True}),
           "AIRFLOW__OPENLINEAGE__NAMESPACE": "smtask-test"}
    run = cli_home.smtask("run", str(ROOT / "dags" / "churn.py"), env=env)
    try:
        out, _ = run.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        run.kill()
        raise
    assert run.returncode == 0, out[-3000:]
    done = {e["job"]["name"]: e for e in map(json.loads, events.read_text().splitlines())
            if e["eventType"] == "COMPLETE"}
    assert {"churn.split", "churn.train", "churn.predict", "churn"} <= set(done), sorted(done)

    def datasets(task: str, side: str) -> list[tuple[str, str]]:
        return [(d["namespace"], d["name"]) for d in done[task][side]]

    split_out = datasets("churn.split", "outputs")
    assert sorted(name.rsplit("/", 1)[1] for _, name in split_out) == ["batch", "test", "train"]
    assert {namespace for namespace, _ in split_out} == {"file"}
    # the training job read the processing job's train split; the transform its batch split
    # and the trained model, and wrote the predictions
    train_in, train_out = datasets("churn.train", "inputs"), datasets("churn.train", "outputs")
    assert [n for _, n in train_in] == [n for _, n in split_out if n.endswith("/train")]
    assert [n.rsplit("/", 1)[1] for _, n in train_out] == ["model.tar.gz"]
    predict_in = [n for _, n in datasets("churn.predict", "inputs")]
    assert predict_in == [*(n for _, n in split_out if n.endswith("/batch")), train_out[0][1]]
    assert [n.rsplit("/", 1)[1] for _, n in datasets("churn.predict", "outputs")] == ["predictions"]
    assert done["churn.train"]["job"]["namespace"] == "smtask-test"


def test_a_region_cannot_point_a_link_at_another_page():
    url = lineage.job_url("training", "job", "us-east-1#/jobs/victim")
    assert url.startswith("https://console.aws.amazon.com/sagemaker/home?region=us-east-1%23")
    assert url.endswith("#/jobs/job") and url.count("#") == 1
