"""Batch transform: a ``Transformer`` job with the model of an upstream training result (a
model created for the job) or with an existing model (used as it is, never changed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from smtask.images import framework_of
from smtask.kind import Api, JobKind
from smtask.kinds.common import (
    INSTANCE_TAG,
    StepContext,
    aws_tags,
    check_exists,
    check_keys,
    check_uri,
    content_prefix,
    elapsed,
    instances_of,
    job_usage,
    model_code,
    prepare_output,
    remote,
)
from smtask.naming import name_problem, quoted
from smtask.params.schemas import COMMON_STEP_KEYS, MIME_TYPE, PATH, POSITIVE, environment

LOCAL_ROLE = "arn:aws:iam::000000000000:role/smtask-local"
_RETURNED_KEYS = ("data", "model", "model_name")


def is_training_result(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and {"job_name", "model", "image"} <= value.keys()


def spec(ctx: StepContext, returned: Any, upstream: Iterable[Any] = ()) -> dict[str, Any]:
    """``returned`` is the data URI to score, or ``{"data": URI, "model": training result}``,
    or ``{"data": URI, "model_name": an existing model}``. The model is, in this order: the
    one the function returns, the step's ``model_name``, the one training result among the
    function's arguments."""
    job = _spec(ctx, returned, upstream)
    check_exists(ctx.step, "data", job["data"])  # a local path (sagemaker mode uploads it)
    return job


def _spec(ctx: StepContext, returned: Any, upstream: Iterable[Any]) -> dict[str, Any]:
    model, model_name, data = _model_and_data(ctx, returned)
    if model is None and model_name is None:
        models = [v for v in upstream if is_training_result(v)]
        if len(models) != 1:
            raise TypeError(
                f"step '{ctx.step}': pass exactly one training result to the function "
                f"(found {len(models)}), return {{'data': URI, 'model': training result}} or "
                "{'data': URI, 'model_name': an existing model}, or set the step's model_name")
        model = models[0]
    settings = _settings(ctx, data)
    if model_name is not None:
        return {**settings, **existing_model(ctx, model_name)}
    if not is_training_result(model):
        raise TypeError(f"step '{ctx.step}': 'model' must be a training task's result, got {model!r}")
    # the step's own image, else the model's (local mode: the stand-in for AWS's)
    image = settings["image"] if ctx.cfg.get("image") else ctx.local_image(model["image"])
    # the code the model serves with: the step's own inference code, else its training's
    code = model_code(settings, ctx.path(ctx.cfg["source_dir"]), ctx.cfg["entry_script"]) \
        if ctx.cfg.get("source_dir") else None
    served = code or model.get("code")
    framework = framework_of(ctx.cfg.get("image")) or model.get("framework")
    return {**settings, "image": image, "model_name": None,
            "existing_model": False, "model_data": model["model"], "model_code": code,
            "framework": framework,
            "model_environment": {**serving_environment(served), **settings["environment"]}}


