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

    session.client = lambda service, *args, **kwargs: make_client(
        service, *args, **settings(service, kwargs))
    session.resource = lambda service, *args, **kwargs: make_resource(
        service, *args, **settings(service, kwargs))
    return session


@contextlib.contextmanager
def cloud_session(params: Mapping[str, Any]) -> Iterator[Any]:
    """A SageMaker ``Session`` over the Airflow AWS connection (``aws_conn_id``)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from sagemaker.core.helper.session_helper import Session

    hook = AwsBaseHook(aws_conn_id=params.get("aws_conn_id", "aws_default"),
                       region_name=params.get("region_name"), client_type="sagemaker")
    bucket = params["artifacts"].removeprefix("s3://").split("/", 1)[0]
    telemetry = [] if params.get("sdk_telemetry") else telemetry_off()
    with replaced(*telemetry):
        # An explicit bucket: the SDK's default-bucket lookup would call STS.
        yield Session(boto_session=connection_session(hook, params.get("region_name")),
                      default_bucket=bucket)


def open_session(params: Mapping[str, Any], output: Any) -> contextlib.AbstractContextManager[Any]:
    """The session for the params' mode; ``output`` (a :class:`smtask.local.ContainerOutput`)
    receives the local containers' output."""
    if params["mode"] == "local":
        from smtask.local import local_session

        return local_session(params, output)
    return cloud_session(params)
