"""Tuning: a ``HyperparameterTuner`` over the step's training job; channels come from the function.

The trials' training job is built exactly as :mod:`smtask.kinds.training` builds it. In
sagemaker mode SageMaker runs the search; in local mode smtask runs it
(:mod:`smtask.local.tuning`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smtask.kind import Api, Inherit, JobKind
from smtask.kinds import training
from smtask.kinds.common import StepContext, aws_tags, elapsed, put_model_code, seconds_of
from smtask.naming import key_path, quoted
from smtask.params.schemas import string


def spec(ctx: StepContext, returned: Any, upstream: Any = ()) -> dict[str, Any]:
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
        from smtask import local

        training.say_what_local_mode_skips(job, session)
        with training.trainer_patches(job, session):
            return local.run_trials(job, session, _LocalTrial(session), KIND.name)
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    from sagemaker.train.tuner import HyperparameterTuner

    ranges: dict[str, Any] = {}
    for name, spec_ in job["ranges"].items():
        if spec_["type"] == "categorical":
            from smtask.local.tuning import _text

            ranges[name] = CategoricalParameter([_text(v) for v in spec_["values"]])
        else:
            klass = IntegerParameter if spec_["type"] == "integer" else ContinuousParameter
            ranges[name] = klass(spec_["min_value"], spec_["max_value"],
                                 spec_.get("scaling_type", "Auto"))
    with training.trainer_patches(job, session), _keep_alive(job):
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


def _keep_alive(job: dict[str, Any]) -> Any:
    """The SDK's tuner builds its trials' ResourceConfig anew and drops the trainer's
    ``keep_alive_period_in_seconds``: a tuning job's warm pool is set back on it."""
    from smtask import sdk

    if not job.get("keep_alive_seconds"):
        return contextlib.nullcontext()
    from sagemaker.train.tuner import HyperparameterTuner

    build = HyperparameterTuner._build_training_job_definition

    def with_keep_alive(self: Any, inputs: Any) -> Any:
        definition = build(self, inputs)
        definition.resource_config.keep_alive_period_in_seconds = job["keep_alive_seconds"]
        return definition

    return sdk.corrected({"sagemaker.train.tuner:HyperparameterTuner."
                          "_build_training_job_definition": with_keep_alive})


def complete(client: Any, description: dict[str, Any]) -> dict[str, Any]:
    """A completed tuning job's description with its best training job's model artifacts
    (one DescribeTrainingJob), reduced to what :func:`outputs` reads."""
    from smtask import waiting

    if "ModelArtifacts" in description or waiting.status(KIND, description) not in KIND.api.done:
        return description  # local mode's already has them; an unfinished job has none
    name = description["HyperParameterTuningJobName"]
    best = description.get("BestTrainingJob") or {}
    if not best.get("TrainingJobName"):
        from smtask.errors import JobFailed

        raise JobFailed(KIND.name, name, "no training job of the tuning job reported the objective "
                        "metric (check the metric definitions against the job's logs)")
    trial = waiting.find(client, training.KIND, best["TrainingJobName"])
    if trial is None or not (trial.get("ModelArtifacts") or {}).get("S3ModelArtifacts"):
        from smtask.errors import JobFailed

        raise JobFailed(KIND.name, name, f"its best training job {best['TrainingJobName']} has no "
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
        **{key: description[key] for key in USAGE_KEYS if key in description},
    }


USAGE_KEYS = ("ConsumedResources", "CreationTime", "HyperParameterTuningEndTime")


def usage(description: Mapping[str, Any]) -> dict[str, Any]:
    """The tuning job's run time (SageMaker's ``ConsumedResources``, else its start to its end).
    What it bills are its trials' instance-seconds, each a training job's own."""
    consumed = description.get("ConsumedResources")
    seconds = seconds_of(consumed.get("RuntimeInSeconds")) \
        if isinstance(consumed, Mapping) else None
    if seconds is None:
        seconds = elapsed(description, "CreationTime", "HyperParameterTuningEndTime")
    return {} if seconds is None else {"seconds": round(seconds)}


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


