"""Seeds 002/003 as an smtask DAG (dags/recommender.py): reviews -> preprocess -> prepare
RecordIO-protobuf -> train or tune factorization machines -> batch transform -> evaluate ->
clean up. Locally in Docker with the stand-in, and the same DAG's jobs on moto."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import run_example
from test_cloud import BUCKET, ROLE, client, get_s3, moto_server, put_s3, sagemaker  # noqa: F401
from test_tuning import tuning_jobs  # noqa: F401

from smtask import recordio

FM_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/factorization-machines:1"
TUNE = {"steps": {"branching": {"tune": True}}}


@pytest.mark.docker
@pytest.mark.usefixtures("docker")
def test_the_tuning_branch_beats_the_mean_and_cleans_up_its_recordio_files(loopback_guard):
    result = run_example("recommender", conf=TUNE,
                         steps={"tuner": {"tuning": {"max_jobs": 2, "max_parallel_jobs": 2}}})
    assert result.ok, result.states
    # the branch: tune ran, train was skipped, the transform ran on tune's result
    assert (result.states["tune"], result.states["train"]) == ("success", "skipped")
    tuned, metric = result.xcom["tune"], result.xcom["evaluate"]
    assert tuned["trials"]["completed"] == 2 and tuned["objective"]["metric"] == "test:rmse"
    assert metric["rows"] > 100 and metric["value"] < 0.9 * metric["mean_baseline"], metric
    # cleanup removed the prepared RecordIO files and nothing else of the run
    prepared = Path(urlparse(result.xcom["prepare"]["prefix"]).path)
    assert result.xcom["cleanup"] == 4 and not prepared.exists()
    assert Path(urlparse(tuned["model"]).path).is_file()
    assert any(Path(urlparse(result.xcom["predict"]["outputs"]["predictions"]).path).iterdir())


def answer_like_the_algorithm(sagemaker: Any) -> None:  # noqa: F811
    """moto runs no container: preprocess leaves a ratings table of 300 customers x 60
    videos, and the transform answers one score per record of its input, as JSON."""

    def preprocess(job: Any) -> None:
        (output,) = job.processing_output_config["Outputs"]
        folder = output["S3Output"]["S3Uri"]
        rows = [(c, (c * 7 + k) % 60, 1 + (c + k) % 5) for c in range(300) for k in range(3)]
        put_s3(f"{folder}/ratings.csv", "customer,video,rating\n" + "".join(
            f"{c},{v},{r}\n" for c, v, r in rows))
        put_s3(f"{folder}/dims.json", json.dumps({"customers": 300, "videos": 60,
                                                  "ratings": len(rows)}))

    def transform(job: Any) -> None:
        source = job.transform_input["DataSource"]["S3DataSource"]["S3Uri"].rstrip("/")
        s3 = client("s3")
        bucket, prefix = source.removeprefix("s3://").split("/", 1)
        (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        count = sum(1 for _ in recordio.read_records(io.BytesIO(body)))
        put_s3(f"{job.transform_output['S3OutputPath']}/{key.rsplit('/', 1)[1]}.out",
               json.dumps({"predictions": [{"score": 3.0}] * count}))

    sagemaker.on_complete.update(processing=preprocess, transform=transform)


def test_the_training_branch_on_sagemaker_sends_recordio_to_the_fm_algorithm(sagemaker):  # noqa: F811
    answer_like_the_algorithm(sagemaker)
    result = run_example("recommender", artifacts=f"s3://{BUCKET}/pipelines", role=ROLE,
                         conf={"mode": "sagemaker"})
    assert result.ok, result.states
    assert [kind for kind, _ in sagemaker.creates] == ["processing", "training", "transform"]
    train = sagemaker.request("create_training_job")
    assert train["AlgorithmSpecification"]["TrainingImage"] == FM_IMAGE
    assert "ContainerEntrypoint" not in train["AlgorithmSpecification"]
    channels = {c["ChannelName"]: c for c in train["InputDataConfig"]}
    assert sorted(channels) == ["test", "train"]  # no code channel: the algorithm takes none
    assert {c["ContentType"] for c in channels.values()} == {"application/x-recordio-protobuf"}
    assert train["HyperParameters"]["feature_dim"] == "360"
    assert train["HyperParameters"]["predictor_type"] == "regressor"
    # what prepare wrote is RecordIO-protobuf: 600 one-hot rows of 360 features
    prepared = result.xcom["prepare"]
    transform = sagemaker.request("create_transform_job")
    assert transform["TransformInput"]["ContentType"] == "application/x-recordio-protobuf"
    assert transform["TransformInput"]["SplitType"] == "RecordIO"
    assert transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == prepared["batch"]
    assert transform["TransformOutput"]["Accept"] == "application/json"
    assert sagemaker.request("create_model")["PrimaryContainer"]["Image"] == FM_IMAGE
    assert result.xcom["evaluate"]["rows"] == 180  # 20 % of the 900 ratings, each scored
    # cleanup deleted the RecordIO files (4) and kept the reviews and the ratings table
    assert result.xcom["cleanup"] == 4
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert not [k for k in keys if "/prepare/" in k]
    assert [k for k in keys if k.endswith("/preprocess/ratings/ratings.csv")]


def test_the_tuning_branch_on_sagemaker_tunes_the_same_algorithm(tuning_jobs):  # noqa: F811
    answer_like_the_algorithm(tuning_jobs)
    result = run_example("recommender", artifacts=f"s3://{BUCKET}/pipelines", role=ROLE,
                         conf={"mode": "sagemaker", **TUNE})
    assert result.ok, result.states
    assert result.states["train"] == "skipped"
    request = tuning_jobs.request("create_hyper_parameter_tuning_job")
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == FM_IMAGE
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize",
                                                          "MetricName": "test:rmse"}
    ranges = config["ParameterRanges"]
    assert [r["Name"] for r in ranges["IntegerParameterRanges"]] == ["num_factors"]
    assert sorted(r["Name"] for r in ranges["ContinuousParameterRanges"]) == [
        "factors_lr", "linear_lr"]
    assert definition["StaticHyperParameters"]["feature_dim"] == "360"
    assert "num_factors" not in definition["StaticHyperParameters"]
    # the transform scores with the best trial's model
    best = result.xcom["tune"]["best_training_job"]
    model = tuning_jobs.request("create_model")["PrimaryContainer"]["ModelDataUrl"]
    assert model == client().describe_training_job(TrainingJobName=best)["ModelArtifacts"][
        "S3ModelArtifacts"]
    # the tuning task's links: the tuning job, and its best trial's job and logs
    from test_lineage import stored

    links = stored(result.dag_id, result.run_id)["tune"]
    assert links["_link_JobLink"].endswith(f"#/hyper-tuning-jobs/{result.xcom['tune']['job_name']}")
    assert links["_link_BestTrainingJobLink"].endswith(f"#/jobs/{best}")
    assert f"TrainingJobs$3FlogStreamNameFilter$3D{best}$252F" in links["_link_LogsLink"]
