"""The mode switch: a hardened SDK ``LocalSession`` (:mod:`smtask.local`) or a cloud ``Session``
over the Airflow AWS connection. The SDK's telemetry is off in both unless asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from smtask.errors import ParamsError
from smtask.naming import smtask_home


def artifacts_root(params: Mapping[str, Any]) -> str:
    """The URI under which a run's artifacts go, for the params' mode."""
    if params["mode"] == "local":
        local = params.get("local") or {}
        return local.get("artifacts") or (smtask_home() / "artifacts").as_uri()
    if not params.get("artifacts", "").startswith("s3://"):
        raise ParamsError("artifacts: sagemaker mode needs an s3:// URI")
    return params["artifacts"]


@contextlib.contextmanager
def replaced(*swaps: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``obj.name = value`` for each swap while inside; restore the originals after."""
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in swaps]
    for obj, name, value in swaps:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in originals:
            setattr(obj, name, value)


def telemetry_off() -> list[tuple[Any, str, Any]]:
    """The SDK sends an HTTPS GET to an amazonaws.com host after every call it decorates."""
    from sagemaker.core.telemetry import telemetry_logging

    return [(telemetry_logging, "_send_telemetry_request", lambda *args, **kwargs: None),
            (telemetry_logging, "_telemetry_msg_shown", True)]  # its opt-out notice is moot


def connection_session(hook: Any, region_name: str | None) -> Any:
    """The hook's boto3 session, whose every client and resource carries the connection's
    settings the way the provider's hooks build theirs: the service's ``endpoint_url``,
    ``verify`` and the botocore config (with the provider's user agent). The SDK builds all
    its clients (SageMaker, S3, Logs) from this one session."""
    session = hook.get_session(region_name=region_name)
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
    session.smtask_described = described
    clients: dict[tuple[Any, ...], OnFirstUse] = {}

    def client(service: str, region: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """One client per service and region, made on first use. The SDK asks for SageMaker's
        and S3's several times over (with its own retry and user-agent configs: the first
        asker's is kept); each new client parses its service's endpoint rules again."""
        region = region or kwargs.pop("region_name", None) or session.region_name
        key = (service, region, args, repr(sorted((k, v) for k, v in kwargs.items()
                                                  if k != "config")))
        if key not in clients:
            clients[key] = OnFirstUse(lambda: make_client(
                service, region, *args, **settings(service, kwargs)))
        return clients[key]

    session.client = client
    session.resource = lambda service, *args, **kwargs: OnFirstUse(lambda: make_resource(
        service, *args, **settings(service, kwargs)))
    return session


class OnFirstUse:
    """A boto3 client or resource made when first used. The SDK's ``Session`` makes eight
    (runtime, feature store, metrics, S3's client and resource, and sagemaker-core makes its
    own set again for a training job), each loading its service's model: most of a task's
    time before its job's create call. A job uses two or three of them."""

    __slots__ = ("_make", "_made")

    def __init__(self, make: Any) -> None:
        self._make, self._made = make, None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            self._made = self._make()
        return getattr(self._made, name)


def _hook(params: Mapping[str, Any]) -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=params.get("aws_conn_id", "aws_default"),
                       region_name=params.get("region_name"), client_type="sagemaker")


def sagemaker_client(params: Mapping[str, Any]) -> Any:
    """A SageMaker client over the Airflow AWS connection, without the SDK: what a deferred
    task needs when it resumes (a describe, a stop), in a process that imports no SDK."""
    return connection_session(_hook(params), params.get("region_name")).client("sagemaker")


@contextlib.contextmanager
def cloud_session(params: Mapping[str, Any]) -> Iterator[Any]:
    """A SageMaker ``Session`` over the Airflow AWS connection (``aws_conn_id``)."""
    from sagemaker.core.helper.session_helper import Session

    hook = _hook(params)
    bucket = params["artifacts"].removeprefix("s3://").split("/", 1)[0]
    telemetry = [] if params.get("sdk_telemetry") else telemetry_off()
    with replaced(*telemetry):
        # An explicit bucket: the SDK's default-bucket lookup would call STS.
        yield Session(boto_session=connection_session(hook, params.get("region_name")),
                      default_bucket=bucket)


def open_session(params: Mapping[str, Any], output: Any,
                 step: str = "") -> contextlib.AbstractContextManager[Any]:
    """The session for the params' mode, for one job of ``step``; ``output`` (a
    :class:`smtask.local.ContainerOutput`) receives the local containers' output."""
    if params["mode"] == "local":
        from smtask.local import local_session

        return local_session(params, output, step)
    return cloud_session(params)
