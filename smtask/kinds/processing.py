"""Processing: the step's script in a ``ScriptProcessor`` job (``code_path``), or a source dir
with an entry script and its requirements in a ``FrameworkProcessor`` job (``source_dir`` +
``code``); inputs come from the function, the step's settings arrive as the ``config`` input."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask.kind import Api, JobKind
from smtask.kinds.common import (
    SETTINGS_FILE,
    StepContext,
    aws_tags,
    check_uri_map,
    content_prefix,
    elapsed,
    instances_of,
    job_usage,
    pack,
    prepare_output,
    remote,
    settings_source,
    upload_once,
)
from smtask.naming import name_problem
from smtask.params.schemas import (
    COMMON_STEP_KEYS,
    CONTAINER_ARGS,
    CONTAINER_PATH,
    PATH,
    SETTINGS,
    SETTINGS_ENV,
    environment,
)

SETTINGS_INPUT = "config"
# smtask's own inputs: the settings file, and the SDK's code inputs
RESERVED = (SETTINGS_INPUT, "code", "entrypoint")


def spec(ctx: StepContext, returned: Any, upstream: Any = ()) -> dict[str, Any]:
    """``returned`` is ``{input name: URI}``; each lands in ``<input_destination>/<name>``,
    the step's settings in ``<input_destination>/config/config.json``."""
    cfg = ctx.cfg
    inputs = check_uri_map(ctx.step, "input", returned, RESERVED)
    clash = sorted(set(inputs) & set(cfg["outputs"]))
    if clash:
        raise TypeError(f"step '{ctx.step}': input names {clash} are also output names")
    base = cfg.get("input_destination", INPUTS)
    settings_path = posixpath.join(base, SETTINGS_INPUT, SETTINGS_FILE)
    job = ctx.common("ml.m5.large", scope="processing")
    job["environment"][SETTINGS_ENV] = settings_path
    framework = "source_dir" in cfg
    requirements = cfg.get("requirements")
    if framework and not requirements and \
            os.path.isfile(Path(ctx.path(cfg["source_dir"]), "requirements.txt")):
        requirements = "requirements.txt"  # the SDK's runproc.sh installs it anyway
    return {
        **job,
        "command": cfg.get("command", ["python3"]),
        # one script (ScriptProcessor), or a source dir and its entry script (FrameworkProcessor)
        "code": ctx.path(cfg["code_path"]) if not framework else cfg["code"],
        "source_dir": ctx.path(cfg["source_dir"]) if framework else None,
        "requirements": requirements,
        "arguments": list(cfg.get("arguments", [])),
        "inputs": {n: {"source": uri, "destination": posixpath.join(base, n)}
                   for n, uri in inputs.items()},
        "settings": ctx.settings,
        "settings_destination": posixpath.dirname(settings_path),
        "outputs": {n: {"source": o["source"], "destination": f"{ctx.prefix}/{n}"}
                    for n, o in cfg["outputs"].items()},
    }


class _LocalFiles:
    """Keeps file:// code and inputs where they are; the SDK would upload them to S3."""

    def _handle_user_code_url(self, code: str, kms_key: Any = None) -> str:
        if urlparse(code).scheme in ("", "file"):
            return Path(urlparse(code).path).resolve().as_uri()
        return super()._handle_user_code_url(code, kms_key)  # type: ignore[misc]

    def _normalize_inputs(self, inputs: Any = None, kms_key: Any = None) -> list[Any]:
        inputs = inputs or []
        local = [i for i in inputs if urlparse(i.s3_input.s3_uri).scheme == "file"]
        remote_ = [i for i in inputs if urlparse(i.s3_input.s3_uri).scheme != "file"]
        return local + super()._normalize_inputs(remote_, kms_key)  # type: ignore[misc]


