"""Training: a ``ModelTrainer`` job over the step's source dir, or a built-in algorithm's image
(no source dir); channels come from the function."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from smtask import sdk
from smtask.images import framework_of
from smtask.kind import Api, JobKind
from smtask.kinds.common import (
    SETTINGS_FILE,
    SOURCE_IGNORED,
    StepContext,
    check_uri_map,
    content_prefix,
    elapsed,
    instances_of,
    job_usage,
    model_code,
    prepare_output,
    remote,
    seconds_of,
    settings_source,
    upload_once,
)
from smtask.naming import key_path, quoted
from smtask.params.schemas import (
    COMMON_STEP_KEYS,
    CONTAINER_PATH,
    MIME_TYPE,
    ONE_LINE,
    ONE_LINE_RULE,
    PATH,
    POSITIVE,
    SETTINGS,
    SETTINGS_ENV,
    environment,
)
from smtask.paths import local_path
from smtask.schema import RULE

SETTINGS_CHANNEL = "config"


def spec(ctx: StepContext, returned: Any, upstream: Any = ()) -> dict[str, Any]:
    """``returned`` is ``{channel name: URI}``; each lands in ``/opt/ml/input/data/<name>``."""
    cfg = ctx.cfg
    job = ctx.common("ml.m5.large")
    channels = check_uri_map(ctx.step, "channel", returned, (SETTINGS_CHANNEL,))
    if "source_dir" not in cfg and ctx.local and job["algorithm"]:
        # the local image stands in for AWS's algorithm image: tell it which one
        job["environment"]["SMTASK_ALGORITHM"] = job["algorithm"]
    # a script's settings; an image without user code (a built-in algorithm) would refuse
    # a channel it does not know
    scripted = bool(cfg.get("source_dir"))
    if scripted:
        job["environment"][SETTINGS_ENV] = f"/opt/ml/input/data/{SETTINGS_CHANNEL}/{SETTINGS_FILE}"
    return {
        **job,
        "source_dir": ctx.path(cfg["source_dir"]) if "source_dir" in cfg else None,
        "entry_script": cfg.get("entry_script"),
        "requirements": cfg.get("requirements"),
        "hyperparameters": hyperparameter_strings(cfg.get("hyperparameters", {})),
        "channels": channels,
        "channel_settings": channel_settings(ctx.step, cfg.get("channels", {}), channels),
        "settings": ctx.settings if scripted else None,
        "output_path": ctx.prefix,
        "validate_role": bool(ctx.params.get("validate_role")),
        # what a model of this training serves with: its script's code (SAGEMAKER_PROGRAM),
        # and the AWS framework image it ran on (local mode serves with that image's defaults)
        "model_code": model_code(job, ctx.path(cfg["source_dir"]), cfg["entry_script"])
        if scripted else None,
        "framework": framework_of(ctx.given_image()[1]),
        # SageMaker's cost levers (README: "Cost"): spot capacity, its checkpoints, a warm pool
        "spot": bool(cfg.get("use_spot_instances")),
        "max_wait_seconds": cfg.get("max_wait_seconds"),
        "checkpoints": checkpoints(ctx),
        "keep_alive_seconds": cfg.get("keep_alive_period_seconds"),
    }


CHECKPOINT_PATH = "/opt/ml/checkpoints"  # SageMaker's default CheckpointConfig.LocalPath


def checkpoint_folder(cfg: Mapping[str, Any]) -> str | None:
    """The container folder a step's job writes its checkpoints in, or None when it keeps
    none: on by default for a spot job; ``{}`` is on, at the default folder."""
    setting = cfg.get("checkpoints", bool(cfg.get("use_spot_instances")))
    if setting is False or setting is None:
        return None
    return str(setting.get("local_path", CHECKPOINT_PATH)) if isinstance(setting, dict) \
        else CHECKPOINT_PATH


def checkpoints(ctx: StepContext) -> dict[str, str] | None:
    """Where the job's checkpoints go, ``<the step's prefix>/checkpoints`` (one folder for the
    task instance: every attempt, a retry's or a spot restart's, resumes from it), and the
    container folder they are written in (:func:`checkpoint_folder`)."""
    local = checkpoint_folder(ctx.cfg)
    return None if local is None else {"uri": f"{ctx.prefix}/checkpoints", "local_path": local}


def hyperparameter_strings(hyperparameters: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker passes them: strings (``3``, ``0.1``, ``true``)."""
    return {name: value if isinstance(value, str) else json.dumps(value)
            for name, value in hyperparameters.items()}


