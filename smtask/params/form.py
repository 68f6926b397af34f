"""The trigger form's own fields, and the types a config's defaults give its steps' keys.

A run usually changes a few settings: a training step's hyperparameters, the instances. Each
of those gets a field of its own in "Trigger DAG w/ config", typed from its default in
config.json, titled, in its step's section; ``steps`` stays the advanced JSON for the rest.
A field is a top-level key of the run's conf named by its key path
(``steps.trainer.hyperparameters.max_depth``): its value reaches the job as the same key
under ``steps`` would; where a conf gives both, ``steps`` wins (see :func:`fold_fields`).

The config's ``form`` says more, keyed by ``<step>.<key path>``:

- ``{"title", "description", "type", "enum", "minimum", "maximum"}``: a field for that key
  (any key whose default is one value), its words, and its type where the default's is too
  narrow (``"type": ["integer", "string"]`` for a script that also takes ``"auto"``);
- ``false``: no field for that key; ``"<step>": false``: the step is free-form (no fields,
  its keys untyped).

The types hold wherever the key is given: in a field, under ``steps`` in a conf, in
``smtask validate``. Imports nothing of Airflow or the SDK.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from smtask.naming import key_path
from smtask.params.merge import NEVER, PROTECTED, allowed_overrides, deep_merge

# what gets a field without a form entry: each hyperparameter, and these keys of a step
FIELD_KEYS = ("instance_type", "instance_count")
_RESTRICTIONS = ("type", "enum", "minimum", "maximum")


class Field(NamedTuple):
    """One field of the form: the key under ``steps`` it sets, its default, its schema. (A
    NamedTuple: a dataclass costs every parse of a DAG file 0.5 ms more to define.)"""

    step: str
    path: tuple[str, ...]
    default: Any
    schema: dict[str, Any]
    description: str

    @property
    def key(self) -> str:
        """The field's name in the conf: its key path from the top."""
        return ".".join(("steps", self.step, *self.path))


def value_schema(value: Any) -> dict[str, Any] | None:
    """The JSON Schema type of a default, or None where any value goes (a null default)."""
    for python, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                         (list, "array"), (Mapping, "object")):
        if isinstance(value, python):
            return {"type": name}
    return None


def _hyperparameter(value: Any) -> dict[str, Any] | None:
    """A hyperparameter's type from its default: SageMaker passes every value as a string, so
    a string default (``"30"``, as the seeds write them) takes a number too; a number's or a
    boolean's takes only its own type."""
    typed = value_schema(value)
    return {"type": ["string", "number"]} if typed == {"type": "string"} else typed


def _entries(form: Any) -> dict[str, Any]:
    return dict(form) if isinstance(form, Mapping) else {}


def _step_entries(form: Any, step: str) -> dict[tuple[str, ...], Any]:
    """The form's entries for one step: key path -> entry."""
    return {tuple(name.split("."))[1:]: entry for name, entry in _entries(form).items()
            if name.split(".")[0] == step and "." in name}


def free_form(form: Any, step: str) -> bool:
    return _entries(form).get(step) is False


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        cfg = cfg.get(key) if isinstance(cfg, Mapping) else None
    return cfg


def _restricted(schema: dict[str, Any] | None, entry: Any) -> dict[str, Any] | None:
    """A key's schema as its form entry restricts or widens it."""
    if not isinstance(entry, Mapping) or not any(k in entry for k in _RESTRICTIONS):
        return schema
    return {**(schema or {}), **{k: entry[k] for k in _RESTRICTIONS if k in entry}}