def _processor_class(local: bool, framework: bool) -> type:
    from sagemaker.core.processing import FrameworkProcessor, ScriptProcessor

    if not framework:
        return type("LocalScriptProcessor", (_LocalFiles, ScriptProcessor), {}) if local \
            else ScriptProcessor

    class SmtaskFrameworkProcessor(*((_LocalFiles,) if local else ()), FrameworkProcessor):  # type: ignore[misc]
        """The SDK's FrameworkProcessor (its runproc.sh, its requirements installer, its code
        inputs), with the code packed reproducibly and placed once per content: uploaded
        under ``<artifacts>/_code/`` (the SDK uploads three files per job under the default
        bucket), or, in local mode, a copy in the session's scratch folder."""

        smtask_place: Any = None  # folder -> URI of the folder, set by submit

        def _pack_and_upload_code(self, code: str, source_dir: str, requirements: str | None,
                                  job_name: str, inputs: Any, kms_key: Any = None,
                                  entry_point: Any = None, dependencies: Any = None) -> Any:
            import sagemaker.core.utils.install_requirements as installer

            with tempfile.TemporaryDirectory() as folder:
                bundle = Path(folder, "code")
                bundle.mkdir()
                pack(Path(source_dir), bundle / "sourcedir.tar.gz")
                shutil.copy(installer.__file__, bundle / "install_requirements.py")
                # the entry script by its path in the source dir (the SDK keeps only its name)
                (bundle / "runproc.sh").write_text(self._generate_framework_script(
                    code, None, source_dir, self._SOURCE_CODE_CONTAINER_DIR, requirements))
                code_uri, runproc = self.smtask_place(bundle)
            return runproc, self._patch_inputs_with_payload(
                inputs, code_uri.rstrip("/") + "/sourcedir.tar.gz"), job_name

    return SmtaskFrameworkProcessor


def _local_placer(session: Any) -> Any:
    """Local mode: the code folder is a copy in the session's scratch folder (a job may unpack
    into it, as on SageMaker, and never touches the source dir); ``runproc.sh`` a read-only
    file of its own (mounted as that one file)."""
    from smtask import local

    def place(bundle: Path) -> tuple[str, str]:
        copy = Path(tempfile.mkdtemp(dir=local.scratch_of(session))) / "code"
        shutil.copytree(bundle, copy)
        runproc = local.read_only_file(session, "runproc.sh", (bundle / "runproc.sh").read_text())
        return copy.as_uri() + "/", runproc.as_uri()

    return place


def _cloud_placer(session: Any, prefix: str) -> Any:
    def place(bundle: Path) -> tuple[str, str]:
        folder = upload_once(session, str(bundle), prefix)
        return folder, folder + "runproc.sh"

    return place


def submit(job: dict[str, Any], session: Any) -> None:
    """Start the job (in local mode the SDK runs it to the end before returning)."""
    from sagemaker.core.shapes import (
        ProcessingInput,
        ProcessingOutput,
        ProcessingS3Input,
        ProcessingS3Output,
    )

    local, framework = session.local_mode, job["source_dir"] is not None
    for output in job["outputs"].values():
        prepare_output(output["destination"], job["artifacts"])
    env = dict(job["environment"])
    if local and job["requirements"]:
        from smtask.local import install_from_wheels

        env.update(install_from_wheels(session, Path(job["source_dir"]) / job["requirements"]))
    processor = _processor_class(local, framework)(
        role=job["role"] if not local else None,
        image_uri=job["image"],
        command=job["command"],
        instance_type=job["instance_type"],
        instance_count=job["instance_count"],
        volume_size_in_gb=job["volume_size_gb"],
        max_runtime_in_seconds=job["max_runtime_seconds"],
        env=env or None,
        tags=aws_tags(job),
        sagemaker_session=session,
    )
    data = content_prefix(job, "data")
    sources = {name: i["source"] if local else remote(session, i["source"], data)
               for name, i in job["inputs"].items()}
    settings = settings_source(job, session)
    inputs = [ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
                  s3_uri=sources[name], local_path=i["destination"], s3_data_type="S3Prefix",
                  s3_input_mode="File", s3_data_distribution_type="FullyReplicated"))
              for name, i in job["inputs"].items()]
    inputs.append(ProcessingInput(input_name=SETTINGS_INPUT, s3_input=ProcessingS3Input(
        s3_uri=Path(settings).as_uri() if local else settings,
        local_path=job["settings_destination"], s3_data_type="S3Prefix", s3_input_mode="File",
        s3_data_distribution_type="FullyReplicated")))
    run: dict[str, Any] = {"code": job["code"]}
    if framework:
        processor.smtask_place = _local_placer(session) if local else \
            _cloud_placer(session, content_prefix(job, "code"))
        run.update(source_dir=job["source_dir"], requirements=job["requirements"])
    elif not local:  # by content, not under the SDK's default-bucket root
        run["code"] = upload_once(session, job["code"], content_prefix(job, "code"))
    processor.run(
        **run,
        inputs=inputs,
        outputs=[ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
                     s3_uri=o["destination"], local_path=o["source"], s3_upload_mode="EndOfJob"))
                 for name, o in job["outputs"].items()],
        arguments=job["arguments"] or None,
        job_name=job["job_name"],
        wait=False,  # the SDK's own wait sleeps 10 s before its first poll
        logs=False,
    )