def channel_settings(step: str, settings: dict[str, Any], channels: dict[str, str]
                     ) -> dict[str, dict[str, str]]:
    """The step's ``channels`` settings, each for a channel the function returned."""
    unknown = sorted(set(settings) - set(channels))
    if unknown:
        raise TypeError(f"step '{step}': steps.{step}.channels names {unknown}, which the "
                        f"function did not return (it returned {sorted(channels)})")
    return {name: dict(settings[name]) for name in channels if settings.get(name)}


def submit(job: dict[str, Any], session: Any) -> dict[str, Any] | None:
    """Start the job. Local mode runs it to the end and returns its description: the SDK's
    local ModelTrainer keeps no job to describe."""
    with trainer_patches(job, session):
        if not session.local_mode:
            trainer(job, session).train(input_data_config=channels(job, session), wait=False,
                                        logs=False)
            # the SDK described the job right after creating it (sessions.connection_session)
            from smtask.sessions import described

            return described(session, job["job_name"])
        say_what_local_mode_skips(job, session)
        return train_locally(job, session)


def say_what_local_mode_skips(job: dict[str, Any], session: Any) -> None:
    """The cost levers local mode cannot honour, said before any container starts: its
    containers run on this machine (no spot capacity to wait for or lose, no warm pool)."""
    from smtask.local.state import of

    skipped = [key for key, on in (("use_spot_instances", job.get("spot")),
                                   ("max_wait_seconds", job.get("max_wait_seconds")),
                                   ("keep_alive_period_seconds", job.get("keep_alive_seconds")))
               if on]
    if skipped:
        of(session).log(f"smtask: local mode runs the job on this machine: {', '.join(skipped)} "
                        "take effect on SageMaker only (no spot capacity, no warm pool here)"
                        + ("; its checkpoints are kept as SageMaker keeps them"
                           if job.get("checkpoints") else ""))


@contextlib.contextmanager
def trainer_patches(job: dict[str, Any], session: Any) -> Iterator[None]:
    """What the SDK's ModelTrainer needs corrected while jobs are built and run (process-wide:
    enter it once, around every job built from the same step, threads included; see
    smtask.sdk for why each)."""
    from sagemaker.train.model_trainer import ModelTrainer

    # sagemaker mode: the source dir's upload starts now, beside the SDK building the job
    # (and uploading its drivers after it), instead of inside it (bench_cloud.py: a third of
    # a first run's time before the create call); with the SDK's ignore patterns for it
    pool = ThreadPoolExecutor(1, thread_name_prefix="smtask-upload")
    early: dict[tuple[str, tuple[str, ...]], Future[str]] = {}
    if job.get("source_dir") and not session.local_mode:
        early[(os.path.realpath(job["source_dir"]), SOURCE_IGNORED)] = pool.submit(
            upload_once, session, job["source_dir"], content_prefix(job, "code"), SOURCE_IGNORED)
    corrections: dict[str, Any] = {
        # the task's job name stays deterministic
        "sagemaker.train.model_trainer:_get_unique_name": lambda base, *_a, **_k: base,
        "sagemaker.train.model_trainer:ModelTrainer.create_input_data_channel": _channel(
            ModelTrainer.create_input_data_channel, session, job.get("channel_settings") or {},
            None if session.local_mode else content_prefix(job, "code"), early),
    }
    if not job["validate_role"]:
        # The role is a full ARN (the params say so) and staging goes under the run's
        # prefix: no IAM call, no permission a task should not need. ``validate_role`` turns
        # the SDK's checks back on.
        corrections.update({
            "sagemaker.train.defaults:TrainDefaults.get_role":
                staticmethod(lambda role, **_: role),
            "sagemaker.train.model_trainer:ModelTrainer._resolve_staging_bucket":
                lambda self: (self.sagemaker_session.default_bucket(), None)})
    try:
        with sdk.corrected(corrections):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def channels(job: dict[str, Any], session: Any) -> list[Any]:
    """The job's channels as the SDK takes them (local mode: host paths; sagemaker mode: a
    local path uploaded once per content), and the ``config`` channel of the script's
    settings."""
    from sagemaker.core.training.configs import InputData

    local = session.local_mode
    # local mode reads an s3:// channel through local.s3_endpoint, as the SDK downloads it
    found = [InputData(channel_name=name, data_source=(
                 str(local_path(uri)) if urlparse(uri).scheme == "file" else uri) if local
             else remote(session, uri, content_prefix(job, "data")))
             for name, uri in job["channels"].items()]
    if job.get("settings") is not None:
        found.append(InputData(channel_name=SETTINGS_CHANNEL,
                               data_source=settings_source(job, session)))
    return found


