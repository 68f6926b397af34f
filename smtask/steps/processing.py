"""Processing: the step's script in a ``ScriptProcessor`` job; inputs come from the function."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.steps import StepContext, aws_tags, check_uri_map, prepare_output, upload_once

KIND = "processing"

def spec(ctx: StepContext, returned: Any) -> dict[str, Any]:
    """``returned`` is ``{input name: URI}``; each lands in ``<input_destination>/<name>``."""
    cfg = ctx.cfg
    inputs = check_uri_map(ctx.step, "input", returned)
    clash = sorted(set(inputs) & set(cfg["outputs"]))
    if clash:
        raise TypeError(f"step '{ctx.step}': input names {clash} are also output names")
    base = cfg.get("input_destination", "/opt/ml/processing/input")
    return {
        **ctx.common("ml.m5.large", scope="processing"),
        "command": cfg.get("command", ["python3"]),
        "code": ctx.path(cfg["code_path"]),
        "arguments": list(cfg.get("arguments", [])),
        "inputs": {n: {"source": uri, "destination": posixpath.join(base, n)}
                   for n, uri in inputs.items()},
        "outputs": {n: {"source": o["source"], "destination": f"{ctx.prefix}/{n}"}
                    for n, o in cfg["outputs"].items()},
        "code_prefix": ctx.code_prefix,
    }


def _local_processor_class() -> type:
    from sagemaker.core.processing import ScriptProcessor

    class LocalScriptProcessor(ScriptProcessor):  # type: ignore[misc]
        """Keeps file:// code and inputs where they are; the SDK would upload them to S3."""

        def _handle_user_code_url(self, code: str, kms_key: Any = None) -> str:
            if urlparse(code).scheme in ("", "file"):
                return Path(urlparse(code).path).resolve().as_uri()
            return super()._handle_user_code_url(code, kms_key)

        def _normalize_inputs(self, inputs: Any = None, kms_key: Any = None) -> list[Any]:
            inputs = inputs or []
            local = [i for i in inputs if urlparse(i.s3_input.s3_uri).scheme == "file"]
            remote = [i for i in inputs if urlparse(i.s3_input.s3_uri).scheme != "file"]
            return local + super()._normalize_inputs(remote, kms_key)

    return LocalScriptProcessor


def submit(job: dict[str, Any], session: Any) -> None:
    """Start the job (in local mode the SDK runs it to the end before returning)."""
    from sagemaker.core.processing import ScriptProcessor
    from sagemaker.core.shapes import (
        ProcessingInput,
        ProcessingOutput,
        ProcessingS3Input,
        ProcessingS3Output,
    )

    for output in job["outputs"].values():
        prepare_output(output["destination"], job["artifacts"])
    processor_class = _local_processor_class() if session.local_mode else ScriptProcessor
    processor = processor_class(
        role=job["role"] if not session.local_mode else None,
        image_uri=job["image"],
        command=job["command"],
        instance_type=job["instance_type"],
        instance_count=job["instance_count"],
        volume_size_in_gb=job["volume_size_gb"],
        max_runtime_in_seconds=job["max_runtime_seconds"],
        env=job["environment"] or None,
        tags=aws_tags(job),
        sagemaker_session=session,
    )
    code = job["code"]
    if not session.local_mode:  # by content, not under the SDK's default-bucket root
        code = upload_once(session, code, job["code_prefix"])
    processor.run(
        code=code,
        inputs=[ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
                    s3_uri=i["source"], local_path=i["destination"], s3_data_type="S3Prefix",
                    s3_input_mode="File", s3_data_distribution_type="FullyReplicated"))
                for name, i in job["inputs"].items()],
        outputs=[ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
                     s3_uri=o["destination"], local_path=o["source"], s3_upload_mode="EndOfJob"))
                 for name, o in job["outputs"].items()],
        arguments=job["arguments"] or None,
        job_name=job["job_name"],
        wait=False,  # the SDK's own wait sleeps 10 s before its first poll
        logs=False,
    )


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {"job_name": job["job_name"],
            "outputs": {name: o["destination"] for name, o in job["outputs"].items()}}
