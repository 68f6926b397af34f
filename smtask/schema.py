"""The JSON Schema dialect of smtask's params: draft 7, whose every error reads as one line,
``<key path>: <the rule>`` (``steps.trainer.hyperparameters: 2000 keys, at most 100``).

jsonschema's own text for an error appends the failing sub-schema and the whole value (a
steps schema of 300 lines, 2,000 hyperparameters): Airflow shows that text when it refuses a
run's conf at trigger time (REST 400, the trigger form). The params' schemas name this
dialect in ``$schema`` (:data:`DIALECT`), registered with jsonschema when this module is
imported: by the DAG's own import of smtask, and in every Airflow process that reads the
providers' info (the API server among them: ``smtask.provider`` imports this module). A
process without smtask validates them as the latest draft does, with jsonschema's long text.

Imports jsonschema only (no Airflow, no SDK).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft7Validator, ValidationError, validators

from smtask.naming import key_path, quoted

DIALECT = "https://smtask.readthedocs.io/schemas/params-draft-07"
# Annotations of smtask's own (JSON Schema ignores unknown keywords):
KEY = "x-smtask-key"  # at a Param schema's root: the key path it checks (``steps``, a field's)
RULE = "x-smtask-rule"  # beside a pattern: the rule in words ("one line", "a variable name")
WHAT = "x-smtask-what"  # beside propertyNames' enum: what the names are ("step")
_SIZES = {"maxProperties": ("keys", "at most"), "minProperties": ("keys", "at least"),
          "maxItems": ("items", "at most"), "minItems": ("items", "at least"),
          "maxLength": ("characters", "at most"), "minLength": ("characters", "at least")}
LINE = 200  # the longest line of one problem


def shown(value: Any, limit: int = 60) -> str:
    """A value as a refusal shows it: short, one line."""
    if isinstance(value, str):
        return quoted(value, limit)
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _listed(names: Any, limit: int = 12) -> str:
    names = sorted(str(n) for n in names)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def problem(error: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    """One refusal of ``error``: ``<key path>: <why>``, one line of at most :data:`LINE`."""
    path = [*prefix, *(str(p) for p in error.absolute_path)]
    rule, schema, instance = error.validator, error.schema, error.instance
    schema = schema if isinstance(schema, Mapping) else {}
    named = "propertyNames" in error.absolute_schema_path  # the error is about a key's name
    if named:
        path.append(instance if isinstance(instance, str) else str(instance))
    where = key_path(*path) or "<params>"
    if rule == "additionalProperties" and isinstance(instance, Mapping):
        allowed = schema.get("properties", {})
        unknown = sorted(k for k in instance if k not in allowed)
        return _cut(f"{key_path(*path, unknown[0])}: unknown key (known keys: {_listed(allowed)})"
                    + (f"; also unknown: {_listed(unknown[1:], 5)}" if unknown[1:] else ""))
    if rule == "required":
        return _cut(f"{key_path(*path, error.message.split(chr(39))[1])}: required key is missing")
    if rule == "dependencies":  # "'b' is a dependency of 'a'"
        missing, given = error.message.split("'")[1::2]
        return _cut(f"{key_path(*path, missing)}: required with {given}")
    if rule in _SIZES:
        unit, bound = _SIZES[rule]
        return _cut(f"{where}: {len(instance)} {unit}, {bound} {error.validator_value}")
    if rule == "enum" and named and schema.get(WHAT):
        return _cut(f"{where}: unknown {schema[WHAT]} (known: {_listed(error.validator_value, 30)})")
    if rule == "enum":  # null: "not given", never the point
        choices = [c for c in error.validator_value if c is not None]
        return _cut(f"{where}: {shown(instance)} is not one of {choices!r}")
    if rule == "pattern":
        why = schema.get(RULE) or f"does not match {error.validator_value}"
        return _cut(f"{where}: {shown(instance)} {why}")
    if rule == "type":
        kinds = error.validator_value if isinstance(error.validator_value, list) else \
            [error.validator_value]
        kinds = [k for k in kinds if k != "null"] or kinds  # null: "not given", never the point
        return _cut(f"{where}: {shown(instance)} is not of type {' or '.join(map(repr, kinds))}")
    if rule == "const":
        return _cut(f"{where}: may not be changed (it is {shown(error.validator_value)})")
    message = error.message if len(error.message) <= 120 else \
        f"{error.message[:60]}...{error.message[-40:]}"
    return _cut(f"{where}: {message}")


def _cut(line: str, limit: int = LINE) -> str:
    line = " ".join(line.split())  # one line whatever a value held
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OneLineError(ValidationError):
    """A jsonschema error whose text is :func:`problem`'s one line."""

    smtask_key: tuple[str, ...] = ()

    def __str__(self) -> str:
        return problem(self, self.smtask_key)