def trainer(job: dict[str, Any], session: Any) -> Any:
    """The job's ``ModelTrainer`` (inside :func:`trainer_patches`), named ``job["job_name"]``;
    in local mode it runs in ``<session scratch>/<job name>``."""
    from sagemaker.core.shapes import CheckpointConfig, OutputDataConfig
    from sagemaker.core.training.configs import Compute, SourceCode, StoppingCondition
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    local = session.local_mode
    environment = dict(job["environment"])
    if local and job.get("requirements"):
        from smtask.local import install_from_wheels

        environment.update(install_from_wheels(
            session, Path(job["source_dir"]) / job["requirements"]))
    where = ({"local_container_root": str(local_root(job, session))} if local else {
        # model and uploaded source dir under the run's prefix, not the default-bucket root
        "output_data_config": OutputDataConfig(s3_output_path=job["output_path"]),
        "input_s3_key_prefix": urlparse(job["output_path"]).path.strip("/"),
    })
    if job.get("checkpoints") and not local:  # local mode mounts the folder (train_locally)
        where["checkpoint_config"] = CheckpointConfig(s3_uri=job["checkpoints"]["uri"],
                                                      local_path=job["checkpoints"]["local_path"])
    # the cost levers, only when set: the SDK would send an explicit null
    compute = {key: value for key, value in (
        ("enable_managed_spot_training", job.get("spot") or None),
        ("keep_alive_period_in_seconds", job.get("keep_alive_seconds"))) if value is not None}
    waits = {"max_wait_time_in_seconds": job["max_wait_seconds"]} \
        if job.get("max_wait_seconds") else {}
    return ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER if local else Mode.SAGEMAKER_TRAINING_JOB,
        sagemaker_session=session,
        role=None if local else job["role"],
        training_image=job["image"],
        base_job_name=job["job_name"],
        # no source code: the image's own `train` (a built-in algorithm) runs
        source_code=SourceCode(source_dir=job["source_dir"], entry_script=job["entry_script"],
                               requirements=job["requirements"]) if job["source_dir"] else None,
        compute=Compute(instance_type=job["instance_type"], instance_count=job["instance_count"],
                        volume_size_in_gb=job["volume_size_gb"], **compute),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=job["max_runtime_seconds"],
                                             **waits),
        hyperparameters=job["hyperparameters"],
        environment=environment,
        tags=[{"key": k, "value": v} for k, v in job["tags"].items()],
        **where,
    )


def local_root(job: dict[str, Any], session: Any) -> Path:
    return Path(session.config["local"]["container_root"]) / job["job_name"]


def train_locally(job: dict[str, Any], session: Any) -> dict[str, Any]:
    """Run the job in a local container to its end (inside :func:`trainer_patches`); its
    model goes to ``<output_path>/model.tar.gz``. Returns the job's description."""
    root = local_root(job, session)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _checkpoints_mounted(job, session, root):
            trainer(job, session).train(input_data_config=channels(job, session), wait=True,
                                        logs=False)
        model_uri = _keep_artifacts(root, job, session)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"TrainingJobStatus": "Completed", "ModelArtifacts": {"S3ModelArtifacts": model_uri}}


