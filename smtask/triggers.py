"""The deferrable wait: a trigger that polls a SageMaker job until it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from smtask import waiting


class SageMakerJobTrigger(BaseTrigger):
    """Polls ``Describe<Kind>Job`` (short first poll, doubling to ``poll_max``) and fires one
    event when the job ends or ``timeout`` passes: ``{"status", "reason", "description",
    "job"}``, where description holds only the JSON the task needs (no datetimes) and job is
    the task's job spec, handed back for the task to resume with."""

    def __init__(self, *, kind: str, job: dict[str, Any], aws_conn_id: str | None,
                 region_name: str | None = None, timeout: float | None = None,
                 poll_max: float = 30.0, started: float | None = None) -> None:
        super().__init__()
        self.kind, self.job, self.job_name, self.aws_conn_id = kind, job, job["job_name"], aws_conn_id
        self.region_name, self.timeout, self.poll_max = region_name, timeout, poll_max
        self.started = started if started is not None else time.time()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "kind": self.kind, "job": self.job, "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name, "timeout": self.timeout,
            "poll_max": self.poll_max, "started": self.started}

    def _client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        return AwsBaseHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name,
                           client_type="sagemaker").get_conn()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client, delay = await asyncio.to_thread(self._client), 0.2
        while True:
            description = await asyncio.to_thread(waiting.find, client, self.kind, self.job_name)
            if description is None:
                yield TriggerEvent({"status": "Missing", "description": {}, "job": self.job,
                                    "reason": "the job disappeared while waiting for it"})
                return
            status = waiting.status(self.kind, description)
            if status in waiting.DONE or status in waiting.FAILED:
                yield TriggerEvent({
                    "status": status, "job": self.job,
                    "reason": description.get("FailureReason") or f"the job ended {status}",
                    "description": {k: description[k] for k in ("ModelArtifacts",)
                                    if k in description}})
                return
            if self.timeout is not None and time.time() - self.started >= self.timeout:
                yield TriggerEvent({"status": "Timeout", "description": {}, "job": self.job,
                                    "reason": f"still {status} after the {self.timeout:g} s "
                                              "wait_timeout_seconds; the job was asked to stop"})
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_max)
