"""The building blocks of the params' JSON schemas (each kind's module builds its step's
schema from them) and the schema of the top level. Lengths and patterns are SageMaker's API's
(where it says), so that what the API would refuse fails here, named, before any job.

Imports nothing of Airflow or the SDK (the kinds' declarations use it).
"""

from __future__ import annotations

from typing import Any

from smtask.schema import RULE

MODES = ("local", "sagemaker")
MODE_ENV = "SMTASK_MODE"


def string(max_length: int, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **schema}


# SageMaker's own patterns, so that what its API would refuse fails here, named, before any job.
# Its ".*" (hyperparameters) admits no line terminator.
ONE_LINE = "^[^\n\r\u0085\u2028\u2029]*$"
ONE_LINE_RULE = "is more than one line (SageMaker refuses line breaks in hyperparameters)"
# Tags: letters, digits, spaces and _ . : / = + - @ (AWS: [\p{L}\p{Z}\p{N}_.:/=+\-@]), no "aws:" key.
TAG_TEXT = "[\\w .:/=+@\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000-]*$"
TAG_RULE = "has a character AWS's tags refuse (letters, digits, spaces, _ . : / = + - @ only)"
TAGS = {"type": "object", "maxProperties": 50,
        "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": f"^(?!aws:){TAG_TEXT}",
                          RULE: TAG_RULE + "; a key may not start with aws:"},
        "additionalProperties": string(256, pattern=f"^{TAG_TEXT}", **{RULE: TAG_RULE})}


def environment(value_max: int, entries: int = 100) -> dict[str, Any]:
    """A job's environment as SageMaker takes it: names ``[A-Za-z_][A-Za-z0-9_]*``; values
    of any characters (they reach the job literally, in both modes), at most ``value_max``."""
    return {"type": "object", "maxProperties": entries,
            "propertyNames": {"maxLength": 256, "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                              RULE: "is not a variable name ([A-Za-z_][A-Za-z0-9_]*, as SageMaker "
                                    "takes them)"},
            "additionalProperties": string(value_max)}


# Lengths as SageMaker's API allows them (where it says), so a huge string fails here, named.
NAME = string(256)
# An image URI, or an AWS image by framework (resolved with the SDK's image_uris.retrieve);
# one schema for both (not anyOf) so that an unknown key is named.
IMAGE = {
    "type": ["string", "object"], "maxLength": 256, "required": ["framework"],
    "additionalProperties": False,
    "properties": {"framework": string(64), "version": string(64), "region": string(64),
                   "py_version": string(16)},
}
PATH = string(1024)
# A MIME type (RFC 6838's names; parameters such as "; label_size=0"): SageMaker takes any
# string, but the SDK's training driver writes a channel's into a shell file it sources.
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
MIME_TYPE = string(256, pattern=rf'^{_TOKEN}/{_TOKEN}( *; *{_TOKEN}=({_TOKEN}|"[^"\'\\\\]*"))*$',
                   **{RULE: "is not a MIME type (type/subtype, then any ; name=value)"})
# a file:// URI names no host: file://data/x would mean /x to smtask and data/x to the SDK
URI = string(1024, pattern="^(s3://[^/]|file:///)",
             **{RULE: "is not an s3://bucket/... or file:///... URI"})
# a model's container environment (local.models, a transform's model): SageMaker's limits
ENVIRONMENT = environment(1024)
# an s3:// or file:/// URI, or a path (no scheme) relative to the config's folder
URI_OR_PATH = string(1024, pattern="^(s3://[^/]|file:///|[^:]*$)")
POSITIVE = {"type": "integer", "minimum": 1}

# The trigger form's entries (smtask.params.form): "<step>.<key path>" -> false (no field;
# a whole step: free-form), or the field's words and the type it takes.
_FORM_TYPES = ["string", "integer", "number", "boolean"]
FORM_ENTRY = {
    "type": ["object", "boolean"], "not": {"const": True}, "additionalProperties": False,
    "properties": {
        "title": string(200),
        "description": string(1000),
        "type": {"anyOf": [{"enum": _FORM_TYPES},
                           {"type": "array", "items": {"enum": _FORM_TYPES}, "minItems": 1}]},
        "enum": {"type": "array", "minItems": 1, "maxItems": 100,
                 "items": {"type": ["string", "number", "boolean"]}},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
    },
}
FORM = {"type": "object", "maxProperties": 500,
        "propertyNames": {"maxLength": 512, "pattern": "^[^.]+([.][^.]+)*$",
                          RULE: "is not <step> or <step>.<key path>"},
        "additionalProperties": FORM_ENTRY}

# What each top-level key may hold. Unknown keys are rejected: a typo must not pass silently.
TOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pipeline_name", "steps"],
    "additionalProperties": False,
    "properties": {
        "pipeline_name": {"type": "string"},  # its form: NAME_RULES["pipeline"]
        "mode": {"type": "string", "enum": list(MODES)},
        "role": string(2048),
        "image": IMAGE,
        "artifacts": URI,
        "code_root": PATH,
        "aws_conn_id": NAME,
        "region_name": NAME,
        "tags": TAGS,
        "sdk_telemetry": {"type": "boolean"},
        "validate_role": {"type": "boolean"},
        "conf_may_override": {"type": "array", "maxItems": 100, "items": string(256)},
        "form": FORM,
        "local": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "image": NAME,
                "artifacts": URI,
                "s3_endpoint": string(1024, pattern="^https?://"),
                # existing models for local mode: name -> model data + image (names:
                # NAME_RULES["model"]); SageMaker mode uses the models SageMaker has
                "models": {
                    "type": "object",
                    "maxProperties": 100,
                    "additionalProperties": {
                        "type": "object",
                        "required": ["model_data"],
                        "additionalProperties": False,
                        "properties": {"model_data": URI_OR_PATH, "image": NAME,
                                       "environment": ENVIRONMENT},
                    },
                },
            },
        },
        "steps": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}

