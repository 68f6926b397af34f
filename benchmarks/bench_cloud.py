"""Cloud mode against the Amazon provider's operators, on one moto server:

- SageMaker API calls per job (counted where moto receives them, by job or model name);
- time from the task's start to the job's create call arriving (median of BENCH_ROUNDS rounds).

smtask's three tasks and the provider's SageMakerProcessingOperator, SageMakerTrainingOperator
and SageMakerTransformOperator (raw request dicts, ``check_interval=1``, defaults otherwise)
run in one DAG under ``dag.test()``, after a warm-up task has imported both libraries (in a
real worker each task is a new process and pays its imports: ``bench_imports.py`` measures
them). moto completes every job at once, so the counts are a floor for both.

Fairness. moto runs in a process of its own (``--moto-server PORTFILE CALLSFILE``: it records
every call it answers as a JSON line) so it does not share the timed tasks' GIL, and its
SageMaker and S3 backends are warmed before any task runs. The DAG runs BENCH_ROUNDS times
(default 3), a fresh DAG run each; the tasks run one at a time in a chain (dag.test runs the
ready tasks in no set order), smtask's task of a kind before the provider's in rounds 1, 3,
... and after it in rounds 2, 4, ... smtask uploads its code and settings once per content: the smtask
objects under ``pipelines/`` are deleted between rounds, so every round pays those uploads as a
first run does (BENCH_CLEAR_UPLOADS=0 keeps them). The provider's jobs get a new name each
round. The tasks run in this process: after each task the heap is frozen (``gc.freeze``),
else a full garbage-collector pass over what earlier tasks and rounds left lands in a
random task (0.8-1.1 s seen; BENCH_GC_FREEZE=0 shows it). BENCH_PROFILE=1 prints a
cProfile of each task's ``execute`` (last round).
Usage: .venv/bin/python benchmarks/bench_cloud.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from children import end

ROOT = Path(__file__).resolve().parent.parent
REGION, BUCKET = "us-east-1", "smtask-bench"
ROLE = "arn:aws:iam::123456789012:role/bench"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bench:1"
KINDS = ("processing", "training", "transform")
OURS = {"processing": "split", "training": "train", "transform": "predict"}
THEIRS = {kind: f"provider_{kind}" for kind in KINDS}

DAG_FILE = """
from airflow.sdk import chain, dag, task
from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerProcessingOperator, SageMakerTrainingOperator, SageMakerTransformOperator)
from smtask import pipeline_params, sm_processing, sm_training, sm_transform

S3 = "s3://BUCKET"
ROLE, IMAGE, ROUND, SMTASK_FIRST = "ROLE_", "IMAGE_", "ROUND_", SMTASK_FIRST_

