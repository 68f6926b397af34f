"""Tuning: a ``HyperparameterTuner`` over the step's training job; channels come from the function.

The trials' training job is built exactly as :mod:`smtask.steps.training` builds it. In
sagemaker mode SageMaker runs the search; in local mode smtask runs it: Random or Grid, each
trial a local training job named ``<tuning job>-NNN``, its objective read from its own log
lines with the metric regexes (the last match wins, as on SageMaker).
"""

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
from typing import Any

from smtask.errors import JobFailed
from smtask.steps import StepContext, aws_tags, put_model_code, training

KIND = "tuning"


def spec(ctx: StepContext, returned: Any) -> dict[str, Any]:
    """``returned`` is ``{channel name: URI}``, as for a training step."""
    tuning = ctx.cfg["tuning"]
    strategy = tuning.get("strategy", "Random")
    return {
        **training.spec(ctx, returned),  # the trials' training job
        "objective": {"metric": tuning["objective"]["metric"],
                      "type": tuning["objective"].get("type", "Maximize")},
        "metric_definitions": [dict(d) for d in tuning.get("metric_definitions", [])],
        "ranges": {name: dict(r) for name, r in tuning["ranges"].items()},
        "strategy": strategy,
        "max_jobs": tuning.get("max_jobs"),  # Grid: every combination unless given
        "max_parallel_jobs": tuning.get("max_parallel_jobs", 1),
        "random_seed": tuning.get("random_seed"),
    }


def submit(job: dict[str, Any], session: Any) -> dict[str, Any] | None:
    """Start the tuning job. Local mode runs every trial to its end and returns the job's
    description (as :func:`complete` makes it)."""
    if session.local_mode:
        return _run_trials(job, session)
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.train.tuner import HyperparameterTuner

    ranges: dict[str, Any] = {}
    for name, spec_ in job["ranges"].items():
        if spec_["type"] == "categorical":
            ranges[name] = CategoricalParameter([_text(v) for v in spec_["values"]])
        else:
            klass = IntegerParameter if spec_["type"] == "integer" else ContinuousParameter
            ranges[name] = klass(spec_["min_value"], spec_["max_value"],
                                 spec_.get("scaling_type", "Auto"))
    with training.trainer_patches(job, session):
        trainer = training.trainer(job, session)
        if job.get("model_code"):
            # A tuning job's trials find their code through sagemaker_submit_directory, a
            # tarball; the SDK would upload it, timestamped, to the bucket's root. The one its
            # models serve with (put by content before the job) is that tarball.
            put_model_code(job["model_code"], session)
            trainer.source_code.source_dir = job["model_code"]["submit_directory"]
        tuner = HyperparameterTuner(
            model_trainer=trainer,
            objective_metric_name=job["objective"]["metric"],
            objective_type=job["objective"]["type"],
            hyperparameter_ranges=ranges,
            metric_definitions=[{"Name": d["name"], "Regex": d["regex"]}
                                for d in job["metric_definitions"]] or None,
            strategy=job["strategy"],
            max_jobs=job["max_jobs"],
            max_parallel_jobs=job["max_parallel_jobs"],
            random_seed=job["random_seed"],
            tags=aws_tags(job),
            base_tuning_job_name=job["job_name"],
        )
        tuner.tune(inputs=training.channels(job, session), job_name=job["job_name"], wait=False)
    return None


def complete(client: Any, description: dict[str, Any]) -> dict[str, Any]:
    """A completed tuning job's description with its best training job's model artifacts
    (one DescribeTrainingJob), reduced to what :func:`outputs` reads."""
    from smtask import waiting

    if "ModelArtifacts" in description or waiting.status(KIND, description) not in waiting.DONE:
        return description  # local mode's already has them; an unfinished job has none
    name = description["HyperParameterTuningJobName"]
    best = description.get("BestTrainingJob") or {}
    if not best.get("TrainingJobName"):
        raise JobFailed(KIND, name, "no training job of the tuning job reported the objective "
                        "metric (check the metric definitions against the job's logs)")
    trial = waiting.find(client, "training", best["TrainingJobName"])
    if trial is None or not (trial.get("ModelArtifacts") or {}).get("S3ModelArtifacts"):
        raise JobFailed(KIND, name, f"its best training job {best['TrainingJobName']} has no "
                        "model artifacts")
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobStatus": description["HyperParameterTuningJobStatus"],
        "BestTrainingJob": {
            "TrainingJobName": best["TrainingJobName"],
            "TunedHyperParameters": dict(best.get("TunedHyperParameters") or {}),
            "FinalHyperParameterTuningJobObjectiveMetric": {
                k: metric[k] for k in ("MetricName", "Type", "Value") if k in metric}},
        "ModelArtifacts": {"S3ModelArtifacts": trial["ModelArtifacts"]["S3ModelArtifacts"]},
        "TrainingJobStatusCounters": dict(description.get("TrainingJobStatusCounters") or {}),
    }


