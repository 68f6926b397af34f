"""Model registration: a version of a training (or tuning) result in a model package group,
SageMaker's model registry (CreateModelPackage), or local mode's (``smtask.local.registry``).

A task instance makes one version, whatever its retries: its deterministic name is the
create's ``ClientToken`` in both modes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from smtask.kind import Api, JobKind
from smtask.kinds.common import StepContext, aws_tags, check_keys
from smtask.kinds.transform import is_training_result, serving_environment, with_region
from smtask.naming import METRIC_PREFIX, name_problem
from smtask.params.schemas import COMMON_STEP_KEYS, MIME_TYPE, TAGS, environment, string

STATUSES = ("PendingManualApproval", "Approved", "Rejected")
_RETURNED_KEYS = ("model", "metrics", "approval_status", "description", "customer_metadata")


def spec(ctx: StepContext, returned: Any, upstream: Iterable[Any] = ()) -> dict[str, Any]:
    """``returned`` is a training or tuning result, or ``{"model": result, "metrics": {name:
    number}, "approval_status": ..., "description": ..., "customer_metadata": {...}}``, or
    None: the one training result among the function's arguments."""
    given = _returned(ctx.step, returned)
    model = given.get("model")
    if model is None:
        models = [v for v in upstream if is_training_result(v)]
        if len(models) != 1:
            raise TypeError(f"step '{ctx.step}': return a training result (or {{'model': "
                            f"result, 'metrics': ...}}), or pass exactly one to the function "
                            f"(found {len(models)})")
        model = models[0]
    if not is_training_result(model):
        raise TypeError(f"step '{ctx.step}': 'model' must be a training or tuning task's "
                        f"result, got {str(model)[:200]}")
    cfg = ctx.cfg
    metrics = given.get("metrics") or {}
    metadata = {**cfg.get("customer_metadata", {}), **given.get("customer_metadata", {}),
                **{f"{METRIC_PREFIX}{k}": json.dumps(v) for k, v in metrics.items()}}
    if len(metadata) > 50:
        raise TypeError(f"step '{ctx.step}': {len(metadata)} customer metadata entries with "
                        "the metrics, at most 50 (SageMaker's limit)")
    return {
        "job_name": ctx.job_name,  # the ClientToken; the version's ARN once it is made
        "client_token": ctx.job_name,
        "step": ctx.step,
        "group": cfg["group"],
        "group_description": cfg.get("group_description", ""),
        "approval_status": given.get("approval_status") or cfg.get(
            "approval_status", "PendingManualApproval"),
        "description": given.get("description") or cfg.get("description", ""),
        "model_data": model["model"],
        "image": ctx.local_image(model["image"]),
        "framework": model.get("framework"),
        "environment": {**serving_environment(model.get("code")),
                        **cfg.get("environment", {})},
        "inference": {
            "content_types": cfg.get("content_types", ["text/csv"]),
            "response_types": cfg.get("response_types", ["text/csv"]),
            "inference_instances": cfg.get("inference_instances", ["ml.m5.large"]),
            "transform_instances": cfg.get("transform_instances", ["ml.m5.large"]),
        },
        "metrics": metrics,
        "metadata": metadata,
        "tags": ctx.common("ml.m5.large", needs_image=False)["tags"],
        "region": ctx.params.get("region_name") or "us-east-1",
    }


def _returned(step: str, returned: Any) -> dict[str, Any]:
    """The function's value as ``{"model": ..., ...}``, each key checked."""
    if returned is None:
        return {}
    if is_training_result(returned):
        return {"model": returned}
    if not isinstance(returned, dict):
        raise TypeError(f"step '{step}': return a training result or a dict with 'model', got "
                        f"{type(returned).__name__}")
    check_keys(step, returned, _RETURNED_KEYS)
    status = returned.get("approval_status")
    if status is not None and status not in STATUSES:
        raise TypeError(f"step '{step}': approval_status {status!r} is not one of "
                        f"{', '.join(STATUSES)}")
    metrics = returned.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in metrics.items()):
        raise TypeError(f"step '{step}': metrics must be a dict of name -> number, got "
                        f"{str(metrics)[:200]}")
    metadata = returned.get("customer_metadata") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 256
            for k, v in metadata.items()):
        raise TypeError(f"step '{step}': customer_metadata must be a dict of strings (keys "
                        "at most 128 characters, values 256)")
    return dict(returned)


