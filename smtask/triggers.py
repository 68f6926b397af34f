"""The deferrable wait: a trigger that polls a SageMaker job until it ends.

A triggerer runs every deferred task's trigger on one event loop, so nothing heavy is made
per trigger: each process keeps one SageMaker client per (connection, region), built once
in a thread, shared by all triggers and kept for the process's life (boto3 clients are
thread-safe), and every describe runs in one small thread pool shared by all triggers, never
on the loop. (The Amazon provider's own triggers use async clients, which need aiobotocore;
smtask does not depend on it.)
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from smtask import waiting
from smtask.kinds import by_name

# Threads for describes in one triggerer process; at most botocore's default connection
# pool (10), so no thread waits for a connection of the shared client.
THREADS = int(os.environ.get("SMTASK_TRIGGER_THREADS", "8"))

Key = tuple[str | None, str | None]  # (aws_conn_id, region_name)
# AWS refused the client's credentials (e.g. keys rotated in the connection): the client is
# dropped, so later triggers build a new one from the connection as it is now.
REFUSED = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
           "ExpiredTokenException", "InvalidSignatureException", "SignatureDoesNotMatch",
           "IncompleteSignature", "MissingAuthenticationToken", "AuthFailure"}

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_clients: dict[Key, Any] = {}  # the clients built
_building: dict[Key, Future[Any]] = {}  # builds under way, awaited by every trigger that asks


def _reset_after_fork() -> None:
    """A forked child has none of its parent's threads: it starts its own pool and clients."""
    global _lock, _pool, _clients, _building
    _lock, _pool, _clients, _building = threading.Lock(), None, {}, {}


os.register_at_fork(after_in_child=_reset_after_fork)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="smtask-trigger")
        return _pool


async def in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``fn(**kwargs)`` in the shared pool; the loop only awaits it."""
    return await asyncio.wrap_future(_executor().submit(functools.partial(fn, **kwargs)))


def _build(aws_conn_id: str | None, region_name: str | None) -> Any:
    from smtask.sessions import aws_hook

    return aws_hook(aws_conn_id, region_name).get_conn()


def _build_and_keep(key: Key) -> Any:
    """Builds the client (in the pool) and keeps it. The finished build is dropped either way,
    with what its waiters left on it; a failed one is tried again by the next trigger."""
    try:
        client = _build(*key)
        with _lock:
            _clients[key] = client
        return client
    finally:
        with _lock:
            _building.pop(key, None)


async def shared_client(aws_conn_id: str | None, region_name: str | None) -> Any:
    """The process's SageMaker client for the connection and region. The first caller
    starts building it in the pool; every caller until it is built awaits that one build."""
    key, pool = (aws_conn_id, region_name), _executor()
    with _lock:
        if key in _clients:
            return _clients[key]
        future = _building.get(key)
        if future is None:
            future = _building[key] = pool.submit(_build_and_keep, key)
    # shielded: a cancelled trigger must not cancel the build the others wait for
    return await asyncio.shield(asyncio.wrap_future(future))


def forget(aws_conn_id: str | None, region_name: str | None, client: Any) -> None:
    """Drops ``client`` from the cache, unless another has replaced it already."""
    with _lock:
        if _clients.get((aws_conn_id, region_name)) is client:
            del _clients[(aws_conn_id, region_name)]


class SageMakerJobTrigger(BaseTrigger):
    """Polls ``Describe<Kind>Job`` (short first poll, doubling to ``poll_max``) and fires one
    event when the job ends or ``timeout`` passes: ``{"status", "reason", "description",
    "job"}``, where description holds only the JSON the task needs (no datetimes) and job is
    the task's job spec, handed back for the task to resume with."""

    def __init__(self, *, kind: str, job: dict[str, Any], aws_conn_id: str | None,
                 region_name: str | None = None, timeout: float | None = None,
                 poll_max: float = 30.0, started: float | None = None,
                 if_killed: str = "auto") -> None:
        super().__init__()
        self.kind, self.job, self.job_name, self.aws_conn_id = kind, job, job["job_name"], aws_conn_id
        self.region_name, self.timeout, self.poll_max = region_name, timeout, poll_max
        self.started = started if started is not None else time.time()
        self.if_killed = if_killed  # the step's on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "kind": self.kind, "job": self.job, "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name, "timeout": self.timeout,
            "poll_max": self.poll_max, "started": self.started, "if_killed": self.if_killed}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        kind = by_name(self.kind)
        client, delay = await shared_client(self.aws_conn_id, self.region_name), 0.2
        while True:
            try:
                description = await waiting.afind(client, kind, self.job_name, run=in_thread)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in REFUSED:
                    forget(self.aws_conn_id, self.region_name, client)
                raise
            if description is None:
                yield TriggerEvent({"status": "Missing", "description": {}, "job": self.job,
                                    "reason": "the job disappeared while waiting for it"})
                return
            status = waiting.status(kind, description)
            if status in kind.api.done or status in kind.api.failed:
                yield TriggerEvent({
                    "status": status, "job": self.job,
                    "reason": waiting.ended(kind, description),
                    "description": {k: description[k] for k in kind.event_keys
                                    if k in description},
                    "usage": waiting.usage_of(kind, description, self.log.warning)})
                return
            if self.timeout is not None and time.time() - self.started >= self.timeout:
                yield TriggerEvent({"status": "Timeout", "description": {}, "job": self.job,
                                    "reason": f"still {status} after the {self.timeout:g} s "
                                              "wait_timeout_seconds; the job was asked to stop"})
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_max)

    async def on_kill(self) -> None:
        """Airflow's triggerer calls this only when a user marks the deferred task failed or
        succeeded, or clears it; not when the triggerer shuts down or the trigger moves to
        another triggerer. SageMaker is asked to stop the job, unless the step's ``on_kill``
        is ``leave``."""
        if self.if_killed == "leave":
            return
        client = await shared_client(self.aws_conn_id, self.region_name)
        await in_thread(waiting.stop, {"client": client, "kind": by_name(self.kind),
                                       "job_name": self.job_name})
