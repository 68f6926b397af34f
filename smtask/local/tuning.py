"""Local tuning: smtask runs the search SageMaker would run. Random or Grid, at most
min(max_parallel_jobs, CPUs) trials at once, each a local training job named
``<tuning job>-NNN`` with its own max runtime, its objective read from its own log lines with
the metric regexes (the last match wins, as on SageMaker); the result in the shape of
SageMaker's description of a tuning job."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smtask import sdk
from smtask.errors import ContainerFailed, JobFailed
from smtask.local.containers import stop
from smtask.local.limits import TimeLimit, max_runtime
from smtask.local.output import ContainerOutput, stream_output
from smtask.local.staging import discard_under
from smtask.local.state import of


class Train(Protocol):
    """Runs one trial's training job locally to its end; returns its description."""

    def __call__(self, trial_job: dict[str, Any]) -> dict[str, Any]: ...

    def root(self, trial_job: dict[str, Any]) -> Path: ...


def _text(value: Any) -> str:
    """A hyperparameter value as SageMaker hands it to a trial: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".10g")
    return str(value)


def plan(job: dict[str, Any]) -> list[dict[str, str]]:
    """The trials' tuned hyperparameters, in order. Grid: every combination of the
    (categorical) ranges, the first ``max_jobs`` if given. Random: ``max_jobs`` draws,
    seeded by ``random_seed``, else by the job's name (a retry draws the same trials)."""
    ranges = job["ranges"]
    if job["strategy"] == "Grid":
        grid = itertools.product(*([_text(v) for v in r["values"]] for r in ranges.values()))
        combos = [dict(zip(ranges, values, strict=True)) for values in grid]
        return combos[: job["max_jobs"]] if job["max_jobs"] else combos
    rng = random.Random(job["random_seed"] if job["random_seed"] is not None else job["job_name"])
    return [{name: _draw(rng, r) for name, r in ranges.items()} for _ in range(job["max_jobs"])]


def _draw(rng: random.Random, spec_: dict[str, Any]) -> str:
    if spec_["type"] == "categorical":
        return _text(rng.choice(spec_["values"]))
    low, high, scaling = spec_["min_value"], spec_["max_value"], spec_.get("scaling_type", "Auto")
    if spec_["type"] == "integer" and scaling != "Logarithmic":
        return str(rng.randint(int(low), int(high)))
    if scaling == "Logarithmic":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif scaling == "ReverseLogarithmic":
        value = 1 - math.exp(rng.uniform(math.log(1 - high), math.log(1 - low)))
    else:
        value = rng.uniform(low, high)
    if spec_["type"] == "integer":
        return str(min(int(high), max(int(low), round(value))))
    return _text(min(high, max(low, value)))


def metric_regexes(job: dict[str, Any]) -> dict[str, list[re.Pattern[str]]]:
    """Metric name -> the regexes that read it from a trial's log lines. A built-in
    algorithm's ``<channel>:<metric>`` objective without a definition is read from the
    lines AWS's algorithms print (and smtask's local stand-ins imitate)."""
    found: dict[str, list[re.Pattern[str]]] = {}
    for definition in job["metric_definitions"]:
        found.setdefault(definition["name"], []).append(re.compile(definition["regex"]))
    metric = job["objective"]["metric"]
    channel, _, name = metric.partition(":")
    if metric not in found and name:
        number = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
        c, n = re.escape(channel), re.escape(name)
        found[metric] = [
            re.compile(rf"#quality_metric: host=\S+, {c} {n} <\w+>={number}"),  # linear-learner, FM
            re.compile(rf"\[\d+\].*#011{c}-{n}:{number}"),  # XGBoost
            re.compile(rf"#{c}_score \(\S+\) ?: \('{n}', {number}\)"),  # KNN
        ]
    return found


_COMPOSE_PREFIX = re.compile(r"^[\w.-]+\s+\|\s?(.*)$")


class TrialOutput:
    """One trial's container lines: each to the task log (prefixed with the trial's name),
    the last ones kept for its failure message, and every metric's last value."""

    def __init__(self, name: str, sink: Callable[[str], None],
                 regexes: dict[str, list[re.Pattern[str]]]) -> None:
        self.container = ContainerOutput(lambda line: sink(f"[{name}] {line}"))
        self.regexes, self.metrics = regexes, {}  # type: ignore[var-annotated]

    def __call__(self, line: str) -> None:
        self.container(line)
        own = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip("\r\n")
        match = _COMPOSE_PREFIX.match(own)
        own = match.group(1) if match else own
        # CloudWatch shows a tab as #011; regexes written for it match a local line too
        for text in {own, own.replace("\t", "#011")}:
            for metric, patterns in self.regexes.items():
                for pattern in patterns:
                    for hit in pattern.finditer(text):
                        value = hit.group(1) if pattern.groups else hit.group(0)
                        with contextlib.suppress(ValueError):
                            self.metrics[metric] = float(value)

    def failure(self, exit_code: int | None, lines: list[str] | None = None) -> str:
        return self.container.failure(exit_code, lines)

    def flush(self) -> None:
        self.container.flush()


@dataclass
class Trial:
    number: int
    name: str
    hyperparameters: dict[str, str]
    objective: float | None = None
    model: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _per_trial_output(session: Any) -> Iterator[threading.local]:
    """The SDK streams a container's output from the thread that runs it: each trial's lines
    go to that trial's :class:`TrialOutput` (set on the returned thread-local)."""
    current = threading.local()

    def stream(process: Any) -> int:
        return stream_output(current.output, session)(process)

    with sdk.corrected({"sagemaker.train.local.local_container:_stream_output": stream}):
        yield current


