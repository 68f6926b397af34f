"""Every correction smtask makes to the SageMaker Python SDK's own functions, in one place.

Each names the SDK attribute it replaces and why, and was checked against the SDK versions in
:data:`CHECKED_AGAINST`. A correction is a swap of one attribute, either made while smtask
runs a job and undone after (:func:`corrected`), or installed once per process, wrapping the
SDK's function (:func:`install`). ``tests/test_sessions.py`` pins every target, so an SDK that
moves or renames one fails loudly there rather than silently losing the correction. The
replacements themselves live with what they know (local mode's in ``smtask.local``, the
trainer's in the training kind). Overrides in smtask's own subclasses of SDK classes (the
processors) are documented where they are written.

Imports no SDK module until a correction is applied.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The modules smtask imports only when a job runs (inside its functions), outside smtask:
# the SDK's for each kind and both modes, botocore's and the provider's AWS hook. A worker's
# preload imports them all (smtask.preload); an in-process run imports the SDK's while its
# first container runs (smtask.local.output). tests/test_preload.py checks the list against
# every such import in smtask's sources.
JOB_IMPORTS = (
    "airflow.providers.amazon.aws.hooks.base_aws",
    "airflow.providers.amazon.aws.hooks.s3",
    "boto3",
    "botocore.exceptions",
    "sagemaker.core.helper.session_helper",
    "sagemaker.core.image_uris",
    "sagemaker.core.local",
    "sagemaker.core.local.image",
    "sagemaker.core.local.local_session",
    "sagemaker.core.local.utils",
    "sagemaker.core.parameter",
    "sagemaker.core.processing",
    "sagemaker.core.shapes",
    "sagemaker.core.training.configs",
    "sagemaker.core.transformer",
    "sagemaker.core.utils.install_requirements",
    "sagemaker.core.utils.utils",
    "sagemaker.train.model_trainer",
    "sagemaker.train.tuner",
)

CHECKED_AGAINST = "sagemaker 3.27.0 (sagemaker-core 2.27.0, sagemaker-train 1.27.0)"


@dataclass(frozen=True)
class Correction:
    target: str  # "module:attribute.path"
    reason: str


CORRECTIONS: dict[str, Correction] = {c.target: c for c in (
    Correction("sagemaker.core.telemetry.telemetry_logging:_send_telemetry_request",
               "sends an HTTPS request to an amazonaws.com host after every call it "
               "decorates, local mode included"),
    Correction("sagemaker.core.telemetry.telemetry_logging:_telemetry_msg_shown",
               "its opt-out notice is moot once telemetry is off"),
    Correction("sagemaker.train.model_trainer:_get_unique_name",
               "ModelTrainer appends a timestamp to every job name; a task's must be its own"),
    Correction("sagemaker.train.defaults:TrainDefaults.get_role",
               "ModelTrainer checks the role with IAM calls on every job"),
    Correction("sagemaker.train.model_trainer:ModelTrainer._resolve_staging_bucket",
               "ModelTrainer checks with IAM that it may write the default bucket"),
    Correction("sagemaker.train.model_trainer:ModelTrainer.create_input_data_channel",
               "uploads the source dir and its drivers again for every job, and cannot set a "
               "channel's content type, input mode or distribution"),
    Correction("sagemaker.train.tuner:HyperparameterTuner._build_training_job_definition",
               "builds its trials' ResourceConfig anew, without the trainer's "
               "keep_alive_period_in_seconds (a warm pool)"),
    Correction("sagemaker.core.local.image:_SageMakerContainer._generate_compose_file",
               "a bridge network, published ports, writable mounts of the user's files, and "
               "compose interpolation of the worker's environment into the job"),
    Correction("sagemaker.train.local.local_container:_LocalContainer._generate_compose_file",
               "as the processing and serving generator"),
    Correction("sagemaker.core.local.image:_SageMakerContainer._get_compose_cmd_prefix",
               "docker-compose takes 0.5-0.9 s to start and holds a job's unprinted output in "
               "memory (1.3 GB for 600 MB printed): smtask.local.compose runs the file"),
    Correction("sagemaker.train.local.local_container:_LocalContainer._get_compose_cmd_prefix",
               "as for processing and serving"),
    Correction("sagemaker.core.local.image:_SageMakerContainer._prepare_processing_volumes",
               "mounts a single-file input's whole folder"),
    Correction("sagemaker.core.local.image:_stream_output",
               "prints to stdout and fails without the container's own error"),
    Correction("sagemaker.train.local.local_container:_stream_output",
               "as for processing and serving"),
    Correction("sagemaker.core.local.entities:_wait_for_serving_container",
               "polls /ping every 5 s, and waits 120 s for a server that has exited"),
    Correction("sagemaker.core.local.data:RecordIOSplitter.split",
               "SDK v3's local RecordIO splitter only raises"),
    Correction("sagemaker.core.local.utils:move_to_destination",
               "copies a failed processing job's outputs, in place, into their final folder"),
    Correction("sagemaker.core.local.entities:move_to_destination",
               "as for processing (a batch transform's predictions)"),
    Correction("sagemaker.core.local.local_session:LocalSagemakerRuntimeClient.invoke_endpoint",
               "a batch transform writes a model server's error answer as predictions"),
    Correction("sagemaker.core.local.local_session:get_docker_host",
               "runs `docker context inspect` on every request to a local server"),
    Correction("sagemaker.train.local.local_container:create_tar_file",
               "packs a local model.tar.gz at gzip level 9: 11 times slower than gzip's 6"),
)}


def resolve(target: str) -> tuple[Any, str]:
    """The object that holds ``target``'s attribute, and the attribute's name."""
    module, _, path = target.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _checked(target: str) -> tuple[Any, str]:
    if target not in CORRECTIONS:
        raise KeyError(f"{target} is not a documented SDK correction (smtask.sdk.CORRECTIONS)")
    return resolve(target)


@contextlib.contextmanager
def corrected(replacements: dict[str, Any]) -> Iterator[None]:
    """Each documented target (``module:attribute``) replaced while inside, then restored."""
    with replaced(*((*_checked(target), value) for target, value in replacements.items())):
        yield


def install(target: str, wrap: Callable[[Any], Any]) -> None:
    """Replace a documented target, once per process, by ``wrap(<the SDK's function>)``; the
    replacement's ``__wrapped__`` is the SDK's own."""
    owner, name = _checked(target)
    current = owner.__dict__.get(name, getattr(owner, name))
    if getattr(current, "__smtask__", False):
        return
    replacement = wrap(getattr(owner, name))
    replacement.__smtask__ = True
    with contextlib.suppress(AttributeError, TypeError):
        replacement.__wrapped__ = getattr(owner, name)
    setattr(owner, name, replacement)


_ABSENT = object()  # an attribute the object only inherits


@contextlib.contextmanager
def replaced(*swaps: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``obj.name = value`` for each swap while inside; restore the originals after, as
    they were in ``obj`` itself (a class's staticmethod stays one; an inherited attribute is
    removed again), as ``unittest.mock.patch`` does."""
    originals = [(obj, name, vars(obj).get(name, _ABSENT)) for obj, name, _ in swaps]
    for obj, name, value in swaps:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in reversed(originals):
            if value is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


@contextlib.contextmanager
def quiet_imports(freeze: bool = True) -> Iterator[None]:
    """For a block that imports many modules (the SDK's: 1 s): Python's cyclic garbage
    collector paused inside, and with ``freeze`` the heap frozen after (``gc.freeze``: all it
    holds then, the block's imports among it), so that no later collection walks it again.
    Python runs a full collection each time the objects it tracks grow by a quarter: nine in
    one ``smtask run`` of the example, 0.04 to 0.37 s each, 1.5 s in all, which found next to
    nothing to free. What an import makes (modules, classes, functions) lives as long as the
    process; a frozen object is never freed, so freeze only where nothing else is alive that
    may be dropped later (a user's data)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def models_built_on_use() -> Iterator[None]:
    """While inside, each pydantic model a module defines builds its validator on first use
    (pydantic's ``defer_build``), not when it is defined. The SDK's import defines about 960
    (every shape of SageMaker's API), 0.3 s of a task's 1 s of SDK import, and a job uses a
    few dozen. Nothing else changes: a model validates as it would have. Where pydantic keeps
    its defaults elsewhere (another version), models build as they are defined."""
    try:
        from pydantic._internal._config import config_defaults as defaults
    except ImportError:
        defaults = {}
    if defaults.get("defer_build") is not False:
        yield
        return
    defaults["defer_build"] = True
    try:
        yield
    finally:
        defaults["defer_build"] = False


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """Around a task's import of the SDK: :func:`quiet_imports` and
    :func:`models_built_on_use` (1 s of a task's start became 0.26 s here). Only a task
    process's first import freezes the heap after it: nothing of the user's is alive yet.
    In an in-process run (``smtask run``, ``SMTASK_IN_PROCESS``) an earlier task's data may
    be, and once frozen it would stay in memory after the task drops it."""
    first = "sagemaker.core" not in sys.modules and os.environ.get("SMTASK_IN_PROCESS") != "1"
    with quiet_imports(freeze=first), models_built_on_use():
        yield


def build_models(prefix: str = "sagemaker.") -> int:
    """Build every model :func:`models_built_on_use` left unbuilt in the modules under
    ``prefix``, as their import would have; how many were built."""
    built = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix):
            continue
        for value in list(vars(module).values()):
            if not isinstance(value, type) or value.__module__ != name or \
                    value.__dict__.get("__pydantic_complete__") is not False:
                continue
            with contextlib.suppress(Exception):  # its first use says what is wrong
                value.model_rebuild()  # type: ignore[attr-defined]  # a pydantic model
                built += 1
    return built


def telemetry_off() -> dict[str, Any]:
    """The corrections that keep the SDK from sending telemetry."""
    return {"sagemaker.core.telemetry.telemetry_logging:_send_telemetry_request":
            lambda *args, **kwargs: None,
            "sagemaker.core.telemetry.telemetry_logging:_telemetry_msg_shown": True}