@contextlib.contextmanager
def _checkpoints_mounted(job: dict[str, Any], session: Any, root: Path) -> Iterator[None]:
    """Local mode: the job's checkpoint folder (under the artifacts root) mounted writable at
    its ``local_path``, as SageMaker syncs that folder with the checkpoint URI while the job
    runs: what an attempt wrote is there for the next one, however this one ended. Only
    regular files and folders are left in it afterwards."""
    if not job.get("checkpoints"):
        yield
        return
    from smtask.local.output import keep_only_files
    from smtask.local.state import of

    # a file:// URI: check() refuses local checkpoints under s3:// artifacts
    state = of(session)
    folder = local_path(job["checkpoints"]["uri"], job["artifacts"])
    if job["checkpoints"].get("fresh") and folder.is_dir():  # a rerun of a completed job
        import shutil

        shutil.rmtree(folder)
        state.log(f"smtask: removed the checkpoints in {folder} that the completed job this "
                  "rerun replaces left")
    folder.mkdir(parents=True, exist_ok=True)
    keep_only_files(folder, state.log)  # what a killed attempt left, before this one sees it
    found = sum(1 for p in folder.rglob("*") if p.is_file())
    state.log(f"smtask: checkpoints in {folder} (mounted at {job['checkpoints']['local_path']}"
              + (f"; {found} file(s) from an earlier attempt)" if found else ")"))
    state.job_mounts[str(root)] = [(str(folder), job["checkpoints"]["local_path"])]
    try:
        yield
    finally:
        state.job_mounts.pop(str(root), None)
        keep_only_files(folder, state.log)


# The host's compiled bytecode is no use in a job's container (its sources get new times on
# download, so Python compiles them again): left out of the SDK's drivers (10 of their 26
# files once pip or ./run compiled the SDK), which the SDK uploads with no ignore patterns.
DRIVERS_IGNORED = ("__pycache__",)


def _channel(create: Any, session: Any, settings: dict[str, dict[str, str]],
             prefix: str | None, early: Mapping[tuple[str, tuple[str, ...]], Future[str]]
             ) -> Any:
    """ModelTrainer's channel maker: a local folder (the source dir, with the SDK's
    ``ignore_patterns`` for it; the SDK's drivers, less :data:`DRIVERS_IGNORED`) uploaded once
    per content under ``prefix`` (sagemaker mode; ``early``: the uploads already started, by
    real path and ignore patterns), and each channel with the step's ``content_type``,
    ``input_mode`` and ``s3_data_distribution``."""
    from sagemaker.core.utils.utils import Unassigned

    def create_channel(self: Any, channel_name: str, data_source: Any, *args: Any,
                       **kwargs: Any) -> Any:
        if prefix is not None and isinstance(data_source, str) and os.path.exists(data_source):
            given = kwargs.get("ignore_patterns")
            ignored = tuple(given) if given is not None else DRIVERS_IGNORED
            started = early.get((os.path.realpath(data_source), ignored))
            data_source = started.result() if started is not None else \
                upload_once(session, data_source, prefix, ignored)
        channel = create(self, channel_name, data_source, *args, **kwargs)
        wanted = settings.get(channel_name, {})
        if "content_type" in wanted:
            channel.content_type = wanted["content_type"]
        if "input_mode" in wanted:
            channel.input_mode = wanted["input_mode"]
        s3 = channel.data_source.s3_data_source
        if "s3_data_distribution" in wanted and not isinstance(s3, Unassigned):
            s3.s3_data_distribution_type = wanted["s3_data_distribution"]
        return channel

    return create_channel


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """A training result: ``job_name``, ``model`` (model.tar.gz), ``image``, ``outputs``, the
    ``framework`` image it ran on, and for a script, ``code``: the ``program`` and the
    ``submit_directory`` (a sourcedir.tar.gz) a model of it serves with."""
    model_uri = description["ModelArtifacts"]["S3ModelArtifacts"]
    return {"job_name": job["job_name"], "model": model_uri, "image": job["image"],
            "outputs": {"model": model_uri}, **result_code(job)}