class _LocalTrial:
    """One trial's training job, run locally as the training kind runs it."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, trial_job: dict[str, Any]) -> dict[str, Any]:
        return training.train_locally(trial_job, self.session)

    def root(self, trial_job: dict[str, Any]) -> Path:
        return training.local_root(trial_job, self.session)


def check(step: str, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[str]:
    """A training step's checks, and the search's."""
    yield from training.check(step, cfg, params)
    yield from _search_problems(step, cfg, params.get("mode"))


def _search_problems(step: str, cfg: Mapping[str, Any], mode: Any) -> Iterable[str]:
    """What the schema cannot say about a tuning step (called once its shape is right)."""
    tuning, where = cfg["tuning"], f"steps.{step}.tuning"
    strategy = tuning.get("strategy", "Random")
    for name, spec in sorted(tuning["ranges"].items()):
        at, kind = f"{where}.ranges.{key_path(name)}", spec["type"]
        numeric = {"min_value", "max_value", "scaling_type"} & spec.keys()
        if kind == "categorical":
            if "values" not in spec:
                yield f"{at}.values: required for a categorical range"
            for key in sorted(numeric):
                yield f"{at}.{key}: not allowed in a categorical range (give values)"
            continue
        if "values" in spec:
            yield f"{at}.values: not allowed in a numeric range (give min_value and max_value)"
        if "min_value" not in spec or "max_value" not in spec:
            yield f"{at}: a numeric range needs min_value and max_value"
            continue
        low, high, scaling = spec["min_value"], spec["max_value"], spec.get("scaling_type", "Auto")
        if kind == "integer" and not all(float(v).is_integer() for v in (low, high)):
            yield f"{at}: an integer range needs whole min_value and max_value, got {low}, {high}"
        if low > high:
            yield f"{at}.min_value: {low} is greater than max_value {high}"
        elif scaling == "Logarithmic" and low <= 0:
            yield f"{at}.scaling_type: Logarithmic needs min_value > 0, got {low}"
        elif scaling == "ReverseLogarithmic" and (kind != "continuous" or low < 0 or high >= 1):
            yield f"{at}.scaling_type: ReverseLogarithmic needs a continuous range in [0, 1)"
    if strategy == "Grid":
        for name in sorted(n for n, r in tuning["ranges"].items() if r["type"] != "categorical"):
            yield (f"{where}.ranges.{key_path(name)}: the Grid strategy searches categorical "
                   "ranges only (as on SageMaker)")
    elif "max_jobs" not in tuning:
        yield f"{where}.max_jobs: required for the {strategy} strategy"
    if tuning.get("max_parallel_jobs", 1) > tuning.get("max_jobs", float("inf")):
        yield (f"{where}.max_parallel_jobs: {tuning['max_parallel_jobs']} is more than max_jobs "
               f"{tuning['max_jobs']}")
    if mode == "local" and strategy not in LOCAL_STRATEGIES:
        yield (f"{where}.strategy: local mode runs {' and '.join(LOCAL_STRATEGIES)} searches "
               f"only; {strategy} needs SageMaker (mode: sagemaker)")
    metric = tuning["objective"]["metric"]
    names = [d["name"] for d in tuning.get("metric_definitions", [])]
    if len(set(names)) != len(names):
        yield f"{where}.metric_definitions: a metric is defined twice"
    for i, definition in enumerate(tuning.get("metric_definitions", [])):
        try:
            re.compile(definition["regex"])
        except re.error as exc:
            yield f"{where}.metric_definitions.{i}.regex: not a regular expression ({exc})"
    if "entry_script" in cfg and metric not in names:
        # a script's metrics exist only through a regex; built-in algorithms define their own
        yield (f"{where}.objective.metric: {quoted(metric)} has no metric definition (add "
               '{"name": ..., "regex": ...} to metric_definitions)')


# A tuning step: a training step's settings (its own, or those of ``training_step``
# deep-merged under its own) plus the search. Names and limits as SageMaker's API has them.
TUNING_STRATEGIES = ("Random", "Grid", "Bayesian", "Hyperband")
LOCAL_STRATEGIES = ("Random", "Grid")  # local mode runs the trials itself
_TUNING_BLOCK: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["objective", "ranges"],
    "properties": {
        "objective": {
            "type": "object",
            "additionalProperties": False,
            "required": ["metric"],
            "properties": {"metric": string(255, minLength=1),
                           "type": {"enum": ["Maximize", "Minimize"]}},
        },
        "metric_definitions": {
            "type": "array",
            "maxItems": 40,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "regex"],
                "properties": {"name": string(255, minLength=1),
                               "regex": string(500, minLength=1)},
            },
        },
        "ranges": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 30,
            "propertyNames": {"maxLength": 256},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["integer", "continuous", "categorical"]},
                    "min_value": {"type": "number"},
                    "max_value": {"type": "number"},
                    "values": {"type": "array", "minItems": 1, "maxItems": 30,
                               "items": {"type": ["string", "number", "boolean"],
                                         "maxLength": 256}},
                    "scaling_type": {"enum": ["Auto", "Linear", "Logarithmic",
                                              "ReverseLogarithmic"]},
                },
            },
        },
        "strategy": {"enum": list(TUNING_STRATEGIES)},
        "max_jobs": {"type": "integer", "minimum": 1, "maximum": 750},
        "max_parallel_jobs": {"type": "integer", "minimum": 1, "maximum": 100},
        "random_seed": {"type": "integer", "minimum": 0},
    },
}
SCHEMA: dict[str, Any] = {
    **training.SCHEMA,
    "required": [*training.SCHEMA.get("required", []), "tuning"],
    "properties": {
        **training.SCHEMA["properties"],
        "training_step": {"type": "string"},  # its form: naming.NAME_RULES["step"]
        "tuning": _TUNING_BLOCK,
    },
}

KIND = JobKind(
    name="tuning", decorator="sm_tuning",
    # a tuning job's trials are training jobs named <tuning job>-NNN-<id>: their log streams
    # its trials are training jobs: their logs are the tuning job's
    api=Api.of_job("HyperParameterTuningJob", log_group="/aws/sagemaker/TrainingJobs",
                    deleting=("Deleting", "DeleteFailed")),
    schema=SCHEMA, image_scope="training", check=check,
    spec=spec, submit=submit, complete=complete, outputs=outputs, usage=usage,
    max_name=32,  # HyperParameterTuningJobName
    algorithm_images=True, settings="script",
    inherit=Inherit(key="training_step", not_in_base=("training_step", "tuning"),
                    base="a training step",
                    only_with=(("max_wait_seconds", "use_spot_instances"),)),
    assets=lambda cfg: ("model",),
)
