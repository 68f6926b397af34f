"""Real-time endpoints in either mode, after ``@sm_endpoint`` deployed them: invoke, describe,
delete, and which registered version one serves. SageMaker's over the Airflow AWS connection
(sagemaker-runtime's InvokeEndpoint), or local mode's serving containers
(``smtask.local.endpoints``). ``params``: the run's params (a task's ``params``), for the mode
and the connection; without them, ``$SMTASK_MODE`` (default local)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from smtask.errors import SmtaskError
from smtask.params.schemas import MIME_TYPE
from smtask.registry import mode_of, version

MIME = re.compile(MIME_TYPE["pattern"].removeprefix("^").removesuffix("$"))
MAX_PAYLOAD = 6 * 1024 * 1024  # InvokeEndpoint's limit on a request's body


def _named(name: Any) -> str:
    """An endpoint's name, in either mode, checked as local mode checks it (it names files)."""
    from smtask.local.endpoints import checked

    return checked(name)


def invoke(name: str, body: bytes | str, content_type: str = "text/csv",
           accept: str | None = None, params: Mapping[str, Any] | None = None) -> bytes:
    """The endpoint's answer to ``body``. An error answer raises with the model's words; a
    body over SageMaker's 6 MB is refused in both modes before any call."""
    name = _named(name)
    data = body.encode() if isinstance(body, str) else body
    for header, value in (("content type", content_type), ("accept", accept)):
        if value is not None and not MIME.fullmatch(value):
            raise SmtaskError(f"endpoint {name}: {header} {value[:80]!r} is not a MIME type")
    if len(data) > MAX_PAYLOAD:
        raise SmtaskError(f"endpoint {name}: a request of {len(data)} bytes; InvokeEndpoint "
                          f"takes at most {MAX_PAYLOAD} (6 MB): split it, or use a batch "
                          "transform")
    if mode_of(params) == "local":
        from smtask.local import endpoints

        return endpoints.invoke(name, data, content_type, accept)[0]
    from botocore.exceptions import ClientError

    from smtask.sessions import sagemaker_client

    runtime = sagemaker_client(params or {}, "sagemaker-runtime")
    try:
        answer = runtime.invoke_endpoint(EndpointName=name, Body=data, ContentType=content_type,
                                         **({"Accept": accept} if accept else {}))
    except ClientError as exc:
        raise SmtaskError(f"endpoint {name}: {exc}") from exc
    return answer["Body"].read()  # type: ignore[no-any-return]


def describe(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """DescribeEndpoint's answer (local mode: the same keys), or None when there is none."""
    name = _named(name)
    if mode_of(params) == "local":
        from smtask.local import endpoints

        entry = endpoints.record(name)
        return None if entry is None else {**endpoints.description(entry), "record": entry}
    from smtask import waiting
    from smtask.kinds import by_name
    from smtask.sessions import sagemaker_client

    return waiting.find(sagemaker_client(params or {}), by_name("endpoint"), name)


def serving_version(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The registered version the endpoint serves now (its ARN, approval status and the
    metrics it was registered with), or None: no endpoint, not a registered version's, or
    (local mode) a version the registry no longer has, or holds for another model."""
    described = describe(name, params)
    if described is None:
        return None
    if mode_of(params) == "local":
        entry = described["record"]
        arn = entry.get("model_package_arn")
        if arn:  # the registry may have been lost and rebuilt: another model under that ARN
            try:
                found = version(arn, params)
            except SmtaskError:
                return None
            return found if found.get("model") == entry.get("model_data") else None
    else:
        from smtask.sessions import sagemaker_client

        client = sagemaker_client(params or {})
        config = client.describe_endpoint_config(
            EndpointConfigName=described["EndpointConfigName"])
        model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        arn = (model.get("PrimaryContainer") or {}).get("ModelPackageName")
    return version(arn, params) if arn else None


def delete(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Delete the endpoint (SageMaker: DeleteEndpoint; its configs and models are left, as
    the console leaves them). Local mode: its container, record and files."""
    name = _named(name)
    if mode_of(params) == "local":
        from smtask.local import endpoints

        endpoints.delete(name)
        return
    from smtask.sessions import sagemaker_client

    sagemaker_client(params or {}).delete_endpoint(EndpointName=name)
