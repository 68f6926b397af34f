"""Real-time endpoints: a training (or tuning) result, a registered model version or an
existing model, served by an endpoint created if missing and else updated in place to a new
config (SageMaker's CreateEndpoint / UpdateEndpoint; local mode: ``smtask.local.endpoints``).

The endpoint's name is the step's; its model and config are named per task instance, so a
retry finds its own update and re-attaches to it instead of starting another. A kill never
deletes an endpoint nor undoes an update. An update that fails leaves the endpoint serving
its old config, and the task fails saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from smtask.kind import Api, JobKind
from smtask.kinds.common import StepContext, aws_tags
from smtask.kinds.transform import (
    LOCAL_ROLE,
    create_owned,
    existing_model,
    is_training_result,
    model_request,
    serving_environment,
    with_region,
)
from smtask.kinds.transform import check as existing_model_check
from smtask.naming import name_problem
from smtask.params.schemas import COMMON_STEP_KEYS, NAME, TAGS, environment, string

_RETURNED_KEYS = ("model", "model_name", "model_package_arn")
APPROVED = "Approved"


def spec(ctx: StepContext, returned: Any, upstream: Iterable[Any] = ()) -> dict[str, Any]:
    """``returned`` is a training or tuning result, a registration's result (``@sm_register``),
    ``{"model_name": an existing model}`` or ``{"model_package_arn": a version}``; or None:
    the step's ``model_name`` or ``model_package_arn``, else the one training or
    registration result among the function's arguments."""
    cfg = ctx.cfg
    source = _source(ctx, returned, upstream)
    common = ctx.common("ml.m5.large", scope="inference", needs_image=False)
    job: dict[str, Any] = {
        "job_name": cfg["endpoint_name"],  # what DescribeEndpoint takes
        "endpoint_name": cfg["endpoint_name"],
        "config_name": ctx.job_name, "step": ctx.step,
        "model_name": ctx.job_name, "model_package_arn": None, "existing_model": False,
        "variant": cfg.get("variant_name", "AllTraffic"),
        "instance_type": cfg.get("instance_type", "ml.m5.large"),
        "instance_count": cfg.get("instance_count", 1),
        "serverless": cfg.get("serverless"),
        "deployment_config": cfg.get("deployment_config"),
        "allow_unapproved": cfg.get("allow_unapproved", False),
        "role": common["role"], "tags": common["tags"], "environment": common["environment"],
        "image": None, "model_data": None, "model_environment": {}, "framework": None,
        "region": ctx.params.get("region_name") or "us-east-1",
    }
    if "model_package_arn" in source:  # its approval is read when the task starts it: a
        # person may have approved it since it was registered (or rejected it)
        return {**job, "model_package_arn": source["model_package_arn"]}
    if "model_name" in source:
        found = existing_model(ctx, source["model_name"])
        return {**job, **found, "model_environment": {**found["model_environment"],
                                                      **job["environment"]}}
    model = source["model"]
    image = ctx.local_image(cfg["image"]) if cfg.get("image") else ctx.local_image(model["image"])
    return {**job, "image": image, "model_data": model["model"],
            "framework": model.get("framework"),
            "model_environment": {**serving_environment(model.get("code")), **job["environment"]}}


def _unapproved(step: str, arn: str, status: str) -> str:
    return (f"steps.{step}: model version {arn} is {status}, not Approved; approve it "
            f"(`smtask registry approve`), or set steps.{step}.allow_unapproved: true to "
            "deploy it anyway")


def _source(ctx: StepContext, returned: Any, upstream: Iterable[Any]) -> dict[str, Any]:
    """What to serve: ``{"model": training result}``, ``{"model_name": ...}`` or a version,
    ``{"model_package_arn": ...}``."""
    cfg, step = ctx.cfg, ctx.step
    if returned is None:
        if cfg.get("model_package_arn"):
            return {"model_package_arn": cfg["model_package_arn"]}
        if cfg.get("model_name"):
            return {"model_name": cfg["model_name"]}
        found = [v for v in upstream if is_training_result(v) or _is_version(v)]
        if len(found) != 1:
            raise TypeError(f"step '{step}': return what to deploy (a training result, a "
                            "registered version, {'model_name': ...}), set the step's "
                            "model_name or model_package_arn, or pass exactly one training or "
                            f"registration result to the function (found {len(found)})")
        returned = found[0]
    if _is_version(returned):
        return {"model_package_arn": returned["model_package_arn"]}
    if is_training_result(returned):
        return {"model": returned}
    if not isinstance(returned, dict):
        raise TypeError(f"step '{step}': return a training result, a registered version or a "
                        f"dict, got {type(returned).__name__}")
    given = {k: v for k, v in returned.items() if v is not None}
    unknown = sorted(str(k) for k in given if k not in _RETURNED_KEYS)
    if unknown or len(given) != 1:
        raise TypeError(f"step '{step}': return exactly one of {', '.join(_RETURNED_KEYS)} "
                        f"(got {', '.join(map(str, given)) or 'none'})")
    if "model" in given:
        if not is_training_result(given["model"]):
            raise TypeError(f"step '{step}': 'model' must be a training task's result")
        return {"model": given["model"]}
    key, value = next(iter(given.items()))
    if not isinstance(value, str):  # a model_name's form: existing_model
        raise TypeError(f"step '{step}': {key} must be a string, got {type(value).__name__}")
    return {key: value}


