"""What a task shows beside its log: links to its job, its outputs as Airflow Assets, and the
datasets it read and wrote for OpenLineage.

- **Extra links** (the task instance's buttons): the job on the SageMaker console and its
  CloudWatch log streams; for a tuning step, its best training job; the step's outputs (the
  S3 console; in local mode only where the artifacts have a URL: ``s3://`` through
  ``local.s3_endpoint``, not ``file://``, which a browser will not open from a web page).
  Each is built from the task's result (its XCom) and the run's region, when the task ends;
  a link that would be dead is left out.
- **Assets**: each output a step makes (a processing output, a model, the predictions) is
  an Asset whose URI (and name) is that output's folder in the artifacts of the config's
  mode, by pipeline, DAG, step and output, without the run (``s3://b/pipelines/churn/churn/
  trainer/model``). A task's success is an asset event whose ``extra`` holds the run's own URI, so a
  DAG scheduled on the model asset reads where the new model is.
- **OpenLineage** (``get_openlineage_facets_on_complete``): the job's inputs and outputs as
  datasets, ``s3://bucket`` + key, or ``file`` + path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlparse

from airflow.sdk import Asset, BaseOperatorLink

from smtask import params
from smtask.paths import artifacts_root

if TYPE_CHECKING:
    from smtask.kind import JobKind

# the console's page of each kind's resource: https://console.aws.amazon.com/sagemaker/home#/...
CONSOLE_PAGES = {"processing": "processing-jobs", "training": "jobs", "tuning": "hyper-tuning-jobs",
                 "transform": "transform-jobs", "endpoint": "endpoints"}


def console(region: str | None, service: str) -> str:
    """The AWS console's home of ``service`` in ``region``'s partition."""
    region = region or ""
    domain = "amazonaws.cn" if region.startswith("cn-") else \
        "amazonaws-us-gov.com" if region.startswith("us-gov-") else "aws.amazon.com"
    return f"https://console.{domain}/{service}/home" + \
        (f"?region={quote(region, safe='')}" if region else "")


def _fragment(text: str) -> str:
    """A value in the CloudWatch console's fragment: percent-encoded, then ``%`` as ``$25``."""
    return quote(text, safe="").replace("%", "$25")


def job_url(kind: str, name: str, region: str | None) -> str:
    page = CONSOLE_PAGES.get(kind)
    return f"{console(region, 'sagemaker')}#/{page}/{quote(name, safe='')}" if page and name else ""


def logs_url(group: str, stream_prefix: str, region: str | None) -> str:
    """The CloudWatch console's log group, its streams filtered by ``stream_prefix`` (if any)."""
    if not group:
        return ""
    url = f"{console(region, 'cloudwatch')}#logsV2:log-groups/log-group/{_fragment(group)}"
    return url + (f"$3FlogStreamNameFilter$3D{_fragment(stream_prefix)}" if stream_prefix else "")


def outputs_url(outputs: Iterable[str], region: str | None, s3_endpoint: str | None) -> str:
    """The folder holding every output (each one's folder: a model is a file): on the S3
    console, or (local mode) the S3 endpoint's listing of it; ``""`` for ``file://`` outputs
    or none."""
    uris = [u for u in outputs if isinstance(u, str)]
    if not uris or not all(u.startswith("s3://") for u in uris):
        return ""
    common = os.path.commonprefix([u.rstrip("/").rsplit("/", 1)[0] + "/" for u in uris])
    folder = common[: common.rfind("/") + 1]
    bucket, _, key = folder.removeprefix("s3://").partition("/")
    if not bucket:
        return ""
    if s3_endpoint:
        return f"{s3_endpoint.rstrip('/')}/{quote(bucket)}?list-type=2&prefix={quote(key, safe='')}"
    region_part = f"region={quote(region, safe='')}&" if region else ""
    return (f"https://s3.console.aws.amazon.com/s3/buckets/{quote(bucket)}?{region_part}"
            f"prefix={quote(key, safe='')}")