def typed_step(cfg: Mapping[str, Any], form: Any, step: str, plain: bool) -> dict[str, Any] | None:
    """What the step's defaults say of the values a run may give it, or None (free-form).

    A plain task's step: each key typed from its default (nested objects' keys too), an
    unknown key refused. An smtask step (whose kind's schema knows its keys): each
    hyperparameter typed from its default. Either way, a form entry's type wins.
    """
    if free_form(form, step):
        return None
    entries = _step_entries(form, step)
    if plain:
        schema = _typed_object(cfg, entries, ())
        return {**schema, "maxProperties": 100, "additionalProperties": False}
    given = cfg.get("hyperparameters")
    hyperparameters = {name: typed for name, value in
                       (given.items() if isinstance(given, Mapping) else ())
                       if (typed := _restricted(_hyperparameter(value),
                                                entries.get(("hyperparameters", name))))}
    own: dict[str, Any] = {"type": "object", "properties": {}}
    if hyperparameters:
        own["properties"]["hyperparameters"] = {"type": "object", "properties": hyperparameters}
    for path, entry in entries.items():  # a form entry's type for another key of the step
        if path[0] != "hyperparameters" and (typed := _restricted(None, entry)):
            _put(own, path, typed)
    return own if own["properties"] else None


def _typed_object(cfg: Mapping[str, Any], entries: Mapping[tuple[str, ...], Any],
                  where: tuple[str, ...]) -> dict[str, Any]:
    properties = {}
    for key, value in cfg.items():
        path = (*where, key)
        typed = _typed_object(value, entries, path) if isinstance(value, Mapping) else \
            value_schema(value)
        # a null default: a known key that takes any value
        properties[key] = _restricted(typed, entries.get(path)) or {}
    return {"type": "object", "properties": properties}


def _put(schema: dict[str, Any], path: tuple[str, ...], leaf: dict[str, Any]) -> None:
    for key in path[:-1]:
        schema = schema["properties"].setdefault(key, {"type": "object", "properties": {}})
    schema["properties"][path[-1]] = leaf


def typed_steps(params: Mapping[str, Any], smtask_steps: Iterable[str]) -> dict[str, Any]:
    """step -> :func:`typed_step` for every configured step with types."""
    steps, form, ours = params.get("steps"), params.get("form"), set(smtask_steps)
    found = {}
    for step, cfg in (steps.items() if isinstance(steps, Mapping) else ()):
        if isinstance(cfg, Mapping) and (typed := typed_step(cfg, form, step, step not in ours)):
            found[step] = typed
    return found


def fields(params: Mapping[str, Any]) -> dict[str, Field]:
    """The form's fields, by their conf key, from the config's steps and its ``form``."""
    steps, form = params.get("steps"), params.get("form")
    found: dict[str, Field] = {}
    for step, cfg in (steps.items() if isinstance(steps, Mapping) else ()):
        if not isinstance(cfg, Mapping) or free_form(form, step):
            continue
        entries = _step_entries(form, step)
        given = cfg.get("hyperparameters")
        paths = [*(("hyperparameters", k) for k in (given if isinstance(given, Mapping) else ())),
                 *((k,) for k in FIELD_KEYS if k in cfg),
                 *(p for p, e in entries.items() if isinstance(e, Mapping))]
        for path in dict.fromkeys(paths):
            entry, default = entries.get(path), _get(cfg, path)
            typed = _restricted(value_schema(default), entry)
            if entry is False or typed is None or typed.get("type") in ("array", "object"):
                continue
            words = entry if isinstance(entry, Mapping) else {}
            what = f"hyperparameter {key_path(*path[1:])}" if path[0] == "hyperparameters" \
                else key_path(*path)
            field = Field(step, path, default, _field_schema(step, path, typed, words),
                          words.get("description") or
                          f"{what} of step {step} (config.json: {json.dumps(default)})")
            found[field.key] = field
    return found


def _field_schema(step: str, path: tuple[str, ...], typed: dict[str, Any],
                  words: Mapping[str, Any]) -> dict[str, Any]:
    kinds = typed["type"] if isinstance(typed["type"], list) else [typed["type"]]
    schema = {**typed, "type": [*kinds, "null"], "title": words.get("title", path[-1]),
              "section": f"step {step}"}
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