def result_code(job: dict[str, Any]) -> dict[str, Any]:
    """The serving part of a training (or tuning) result."""
    code = job.get("model_code")
    return {"framework": job.get("framework"),
            **({"code": {"program": code["program"], "submit_directory": code["submit_directory"]}}
               if code else {})}


def _keep_artifacts(root: Path, job: dict[str, Any], session: Any) -> str | None:
    """Local ModelTrainer leaves model.tar.gz (and output.tar.gz) in its container root: they
    are staged for the run's prefix, published once the job completed (smtask.local.stage)."""
    from smtask.local import stage

    prepare_output(job["output_path"], job["artifacts"])
    staged = {}
    for name, output in (("model.tar.gz", "model"), ("output.tar.gz", "output")):
        produced = root / "compressed_artifacts" / name
        if produced.exists():
            staged[name] = f"{job['output_path'].rstrip('/')}/{name}"
            stage(session, produced, staged[name], output)
    return staged.get("model.tar.gz")


# The SDK's training driver (ModelTrainer with source code, both modes) writes every
# hyperparameter into a shell file as ``export SM_HP_<NAME>='<value>'`` and sources it, quoting
# nothing: a quote in a value, or a name that is no shell name, would run as shell code.
DRIVER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """The cost levers' rules, and hyperparameters (and tuned ones) that the SDK's training
    driver cannot pass on safely."""
    yield from _cost_problems(step, cfg)
    if checkpoint_folder(cfg) and params.get("mode") == "local" and str(
            (params.get("local") or {}).get("artifacts", "")).startswith("s3://"):
        yield (f"steps.{step}.checkpoints: local mode keeps checkpoints under file:// artifacts "
               "only (local.artifacts is s3://); set checkpoints to false")
    if "source_dir" not in cfg:
        return  # a built-in algorithm reads hyperparameters.json: no shell on the way
    ranges = (cfg.get("tuning") or {}).get("ranges") or {}
    values = [(f"hyperparameters.{key_path(n)}", n, [v]) for n, v in
              (cfg.get("hyperparameters") or {}).items()]
    values += [(f"tuning.ranges.{key_path(n)}", n, r.get("values") or []) for n, r in ranges.items()]
    for where, name, given in values:
        if not DRIVER_NAME.fullmatch(name):
            yield (f"steps.{step}.{where}: a script's hyperparameter name is A-Z a-z 0-9 _ - "
                   "only (the SDK's training driver exports it as a shell variable)")
        elif any(isinstance(v, str) and "'" in v for v in given):
            yield (f"steps.{step}.{where}: a script's hyperparameter may not contain ' (the "
                   "SDK's training driver writes it between single quotes into a shell file)")


def _cost_problems(step: str, cfg: Mapping[str, Any]) -> Iterable[str]:
    """SageMaker's rules for spot training (CreateTrainingJob's), named before any job."""
    where, spot = f"steps.{step}", cfg.get("use_spot_instances")
    runtime = cfg.get("max_runtime_seconds", 86400)  # smtask's (and SageMaker's) default
    if spot and "max_wait_seconds" not in cfg:
        yield (f"{where}.use_spot_instances: needs max_wait_seconds (how long the job may wait "
               f"for spot capacity and run, at least max_runtime_seconds: {runtime})")
    elif "max_wait_seconds" in cfg and not spot:
        yield (f"{where}.max_wait_seconds: only with use_spot_instances (SageMaker takes "
               "MaxWaitTimeInSeconds for managed spot training only)")
    elif spot and cfg["max_wait_seconds"] < runtime:
        yield (f"{where}.max_wait_seconds: {cfg['max_wait_seconds']} is less than "
               f"max_runtime_seconds {runtime} (SageMaker's rule: the wait includes the run)")
    local_path = checkpoint_folder(cfg) or ""
    normal = posixpath.normpath(local_path) if local_path else ""
    taken = next((f for f in _SDK_FOLDERS if f"{normal}/".startswith(f + "/")
                  or f.startswith(normal + "/")), None) if normal else None
    if local_path and normal != local_path.rstrip("/"):
        yield (f"{where}.checkpoints.local_path: {quoted(local_path)} is not a plain path "
               f"(write {normal})")
    elif taken:
        yield (f"{where}.checkpoints.local_path: {local_path} overlaps {taken}, where the job "
               "reads its inputs or writes its model")