def shared_outputs(job: dict[str, Any]) -> list[str]:
    """The output URIs every job of the task instance writes to (not per job name)."""
    return [o["destination"] for o in job["outputs"].values()]


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    return {"job_name": job["job_name"],
            "outputs": {name: o["destination"] for name, o in job["outputs"].items()}}


INPUTS = "/opt/ml/processing/input"  # the SDK's: inputs, the settings' config/, code/


def form(step: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    """One script (``code_path``) or a source dir (``source_dir`` + ``code``, with optional
    ``requirements``): exactly one of the two forms."""
    script, framework = "code_path" in cfg, [k for k in ("source_dir", "code") if k in cfg]
    if script and framework:
        yield (f"steps.{step}: code_path and {' + '.join(framework)} both given; give either "
               "code_path (one script) or source_dir + code (framework processing)")
    elif not script and not framework:
        yield (f"steps.{step}.code_path: required key is missing (or give source_dir + code "
               "for framework processing)")
    elif framework and len(framework) == 1:
        missing = "code" if framework == ["source_dir"] else "source_dir"
        yield f"steps.{step}.{missing}: required with {framework[0]} (framework processing)"
    elif script and "requirements" in cfg:
        yield (f"steps.{step}.requirements: needs source_dir + code (framework processing); a "
               "code_path script runs as it is, in an image that holds its packages")


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """Each output's name becomes a folder of the run's artifacts; each output is a folder
    of its own in the container, apart from the inputs' (read-only mounts, the settings, the
    SDK's code): Docker refuses one mount in another's place or inside a read-only one."""
    sources: dict[str, str] = {}
    inputs = {posixpath.normpath(cfg.get("input_destination", INPUTS)), INPUTS}
    for name in sorted(cfg.get("outputs") or {}):
        if problem := name_problem("data", name):
            yield f"steps.{step}.outputs: output name {problem}"
        source = posixpath.normpath(cfg["outputs"][name]["source"])
        at = f"steps.{step}.outputs.{name}.source"
        if source in sources:  # one folder of the container is one output (one mount)
            yield f"{at}: {source} is output {sources[source]}'s already"
        for folder in sorted(inputs):
            if _overlap(source, folder):
                yield f"{at}: {source} overlaps the inputs' folder {folder}"
        sources.setdefault(source, name)


def _overlap(a: str, b: str) -> bool:
    """Whether one of two container folders is, or lies in, the other."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


SCHEMA: dict[str, Any] = {
    # one script (code_path: ScriptProcessor) or a source dir (source_dir + code:
    # FrameworkProcessor), exactly one of the two: see form
    "required": ["outputs"],
    "properties": {
        **COMMON_STEP_KEYS,
        "environment": environment(256),  # CreateProcessingJob's limits
        "instance_count": {**COMMON_STEP_KEYS["instance_count"], "maximum": 100},
        "code_path": PATH,
        "source_dir": PATH,
        "code": PATH,
        "requirements": PATH,
        "settings": SETTINGS,
        "command": {**CONTAINER_ARGS, "minItems": 1},
        "arguments": CONTAINER_ARGS,
        "input_destination": CONTAINER_PATH,
        "outputs": {  # names: naming.NAME_RULES["data"]
            "type": "object",
            "minProperties": 1,
            "maxProperties": 10,
            "additionalProperties": {
                "type": "object",
                "required": ["source"],
                "additionalProperties": False,
                "properties": {"source": CONTAINER_PATH},
            },
        },
    },
}

def usage(description: Mapping[str, Any]) -> dict[str, Any]:
    """The job's run time, its instances and their billable seconds."""
    resources = description.get("ProcessingResources")
    cluster = resources.get("ClusterConfig") if isinstance(resources, Mapping) else None
    return job_usage(elapsed(description, "ProcessingStartTime", "ProcessingEndTime"),
                     instances_of(cluster.get("InstanceCount")
                                  if isinstance(cluster, Mapping) else None))


KIND = JobKind(
    name="processing", decorator="sm_processing",
    api=Api.of_job("ProcessingJob"),
    schema=SCHEMA, image_scope="processing", form=form, check=check,
    spec=spec, submit=submit, outputs=outputs, shared_outputs=shared_outputs,
    settings="always", runtime_limited=True, usage=usage,
    assets=lambda cfg: sorted(cfg.get("outputs") or {}),
)