class _Link(BaseOperatorLink):
    """A link of an smtask task, from its result and where its run ran (the operator's
    ``link_context``, set while it ran in this process). ``""``: no button."""

    name: ClassVar[str] = ""  # type: ignore[misc]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        context = getattr(operator, "link_context", None)
        if not isinstance(context, Mapping) or not self.shown(context):
            return ""
        # Airflow asks every link when the task ends, in the task's process: the operator
        # holds the result it returned ({} when it failed); a read of its XCom took 12 ms
        held = getattr(operator, "_lineage", None)
        result = held[1] if isinstance(held, tuple) else _result(ti_key)
        try:
            return self.url(operator.job_kind, result, context)
        except (KeyError, TypeError, AttributeError, ValueError):
            return ""

    def shown(self, context: Mapping[str, Any]) -> bool:
        """Whether a run like this one (its mode) can have this link: the AWS consoles'
        are SageMaker's."""
        return context.get("mode") == "sagemaker"

    def url(self, kind: JobKind, result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        raise NotImplementedError  # each link below says


def _result(ti_key: Any) -> Mapping[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    try:
        value = XCom.get_value(ti_key=ti_key, key="return_value")
    except Exception:  # no result (a failed task), or no XCom backend to ask
        return {}
    return value if isinstance(value, Mapping) else {}


def _name(result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """The job's name: the result's, else the one the task created (a failed job)."""
    return str(result.get("endpoint_name") or result.get("job_name") or context.get("job_name") or "")


class JobLink(_Link):
    name = "SageMaker console"

    def url(self, kind: JobKind, result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        return job_url(kind.name, _name(result, context), context.get("region"))


class LogsLink(_Link):
    name = "CloudWatch logs"

    def url(self, kind: JobKind, result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        name = _name(result, context)
        if kind.name == "tuning":  # its trials log as training jobs: the best one's
            name = str(result.get("best_training_job") or "")
        group = kind.api.log_group
        if not name:
            return ""
        if kind.name == "endpoint":  # a group per endpoint, a stream per variant's instance
            return logs_url(f"{group}/{name}", "", context.get("region"))
        return logs_url(group, f"{name}/", context.get("region"))


class BestTrainingJobLink(_Link):
    name = "Best training job"

    def url(self, kind: JobKind, result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        return job_url("training", str(result.get("best_training_job") or ""), context.get("region"))


class OutputsLink(_Link):
    name = "Outputs"

    def shown(self, context: Mapping[str, Any]) -> bool:
        """SageMaker's runs, and local ones whose artifacts have a URL (``s3_endpoint``)."""
        return super().shown(context) or bool(context.get("s3_endpoint"))

    def url(self, kind: JobKind, result: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        return outputs_url(outputs(result), context.get("region"),
                           context.get("s3_endpoint") if context.get("mode") == "local" else None)


def links(kind: JobKind) -> tuple[BaseOperatorLink, ...]:
    """The extra links of a kind's tasks."""
    found: list[BaseOperatorLink] = [JobLink(), LogsLink()]
    if kind.name == "tuning":
        found.append(BestTrainingJobLink())
    if kind.assets is not None:
        found.append(OutputsLink())
    return tuple(found)


def run_links(links: Iterable[BaseOperatorLink], context: Mapping[str, Any]) -> tuple[Any, ...]:
    """The links a run like this one can have: Airflow stores each link's URL (an XCom, "" for
    none) when the task ends, 10 ms a link; a local run without a URL for its artifacts has
    none to store."""
    return tuple(link for link in links if not isinstance(link, _Link) or link.shown(context))


def link_context(run_params: Mapping[str, Any], job_name: str | None = None) -> dict[str, Any]:
    """What the links need of the run, kept on the operator while the task runs."""
    given = run_params.get("local")
    local: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    return {"mode": run_params.get("mode"), "region": run_params.get("region_name"),
            "s3_endpoint": local.get("s3_endpoint"), "job_name": job_name}


def step_assets(dag: Any, step: str, kind: JobKind) -> dict[str, Asset]:
    """output name -> the Asset of one output of the step (at parse time, from the config);
    made once per parse (:func:`smtask.params.parse_memo`)."""
    assets = kind.assets
    if dag is None or assets is None or "steps" not in dag.params:
        return {}
    memo = params.parse_memo(dag)
    key = ("assets", dag.dag_id, step, kind.name)
    if key not in memo:
        memo[key] = _step_assets(dag, step, assets)
    return dict(memo[key])


def _step_assets(dag: Any, step: str, assets: Callable[[Any], Iterable[str]]) -> dict[str, Asset]:
    values = {key: dag.params.get_param(key).value for key in
              ("pipeline_name", "mode", "artifacts", "local") if key in dag.params}
    steps = dag.params.get_param("steps").value
    cfg = steps.get(step) if isinstance(steps, Mapping) else None
    pipeline = values.get("pipeline_name")
    if not isinstance(cfg, Mapping) or not isinstance(pipeline, str):
        return {}
    try:
        root = artifacts_root(values)
        return {output: _asset(root, pipeline, dag.dag_id, step, output)
                for output in assets(cfg)}
    except Exception:  # sagemaker mode without s3:// artifacts: the params' check names it
        return {}


def _asset(root: str, pipeline: str, dag_id: str, step: str, output: str) -> Asset:
    """Named by its URI: Airflow makes an asset inactive, and fails every task that names it
    as an outlet, when two DAGs give one name two URIs (two artifacts roots, in tests)."""
    return Asset(uri=f"{root.rstrip('/')}/{pipeline}/{dag_id}/{step}/{output}",
                 group="model" if output == "model" else "asset")


def asset_output(asset: Any, step: str) -> str | None:
    """The output of ``step`` an Asset of :func:`step_assets` stands for, or None."""
    uri = getattr(asset, "uri", None)
    parts = uri.rsplit("/", 2) if isinstance(uri, str) else []
    return parts[2] if len(parts) == 3 and parts[1] == step else None


def output_asset(config: str | os.PathLike[str], dag_id: str, step: str,
                 output: str = "model") -> Asset:
    """The Asset of one output of a step of another DAG, as that DAG declares it (from the
    same config.json): ``schedule=[output_asset(CONFIG, "churn", "trainer")]`` runs a DAG on
    each new model of the churn DAG's trainer."""
    values = params.load_config(config)
    return _asset(artifacts_root(values), values["pipeline_name"], dag_id, step, output)


def inputs(job: Mapping[str, Any]) -> list[str]:
    """The URIs a job's spec reads: a processing job's inputs, a training or tuning job's
    channels, a transform's data and the model data of a transform, version or endpoint."""
    found: list[Any] = []
    if isinstance(job.get("inputs"), Mapping):
        found += [i.get("source") for i in job["inputs"].values() if isinstance(i, Mapping)]
    if isinstance(job.get("channels"), Mapping):
        found += list(job["channels"].values())
    found += [job.get("data"), job.get("model_data")]
    return [u for u in dict.fromkeys(found) if isinstance(u, str) and u]


def result_outputs(result: Mapping[str, Any]) -> dict[str, str]:
    """A task result's outputs, name -> URI (a processing job's, a model, the predictions)."""
    given = result.get("outputs")
    return {name: uri for name, uri in (given.items() if isinstance(given, Mapping) else ())
            if isinstance(uri, str)}


def outputs(result: Mapping[str, Any]) -> list[str]:
    return list(result_outputs(result).values())


def dataset(uri: str) -> tuple[str, str]:
    """An OpenLineage dataset's namespace and name for a URI (the provider's naming)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/")
    if parsed.scheme == "file":
        return "file", parsed.path
    return "file", uri  # a path on the worker (sagemaker mode uploads it)
