"""A moto server that behaves like SageMaker for a deployment test, run as its own process.

    python tests/deployment/moto_server.py CONTROL_DIR [--job-seconds 1.0]

Prints ``moto listening on http://127.0.0.1:<port>`` once it answers (port chosen by the OS,
loopback only). moto alone creates every job already ``Completed``, writes nothing, and can
stop only processing jobs; here, for processing, training and transform jobs alike:

- a job is ``InProgress`` for ``--job-seconds``, or, when ``CONTROL_DIR/hold-<job name>`` (or
  ``hold-<kind>``) exists as it is created, until ``CONTROL_DIR/release-<job name>`` (or
  ``release-<kind>``) appears;
- Stop works for every kind (``Stopping``, then ``Stopped``); a job that has ended cannot be
  stopped, as on SageMaker;
- the job writes CloudWatch log lines under ``/aws/sagemaker/<Kind>Jobs``, stream
  ``<job name>/algo-1-<time>``, and, when it completes, the outputs a real job of the example
  pipeline would write (the splits, a model.tar.gz, one prediction per scored row), so the
  downstream tasks read real objects. A processing job whose inputs are missing in S3 fails
  with a FailureReason, as the real one would;
- every create (jobs and models), stop and end is appended to ``CONTROL_DIR/events.jsonl``
  as one JSON line (``{"event", "kind", "name", ...}``): the test counts jobs per task
  instance there; so is every request, as the IAM permission it needs and the access key that
  signed it (``{"event": "request", "kind": "s3", "name": "s3:GetObject", "key": ...}``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
                   "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"})
os.environ.pop("AWS_ENDPOINT_URL", None)

import boto3  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import SageMakerModelBackend  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

KINDS = {  # kind -> (jobs dict of the backend, status attribute, CloudWatch group)
    "processing": ("processing_jobs", "processing_job_status", "/aws/sagemaker/ProcessingJobs"),
    "training": ("training_jobs", "training_job_status", "/aws/sagemaker/TrainingJobs"),
    "transform": ("transform_jobs", "transform_job_status", "/aws/sagemaker/TransformJobs"),
}
# The example's held-out rows: label, one feature; batch transform scores the feature.
TEST_ROWS = [(1, 0.9), (0, 0.1), (1, 0.7), (0, 0.2)]


class Jobs:
    def __init__(self, control: Path, job_seconds: float) -> None:
        self.control, self.job_seconds = control, job_seconds
        self.endpoint = ""
        self.stopping: set[str] = set()
        self.lock = threading.Lock()
        self.clients: dict[str, Any] = {}

    # --- the record the test reads ------------------------------------------------------------
    def event(self, event: str, kind: str, name: str, quiet: bool = False, **extra: Any) -> None:
        line = json.dumps({"event": event, "kind": kind, "name": name, "time": time.time(), **extra})
        with self.lock, open(self.control / "events.jsonl", "a") as f:
            f.write(line + "\n")
        if not quiet:
            print(line, flush=True)

    def client(self, service: str) -> Any:
        with self.lock:  # boto3 clients are thread-safe; making one is not quick
            if service not in self.clients:
                self.clients[service] = boto3.client(service, region_name="us-east-1",
                                                     endpoint_url=self.endpoint)
            return self.clients[service]

    # --- what the wrapped API calls do ----------------------------------------------------------
    def created(self, kind: str, job: Any) -> None:
        name = getattr(job, f"{kind}_job_name")
        setattr(job, KINDS[kind][1], "InProgress")
        if kind == "training":
            job.secondary_status = "Training"
        held = any((self.control / f"hold-{key}").exists() for key in (name, kind))
        self.event("create", kind, name, held=held)
        threading.Thread(target=self.run, args=(kind, job, name, held), daemon=True).start()

    def stop(self, kind: str, name: str, backend: Any) -> None:
        jobs = getattr(backend, KINDS[kind][0])
        if name not in jobs:
            raise ValidationError(message=f"Could not find {kind} job '{name}'.")
        status = getattr(jobs[name], KINDS[kind][1])
        if status != "InProgress":
            raise ValidationError(message=f"The job status is {status}: it cannot be stopped.")
        setattr(jobs[name], KINDS[kind][1], "Stopping")
        self.stopping.add(name)
        self.event("stop", kind, name)

    # --- a job's life -------------------------------------------------------------------------
    def run(self, kind: str, job: Any, name: str, held: bool) -> None:
        try:
            self.log(kind, name, [f"{kind} job {name} starting", "instance algo-1 ready"])
            deadline = time.monotonic() + self.job_seconds
            while name not in self.stopping:
                released = any((self.control / f"release-{key}").exists() for key in (name, kind))
                if (released if held else time.monotonic() >= deadline):
                    break
                time.sleep(0.1)
            if name in self.stopping:
                time.sleep(0.5)  # SageMaker takes a while to stop an instance
                self.end(kind, job, name, "Stopped", "Stopped by the user")
                return
            self.write_outputs(kind, job)
        except Exception as exc:  # noqa: BLE001 - the job fails, as a real one would
            self.log(kind, name, [f"Error: {exc}"])
            self.end(kind, job, name, "Failed", f"AlgorithmError: {exc}")
            return
        self.log(kind, name, [f"{kind} job {name} completed"])
        self.end(kind, job, name, "Completed", None)

    def end(self, kind: str, job: Any, name: str, status: str, reason: str | None) -> None:
        job.failure_reason = reason
        if kind == "training":
            job.secondary_status = status
        setattr(job, KINDS[kind][1], status)
        self.event("end", kind, name, status=status)

    def log(self, kind: str, name: str, lines: list[str]) -> None:
        logs, group = self.client("logs"), KINDS[kind][2]
        stream = f"{name}/algo-1-1700000000"
        for create, kwargs in ((logs.create_log_group, {"logGroupName": group}),
                               (logs.create_log_stream, {"logGroupName": group,
                                                         "logStreamName": stream})):
            try:
                create(**kwargs)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": now, "message": line} for line in lines])

    # --- outputs ------------------------------------------------------------------------------
    def put(self, uri: str, body: bytes) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=body)

    def read_prefix(self, uri: str) -> list[tuple[str, bytes]]:
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        s3 = self.client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get(
            "Contents", [])]
        if not keys:
            raise FileNotFoundError(f"no objects under {uri}")
        return [(key, s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in sorted(keys)]

    def write_outputs(self, kind: str, job: Any) -> None:
        if kind == "processing":
            for item in job.processing_inputs or []:
                if "S3Input" in item:  # the job downloads its inputs first
                    self.read_prefix(item["S3Input"]["S3Uri"])
            files = {
                "train": ("train.csv", "label,x\n" + "".join(f"{y},{x}\n" for y, x in TEST_ROWS * 3)),
                "test": ("test.csv", "label,x\n" + "".join(f"{y},{x}\n" for y, x in TEST_ROWS)),
                "batch": ("batch.csv", "".join(f"{x}\n" for _, x in TEST_ROWS)),
            }
            for output in job.processing_output_config["Outputs"]:
                file, text = files.get(output["OutputName"], ("part-0.txt", "output\n"))
                self.put(f"{output['S3Output']['S3Uri'].rstrip('/')}/{file}", text.encode())
        elif kind == "training":
            for channel in job.input_data_config or []:
                self.read_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"])
            model = json.dumps({"threshold": 0.5}).encode()
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                info = tarfile.TarInfo("model.json")
                info.size = len(model)
                tar.addfile(info, io.BytesIO(model))
            self.put(job.model_artifacts["S3ModelArtifacts"], buffer.getvalue())
        else:
            source = job.transform_input["DataSource"]["S3DataSource"]["S3Uri"]
            out = job.transform_output["S3OutputPath"].rstrip("/")
            for key, body in self.read_prefix(source):
                rows = body.decode().split()
                predictions = "".join(f"{int(float(x) > 0.5)}\n" for x in rows)
                self.put(f"{out}/{key.rsplit('/', 1)[-1]}.out", predictions.encode())


def install(jobs: Jobs) -> None:
    """Wrap moto's SageMaker backend and add the Stop calls it lacks."""
    for kind in KINDS:
        create = getattr(SageMakerModelBackend, f"create_{kind}_job")

        def create_job(backend: Any, *args: Any, _kind: str = kind, _create: Any = create,
                       **kwargs: Any) -> Any:
            job = _create(backend, *args, **kwargs)
            jobs.created(_kind, job)
            return job

        setattr(SageMakerModelBackend, f"create_{kind}_job", create_job)

        def stop_backend(backend: Any, name: str, _kind: str = kind) -> None:
            jobs.stop(_kind, name, backend)

        setattr(SageMakerModelBackend, f"stop_{kind}_job", stop_backend)

        def stop_response(response: Any, _kind: str = kind) -> Any:
            from moto.core.responses import EmptyResult

            name = response._get_param(f"{_kind.capitalize()}JobName")
            getattr(response.sagemaker_backend, f"stop_{_kind}_job")(name)
            return EmptyResult()

        setattr(SageMakerResponse, f"stop_{kind}_job", stop_response)

    create_model = SageMakerModelBackend.create_model

    def create_model_logged(backend: Any, *args: Any, **kwargs: Any) -> Any:
        model = create_model(backend, *args, **kwargs)
        jobs.event("create", "model", kwargs.get("model_name") or model.model_name)
        return model

    setattr(SageMakerModelBackend, "create_model", create_model_logged)  # noqa: B010

    # Every request, as the IAM permission it needs, with the access key that signed it (the
    # test's Airflow connection has a key of its own)
    call = DomainDispatcherApplication.__call__

    def recording(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
        signed = re.search(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/",
                           environ.get("HTTP_AUTHORIZATION", ""))
        key, service = signed.groups() if signed else ("", "?")
        jobs.event("request", service, permission(service, environ), key=key, quiet=True)
        return call(app, environ, start_response)

    setattr(DomainDispatcherApplication, "__call__", recording)  # noqa: B010


def permission(service: str, environ: dict[str, Any]) -> str:
    """The IAM action a request needs, e.g. ``sagemaker:CreateTrainingJob``, ``s3:GetObject``."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:  # JSON protocols: SageMaker.CreateTrainingJob, Logs_20140328.GetLogEvents
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    method, query = environ.get("REQUEST_METHOD", ""), environ.get("QUERY_STRING", "")
    if service == "s3":
        key = environ.get("PATH_INFO", "").lstrip("/").partition("/")[2]
        if not key:
            return "s3:ListBucket" if method in ("GET", "HEAD") else f"s3:{method} bucket?{query}"
        return {"GET": "s3:GetObject", "HEAD": "s3:GetObject", "PUT": "s3:PutObject",
                "POST": "s3:PutObject", "DELETE": "s3:DeleteObject"}.get(method, f"s3:{method}")
    return f"{service}:{method} {environ.get('PATH_INFO', '')}?{query}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("control", type=Path)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    args = parser.parse_args()
    args.control.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(args.control, args.job_seconds)
    install(jobs)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    jobs.endpoint = f"http://{host}:{port}"
    print(f"moto listening on {jobs.endpoint}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