_SDK_FOLDERS = ("/opt/ml/input", "/opt/ml/model", "/opt/ml/output", "/opt/ml/code")
# a folder the container mounts (docker's -v host:container[:mode]): no colon, no control
# character; a path under /opt/ml/ without a .. segment
CHECKPOINT_FOLDER = {**CONTAINER_PATH, "pattern": "^/opt/ml/(?!(.*/)?[.][.](/|$))[A-Za-z0-9_./-]+$",
                     RULE: "is not a folder under /opt/ml/ of A-Z a-z 0-9 _ . - / (no .. segment)"}

SCHEMA: dict[str, Any] = {
    # without source_dir and entry_script the image is a built-in algorithm's
    "required": [],
    "dependencies": {"source_dir": ["entry_script"], "entry_script": ["source_dir"]},
    "properties": {
        **COMMON_STEP_KEYS,
        "environment": environment(512),  # CreateTrainingJob's limits
        "source_dir": PATH,
        "entry_script": PATH,
        "requirements": PATH,
        # per channel the function returns: how SageMaker hands it to the container
        "channels": {
            "type": "object",
            "maxProperties": 20,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "content_type": MIME_TYPE,
                    "input_mode": {"enum": ["File", "Pipe", "FastFile"]},
                    "s3_data_distribution": {"enum": ["FullyReplicated", "ShardedByS3Key"]},
                },
            },
        },
        "settings": SETTINGS,
        # the cost levers (README: "Cost"): spot capacity, its checkpoints, a warm pool
        "use_spot_instances": {"type": "boolean"},
        "max_wait_seconds": {**POSITIVE, "maximum": 2419200},  # SageMaker's 28 days
        "checkpoints": {"type": ["boolean", "object"], "additionalProperties": False,
                        "properties": {"local_path": CHECKPOINT_FOLDER}},
        "keep_alive_period_seconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "hyperparameters": {
            "type": "object",
            "maxProperties": 100,
            "propertyNames": {"maxLength": 256, "pattern": ONE_LINE, RULE: ONE_LINE_RULE},
            "additionalProperties": {"type": ["string", "number", "boolean"], "maxLength": 2500,
                                     "pattern": ONE_LINE, RULE: ONE_LINE_RULE},
        },
    },
}

def usage(description: Mapping[str, Any]) -> dict[str, Any]:
    """SageMaker's own figures: ``TrainingTimeInSeconds`` and ``BillableTimeInSeconds`` (per
    instance; a spot job's are fewer: its savings, as the SDK prints them), else the job's
    start to its end."""
    seconds = seconds_of(description.get("TrainingTimeInSeconds"))
    if seconds is None:
        seconds = elapsed(description, "TrainingStartTime", "TrainingEndTime")
    billable = seconds_of(description.get("BillableTimeInSeconds"))
    resources = description.get("ResourceConfig")
    resources = resources if isinstance(resources, Mapping) else {}
    used = job_usage(seconds, instances_of(resources.get("InstanceCount"),
                                           resources.get("InstanceGroups")), billable)
    if used and description.get("EnableManagedSpotTraining") is True:
        used["spot"] = True
        if billable is not None and seconds and billable <= seconds:
            used["spot_savings_percent"] = round(100 * (1 - billable / seconds), 1)
    return used


KIND = JobKind(
    name="training", decorator="sm_training",
    api=Api.of_job("TrainingJob", deleting=("Deleting",)),
    schema=SCHEMA, image_scope="training", check=check,
    spec=spec, submit=submit, outputs=outputs, event_keys=("ModelArtifacts",),
    algorithm_images=True, settings="script", runtime_limited=True, usage=usage,
    assets=lambda cfg: ("model",),
)