def _is_version(value: Any) -> bool:
    return isinstance(value, dict) and "model_package_arn" in value


# --- sagemaker mode ---------------------------------------------------------------------------

def start(job: dict[str, Any], session: Any, log: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Create the model and the config (this task instance's), then the endpoint, or update
    it to the config; a retry that finds its config live or pending re-attaches."""
    if session.local_mode:
        return job, _deploy_locally(job, session, log)
    from smtask import waiting
    from smtask.errors import JobFailed

    client, name = session.sagemaker_client, job["endpoint_name"]
    if job["model_package_arn"]:  # before any other call
        _check_approved(client, job)
    described = waiting.find(client, KIND, name)
    if described is not None and _serves(described, job["config_name"]):
        log(f"endpoint {name} already has config {job['config_name']} "
            f"({described['EndpointStatus']}): re-attaching")
        return job, described
    if not job["existing_model"]:
        create_owned(client, job["step"], "model", client.create_model,
                     _model_request(job, session))
    create_owned(client, job["step"], "endpoint config", client.create_endpoint_config,
                 _config_request(job))
    if described is None:
        waiting.call(client.create_endpoint, {"EndpointName": name,
                                              "EndpointConfigName": job["config_name"],
                                              "Tags": aws_tags(job)})
        log(f"endpoint {name} created with config {job['config_name']}")
        return job, None
    current = described["EndpointStatus"]
    if current in KIND.api.running or current in ("Failed", "Deleting", "UpdateRollbackFailed"):
        said = described.get("FailureReason") or f"config {described.get('EndpointConfigName')}"
        raise JobFailed(KIND.name, name, f"the endpoint is {current} ({said}); no update to "
                        f"{job['config_name']} was started")
    waiting.call(client.update_endpoint, {
        "EndpointName": name, "EndpointConfigName": job["config_name"],
        **({"DeploymentConfig": job["deployment_config"]} if job["deployment_config"] else {}),
        "RetainAllVariantProperties": False})
    log(f"endpoint {name}: update from config {described['EndpointConfigName']} to "
        f"{job['config_name']} started")
    return job, None


def _serves(described: dict[str, Any], config: str) -> bool:
    """Whether the endpoint has ``config``, live or as the update in progress."""
    pending = (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    return config in (described.get("EndpointConfigName"), pending)


def _check_approved(client: Any, job: dict[str, Any]) -> None:
    """A version is deployed only while Approved (it may have been rejected since it was
    registered), unless the step allows it."""
    from smtask import waiting
    from smtask.errors import ParamsError

    status = waiting.call(client.describe_model_package,
                          {"ModelPackageName": job["model_package_arn"]})["ModelApprovalStatus"]
    if status != APPROVED and not job["allow_unapproved"]:
        raise ParamsError(_unapproved(job["step"], job["model_package_arn"], status))


def _model_request(job: dict[str, Any], session: Any) -> dict[str, Any]:
    """The model's CreateModel: of a version (its package), else of an image and data."""
    if not job["model_package_arn"]:
        return model_request(job, job["model_name"], job["model_data"],
                             with_region(job["model_environment"], session))
    container: dict[str, Any] = {"ModelPackageName": job["model_package_arn"]}
    if job["environment"]:
        container["Environment"] = job["environment"]
    return {"ModelName": job["model_name"], "PrimaryContainer": container,
            "ExecutionRoleArn": job["role"] or LOCAL_ROLE, "Tags": aws_tags(job)}


def _config_request(job: dict[str, Any]) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": job["variant"], "ModelName": job["model_name"]}
    serverless = job["serverless"]
    if serverless:
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": serverless["memory_size_mb"],
            "MaxConcurrency": serverless.get("max_concurrency", 5),
            **({"ProvisionedConcurrency": serverless["provisioned_concurrency"]}
               if "provisioned_concurrency" in serverless else {})}
    else:
        variant.update({"InstanceType": job["instance_type"],
                        "InitialInstanceCount": job["instance_count"],
                        "InitialVariantWeight": 1.0})
    return {"EndpointConfigName": job["config_name"], "ProductionVariants": [variant],
            "Tags": aws_tags(job)}


# --- local mode -------------------------------------------------------------------------------

def _deploy_locally(job: dict[str, Any], session: Any, log: Any) -> dict[str, Any]:
    from smtask.local import endpoints
    from smtask.local.serving import local_serving_environment
    from smtask.local.state import of

    image, model_data, environment = job["image"], job["model_data"], job["model_environment"]
    framework = job["framework"]
    if job["model_package_arn"]:
        from smtask.errors import ParamsError
        from smtask.local import registry

        try:
            version = registry.version(job["model_package_arn"])
        except registry.RegistryError as exc:
            raise ParamsError(f"steps.{job['step']}: {exc}") from exc
        if version["approval_status"] != APPROVED and not job["allow_unapproved"]:
            raise ParamsError(_unapproved(job["step"], version["model_package_arn"],
                                          version["approval_status"]))
        image, model_data, framework = version["image"], version["model"], version["framework"]
        environment = {**version["environment"], **job["environment"]}
    if job["serverless"] or job["instance_count"] > 1:
        log(f"local mode serves endpoint {job['endpoint_name']} from one container (not "
            f"{'serverless' if job['serverless'] else str(job['instance_count']) + ' instances'})")
    entry = endpoints.deploy(
        session, name=job["endpoint_name"], config_name=job["config_name"],
        model_name=job["model_name"], image=image, model_data=model_data,
        arn=f"arn:aws:sagemaker:{job['region']}:000000000000:endpoint/{job['endpoint_name']}",
        environment=local_serving_environment(environment, framework), variant=job["variant"],
        model_package_arn=job["model_package_arn"], log=log, output=of(session).output)
    return endpoints.description(entry)


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's name, config and model; a wait that ended InService under another
    config is a failed update: the endpoint still serves that one."""
    live = description.get("EndpointConfigName")
    if live != job["config_name"]:
        from smtask.errors import JobFailed

        reason = description.get("FailureReason") or "the update did not take"
        raise JobFailed(KIND.name, job["endpoint_name"], f"{reason}; the endpoint still serves "
                        f"its old config {live}, not {job['config_name']}")
    return {"endpoint_name": job["endpoint_name"], "endpoint_config_name": job["config_name"],
            "model_name": job["model_name"], "status": description.get("EndpointStatus"),
            "model_package_arn": job["model_package_arn"]}


def form(step: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    if "serverless" in cfg:
        both = [k for k in ("instance_type", "instance_count") if k in cfg]
        if both:
            yield (f"steps.{step}.serverless: not together with {' and '.join(both)} (an "
                   "endpoint variant is serverless or runs on instances; a run's conf drops "
                   "a key of the config with null)")
    if "model_name" in cfg and "model_package_arn" in cfg:
        yield f"steps.{step}: model_name or model_package_arn, not both"


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    if problem := name_problem("endpoint", cfg.get("endpoint_name")):
        yield f"steps.{step}.endpoint_name: {problem}"
    yield from existing_model_check(step, cfg, params)  # its model_name


SCHEMA: dict[str, Any] = {
    "required": ["endpoint_name"],
    "properties": {
        "endpoint_name": {"type": "string"},  # its form: check (NAME_RULES["endpoint"])
        "image": COMMON_STEP_KEYS["image"],
        "instance_type": NAME,
        "instance_count": COMMON_STEP_KEYS["instance_count"],
        "serverless": {
            "type": "object", "additionalProperties": False, "required": ["memory_size_mb"],
            "properties": {
                "memory_size_mb": {"enum": [1024, 2048, 3072, 4096, 5120, 6144]},
                "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 200},
                "provisioned_concurrency": {"type": "integer", "minimum": 1, "maximum": 200},
            },
        },
        "variant_name": string(63, pattern="^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"),
        # SageMaker's DeploymentConfig, passed through: BlueGreenUpdatePolicy (all at once,
        # canary, linear), RollingUpdatePolicy, AutoRollbackConfiguration (alarms)
        "deployment_config": {
            "type": "object", "additionalProperties": False,
            "properties": {"BlueGreenUpdatePolicy": {"type": "object"},
                           "RollingUpdatePolicy": {"type": "object"},
                           "AutoRollbackConfiguration": {"type": "object"}},
        },
        "model_name": {"type": "string"},  # an existing model; its form: check
        "model_package_arn": string(2048, pattern="^arn:aws[a-z-]*:sagemaker:"),
        "allow_unapproved": {"type": "boolean"},
        "environment": environment(1024, entries=16),
        "tags": TAGS,
        **{key: COMMON_STEP_KEYS[key] for key in ("wait_timeout_seconds", "poll_max_seconds",
                                                  "deferrable")},
    },
}

KIND = JobKind(
    name="endpoint", decorator="sm_endpoint",
    api=Api(describe="describe_endpoint", name_arg="EndpointName", status="EndpointStatus",
            stop="", arn="EndpointArn", log_group="/aws/sagemaker/Endpoints",
            running=frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"}),
            done=frozenset({"InService"}),
            failed=frozenset({"Failed", "OutOfService", "Deleting", "UpdateRollbackFailed"})),
    schema=SCHEMA, image_scope="inference", check=check, form=form,
    spec=spec, outputs=outputs, start=start,
    event_keys=("EndpointConfigName", "EndpointStatus", "FailureReason"),
)
