"""The mode switch: a hardened SDK ``LocalSession`` (:mod:`smtask.local`) or a cloud ``Session``
over the Airflow AWS connection. The SDK's telemetry is off in both unless asked for."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from smtask import sdk
from smtask.clients import share_loader


def connection_session(hook: Any, region_name: str | None) -> Any:
    """The hook's boto3 session, whose every client and resource carries the connection's
    settings the way the provider's hooks build theirs: the service's ``endpoint_url``,
    ``verify`` and the botocore config (with the provider's user agent). The SDK builds all
    its clients (SageMaker, S3, Logs) from this one session."""
    session = hook.get_session(region_name=region_name)
    share_loader(session)
    conn, base_config = hook.conn_config, hook._get_config()
    make_client, make_resource = session.client, session.resource

    def settings(service: str, given: dict[str, Any]) -> dict[str, Any]:
        given = {key: value for key, value in given.items() if value is not None}
        config = base_config.merge(given.pop("config")) if "config" in given else base_config
        endpoint = conn.get_service_endpoint_url(service)
        return {**({"endpoint_url": endpoint} if endpoint else {}),
                **({"verify": hook.verify} if hook.verify is not None else {}),
                "config": config, **given}

    # The SDK describes a training job right after creating it: that is the wait's first poll.
    described: dict[str, dict[str, Any]] = {}

    def remember(parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("TrainingJobStatus"):
            described[parsed["TrainingJobName"]] = parsed

    session.events.register("after-call.sagemaker.DescribeTrainingJob", remember)
    session.smtask = CloudState(described=described)
    clients: dict[tuple[Any, ...], OnFirstUse] = {}
    # a boto3 session is not safe to make clients from in two threads at once (boto3#1592):
    # smtask's upload threads may be first to use one
    making = threading.Lock()

    def client(service: str, region: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """One client per service and region, made on first use. The SDK asks for SageMaker's
        and S3's several times over (with its own retry and user-agent configs: the first
        asker's is kept); each new client parses its service's endpoint rules again."""
        region = region or kwargs.pop("region_name", None) or session.region_name
        key = (service, region, args, repr(sorted((k, v) for k, v in kwargs.items()
                                                  if k != "config")))
        if key not in clients:
            clients[key] = OnFirstUse(lambda: make_client(
                service, region, *args, **settings(service, kwargs)), making)
        return clients[key]

    session.client = client
    session.resource = lambda service, *args, **kwargs: OnFirstUse(lambda: make_resource(
        service, *args, **settings(service, kwargs)), making)
    return session


class OnFirstUse:
    """A boto3 client or resource made when first used. The SDK's ``Session`` makes eight
    (runtime, feature store, metrics, S3's client and resource, and sagemaker-core makes its
    own set again for a training job), each loading its service's model: most of a task's
    time before its job's create call. A job uses two or three of them. ``making``: the lock
    every client of the same boto3 session is made under."""

    __slots__ = ("_make", "_made", "_making")

    def __init__(self, make: Any, making: threading.Lock) -> None:
        self._make, self._made, self._making = make, None, making

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            with self._making:
                if self._made is None:
                    self._made = self._make()
        return getattr(self._made, name)


@dataclass
class CloudState:
    """What smtask keeps on a cloud session's boto3 session (``smtask``): the descriptions the
    SDK made of training jobs just after creating them (see :func:`connection_session`)."""

    described: dict[str, dict[str, Any]] = field(default_factory=dict)


def described(session: Any, job_name: str) -> dict[str, Any] | None:
    """The description the SDK made of ``job_name`` right after creating it, if it made one:
    the wait's first poll."""
    state = getattr(session.boto_session, "smtask", None)
    return state.described.get(job_name) if isinstance(state, CloudState) else None


def aws_hook(aws_conn_id: str | None, region_name: str | None) -> Any:
    """The Amazon provider's hook over the Airflow AWS connection: every client smtask makes
    (the task's, the triggerer's) takes the connection's settings from it."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, region_name=region_name, client_type="sagemaker")


def _hook(params: Mapping[str, Any]) -> Any:
    return aws_hook(params.get("aws_conn_id", "aws_default"), params.get("region_name"))


def sagemaker_client(params: Mapping[str, Any], service: str = "sagemaker") -> Any:
    """A SageMaker client (or another ``service``'s: ``sagemaker-runtime``) over the Airflow
    AWS connection, without the SDK: what a deferred task needs when it resumes (a describe,
    a stop), in a process that imports no SDK, and what the endpoint and registry calls use."""
    return connection_session(_hook(params), params.get("region_name")).client(service)


@contextlib.contextmanager
def cloud_session(params: Mapping[str, Any]) -> Iterator[Any]:
    """A SageMaker ``Session`` over the Airflow AWS connection (``aws_conn_id``)."""
    with sdk.importing():
        from sagemaker.core.helper.session_helper import Session

    hook = _hook(params)
    bucket = params["artifacts"].removeprefix("s3://").split("/", 1)[0]
    with sdk.corrected({} if params.get("sdk_telemetry") else sdk.telemetry_off()):
        # An explicit bucket: the SDK's default-bucket lookup would call STS.
        yield Session(boto_session=connection_session(hook, params.get("region_name")),
                      default_bucket=bucket)


IN_PROCESS_ENV = "SMTASK_IN_PROCESS"  # set by `smtask run`: every task runs in its one process
ONE_MACHINE_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")


def spread_problem(params: Mapping[str, Any]) -> str | None:
    """Local mode runs its containers on the worker and keeps its artifacts where the params
    say: on the worker's disk (``file://``), a downstream task that another worker runs (the
    CeleryExecutor's, Kubernetes') would not find its inputs. Refused, before any job, unless
    the artifacts are on storage every worker reaches (``s3://`` through
    ``local.s3_endpoint``), the executor runs every task on one machine, or ``smtask run``
    runs them all in its own process."""
    if params["mode"] != "local" or os.environ.get(IN_PROCESS_ENV) == "1":
        return None
    from airflow.configuration import conf

    from smtask.paths import artifacts_root

    names = [entry.split(":")[-1].strip().rsplit(".", 1)[-1]
             for entry in str(conf.get("core", "executor", fallback="")).split(",")]
    spread = [name for name in names if name and name not in ONE_MACHINE_EXECUTORS]
    root = artifacts_root(params)
    if not spread or (root.startswith("s3://") and (params.get("local") or {}).get("s3_endpoint")):
        return None
    return (f"local.artifacts: local mode under the {spread[0]}, whose tasks run on several "
            f"workers, needs artifacts every worker reaches, not this worker's {root}: set "
            "local.artifacts to an s3:// URI with local.s3_endpoint, or run local mode with the "
            "LocalExecutor (or smtask run)")


def open_session(params: Mapping[str, Any], output: Any,
                 step: str = "") -> contextlib.AbstractContextManager[Any]:
    """The session for the params' mode, for one job of ``step``; ``output`` (a
    :class:`smtask.local.ContainerOutput`) receives the local containers' output."""
    if params["mode"] == "local":
        from smtask import local

        # every task of the run in this process: the next kinds' SDK modules are imported
        # while this job's container runs, not after it
        warm = tuple(name for name in sdk.JOB_IMPORTS if name.startswith("sagemaker.")) \
            if os.environ.get(IN_PROCESS_ENV) == "1" else ()
        return local.open_session(params, output, step, warm_up=warm)
    return cloud_session(params)