def run_trials(job: dict[str, Any], session: Any, train: Train, kind: str) -> dict[str, Any]:
    """Run the search: at most min(max_parallel_jobs, CPUs) trials at once, each in threads
    of its own over the one local session (a kill of the task stops all of their containers).
    ``train(trial_job)`` runs one trial's training job to its end; its job's compose file is
    in ``train.root(trial_job)``. Returns the tuning job's description (SageMaker's shape);
    ``kind`` names the tuning kind in its log and its failure."""
    trials = plan(job)
    workers = max(1, min(job["max_parallel_jobs"], _cpus(), len(trials)))
    log = of(session).log
    log(f"smtask: {kind} job {job['job_name']}: {len(trials)} {job['strategy']} trial(s), "
        f"{workers} at a time")
    halt = threading.Event()
    done: list[Trial] = []
    with _per_trial_output(session) as current:
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{job['job_name']}-trial")
        futures: list[Future[Trial]] = [
            pool.submit(_trial, job, session, train, number, values, current, halt)
            for number, values in enumerate(trials, start=1)]
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    trial = future.result()
                    done.append(trial)
                    log(f"smtask: trial {trial.name} {trial.hyperparameters}: "
                        + (f"failed: {trial.error}" if trial.error else
                           f"{job['objective']['metric']} = {trial.objective:g}"))
        except BaseException:
            # a kill (or a bug): no trial starts any more; the running ones are stopped
            halt.set()
            pool.shutdown(wait=False, cancel_futures=True)
            while not all(f.done() for f in futures):
                stop(session)
                wait(futures, timeout=0.5)
            raise
        finally:
            pool.shutdown(wait=True)
    return _result(job, sorted(done, key=lambda t: t.number), kind)


def _trial(job: dict[str, Any], session: Any, train: Train, number: int, values: dict[str, str],
           current: threading.local, halt: threading.Event) -> Trial:
    name = f"{job['job_name']}-{number:03d}"
    trial = Trial(number, name, values)
    if halt.is_set() or of(session).killed:
        trial.error = "not started: the tuning job was stopped"
        return trial
    output = TrialOutput(name, of(session).log, metric_regexes(job))
    current.output = output
    trial_job = {**job, "job_name": name, "hyperparameters": {**job["hyperparameters"], **values},
                 # as on SageMaker: <output path>/<training job>/...
                 "output_path": f"{job['output_path'].rstrip('/')}/{name}"}
    if job.get("checkpoints"):  # each trial its own, kept by its number for a retry
        trial_job["checkpoints"] = {**job["checkpoints"],
                                    "uri": f"{job['checkpoints']['uri']}/trial-{number:03d}"}
    # each trial is a training job with its own max_runtime_seconds, as on SageMaker
    limit = TimeLimit(session, job["max_runtime_seconds"], max_runtime(job["max_runtime_seconds"]),
                      root=str(train.root(trial_job)))
    try:
        with limit:
            description = train(trial_job)
    except ContainerFailed as exc:
        trial.error = limit.reason if limit.expired else exc.reason
    except Exception as exc:  # noqa: BLE001 - the SDK's errors are the trial's failure
        trial.error = limit.reason if limit.expired else f"{exc} ({output.failure(None)})"
    else:
        trial.error = limit.reason if limit.expired else None
    if trial.error is not None:
        # a trial stopped at its max runtime ends as a stopped container, which the SDK takes
        # for done: what it copied of the trial is no result
        discard_under(session, trial_job["output_path"])
        return trial
    trial.metrics = dict(output.metrics)
    model = description["ModelArtifacts"]["S3ModelArtifacts"]
    objective = job["objective"]["metric"]
    if model is None:  # staged, published with the tuning job's result
        trial.error = f"the trial wrote no model ({output.failure(None)})"
    elif objective not in output.metrics:
        patterns = " or ".join(p.pattern for p in metric_regexes(job).get(objective, []))
        trial.error = f"no log line of the trial matched the objective metric {objective!r} " \
                      f"({patterns})"
    else:
        trial.objective, trial.model = output.metrics[objective], model
    return trial


def _result(job: dict[str, Any], trials: list[Trial], kind: str) -> dict[str, Any]:
    """The local tuning job's description, shaped as the tuning kind shapes SageMaker's."""
    succeeded = [t for t in trials if t.error is None]
    failed = {t.name: t.error[:500] for t in trials if t.error is not None}
    if not succeeded:
        raise JobFailed(kind, job["job_name"], "every trial failed: " + "; ".join(
            f"{name}: {error}" for name, error in failed.items()))
    sign = 1 if job["objective"]["type"] == "Maximize" else -1
    best = max(succeeded, key=lambda t: (sign * (t.objective or 0.0), -t.number))
    assert best.model is not None
    return {
        "HyperParameterTuningJobName": job["job_name"],
        "HyperParameterTuningJobStatus": "Completed",
        "BestTrainingJob": {
            "TrainingJobName": best.name,
            "TunedHyperParameters": best.hyperparameters,
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "MetricName": job["objective"]["metric"], "Type": job["objective"]["type"],
                "Value": best.objective}},
        "ModelArtifacts": {"S3ModelArtifacts": best.model},
        "TrainingJobStatusCounters": {"Completed": len(succeeded), "NonRetryableError": len(failed),
                                      "Stopped": 0},
        "FailedTrials": failed,
    }