def _one_line(error: ValidationError) -> ValidationError:
    error.__class__ = OneLineError
    for inner in error.context or ():
        _one_line(inner)
    return error


def _wrap(keyword: Any) -> Any:
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        for error in keyword(validator, value, instance, schema) or ():
            yield _one_line(error)

    return check


@functools.lru_cache(maxsize=256)
def ecma(pattern: str) -> re.Pattern[str]:
    """``pattern`` as JSON Schema means it (ECMA 262): its ``$`` is the end of the text, where
    Python's ``$`` also matches before a last newline ("text/csv\\n" would pass ``...$``)."""
    out, escaped, in_class = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_META = {**copy.deepcopy(Draft7Validator.META_SCHEMA), "$id": DIALECT}
Validator = validators.create(
    meta_schema=_META,
    validators={name: _wrap(_pattern if name == "pattern" else fn)
                for name, fn in Draft7Validator.VALIDATORS.items()},
    # an integer is an integer: draft 7 counts 6.0 as one, which a job would get as "6.0"
    type_checker=Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)),
    format_checker=Draft7Validator.FORMAT_CHECKER,
    version="smtask-params-draft7",
)
_iter_errors = Validator.iter_errors


def _iter_with_key(self: Any, *args: Any, **kwargs: Any) -> Iterator[ValidationError]:
    """Each error learns the key path of the Param schema it came from (the root's
    :data:`KEY`: a top-level key, or a field's path as a list), so that its line starts from
    there (``steps.trainr``, ``steps.trainer.hyperparameters.max_depth``)."""
    key = self.schema.get(KEY) if isinstance(self.schema, Mapping) else None
    path = tuple(map(str, key)) if isinstance(key, list) else (key,) if isinstance(key, str) else ()
    for error in _iter_errors(self, *args, **kwargs):
        if path and isinstance(error, OneLineError) and not error.smtask_key:
            error.smtask_key = path
        yield error


Validator.iter_errors = _iter_with_key  # type: ignore[method-assign]
_check_schema = Validator.check_schema


@functools.lru_cache(maxsize=256)
def _checked_schema(text: str) -> None:
    _check_schema(json.loads(text))


def _check_schema_once(cls: Any, schema: Any, *args: Any, **kwargs: Any) -> None:
    """The metaschema check of a schema, made once per schema's content: Airflow checks a
    Param's schema each time it resolves the Param (jsonschema.validate), and the DAG
    processor dumps the DAG's params about ten times per serialization. It took 95% of the
    serialization of the example DAG (the steps schema: 11 KB). A schema the check refuses is
    refused every time (a failure is not cached)."""
    if args or kwargs:  # a format checker of the caller's own: checked as asked
        _check_schema(schema, *args, **kwargs)
    else:
        _checked_schema(json.dumps(schema, sort_keys=True, default=repr))


Validator.check_schema = classmethod(_check_schema_once)  # type: ignore[assignment,method-assign]


def errors(value: Any, schema: Mapping[str, Any]) -> list[ValidationError]:
    """Every error of ``value`` against ``schema`` (this dialect), in key order."""
    return sorted(Validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.path])