def serving_environment(code: dict[str, str] | None) -> dict[str, str]:
    """A model's environment for its code, as the SDK's ``Model`` sets it (the region is
    added when the model is created)."""
    if not code:
        return {}
    return {"SAGEMAKER_PROGRAM": code["program"],
            "SAGEMAKER_SUBMIT_DIRECTORY": code["submit_directory"],
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"}


def _model_and_data(ctx: StepContext, returned: Any) -> tuple[Any, str | None, Any]:
    if not isinstance(returned, dict):
        return None, ctx.cfg.get("model_name"), returned
    check_keys(ctx.step, returned, _RETURNED_KEYS)
    if returned.get("model") is not None and returned.get("model_name") is not None:
        raise TypeError(f"step '{ctx.step}': return either 'model' (a training result) or "
                        "'model_name' (an existing model), not both")
    model, model_name = returned.get("model"), returned.get("model_name")
    if model is None and model_name is None:
        model_name = ctx.cfg.get("model_name")
    return model, model_name, returned.get("data")


def _settings(ctx: StepContext, data: Any) -> dict[str, Any]:
    cfg = ctx.cfg
    return {
        **ctx.common("ml.m5.large", scope="inference", needs_image=False),
        "step": ctx.step,
        "data": check_uri(ctx.step, "data", data),
        "content_type": cfg.get("content_type", "text/csv"),
        "accept": cfg.get("accept", "text/csv"),
        "split_type": cfg.get("split_type", "Line"),
        "assemble_with": cfg.get("assemble_with", "Line"),
        "strategy": cfg.get("strategy", "MultiRecord"),
        "max_payload_mb": cfg.get("max_payload_mb", 6),
        "max_concurrent_transforms": cfg.get("max_concurrent_transforms", 1),
        "output_path": f"{ctx.prefix}/predictions",
    }


def existing_model(ctx: StepContext, name: Any) -> dict[str, Any]:
    """An existing model: SageMaker's own (sagemaker mode: its image, data and role are the
    model's), or in local mode the entry of ``local.models`` registered under that name."""
    if problem := name_problem("model", name):
        raise TypeError(f"step '{ctx.step}': model_name {problem}")
    existing = {"model_name": name, "existing_model": True, "model_data": None,
                "model_environment": {}, "image": None, "model_code": None, "framework": None}
    if not ctx.local:
        return existing
    local = ctx.params.get("local") or {}
    models = local.get("models") or {}
    if name not in models:
        from smtask.errors import ParamsError

        raise ParamsError(
            f"steps.{ctx.step}: model {quoted(name)} is not in local.models (known: "
            f"{', '.join(sorted(models)) or 'none'}); local mode registers an existing model "
            "from its model data and image there")
    entry = models[name]
    # an AWS algorithm's image (e.g. XGBoost's) runs as the local image's stand-in
    return {**existing, "image": ctx.local_image(entry.get("image")),
            "model_data": _local_model_data(ctx, name, entry["model_data"]),
            "model_environment": dict(entry.get("environment", {})),
            "framework": framework_of(entry.get("image"))}


def _local_model_data(ctx: StepContext, name: str, where: str) -> str:
    """``s3://`` as it is (from ``local.s3_endpoint``: local mode reaches no other S3);
    ``file:///`` or a path relative to the config's folder: a file that must exist before
    any container starts."""
    from urllib.parse import urlparse

    if where.startswith("s3://"):
        if not (ctx.params.get("local") or {}).get("s3_endpoint"):
            from smtask.errors import ParamsError

            raise ParamsError(f"local.models.{name}.model_data: an s3:// model needs "
                              f"local.s3_endpoint in local mode (step '{ctx.step}')")
        return where
    path = Path(urlparse(where).path) if where.startswith("file://") else Path(ctx.path(where))
    if not path.is_file():
        from smtask.errors import ParamsError

        raise ParamsError(f"local.models.{name}.model_data: no file {path} (step '{ctx.step}')")
    return path.resolve().as_uri()


def submit(job: dict[str, Any], session: Any) -> None:
    """Create the model (named like the job) or, for an existing model, check that SageMaker
    has it (local mode: register it with the session); then start the transform job."""
    from sagemaker.core.transformer import Transformer

    model_name = job["model_name"] or job["job_name"]
    model_data, environment = job["model_data"], with_region(job["model_environment"], session)
    if session.local_mode:
        from smtask.local import scratch_copy, serve_on_own_port, serving_code

        serve_on_own_port(session)
        model_data = scratch_copy(session, model_data)  # the SDK unpacks the model beside it
        environment = serving_code(session, environment, job.get("framework"))
    elif job["existing_model"]:
        _check_model(session, job["step"], model_name)
    prepare_output(job["output_path"], job["artifacts"])
    if session.local_mode or not job["existing_model"]:
        client = session.sagemaker_client
        create_owned(client, job["step"], "model", client.create_model,
                     model_request(job, model_name, model_data, environment),
                     local=session.local_mode)
    transformer = Transformer(
        model_name=model_name,
        instance_count=job["instance_count"],
        instance_type=job["instance_type"],
        strategy=job["strategy"],
        assemble_with=job["assemble_with"],
        output_path=job["output_path"],
        accept=job["accept"],
        max_concurrent_transforms=job["max_concurrent_transforms"],
        max_payload=job["max_payload_mb"],
        env=job["environment"] or None,
        tags=aws_tags(job),
        sagemaker_session=session,
    )
    transformer.transform(
        job["data"] if session.local_mode
        else remote(session, job["data"], content_prefix(job, "data")),
        content_type=job["content_type"],
        split_type=job["split_type"],
        job_name=job["job_name"],  # without a name the SDK calls the real DescribeModel API
        wait=False,
        logs=False,
    )


def with_region(environment: dict[str, str], session: Any) -> dict[str, str]:
    """A model's environment as the SDK's ``Model`` gives one with code: its region too."""
    environment = dict(environment)
    if environment.get("SAGEMAKER_PROGRAM"):
        environment.setdefault("SAGEMAKER_REGION", session.boto_region_name)
    return environment


def model_request(job: dict[str, Any], name: str, model_data: str,
                  environment: dict[str, str]) -> dict[str, Any]:
    """CreateModel's request for a model of ``job``'s image, of ``model_data``."""
    return {"ModelName": name,
            "PrimaryContainer": {"Image": job["image"], "ModelDataUrl": model_data,
                                 "Environment": environment},
            "ExecutionRoleArn": job["role"] or LOCAL_ROLE, "Tags": aws_tags(job)}


# what create_owned creates: its describe call, the request's name key, the ARN's key
_OWNED = {"model": ("describe_model", "ModelName", "ModelArn"),
          "endpoint config": ("describe_endpoint_config", "EndpointConfigName",
                              "EndpointConfigArn")}


def create_owned(client: Any, step: str, what: str, create: Any, request: dict[str, Any], *,
                 local: bool = False) -> None:
    """Create a model or an endpoint config named per task instance. One of that name that
    this task instance made (its tag says so: an earlier attempt's, or a create whose answer
    was lost) is used as it is; one someone else made is refused, and left as it is."""
    from botocore.exceptions import ClientError

    from smtask import waiting

    try:
        waiting.call(create, request)
    except ClientError as exc:
        if local or ("already exist" not in str(exc)
                     and waiting.error_code(exc) != "ResourceInUse"):
            raise
        describe, key, arn_key = _OWNED[what]
        arn = getattr(client, describe)(**{key: request[key]})[arn_key]
        tags = {t["Key"]: t["Value"] for t in client.list_tags(ResourceArn=arn).get("Tags", [])}
        if tags.get(INSTANCE_TAG) != {t["Key"]: t["Value"] for t in request["Tags"]}[INSTANCE_TAG]:
            from smtask.errors import ParamsError

            raise ParamsError(f"step '{step}': a {what} named {request[key]} exists that this "
                              "task instance did not create; it is left as it is") from exc


def _check_model(session: Any, step: str, name: str) -> None:
    """SageMaker must have the model before a transform job names it (DescribeModel)."""
    from botocore.exceptions import ClientError

    from smtask import waiting

    try:
        waiting.call(session.sagemaker_client.describe_model, {"ModelName": name})
    except ClientError as exc:
        error = exc.response.get("Error", {})
        from smtask.errors import ModelNotFound

        raise ModelNotFound(
            f"step '{step}': model {name!r} cannot be used: {error.get('Code')}: "
            f"{error.get('Message')} (DescribeModel); no transform job was created") from exc


def shared_outputs(job: dict[str, Any]) -> list[str]:
    """The output URIs every job of the task instance writes to (not per job name)."""
    return [job["output_path"]]


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {"job_name": job["job_name"], "model_name": job["model_name"] or job["job_name"],
            "outputs": {"predictions": job["output_path"]}}


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """An existing model's name is SageMaker's. (Whether local mode has the model is checked
    by the task: a decorator's ``mode`` may differ from the params'.)"""
    name = cfg.get("model_name")
    if isinstance(name, str) and (problem := name_problem("model", name)):
        yield f"steps.{step}.model_name: {problem}"


SCHEMA: dict[str, Any] = {
    "required": [],
    "dependencies": {"source_dir": ["entry_script"], "entry_script": ["source_dir"]},
    "properties": {
        **COMMON_STEP_KEYS,
        # CreateTransformJob's limits; the model it creates gets the same environment
        "environment": environment(1024, entries=16),
        "content_type": MIME_TYPE,
        "accept": MIME_TYPE,
        "split_type": {"enum": ["None", "Line", "RecordIO", "TFRecord"]},
        "assemble_with": {"enum": ["None", "Line"]},
        "strategy": {"enum": ["MultiRecord", "SingleRecord"]},
        "max_payload_mb": {"type": "integer", "minimum": 0, "maximum": 100},
        "max_concurrent_transforms": POSITIVE,
        "model_name": {"type": "string"},  # an existing model; its form: check
        # inference code of the step's own, served instead of the training's script's
        "source_dir": PATH,
        "entry_script": PATH,
    },
}

def usage(description: Mapping[str, Any]) -> dict[str, Any]:
    """The job's run time, its instances and their billable seconds."""
    resources = description.get("TransformResources")
    return job_usage(elapsed(description, "TransformStartTime", "TransformEndTime"),
                     instances_of(resources.get("InstanceCount")
                                  if isinstance(resources, Mapping) else None))


KIND = JobKind(
    name="transform", decorator="sm_transform",
    api=Api.of_job("TransformJob"),
    schema=SCHEMA, image_scope="inference", check=check,
    spec=spec, submit=submit, outputs=outputs, shared_outputs=shared_outputs, usage=usage,
    assets=lambda cfg: ("predictions",),
)
