"""The job kinds: one module each, ending with one ``KIND`` (a :class:`smtask.kind.JobKind`),
and this registry, which lists them. The decorators, the provider info, the params schemas,
waiting and the triggers are all made from, or read, what it lists.

A fifth kind is a new module beside these (its schema, checks, API and its spec, submit and
outputs, declared as ``KIND = JobKind(...)``) and one entry below.

Imports nothing of Airflow or the SDK: the provider info reads it while Airflow is still
configuring itself.
"""

from __future__ import annotations

from smtask.kind import JobKind
from smtask.kinds import endpoint, processing, register, training, transform, tuning

KINDS: tuple[JobKind, ...] = (
    processing.KIND,
    training.KIND,
    tuning.KIND,
    transform.KIND,
    register.KIND,
    endpoint.KIND,
)


def by_name(name: str) -> JobKind:
    """The kind called ``name`` (a trigger's serialized kind)."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"no job kind {name!r} (known: {', '.join(k.name for k in KINDS)})")
