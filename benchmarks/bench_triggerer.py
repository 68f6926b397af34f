"""One triggerer under many deferred smtask tasks, for the trigger with shared clients against
the one it replaced (a client per trigger), measured in one run:

- the triggerer's RSS before the triggers start, at peak, and after they have all fired;
  then a second wave of as many triggers, to see whether what stayed is reused or grows;
- the longest event-loop stall (a watchdog coroutine sleeps 10 ms; its lateness), and how
  much of it is Python's full garbage collection (``gc.callbacks``) rather than a trigger;
- the time from "release" (every job flipped to Completed in moto) until every trigger has
  fired its event.

How it runs. A moto server (``ThreadedMotoServer`` on 127.0.0.1, in a process of its own,
so its work and memory are not the triggerer's) holds the training jobs InProgress, created
directly in its backend. A triggerer process runs the triggers on one asyncio loop with
Airflow's own ``TriggerRunner`` code (``create_triggers``: serialize, encrypt, decrypt,
construct; ``run_trigger`` with its greenback portal; ``cleanup_finished_triggers``), taking
at most ``max_trigger_to_select_per_loop`` (50) new triggers a second as Airflow's
supervisor hands them over; it is not Airflow's full ``TriggererJobRunner``: no supervisor
process, database or comms. The connection comes from ``AIRFLOW_CONN_AWS_DEFAULT``. Once moto
has answered 5 describes for every job of a wave (each trigger has its client and is near
``poll_max``, 5 s here), that wave's jobs flip to Completed: each trigger learns it at its
next poll, so "release -> all fired" is at most about poll_max plus the time to get through
the describes. "Memory returned": the first wave left at most 50 MB (the shared client is
~20 MB, the rest allocator slack) or a quarter of its growth, and the second added <= 10 MB.

The old trigger (a copy of the class this change replaced, below) builds a ~20 MB client per
trigger: 1,000 of them would need ~20 GB, so it runs at the baseline N (100); the new one runs
at that N too, for the ratios, and at N (1,000). About 3.5 minutes on 2 cores. Stalls are
wall-clock: on a machine busy with other work they include the OS's preemption too.
Usage: .venv/bin/python benchmarks/bench_triggerer.py [--n 1000] [--baseline-n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from children import end

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT, REGION = "123456789012", "us-east-1"
POLL_MAX = 5.0
POLLS_BEFORE_RELEASE = 5
AFTER_WAIT = 2.0  # seconds between the last event and the "after" RSS


# --- the old trigger, as it was before this change (a client per trigger) -------------------

def old_trigger_class() -> type:
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    from smtask import waiting

    class OldSageMakerJobTrigger(BaseTrigger):
        def __init__(self, *, kind: str, job: dict[str, Any], aws_conn_id: str | None,
                     region_name: str | None = None, timeout: float | None = None,
                     poll_max: float = 30.0, started: float | None = None) -> None:
            super().__init__()
            self.kind, self.job, self.job_name = kind, job, job["job_name"]
            self.aws_conn_id = aws_conn_id
            self.region_name, self.timeout, self.poll_max = region_name, timeout, poll_max
            self.started = started if started is not None else time.time()

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return f"{__name__}.OldSageMakerJobTrigger", {
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
                description = await asyncio.to_thread(waiting.find, client, self.kind,
                                                      self.job_name)
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

    return OldSageMakerJobTrigger


# --- the moto process --------------------------------------------------------------------------

def serve_moto() -> None:
    """Prints its endpoint, then answers one line per command on stdin:
    ``create PREFIX N`` (N training jobs InProgress), ``polls PREFIX`` (the fewest describes
    any of those jobs has had), ``release PREFIX`` (all Completed; answers the time)."""
    from moto.sagemaker.models import SageMakerModelBackend, sagemaker_backends
    from moto.server import ThreadedMotoServer

    described: collections.Counter[str] = collections.Counter()
    describe = SageMakerModelBackend.describe_training_job

    def counted(self: Any, training_job_name: str) -> Any:
        described[training_job_name] += 1
        return describe(self, training_job_name)

    SageMakerModelBackend.describe_training_job = counted  # type: ignore[method-assign]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"http://{host}:{port}", flush=True)
    backend = sagemaker_backends[ACCOUNT][REGION]
    jobs: dict[str, list[Any]] = {}
    for line in sys.stdin:
        command, prefix, *rest = line.split()
        if command == "create":
            jobs[prefix] = []
            for i in range(int(rest[0])):
                job = backend.create_training_job(
                    training_job_name=f"{prefix}-{i}", hyper_parameters={},
                    algorithm_specification={"TrainingImage": "bench:1",
                                             "TrainingInputMode": "File"},
                    role_arn=f"arn:aws:iam::{ACCOUNT}:role/bench", input_data_config=[],
                    output_data_config={"S3OutputPath": "s3://bench/out"},
                    resource_config={"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                     "VolumeSizeInGB": 30},
                    vpc_config={}, stopping_condition={"MaxRuntimeInSeconds": 3600}, tags=[],
                    enable_network_isolation=False,
                    enable_inter_container_traffic_encryption=False,
                    enable_managed_spot_training=False, checkpoint_config={},
                    debug_hook_config={}, debug_rule_configurations=[],
                    tensor_board_output_config={}, experiment_config={})
                job.training_job_status, job.secondary_status = "InProgress", "Training"
                jobs[prefix].append(job)
            print("ok", flush=True)
        elif command == "polls":
            print(min(described[job.training_job_name] for job in jobs[prefix]), flush=True)
        elif command == "release":
            for job in jobs[prefix]:
                job.training_job_status, job.secondary_status = "Completed", "Completed"
            print(time.time(), flush=True)
    server.stop()


# --- the triggerer process ---------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_triggerer(impl: str, n: int, prefix: str) -> None:
    """Runs two waves of ``n`` triggers of ``impl`` (old or new) on one loop, each to its
    events; prints the figures as JSON."""
    import logging

    import structlog
    from airflow.executors import workloads
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.models.trigger import Trigger
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook  # noqa: F401

    from smtask.triggers import SageMakerJobTrigger

    # the real triggerer writes a few log lines per trigger to per-trigger files; not measured
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.disable(logging.WARNING)
    cls = SageMakerJobTrigger if impl == "new" else old_trigger_class()
    globals()[cls.__name__] = cls  # where the runner imports it from, by its classpath
    waves: list[collections.deque[Any]] = []
    for wave in (1, 2):
        waves.append(collections.deque())
        for i in range(n):
            classpath, kwargs = cls(kind="training", job={"job_name": f"{prefix}-{wave}-{i}"},
                                    aws_conn_id="aws_default", region_name=REGION,
                                    poll_max=POLL_MAX).serialize()
            waves[-1].append(workloads.RunTrigger(
                id=wave * n + i, classpath=classpath,
                encrypted_kwargs=Trigger.encrypt_kwargs(kwargs)))
    clock = time.perf_counter()
    gc.collect()
    empty_gc = time.perf_counter() - clock  # one full pass over the heap before any trigger
    before = rss_mb()
    samples, after = [before], []
    fired: dict[int, tuple[float, str]] = {}
    stalls: list[tuple[float, float]] = []  # (start, end) of each watchdog sleep > 0.05 s late
    full_gcs: list[tuple[float, float]] = []  # (start, end) of each generation-2 collection
    watching = True

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2 and watching:
            if phase == "start":
                full_gcs.append((time.monotonic(), 0.0))
            elif full_gcs:
                full_gcs[-1] = (full_gcs[-1][0], time.monotonic())

    async def main() -> list[Any]:
        nonlocal watching
        runner = TriggerRunner()
        done = False

        async def watchdog() -> None:
            tick = 0
            while not done:
                start = time.monotonic()
                await asyncio.sleep(0.01)
                if watching and time.monotonic() - start - 0.01 > 0.05:
                    stalls.append((start, time.monotonic()))
                while runner.events:
                    entry = runner.events.popleft()
                    fired[entry.trigger_id] = (time.time(), entry.event.payload["status"])
                tick += 1
                if tick % 5 == 0:
                    samples.append(rss_mb())

        watch = asyncio.create_task(watchdog())
        for pending in waves:
            # as TriggerRunner.arun: each ~1 s, clean up, take the new triggers the supervisor
            # hands over (it assigns at most max_trigger_to_select_per_loop per loop), create
            while pending or runner.triggers:
                await runner.cleanup_finished_triggers()
                for _ in range(min(len(pending), Trigger.max_trigger_to_select_per_loop)):
                    runner.to_create.append(pending.popleft())
                await runner.create_triggers()
                await asyncio.sleep(1.0 if pending else 0.1)
            watching = False  # the measurement's own collection is not the triggerer's stall
            gc.collect()
            await asyncio.sleep(AFTER_WAIT)
            after.append(rss_mb())
            watching = True
        done = True
        await watch
        return list(runner.failed_triggers)

    gc.callbacks.append(on_gc)
    failures = asyncio.run(main())
    gc.callbacks.remove(on_gc)

    def late(stall: tuple[float, float]) -> float:
        return stall[1] - stall[0] - 0.01

    def in_gc(stall: tuple[float, float]) -> bool:
        return any(start < stall[1] and end > stall[0] for start, end in full_gcs)

    print(json.dumps({
        "impl": impl, "n": n, "before": before, "after": after[0], "after2": after[1],
        "peak": max(max(samples), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stall_max": max(map(late, stalls), default=0.0),
        "stalls_over_0.1": sum(late(s) > 0.1 for s in stalls),
        "stall_max_outside_gc": max((late(s) for s in stalls if not in_gc(s)), default=0.0),
        "full_gcs": len(full_gcs), "full_gc_max": max((e - s for s, e in full_gcs), default=0.0),
        "empty_gc": empty_gc,
        "last_events": [max(t for i, (t, _) in fired.items() if i // n == wave)
                        for wave in (1, 2)],
        "fired": len(fired), "statuses": dict(collections.Counter(s for _, s in fired.values())),
        "failures": [repr(exc) for _, exc in failures][:3], "failed": len(failures)}))


# --- the driver -------------------------------------------------------------------------------

def ask(moto: subprocess.Popen[str], command: str) -> str:
    assert moto.stdin and moto.stdout
    moto.stdin.write(command + "\n")
    moto.stdin.flush()
    return moto.stdout.readline().strip()


def measure(moto: subprocess.Popen[str], env: dict[str, str], impl: str, n: int) -> dict[str, Any]:
    prefix = f"{impl}{n}"
    for wave in (1, 2):
        ask(moto, f"create {prefix}-{wave} {n}")
    started = time.monotonic()
    triggerer = subprocess.Popen([sys.executable, __file__, "--triggerer", impl, str(n), prefix],
                                 env=env, stdout=subprocess.PIPE, text=True)
    released = []
    try:
        for wave in (1, 2):
            while int(ask(moto, f"polls {prefix}-{wave}")) < POLLS_BEFORE_RELEASE:
                if triggerer.poll() is not None:
                    sys.exit(f"the {impl} triggerer exited early ({triggerer.returncode})")
                time.sleep(0.2)
            if wave == 1:
                held = time.monotonic() - started
            released.append(float(ask(moto, f"release {prefix}-{wave}")))
        out, _ = triggerer.communicate(timeout=600)
    finally:
        if triggerer.poll() is None:
            triggerer.kill()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result.update(held=held, release_to_fired=max(
        last - release for last, release in zip(result["last_events"], released, strict=True)))
    result["fired"] //= 2  # each wave fires n
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--baseline-n", type=int, default=100)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="smtask-bench-triggerer-"))
    moto_log = (home / "moto.log").open("w")  # the server's request log
    moto = subprocess.Popen([sys.executable, __file__, "--moto"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=moto_log, text=True)
    try:
        assert moto.stdout
        endpoint = moto.stdout.readline().strip()
        from cryptography.fernet import Fernet

        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
               "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
               "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
                   "conn_type": "aws", "login": "bench", "password": "bench",
                   "extra": {"region_name": REGION, "endpoint_url": endpoint}})}
        env.pop("AWS_ENDPOINT_URL", None)  # only the connection names moto
        runs = [measure(moto, env, "old", args.baseline_n),
                measure(moto, env, "new", args.baseline_n),
                measure(moto, env, "new", args.n)]
    finally:
        end(moto, timeout=10)
        moto_log.close()
        shutil.rmtree(home, ignore_errors=True)
    report(runs)


def report(runs: list[dict[str, Any]]) -> None:
    old, new, big = runs
    for run in runs:
        if run["fired"] != run["n"] or run["failed"] or \
                run["statuses"] != {"Completed": 2 * run["n"]}:
            sys.exit(f"{run['impl']} N={run['n']}: not every trigger fired Completed: {run}")
        run["growth"] = run["peak"] - run["before"]
        run["kept"] = run["after"] - run["before"]
        run["kept2"] = run["after2"] - run["after"]
        run["per_trigger"] = run["growth"] / run["n"]
        # returned: the first wave leaves at most ~one shared client (~20 MB) and allocator
        # slack behind, or a quarter of its growth, and the second wave adds nothing to it
        run["returned"] = ("yes" if run["kept"] <= max(50, 0.25 * run["growth"])
                           and run["kept2"] <= 10 else "no")
    rows = [
        ("RSS before (MB)", "before", "{:.0f}"), ("RSS peak (MB)", "peak", "{:.0f}"),
        ("RSS after 1st wave (MB)", "after", "{:.0f}"),
        ("RSS after 2nd wave (MB)", "after2", "{:.0f}"),
        ("growth, peak - before (MB)", "growth", "{:.0f}"),
        ("growth per trigger (MB)", "per_trigger", "{:.2f}"),
        ("kept by 1st wave (MB)", "kept", "{:.0f}"), ("added by 2nd wave (MB)", "kept2", "{:.0f}"),
        ("memory returned", "returned", "{}"),
        ("longest loop stall (s)", "stall_max", "{:.3f}"),
        ("loop stalls > 0.1 s", "stalls_over_0.1", "{}"),
        ("longest stall outside GC (s)", "stall_max_outside_gc", "{:.3f}"),
        ("full GC passes in the run", "full_gcs", "{}"),
        ("longest full GC pass (s)", "full_gc_max", "{:.3f}"),
        ("release -> all fired (s)", "release_to_fired", "{:.2f}"),
        ("start -> release (s)", "held", "{:.1f}"),
    ]
    heads = [f"old N={old['n']}", f"new N={new['n']}", "new/old", f"new N={big['n']}"]
    print(f"{'':<30}" + "".join(f"{h:>12}" for h in heads))
    for label, key, fmt in rows:
        ratio = (f"{new[key] / old[key]:.2f}"
                 if isinstance(old[key], int | float) and old[key] > 0 else "")
        cells = [fmt.format(old[key]), fmt.format(new[key]), ratio, fmt.format(big[key])]
        print(f"{label:<30}" + "".join(f"{c:>12}" for c in cells))
    print(f"one full GC pass over the triggerer's heap before any trigger: "
          f"{big['empty_gc']:.3f} s")
    print(f"goals at N={big['n']}: growth <= 200 MB: "
          f"{'met' if big['growth'] <= 200 else 'MISSED'}; longest stall <= 0.1 s: "
          f"{'met' if big['stall_max'] <= 0.1 else 'MISSED'} "
          f"({big['stall_max_outside_gc']:.3f} s outside full GC passes)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--moto"]:
        serve_moto()
    elif sys.argv[1:2] == ["--triggerer"]:
        run_triggerer(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