def form_problems(params: Mapping[str, Any]) -> Iterable[str]:
    """What is wrong with the config's ``form`` beyond its schema: an entry for a step or key
    the config lacks, a field for a key a run's conf may not change, a field holding more than
    one value."""
    from smtask import schema as dialect
    from smtask.params.schemas import FORM

    shape = [dialect.problem(e, ("form",)) for e in dialect.errors(params.get("form", {}), FORM)]
    if shape:
        yield from shape
        return
    steps, allowed = params.get("steps"), allowed_overrides(params)
    steps = steps if isinstance(steps, Mapping) else {}
    for name, entry in sorted(_entries(params.get("form")).items()):
        step, *path = name.split(".")
        where = key_path("form", name)
        if step not in steps:
            yield f"{where}: no step {step} in steps (known: {', '.join(sorted(steps)) or 'none'})"
            continue
        if not path:
            if entry is not False:
                yield f"{where}: a whole step takes only false (free-form)"
            continue
        default = _get(steps[step], tuple(path))
        if default is None:
            yield f"{where}: steps.{name} has no default in the config"
        elif isinstance(entry, Mapping) and isinstance(default, (list, Mapping)):
            yield f"{where}: steps.{name} holds {type(default).__name__}, a field one value"
        elif isinstance(entry, Mapping) and _protected(f"steps.{name}", allowed):
            yield (f"{where}: steps.{name} is a key a run's conf may not change, so no field "
                   "may set it")
        elif isinstance(entry, Mapping) and (typed := _restricted(value_schema(default), entry)):
            refused = dialect.errors(default, typed)
            if refused:
                yield f"{where}: refuses the config's own value: {dialect.problem(refused[0])}"


def _protected(path: str, allowed: list[str]) -> bool:
    """A protected key, or a key inside one (``steps.trainer.image.framework``), unless the
    author allows it; patterns match key by key (a ``*`` never spans a dot)."""
    def under(pattern: str) -> bool:
        keys, parts = path.split("."), pattern.split(".")
        return len(keys) >= len(parts) and all(map(_key_matches, keys, parts))

    return any(map(under, [*PROTECTED, *NEVER])) and not any(map(under, allowed))


def _key_matches(key: str, part: str) -> bool:
    """fnmatch's rule for one key, without compiling a regex for a plain key or a lone ``*``
    (most of them: each compile is paid again by every parse of a DAG file)."""
    if part == "*":
        return True
    if not any(c in part for c in "*?["):
        return key == part
    return fnmatch.fnmatchcase(key, part)


def fold_fields(conf: dict[str, Any], defaults: Mapping[str, Any],
                found: Mapping[str, Field]) -> tuple[dict[str, Any], list[str]]:
    """The run's conf with its fields' values moved under ``steps``; and the problems (a
    ``steps.``-named key that is no field).

    The trigger form sends every field, changed or not: a field whose value is its default,
    or null, sets nothing. A changed field sets its key unless the conf's ``steps`` sets the
    same key to a value other than the default: the explicit ``steps`` wins.
    """
    problems, folded = [], dict(conf)
    default_steps = defaults.get("steps") if isinstance(defaults.get("steps"), Mapping) else {}
    for key in [k for k in folded if isinstance(k, str) and k.startswith("steps.")
                and (k in found or k not in defaults)]:  # else a param of the DAG's author
        value, field = folded.pop(key), found.get(key)
        if field is None:
            fields_of = ", ".join(sorted(found)[:8]) or "none"
            problems.append(f"{key_path(key)}: no field of this DAG's form (fields: {fields_of}"
                            f"{', ...' if len(found) > 8 else ''}); set it under steps")
            continue
        if value is None or _same(value, field.default):
            continue
        given, path = folded.get("steps"), (field.step, *field.path)
        if not _foldable(given, path):
            continue  # steps holds a value where the field's key would go: refused as it is
        explicit = _get(given, path)
        if explicit is not None and not _same(explicit, _get(default_steps, path)):
            continue
        for key in reversed(path):
            value = {key: value}
        folded["steps"] = deep_merge(given or {}, value)
    return folded, problems


def _foldable(tree: Any, path: tuple[str, ...]) -> bool:
    """Whether ``path`` can be set in ``tree`` without replacing a value that is no mapping."""
    for key in path[:-1]:
        if tree is None:
            return True
        if not isinstance(tree, Mapping):
            return False
        tree = tree.get(key)
    return tree is None or isinstance(tree, Mapping)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are one number (a browser's JSON writes 1.0 as 1);
    true and 1 are not."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a == b if numbers else (type(a) is type(b) and a == b)