def outputs(job: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """A training result (``job_name``, ``model``, ``image``, ``outputs``), so a transform
    takes it as it takes ``@sm_training``'s, plus what the search found."""
    model = description["ModelArtifacts"]["S3ModelArtifacts"]
    best = description["BestTrainingJob"]
    metric = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    counters = description.get("TrainingJobStatusCounters") or {}
    result = {
        "job_name": job["job_name"], "model": model, "image": job["image"],
        "outputs": {"model": model}, **training.result_code(job),
        "best_training_job": best["TrainingJobName"],
        "hyperparameters": dict(best.get("TunedHyperParameters") or {}),
        "objective": {"metric": metric.get("MetricName", job["objective"]["metric"]),
                      "type": job["objective"]["type"], "value": metric.get("Value")},
        "trials": {"completed": counters.get("Completed", 0),
                   "failed": counters.get("NonRetryableError", 0) + counters.get(
                       "RetryableError", 0),
                   "stopped": counters.get("Stopped", 0)},
    }
    if "FailedTrials" in description:  # local mode: each failed trial's own error
        result["failed_trials"] = dict(description["FailedTrials"])
    return result


# --- local mode: smtask runs the search ----------------------------------------------------

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
        from smtask.local import ContainerOutput

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
    from sagemaker.train.local import local_container

    from smtask import local
    from smtask.sessions import replaced

    current = threading.local()

    def stream_output(process: Any) -> int:
        return local._stream_output(current.output, session)(process)  # type: ignore[arg-type]

    with replaced((local_container, "_stream_output", stream_output)):
        yield current


def _run_trials(job: dict[str, Any], session: Any) -> dict[str, Any]:
    """Run the search: at most min(max_parallel_jobs, CPUs) trials at once, each in threads
    of its own over the one local session (a kill of the task stops all of their containers)."""
    from smtask import local

    trials = plan(job)
    workers = max(1, min(job["max_parallel_jobs"], _cpus(), len(trials)))
    log = session.smtask_output.sink
    log(f"smtask: tuning job {job['job_name']}: {len(trials)} {job['strategy']} trial(s), "
        f"{workers} at a time")
    halt = threading.Event()
    done: list[Trial] = []
    with training.trainer_patches(job, session), _per_trial_output(session) as current:
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{job['job_name']}-trial")
        futures: list[Future[Trial]] = [
            pool.submit(_trial, job, session, number, values, current, halt)
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
                local.stop(session)
                wait(futures, timeout=0.5)
            raise
        finally:
            pool.shutdown(wait=True)
    return _result(job, sorted(done, key=lambda t: t.number))


def _trial(job: dict[str, Any], session: Any, number: int, values: dict[str, str],
           current: threading.local, halt: threading.Event) -> Trial:
    from smtask import local
    from smtask.local import ContainerFailed

    name = f"{job['job_name']}-{number:03d}"
    trial = Trial(number, name, values)
    if halt.is_set() or session.smtask_killed:
        trial.error = "not started: the tuning job was stopped"
        return trial
    output = TrialOutput(name, session.smtask_output.sink, metric_regexes(job))
    current.output = output
    trial_job = {**job, "job_name": name, "hyperparameters": {**job["hyperparameters"], **values},
                 # as on SageMaker: <output path>/<training job>/...
                 "output_path": f"{job['output_path'].rstrip('/')}/{name}"}
    # each trial is a training job with its own max_runtime_seconds, as on SageMaker
    limit = local.TimeLimit(session, job["max_runtime_seconds"],
                            local.max_runtime(job["max_runtime_seconds"]),
                            root=str(training.local_root(trial_job, session)))
    try:
        with limit:
            description = training.train_locally(trial_job, session)
    except ContainerFailed as exc:
        trial.error = limit.reason if limit.expired else exc.reason
        return trial
    except Exception as exc:  # noqa: BLE001 - the SDK's errors are the trial's failure
        trial.error = limit.reason if limit.expired else f"{exc} ({output.failure(None)})"
        return trial
    if limit.expired:
        trial.error = limit.reason
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


def _result(job: dict[str, Any], trials: list[Trial]) -> dict[str, Any]:
    """The local tuning job's description, shaped as :func:`complete` shapes SageMaker's."""
    succeeded = [t for t in trials if t.error is None]
    failed = {t.name: t.error[:500] for t in trials if t.error is not None}
    if not succeeded:
        raise JobFailed(KIND, job["job_name"], "every trial failed: " + "; ".join(
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