COMMON_STEP_KEYS: dict[str, Any] = {
    "image": IMAGE,
    "instance_type": NAME,
    "instance_count": POSITIVE,
    "volume_size_gb": POSITIVE,
    "max_runtime_seconds": POSITIVE,
    "environment": ENVIRONMENT,
    "tags": TAGS,
    # how the task waits (not sent to SageMaker)
    "wait_timeout_seconds": POSITIVE,
    "poll_max_seconds": {"type": "number", "exclusiveMinimum": 0},
    "if_job_failed": {"enum": ["rerun", "fail"]},
    "if_job_stopped": {"enum": ["rerun", "fail"]},  # stopped by someone else (a person)
    "if_job_completed": {"enum": ["reuse", "rerun"]},
    "on_kill": {"enum": ["auto", "stop", "leave"]},  # sagemaker mode; local mode always stops
    "deferrable": {"type": "boolean"},
}

CONTAINER_PATH = string(256, pattern="^/opt/ml/(?!(.*/)?[.][.](/|$))",
                        **{RULE: "is not a path under /opt/ml/ (and may not hold a .. segment)"})
CONTAINER_ARGS = {"type": "array", "items": string(256), "maxItems": 100}
# The script's own settings: free-form, handed to the container as a JSON file (see
# smtask.kinds.common.settings_source); its size is checked by the params validation.
SETTINGS = {"type": "object", "maxProperties": 100, "propertyNames": {"maxLength": 256}}
SETTINGS_MAX_BYTES = 64 * 1024
SETTINGS_ENV = "SMTASK_SETTINGS"

# A plain task's step (not smtask's): free-form settings, kept small (they are part of every
# task's params and of the trigger form); the params validation checks its size in bytes.
PLAIN_STEP = {"type": ["object", "null"], "maxProperties": 100}
PLAIN_STEP_MAX_BYTES = 64 * 1024