@dag(dag_id="bench_cloud", schedule=None, params=pipeline_params("CONFIG"))
def bench_cloud():
    @sm_processing(step="splitor")
    def split():
        return {"data-source": S3 + "/data/"}

    @sm_training(step="trainer")
    def train():
        return {"train": S3 + "/splits/train/"}

    @sm_transform(step="transformer")
    def predict():
        return {"data": S3 + "/splits/batch/",
                "model": {"job_name": "m", "model": S3 + "/m/model.tar.gz", "image": IMAGE}}

    @task
    def warm_up():
        \"\"\"Pays the in-process start-up and both libraries' imports before any timed task.\"\"\"
        from smtask.preload import preload  # smtask's modules and the SDK's it uses

        preload()
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook  # noqa: F401

    limits = {"MaxRuntimeInSeconds": 900}
    provider_processing = SageMakerProcessingOperator(
        task_id="provider_processing", check_interval=1, config={
        "ProcessingJobName": "provider-processing-" + ROUND, "RoleArn": ROLE,
        "StoppingCondition": limits,
        "AppSpecification": {"ImageUri": IMAGE, "ContainerEntrypoint": ["python3",
                             "/opt/ml/processing/input/code/preprocess.py"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1,
                                "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}},
        "ProcessingInputs": [
            {"InputName": "data-source", "S3Input": {"S3Uri": S3 + "/data/",
             "LocalPath": "/opt/ml/processing/input/data-source", "S3DataType": "S3Prefix",
             "S3InputMode": "File"}},
            {"InputName": "code", "S3Input": {"S3Uri": S3 + "/code/preprocess.py",
             "LocalPath": "/opt/ml/processing/input/code", "S3DataType": "S3Prefix",
             "S3InputMode": "File"}}],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": n, "S3Output": {"S3Uri": S3 + "/p/" + n,
             "LocalPath": "/opt/ml/processing/" + n, "S3UploadMode": "EndOfJob"}}
            for n in ("train", "test", "batch")]}})
    provider_training = SageMakerTrainingOperator(
        task_id="provider_training", check_interval=1, config={
        "TrainingJobName": "provider-training-" + ROUND, "RoleArn": ROLE,
        "StoppingCondition": limits,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": {"n_estimators": "100", "max_depth": "6"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": S3 + "/splits/train/"}}}],
        "OutputDataConfig": {"S3OutputPath": S3 + "/t/"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                           "VolumeSizeInGB": 30}})
    provider_transform = SageMakerTransformOperator(
        task_id="provider_transform", check_interval=1, config={
        "Model": {"ModelName": "provider-model-" + ROUND, "ExecutionRoleArn": ROLE,
                  "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": S3 + "/m/model.tar.gz"}},
        "Transform": {"TransformJobName": "provider-transform-" + ROUND,
                      "ModelName": "provider-model-" + ROUND,
                      "TransformInput": {"DataSource": {"S3DataSource": {
                          "S3DataType": "S3Prefix", "S3Uri": S3 + "/splits/batch/"}},
                          "ContentType": "text/csv", "SplitType": "Line"},
                      "TransformOutput": {"S3OutputPath": S3 + "/x/"},
                      "TransformResources": {"InstanceCount": 1,
                                             "InstanceType": "ml.m5.large"}}})
    pairs = [(split(), provider_processing), (train(), provider_training),
             (predict(), provider_transform)]
    # one task at a time, smtask's and the provider's of each kind in the round's order
    chain(warm_up(), *[t for ours, theirs in pairs
                       for t in ((ours, theirs) if SMTASK_FIRST else (theirs, ours))])

the_dag = bench_cloud()
"""


# --- the moto process --------------------------------------------------------------------------

def serve_moto(port_file: str, calls_file: str) -> None:
    """A moto server that appends each call it answers to ``calls_file`` (a JSON line:
    time, service, action, job or model name) and writes its port to ``port_file``; it stops
    when its stdin closes."""
    import threading

    from moto.core.responses import BaseResponse
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    lock = threading.Lock()
    out = open(calls_file, "a", buffering=1)  # noqa: SIM115 (open for the process' life)

    def record(service: str, action: str, name: str) -> None:
        line = json.dumps([time.time(), service, action, name])
        with lock:
            out.write(line + "\n")

    real_call_action = BaseResponse.call_action

    def counted(response: BaseResponse) -> object:
        body = response.body
        parsed = json.loads(body) if body and body[:1] in (b"{", "{") else {}
        name = next((str(v) for k, v in parsed.items()
                     if k.endswith(("JobName", "ModelName")) and isinstance(v, str)), "")
        record(response.service_name or "", response._get_action(), name)
        return real_call_action(response)

    def s3_counted(real: Any, on_key: bool) -> Any:
        """S3's requests do not pass through ``call_action``: named by method and query."""
        def handle(response: Any, request: Any, full_url: str, headers: Any) -> Any:
            query = request.args
            action = ("ListObjectsV2" if query.get("list-type") == "2" else
                      "DeleteObjects" if "delete" in query else
                      "CreateMultipartUpload" if "uploads" in query else
                      "UploadPart" if "partNumber" in query else
                      "CompleteMultipartUpload" if "uploadId" in query else
                      {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject",
                       "DELETE": "DeleteObject"}.get(request.method, request.method)
                      if on_key else
                      {"GET": "ListObjects", "PUT": "CreateBucket", "HEAD": "HeadBucket"}.get(
                          request.method, request.method))
            record("s3", action, request.path)
            return real(response, request, full_url, headers)
        return handle

    S3Response.key_response = s3_counted(S3Response.key_response, True)  # type: ignore[method-assign]
    S3Response.bucket_response = s3_counted(  # type: ignore[method-assign]
        S3Response.bucket_response, False)
    BaseResponse.call_action = counted  # type: ignore[method-assign]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    Path(port_file + ".tmp").write_text(str(port))
    os.replace(port_file + ".tmp", port_file)
    sys.stdin.read()
    server.stop()