def start(job: dict[str, Any], session: Any, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create the group if missing, then the version (once per ClientToken)."""
    environment = with_region(job["environment"], session)
    if session.local_mode:
        from smtask.local import registry

        version = registry.register(
            group=job["group"], client_token=job["client_token"],
            approval_status=job["approval_status"], description=job["description"],
            model=job["model_data"], image=job["image"], environment=environment,
            framework=job["framework"], inference=job["inference"], metadata=job["metadata"],
            region=job["region"])
        log(f"model version {version['version']} of group {job['group']} "
            f"({version['approval_status']}) in the local registry {registry.path()}")
        return {**job, "job_name": version["model_package_arn"]}, _described(version)
    from smtask import waiting

    client = session.sagemaker_client
    _ensure_group(client, job)
    inference = job["inference"]
    arn = waiting.call(client.create_model_package, {
        "ModelPackageGroupName": job["group"],
        "ModelPackageDescription": job["description"],
        "ModelApprovalStatus": job["approval_status"],
        "InferenceSpecification": {
            "Containers": [{"Image": job["image"], "ModelDataUrl": job["model_data"],
                            "Environment": environment}],
            "SupportedContentTypes": inference["content_types"],
            "SupportedResponseMIMETypes": inference["response_types"],
            "SupportedRealtimeInferenceInstanceTypes": inference["inference_instances"],
            "SupportedTransformInstanceTypes": inference["transform_instances"],
        },
        **({"CustomerMetadataProperties": job["metadata"]} if job["metadata"] else {}),
        "ClientToken": job["client_token"],  # a retry gets the same version
        "Tags": aws_tags(job),
    })["ModelPackageArn"]
    log(f"model version {arn} registered ({job['approval_status']})")
    return {**job, "job_name": arn}, waiting.find(client, KIND, arn)  # type: ignore[return-value]


def _ensure_group(client: Any, job: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError

    from smtask import waiting

    try:
        waiting.call(client.describe_model_package_group,
                     {"ModelPackageGroupName": job["group"]})
        return
    except ClientError as exc:
        if waiting.error_code(exc) not in waiting.NOT_FOUND:
            raise
    try:
        waiting.call(client.create_model_package_group, {
            "ModelPackageGroupName": job["group"],
            "ModelPackageGroupDescription": job["group_description"], "Tags": aws_tags(job)})
    except ClientError as exc:  # another run made it meanwhile
        if "already exist" not in str(exc) and waiting.error_code(exc) != "ResourceInUse":
            raise


def _described(version: dict[str, Any]) -> dict[str, Any]:
    """A local version as SageMaker's DescribeModelPackage says it."""
    return {"ModelPackageArn": version["model_package_arn"],
            "ModelPackageGroupName": version["group"],
            "ModelPackageVersion": version["version"], "ModelPackageStatus": "Completed",
            "ModelApprovalStatus": version["approval_status"]}


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {"model_package_arn": description["ModelPackageArn"], "group": job["group"],
            "version": description.get("ModelPackageVersion"),
            "approval_status": description.get("ModelApprovalStatus", job["approval_status"]),
            "model": job["model_data"], "image": job["image"], "metrics": job["metrics"]}


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    if problem := name_problem("group", cfg.get("group")):
        yield f"steps.{step}.group: {problem}"


_INSTANCES = {"type": "array", "minItems": 1, "maxItems": 100, "items": string(64)}
SCHEMA: dict[str, Any] = {
    "required": ["group"],
    "properties": {
        "group": {"type": "string"},  # its form: check (NAME_RULES["group"])
        "group_description": string(1024),
        "approval_status": {"enum": list(STATUSES)},
        "description": string(1024),
        "content_types": {"type": "array", "minItems": 1, "maxItems": 10, "items": MIME_TYPE},
        "response_types": {"type": "array", "minItems": 1, "maxItems": 10, "items": MIME_TYPE},
        "inference_instances": _INSTANCES,
        "transform_instances": _INSTANCES,
        "customer_metadata": {"type": "object", "maxProperties": 50,
                              "propertyNames": {"maxLength": 128},
                              "additionalProperties": string(256)},
        "environment": environment(1024, entries=16),
        "tags": TAGS,
        **{key: COMMON_STEP_KEYS[key] for key in ("wait_timeout_seconds", "poll_max_seconds")},
    },
}

KIND = JobKind(
    name="register", decorator="sm_register",
    api=Api(describe="describe_model_package", name_arg="ModelPackageName",
            status="ModelPackageStatus", stop="", arn="ModelPackageArn", log_group="",
            running=frozenset({"Pending", "InProgress"}), done=frozenset({"Completed"}),
            failed=frozenset({"Failed", "Deleting"})),
    schema=SCHEMA, image_scope="inference", check=check,
    spec=spec, outputs=outputs, start=start,
    event_keys=("ModelPackageArn", "ModelPackageVersion", "ModelApprovalStatus"),
)
