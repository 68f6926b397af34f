"""The local session: the SDK's ``LocalSession``, corrected so that a job cannot hurt the
machine, with smtask's state (:class:`~smtask.local.state.LocalState`) on it as
``session.smtask``. On exit, however it comes (an error, a signal), its jobs' processes and
containers are stopped and its scratch folder deleted (a completed job's exited containers
beside the next task: ``containers.JANITOR``); orphans of killed processes are removed on
entry."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from smtask import clients, sdk
from smtask.errors import EngineUnreachable
from smtask.local import compose, serving, staging
from smtask.local.containers import JANITOR, remove_scratch, scratch_root, stop
from smtask.local.output import ContainerOutput, stream_output
from smtask.local.state import DEFAULT_REGION, OWNER_FILE, LocalState, Owner, of
from smtask.paths import artifacts_root


def corrections(session: Any) -> dict[str, Any]:
    """The SDK corrections a local session's jobs run under (see smtask.sdk for why)."""
    from sagemaker.core.local import local_session, utils

    state = of(session)
    stream = stream_output(state.output, session)
    move = staging.move_to_destination(utils.move_to_destination)
    runtime = local_session.LocalSagemakerRuntimeClient
    return {
        **sdk.telemetry_off(),
        "sagemaker.core.local.image:_stream_output": stream,
        "sagemaker.train.local.local_container:_stream_output": stream,
        "sagemaker.core.local.entities:_wait_for_serving_container":
            serving.wait_for_server(session, state.output),
        "sagemaker.core.local.data:RecordIOSplitter.split": serving.split_recordio,
        "sagemaker.core.local.utils:move_to_destination": move,
        "sagemaker.core.local.entities:move_to_destination": move,
        "sagemaker.core.local.local_session:LocalSagemakerRuntimeClient.invoke_endpoint":
            serving.answered_or_failed(runtime.invoke_endpoint, state.output),
        "sagemaker.core.local.local_session:get_docker_host": lambda: "localhost",
        "sagemaker.train.local.local_container:create_tar_file": staging.create_tar_file,
    }


@contextlib.contextmanager
def open_session(params: Mapping[str, Any], output: ContainerOutput, step: str = "",
                 warm_up: tuple[str, ...] = ()) -> Iterator[Any]:
    """A ``LocalSession`` whose jobs (of ``step``) run in Docker on this machine; ``warm_up``:
    modules to import while its first container runs (see :func:`output.warm_up`)."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    with sdk.importing():  # an in-process run builds its models in the warm-up (output)
        from sagemaker.core.local import LocalSession

    JANITOR.sweep()
    local = params.get("local") or {}
    # Static placeholder credentials: the SDK copies the session's credentials into every
    # container's environment, and file:// artifacts need none.
    boto = boto3.Session(region_name=params.get("region_name") or DEFAULT_REGION,
                         aws_access_key_id="smtask-local", aws_secret_access_key="smtask-local")
    clients.share_loader(boto)  # each task's session would read the services' models again
    compose.install()
    session_id = uuid.uuid4().hex
    state = LocalState(session_id=session_id, owner=Owner.current(),
                       scratch=scratch_root() / session_id, output=output,
                       artifacts=artifacts_root(params), step=step, warm_up=warm_up)
    state.scratch.mkdir(parents=True)
    made = False
    try:
        (state.scratch / OWNER_FILE).write_text(str(state.owner))
        with state.exit:
            session = LocalSession(boto_session=boto, s3_endpoint_url=local.get("s3_endpoint"),
                                   default_bucket="smtask-local")
            session.config = {"local": {"local_code": True,
                                        "container_root": str(state.scratch)}}
            session.smtask = state
            made, completed = True, False
            try:
                with sdk.corrected(corrections(session)):
                    yield session
                completed = not state.killed
            finally:
                state.closing = True  # a signal from here on must not cut the clean-up short
                staging.discard(session)  # what was not published is no result
                if completed:  # its containers have exited: removed beside the next task
                    JANITOR.later(functools.partial(_close, session, state.exit.pop_all()))
                else:
                    _close(session)
    finally:
        if not made:  # stopped (a signal) before the session was made: no container ran
            remove_scratch(state.scratch)


def _close(session: Any, held: contextlib.ExitStack | None = None) -> None:
    """Remove the session's containers and scratch folder, then let go of what it held (its
    serving port)."""
    state = of(session)
    with held or contextlib.nullcontext():
        try:
            stop(session)
        except EngineUnreachable as exc:
            # its containers may still run on the scratch folder: both stay for cleanup
            state.output.sink(f"smtask: {exc}; the job's scratch folder {state.scratch} is kept")
        else:
            remove_scratch(state.scratch)


def read_only_file(session: Any, name: str, text: str) -> Path:
    """A file of the session's own (e.g. a job's settings), mounted read-only into the job."""
    path = Path(tempfile.mkdtemp(dir=of(session).read_only)) / name
    path.write_text(text)
    return path


def kill(session: Any) -> list[str] | None:
    """Stop the session's jobs now, for a kill of the task: the ids of the containers removed,
    or None when the session is already removing them (a clean-up must not be cut short)."""
    state = of(session)
    if state.closing:
        return None
    state.killed = True  # the SDK may swallow the exception the kill raises
    return stop(session)


def killed(session: Any) -> bool:
    return of(session).killed


def scratch_of(session: Any) -> Path:
    """The session's scratch folder (a job's own copies go there)."""
    return of(session).scratch