def read_calls(path: Path, offset: int) -> tuple[list[tuple[float, str, str, str]], int]:
    """The calls moto recorded since ``offset`` (bytes), and the new offset."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    return [tuple(json.loads(line)) for line in complete.splitlines()], offset + len(complete)


# --- the DAG runs ------------------------------------------------------------------------------

def warm_moto(endpoint: str) -> None:
    """moto builds a service's backend on its first call: the bucket, and a describe of a
    missing job of each kind, make those calls before any timed task."""
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for key in ("data/data.csv", "splits/train/train.csv", "splits/batch/batch.csv",
                "code/preprocess.py", "m/model.tar.gz"):  # the provider checks inputs exist
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    sm = boto3.client("sagemaker", region_name=REGION, endpoint_url=endpoint)
    for describe, key in ((sm.describe_processing_job, "ProcessingJobName"),
                          (sm.describe_training_job, "TrainingJobName"),
                          (sm.describe_transform_job, "TransformJobName"),
                          (sm.describe_model, "ModelName")):
        try:
            describe(**{key: "warm-up-missing"})
        except ClientError:
            pass


def clear_smtask_uploads(endpoint: str) -> int:
    """Delete every object under ``pipelines/`` (smtask's artifacts root here)."""
    import boto3

    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="pipelines/") for o in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    return len(keys)


def run_round(home: Path, number: int, smtask_first: bool) -> dict[str, Any]:
    import runpy

    source = (DAG_FILE.replace("BUCKET", BUCKET).replace("ROLE_", ROLE)
              .replace("IMAGE_", IMAGE).replace("CONFIG", str(home / "config.json"))
              .replace("ROUND_", f"r{number}").replace("SMTASK_FIRST_", str(smtask_first)))
    path = home / "dags" / "bench_cloud.py"
    path.write_text(source)
    dag = runpy.run_path(str(path))["the_dag"]
    dag_run = dag.test()
    tis = list(dag_run.get_task_instances())
    states = {ti.task_id: str(ti.state) for ti in tis}
    if any("success" not in s for s in states.values()):
        sys.exit(f"round {number}: not every task succeeded: {states}")
    return {"starts": {ti.task_id: ti.start_date.timestamp() for ti in tis},
            "ends": {ti.task_id: ti.end_date.timestamp() for ti in tis},
            "durations": {ti.task_id: ti.duration for ti in tis}}


GC_PAUSES: list[tuple[float, float, int]] = []  # (start, end, generation) of this process' passes


def watch_gc(freeze: bool) -> None:
    """Record every garbage-collector pass of this process (the tasks run in it). With
    ``freeze``, each task's ``execute`` ends with ``gc.collect(); gc.freeze()``: the next
    task's passes scan only what was made since, not the heap the earlier tasks, rounds and
    Airflow's own DAG runs left (a full pass over it took up to ~1 s, inside whichever task
    happened to trigger it; a worker's fresh task process has no such heap)."""
    import gc

    from airflow.providers.amazon.aws.operators import sagemaker as provider
    from airflow.providers.standard.decorators.python import _PythonDecoratedOperator

    from smtask.operator import SageMakerJobOperator

    began: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began.append(time.time())
        elif began:
            GC_PAUSES.append((began.pop(), time.time(), info["generation"]))

    gc.callbacks.append(callback)
    if not freeze:
        return
    for cls in (SageMakerJobOperator, provider.SageMakerProcessingOperator,
                provider.SageMakerTrainingOperator, provider.SageMakerTransformOperator,
                _PythonDecoratedOperator):
        def execute(self: Any, context: Any, _real: Any = cls.execute) -> Any:
            try:
                return _real(self, context)
            finally:
                gc.collect()
                gc.freeze()
        cls.execute = execute  # type: ignore[method-assign]


def gc_time(start: float, end: float) -> float:
    return sum(min(b, end) - max(a, start) for a, b, _ in GC_PAUSES if b > start and a < end)


