"""``@sm_processing``, ``@sm_training``, ``@sm_tuning``, ``@sm_transform``, ``@sm_register``,
``@sm_endpoint``: SageMaker jobs (and a model version, an endpoint) as
TaskFlow tasks, one decorator per job kind of the registry (``smtask.kinds.KINDS``).

The decorated function runs on the worker at execute time with its upstream XCom values and
returns only the dynamic part of the job (like ``@task.bash`` returns its command). Everything
static comes from the step's entry in the DAG params (``steps.<step>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from airflow.sdk.bases.decorator import task_decorator_factory

from smtask import lineage, params
from smtask.kinds import KINDS
from smtask.operator import SageMakerJobOperator, check_step

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import TaskDecorator

    from smtask.kind import JobKind

_F = TypeVar("_F", bound=Callable[..., Any])


class JobDecorator(Protocol):
    """``@sm_<kind>(step=...)``, as the user's editor completes it."""

    @overload
    def __call__(self, python_callable: _F, /) -> TaskDecorator: ...
    @overload
    def __call__(self, *, step: str, mode: str | None = None, deferrable: bool = False,
                 **kwargs: Any) -> TaskDecorator: ...


def operator_class(kind: JobKind) -> type[SageMakerJobOperator]:
    """The operator of one kind: the shared operator, told its kind."""
    name = f"_{kind.name.title()}Operator"
    return type(name, (SageMakerJobOperator,), {
        "job_kind": kind, "custom_operator_name": f"@{kind.decorator}",
        "operator_extra_links": lineage.links(kind),
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"Runs one SageMaker {kind.name} job per task instance."})


def _factory(operator: type[SageMakerJobOperator]) -> JobDecorator:
    def decorator(python_callable: Callable | None = None, /, **kwargs: Any) -> TaskDecorator:
        if "step" not in kwargs:
            raise TypeError(f"{operator.custom_operator_name} needs step=: the key of this "
                            "task's settings under the 'steps' param")
        # .expand() skips the operator's __init__: the step is checked and described here too
        check_step(operator.custom_operator_name, kwargs["step"])
        from airflow.sdk.definitions._internal.contextmanager import DagContext

        dag = kwargs.get("dag") or DagContext.get_current()
        params.describe_step(dag, kwargs["step"], operator.job_kind)
        assets = lineage.step_assets(dag, kwargs["step"], operator.job_kind).values()
        kwargs["outlets"] = [*(kwargs.get("outlets") or ()), *assets]
        return task_decorator_factory(python_callable=python_callable,
                                      decorated_operator_class=operator, **kwargs)

    decorator.__name__ = operator.job_kind.decorator
    decorator.__doc__ = (f"Wrap a function into a SageMaker {operator.job_kind.name} task.\n\n"
                         ":param step: the key of this task's settings under ``steps``.\n"
                         ":param mode: ``local`` or ``sagemaker`` (default: the ``mode`` param).\n"
                         "Other keyword arguments go to the operator (``retries``, ``task_id``...).")
    return decorator  # type: ignore[return-value]


OPERATORS = {kind.name: operator_class(kind) for kind in KINDS}
DECORATORS = {op.job_kind.decorator: _factory(op) for op in OPERATORS.values()}
globals().update(DECORATORS)
globals().update({op.__name__: op for op in OPERATORS.values()})

if TYPE_CHECKING:  # the decorators made above, for editors and type checkers
    sm_processing: JobDecorator
    sm_training: JobDecorator
    sm_tuning: JobDecorator
    sm_transform: JobDecorator
    sm_register: JobDecorator
    sm_endpoint: JobDecorator


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'smtask.decorators' has no attribute {name!r} (its "
                         f"decorators: {', '.join(DECORATORS)})")
