"""How smtask's boto3 sessions read botocore's data: through one Loader per process.

Imports no Airflow and no SDK; boto3 only when asked to read the services' data.
"""

from __future__ import annotations

from typing import Any

_LOADERS: dict[Any, Any] = {}  # botocore's data path -> the Loader every session shares
SERVICES = ("sagemaker", "s3", "logs", "sagemaker-runtime")  # the clients smtask's jobs use


def share_loader(session: Any) -> None:
    """Every boto3 session smtask makes in a process (a cloud task's connection session, a
    local task's ``LocalSession``, a trigger's client) reads botocore's data (each service's
    model and endpoint rules, SageMaker's 2 MB of JSON; the partitions) through one Loader,
    which keeps what it has read. Each session would otherwise read it all again: 50-100 ms a
    client. A worker that preloads (:mod:`smtask.preload`) reads it once for all its tasks."""
    core = session._session  # boto3's botocore session
    path = core.get_config_variable("data_path")
    if path in _LOADERS:
        core.register_component("data_loader", _LOADERS[path])
    else:
        _LOADERS[path] = core.get_component("data_loader")


def read_service_data() -> None:
    """Read the data of the services smtask's jobs use into the shared Loader, by making
    their clients once (offline: a client's creation makes no call)."""
    import boto3

    session = boto3.Session(aws_access_key_id="preload", aws_secret_access_key="preload",
                            region_name="us-east-1")
    share_loader(session)
    for service in SERVICES:
        session.client(service)
