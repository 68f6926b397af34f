"""Batch transform: a model from the upstream training result, then a ``Transformer`` job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeGuard

from smtask.steps import StepContext, aws_tags, check_uri, prepare_output

KIND = "transform"
_LOCAL_ROLE = "arn:aws:iam::000000000000:role/smtask-local"


def is_training_result(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and {"job_name", "model", "image"} <= value.keys()


def spec(ctx: StepContext, returned: Any, upstream: Iterable[Any]) -> dict[str, Any]:
    """``returned`` is the data URI to score, or ``{"data": URI, "model": training result}``;
    with a plain URI the model is the one training result among the function's arguments."""
    if isinstance(returned, dict):
        data, model = returned.get("data"), returned.get("model")
    else:
        data, models = returned, [v for v in upstream if is_training_result(v)]
        if len(models) != 1:
            raise TypeError(
                f"step '{ctx.step}': pass exactly one training result to the function "
                f"(found {len(models)}), or return {{'data': URI, 'model': training result}}")
        model = models[0]
    if not is_training_result(model):
        raise TypeError(f"step '{ctx.step}': 'model' must be a training task's result, got {model!r}")
    cfg = ctx.cfg
    job = ctx.common("ml.m5.large")
    job["image"] = cfg.get("image") or model["image"]
    return {
        **job,
        "model_data": model["model"],
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


def submit(job: dict[str, Any], session: Any) -> None:
    """Create the model (named like the job), then start the transform job."""
    from sagemaker.core.transformer import Transformer

    model_data = job["model_data"]
    if session.local_mode:
        from smtask.local import scratch_copy, serve_on_own_port

        serve_on_own_port(session)
        model_data = scratch_copy(session, model_data)  # the SDK unpacks the model beside it
    prepare_output(job["output_path"], job["artifacts"])
    session.sagemaker_client.create_model(
        ModelName=job["job_name"],
        PrimaryContainer={"Image": job["image"], "ModelDataUrl": model_data,
                          "Environment": job["environment"]},
        ExecutionRoleArn=job["role"] or _LOCAL_ROLE,
        Tags=aws_tags(job),
    )
    transformer = Transformer(
        model_name=job["job_name"],
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
        job["data"],
        content_type=job["content_type"],
        split_type=job["split_type"],
        job_name=job["job_name"],  # without a name the SDK calls the real DescribeModel API
        wait=False,
        logs=False,
    )


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {"job_name": job["job_name"], "model_name": job["job_name"],
            "outputs": {"predictions": job["output_path"]}}