def profiled(profiles: Path) -> None:
    """BENCH_PROFILE=1: each timed task's ``execute`` runs under cProfile (slower: the
    figures of such a run are not the benchmark's), its stats saved as
    ``<profiles>/<task_id>.prof`` (the last round's)."""
    import cProfile

    from airflow.providers.amazon.aws.operators import sagemaker as provider

    from smtask.operator import SageMakerJobOperator

    profiles.mkdir(exist_ok=True)
    for cls in (SageMakerJobOperator, provider.SageMakerProcessingOperator,
                provider.SageMakerTrainingOperator, provider.SageMakerTransformOperator):
        def execute(self: Any, context: Any, _real: Any = cls.execute) -> Any:
            profile = cProfile.Profile()
            try:
                return profile.runcall(_real, self, context)
            finally:
                profile.dump_stats(str(profiles / f"{self.task_id}.prof"))
        cls.execute = execute  # type: ignore[method-assign]


def print_profiles(profiles: Path) -> None:
    import io
    import pstats

    for task_id in [*OURS.values(), *THEIRS.values()]:
        text = io.StringIO()
        pstats.Stats(str(profiles / f"{task_id}.prof"), stream=text).sort_stats(
            "cumulative").print_stats(25)
        print(f"--- profile of {task_id}'s execute (last round), by cumulative time")
        print("\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    home = Path(tempfile.mkdtemp(prefix="smtask-bench-cloud-"))
    os.environ.update({
        "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "SMTASK_HOME": str(home / "smtask"),
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"})
    (home / "dags").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True)

    port_file, calls_file = home / "moto.port", home / "moto-calls.jsonl"
    calls_file.touch()
    with (home / "moto.log").open("w") as moto_log:
        moto = subprocess.Popen([sys.executable, __file__, "--moto-server", str(port_file),
                                 str(calls_file)], stdin=subprocess.PIPE, stdout=moto_log,
                                stderr=moto_log)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if moto.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the moto server did not start: see {home / 'moto.log'}")
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port_file.read_text()}"
        # only the Airflow connection names moto: every client must take it from there
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
            "conn_type": "aws", "login": "bench", "password": "bench",
            "extra": {"region_name": REGION, "endpoint_url": endpoint}})
        warm_moto(endpoint)
        config = json.loads((ROOT / "config.json").read_text())
        config.update(mode="sagemaker", role=ROLE, image=IMAGE, code_root=str(ROOT),
                      artifacts=f"s3://{BUCKET}/pipelines")
        (home / "config.json").write_text(json.dumps(config))
        _, offset = read_calls(calls_file, 0)  # the warm-up's calls
        freeze = os.environ.get("BENCH_GC_FREEZE", "1") == "1"
        watch_gc(freeze)
        profiles = home / "profiles" if os.environ.get("BENCH_PROFILE") else None
        if profiles:
            profiled(profiles)
        results, cleared = [], []
        clear = os.environ.get("BENCH_CLEAR_UPLOADS", "1") == "1"
        for number in range(rounds):
            if number and clear:
                cleared.append(clear_smtask_uploads(endpoint))
            _, offset = read_calls(calls_file, offset)  # the clearing's calls
            result = run_round(home, number, smtask_first=number % 2 == 0)
            time.sleep(0.2)  # the last calls' lines
            result["calls"], offset = read_calls(calls_file, offset)
            results.append(result)
    finally:
        end(moto, timeout=15)
    report(results, cleared, freeze)
    if profiles:
        print_profiles(profiles)
    shutil.rmtree(home, ignore_errors=True)  # its Airflow DB and moto's log; kept on a failure


def job_calls(calls: list[tuple[float, str, str, str]], kind: str, ours: bool,
              number: int) -> list[tuple[float, str, str, str]]:
    prefix = {"processing": "churn-splitor-", "training": "churn-trainer-",
              "transform": "churn-transformer-"}[kind]
    names = {f"provider-{kind}-r{number}"} | ({f"provider-model-r{number}"}
                                              if kind == "transform" else set())
    return [c for c in calls if c[1] == "sagemaker"
            and (c[3].startswith(prefix) if ours else c[3] in names)]


