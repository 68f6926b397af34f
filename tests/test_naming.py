"""Job names and artifact locations: valid, deterministic per task instance, distinct across
them, never a "." or ".." path component."""

from __future__ import annotations

import re

import pytest

from smtask import naming

RUN = "manual__2026-11-21T16:39:49.123456+00:00"
VALID = re.compile(r"^[A-Za-z0-9](-*[A-Za-z0-9])*$")


def name(**kw):
    args = {"dag_id": "churn", "run_id": RUN, "task_id": "split", "map_index": -1} | kw
    return naming.job_name(kw.pop("pipeline", "churn"), kw.pop("step", "splitor"), **{
        k: v for k, v in args.items() if k not in ("pipeline", "step")})


def test_name_is_readable_and_valid():
    job = name()
    assert job.startswith("churn-splitor-20261121163949-")
    assert VALID.match(job) and len(job) <= 63


def test_same_task_instance_gets_the_same_name():
    assert name() == name()


def test_names_differ_across_runs_tasks_and_map_indexes():
    names = {name(), name(run_id=RUN.replace("49.", "50.")), name(task_id="other"),
             name(map_index=0), name(map_index=1), name(dag_id="other")}
    assert len(names) == 6


def test_long_and_odd_inputs_still_give_a_valid_name():
    job = naming.attempt_name(
        name(pipeline="a" * 40, step="feature_selection.v2 (big)", map_index=1234), 3)
    assert VALID.match(job) and len(job) <= 63
    assert job.endswith(f"-m1234-r3-{job[-8:]}")


def test_later_attempts_keep_the_hash_and_differ_from_the_first():
    first = name()
    assert naming.attempt_name(first, 1) == first
    second, third = naming.attempt_name(first, 2), naming.attempt_name(first, 3)
    assert len({first, second, third}) == 3 and second[-8:] == first[-8:]
    assert second.endswith(f"-r2-{first[-8:]}") and len(second) <= 63


def test_run_prefix_is_per_pipeline_run_and_map_index():
    assert naming.run_prefix("file:///a/", "churn", "churn_dag", RUN) == \
        "file:///a/churn/churn_dag/manual__2026-11-21T16-39-49.123456-00-00"
    assert naming.run_prefix("s3://b/p", "churn", "d", RUN, 2).endswith("/2")


def test_map_index_zero_is_its_own_prefix_and_unmapped_is_not():
    from types import SimpleNamespace

    from smtask import storage

    def context(index):
        return {"ti": SimpleNamespace(map_index=index, dag_id="churn"), "run_id": RUN}

    params = {"mode": "local", "pipeline_name": "churn", "local": {"artifacts": "file:///a"}}
    assert storage.map_index(context(0)) == 0 and storage.map_index(context(None)) == -1
    assert storage.run_prefix(context(0), "splitor", params).endswith(
        "/manual__2026-11-21T16-39-49.123456-00-00/0/splitor")
    assert storage.run_prefix(context(-1), "splitor", params).endswith(
        "/manual__2026-11-21T16-39-49.123456-00-00/splitor")


@pytest.mark.parametrize(("run_id", "component"), [
    ("..", "_"), (".", "_"), (".hidden", "_hidden"), ("...x", "_x"), ("~", "_"),
    ("a..b", "a..b"),
])
def test_run_id_never_becomes_a_dot_or_hidden_path_component(run_id, component):
    prefix = naming.run_prefix("file:///a", "churn", "d", run_id)
    if run_id == component:
        assert prefix == f"file:///a/churn/d/{component}"
    else:  # made a component: its hash follows, so that two ids never share one
        assert re.fullmatch(rf"file:///a/churn/d/{re.escape(component)}-h[0-9a-f]{{32}}", prefix)


@pytest.mark.parametrize(("a", "b"), [
    (".copy", "_copy"), ("copy-", "copy"), ("dagä", "dagö"), ("r:1", "r+1"), ("r:1", "r-1"),
    # an id shaped as another's component: an Airflow run id's, a hashed one's
    ("scheduled__2026-12-01T06:00:00+00:00", "scheduled__2026-12-01T06-00-00-00-00"),
    (".copy", "_copy-h" + __import__("hashlib").sha256(b".copy").hexdigest()[:32]),
    # other scripts' digits are no Airflow run id's (a hostile trial's pairs)
    ("manual__\u0662026-12-01T06:00:00+00:00", "manual__-026-12-01T06-00-00-00-00"),
    ("manual__2026-12-01T06:00:00.\u0662+00:00", "manual__2026-12-01T06-00-00.-00-00"),
    # a 48-bit hash was collided in 86 s on one core: these two met in a-b-h0f8235c1cf73
    ("a~~:~~::++~~~~++~b", "a~~:+~:~~:~~+::::b"),
])
def test_two_ids_never_share_a_path_component(a, b):
    """Airflow accepts all of these as dag ids or run ids; two DAGs sharing a pipeline name
    and a run id would write into (and replace) each other's outputs."""
    run = "scheduled__2026-12-01T06:00:00+00:00"
    assert naming.run_prefix("file:///a", "p", a, run) != naming.run_prefix("file:///a", "p", b, run)
    assert naming.run_prefix("file:///a", "p", "d", a) != naming.run_prefix("file:///a", "p", "d", b)


@pytest.mark.parametrize("step", ["0", "12", "007"])
def test_a_step_of_digits_is_refused_its_folder_would_be_a_mapped_tasks(step):
    """An unmapped step "0" writes under <run>/0/, where every mapped task at map index 0
    keeps its steps' folders (a rerun's clearing would delete another step's data)."""
    from smtask.naming import name_problem, run_prefix

    assert run_prefix("s3://b", "p", "d", "r") + "/0" == run_prefix("s3://b", "p", "d", "r", 0)
    assert "may not be only digits" in name_problem("step", step)
    assert name_problem("step", f"{step}a") is None and name_problem("step", "step0") is None
