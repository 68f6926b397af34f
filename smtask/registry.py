"""The model registry in either mode: SageMaker's model package groups over the Airflow AWS
connection, or local mode's (``smtask.local.registry``). What ``smtask registry`` calls, and a
task may too (``params``: the run's params, for the mode and the connection)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from smtask.errors import SmtaskError
from smtask.naming import METRIC_PREFIX
from smtask.params.schemas import MODE_ENV


def mode_of(params: Mapping[str, Any] | None) -> str:
    return str((params or {}).get("mode") or os.environ.get(MODE_ENV) or "local")


def metrics_of(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The metrics a registration recorded (``metric:<name>`` customer metadata, as JSON)."""
    found = {}
    for key, value in (metadata or {}).items():
        if key.startswith(METRIC_PREFIX):
            try:
                found[key[len(METRIC_PREFIX):]] = json.loads(value)
            except ValueError:
                found[key[len(METRIC_PREFIX):]] = value
    return found


def _summary(described: Mapping[str, Any]) -> dict[str, Any]:
    metadata = described.get("CustomerMetadataProperties") or {}
    return {"model_package_arn": described["ModelPackageArn"],
            "group": described.get("ModelPackageGroupName"),
            "version": described.get("ModelPackageVersion"),
            "approval_status": described.get("ModelApprovalStatus"),
            "description": described.get("ModelPackageDescription", ""),
            "metrics": metrics_of(metadata), "metadata": dict(metadata)}


def _local(version: Mapping[str, Any]) -> dict[str, Any]:
    return {**version, "metrics": metrics_of(version.get("metadata"))}


def groups(params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    if mode_of(params) == "local":
        from smtask.local import registry

        return registry.groups()
    from smtask.sessions import sagemaker_client

    pages = sagemaker_client(params or {}).get_paginator("list_model_package_groups").paginate()
    return [{"group": g["ModelPackageGroupName"]} for page in pages
            for g in page["ModelPackageGroupSummaryList"]]


def versions(group: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The group's versions, oldest first."""
    if mode_of(params) == "local":
        from smtask.local import registry

        return [_local(v) for v in registry.versions(group)]
    from smtask.sessions import sagemaker_client

    client = sagemaker_client(params or {})
    found = [p for page in client.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group) for p in page["ModelPackageSummaryList"]]
    return sorted((_summary(client.describe_model_package(ModelPackageName=p["ModelPackageArn"]))
                   for p in found), key=lambda v: v["version"] or 0)


def version(which: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A version named by its ARN or as ``GROUP/VERSION``."""
    if mode_of(params) == "local":
        from smtask.local import registry

        return _local(registry.version(which))
    from smtask.sessions import sagemaker_client

    if which.startswith("arn:"):
        return _summary(sagemaker_client(params or {}).describe_model_package(
            ModelPackageName=which))
    group, _, number = which.rpartition("/")
    for found in versions(group, params) if group and number.isascii() and number.isdigit() else []:
        if found["version"] == int(number):
            return found
    raise SmtaskError(f"no model version {which[:200]!r} (name one by its ARN or as "
                      "GROUP/VERSION)")


def set_status(which: str, status: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Approve (``Approved``) or reject (``Rejected``) a version (UpdateModelPackage)."""
    if mode_of(params) == "local":
        from smtask.local import registry

        return _local(registry.set_status(which, status))
    from smtask.sessions import sagemaker_client

    arn = version(which, params)["model_package_arn"]
    client = sagemaker_client(params or {})
    client.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)
    return _summary(client.describe_model_package(ModelPackageName=arn))