def s3_calls(result: dict[str, Any], task: str) -> str:
    import collections

    start, end = result["starts"][task], result["ends"][task]
    found = collections.Counter(c[2] for c in result["calls"]
                                if c[1] == "s3" and start <= c[0] <= end)
    return ", ".join(f"{n} {action}" for action, n in sorted(found.items())) or "none"


def report(results: list[dict[str, Any]], cleared: list[int], freeze: bool) -> None:
    print(f"{len(results)} rounds, a fresh DAG run each; moto in its own process, warmed; "
          "tasks one at a time, smtask's of each kind first in rounds 1, 3, ... and the "
          "provider's first in rounds 2, 4, ...")
    print("smtask uploads its code and settings once per content: its objects under "
          f"pipelines/ were deleted before rounds 2.. ({', '.join(map(str, cleared))} "
          "objects), so each round paid its uploads as a first run does" if cleared else
          "smtask uploads its code and settings once per content: kept between rounds "
          "(BENCH_CLEAR_UPLOADS=0), rounds 2.. reuse round 1's")
    print("the heap left by earlier tasks is frozen after each task (gc.freeze; "
          "BENCH_GC_FREEZE=0 to not)" if freeze else "the heap is not frozen between tasks")
    print(f"{'job':<11} {'smtask calls':>12} {'provider calls':>15}   "
          f"{'smtask to create':>16} {'provider to create':>18} {'ratio':>6}   per round "
          "(smtask/provider ms)")
    for kind in KINDS:
        mine, theirs, gc_mine, gc_theirs = [], [], [], []
        create = f"Create{kind.capitalize()}Job"
        for number, result in enumerate(results):
            calls = result["calls"]
            ours = job_calls(calls, kind, True, number)
            other = job_calls(calls, kind, False, number)
            for found, gc_found, task, job in ((mine, gc_mine, OURS[kind], ours),
                                               (theirs, gc_theirs, THEIRS[kind], other)):
                created = next(c[0] for c in job if c[2] == create)
                found.append(created - result["starts"][task])
                gc_found.append(gc_time(result["starts"][task], created))
        first = results[0]["calls"]
        ours, other = job_calls(first, kind, True, 0), job_calls(first, kind, False, 0)
        t_mine, t_other = statistics.median(mine), statistics.median(theirs)
        per_round = ", ".join(f"{a * 1000:.0f}/{b * 1000:.0f}"
                              for a, b in zip(mine, theirs, strict=True))
        print(f"{kind:<11} {len(ours):>12} {len(other):>15}   "
              f"{t_mine * 1000:>13.0f} ms {t_other * 1000:>15.0f} ms {t_mine / t_other:>6.2f}"
              f"   {per_round}")
        print(f"{'':<11} garbage collection inside start -> create, per round (ms): smtask "
              f"{', '.join(f'{g * 1000:.0f}' for g in gc_mine)}; provider "
              f"{', '.join(f'{g * 1000:.0f}' for g in gc_theirs)}")
        print(f"{'':<11} smtask: {', '.join(c[2] for c in ours)}")
        print(f"{'':<11} provider: {', '.join(c[2] for c in other)}")
    print("S3 calls during each task (round 1): " + "; ".join(
        f"{task} {s3_calls(results[0], task)}" for kind in KINDS
        for task in (OURS[kind], THEIRS[kind])))
    counts = [[len(job_calls(r["calls"], k, o, n)) for k in KINDS for o in (True, False)]
              for n, r in enumerate(results)]
    if any(c != counts[0] for c in counts):
        print(f"calls per job differ between rounds: {counts}")
    iam = [f"{c[1]}:{c[2]}" for r in results for c in r["calls"] if c[1] in ("iam", "sts")]
    print(f"IAM and STS calls in all {len(results)} rounds (3 smtask jobs, 3 provider jobs "
          f"each): {len(iam)} {iam or ''}")
    print("task time (s), median: " + ", ".join(
        f"{OURS[k]} {statistics.median(r['durations'][OURS[k]] for r in results):.1f} / "
        f"{THEIRS[k]} {statistics.median(r['durations'][THEIRS[k]] for r in results):.1f}"
        for k in KINDS))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--moto-server"]:
        serve_moto(sys.argv[2], sys.argv[3])
    else:
        main()
