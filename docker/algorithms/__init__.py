"""Local stand-ins for AWS's built-in algorithms: the same contract, not the same algorithms.

``train`` (the image run as ``<image> train``, as SageMaker runs an algorithm image) reads
``$SMTASK_ALGORITHM`` (set by smtask in local mode), the job's hyperparameters
(``/opt/ml/input/config/hyperparameters.json``, every value a string) and channels
(``inputdataconfig.json``: each channel's ContentType; CSV with the label in the first column
and no header, or RecordIO-protobuf), checks the hyperparameters the way AWS does (a missing
required or unknown one fails the job, named), trains, prints its metrics in the lines AWS's
algorithm logs (so the standard metric regexes read them) and writes ``/opt/ml/model``:
``smtask-algorithm.json`` and the algorithm's model files, which ``serve`` loads.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from algorithms import recordio

ML = Path(os.environ.get("SMTASK_ML_ROOT", "/opt/ml"))
META = "smtask-algorithm.json"
MODULES = {"knn": "knn", "xgboost": "xgb", "linear-learner": "linear_learner",
           "factorization-machines": "factorization_machines"}
REQUIRED = object()
CSV, RECORDIO, LIBSVM = "text/csv", "application/x-recordio-protobuf", "text/libsvm"


class ClientError(Exception):
    """A problem of the job's settings or data (AWS's algorithms fail with "ClientError")."""


# --- hyperparameters ----------------------------------------------------------------------

def hp(kind: str, default: Any = REQUIRED, choices: tuple[Any, ...] = (), low: float | None = None,
       auto: bool = False) -> dict[str, Any]:
    """One hyperparameter: ``kind`` int, float, bool or str; ``auto`` also takes "auto"."""
    return {"kind": kind, "default": default, "choices": choices, "low": low, "auto": auto}


def _parse(name: str, raw: str, spec: dict[str, Any]) -> Any:
    text = str(raw).strip()
    if spec["auto"] and text == "auto":
        return "auto"
    try:
        if spec["kind"] == "int":
            value: Any = int(text)
        elif spec["kind"] == "float":
            value = float(text)
        elif spec["kind"] == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError
            value = text.lower() == "true"
        else:
            value = text
    except ValueError:
        raise ClientError(f"Invalid hyperparameter {name}: {raw!r} is not a valid "
                          f"{spec['kind']}") from None
    if spec["choices"] and value not in spec["choices"]:
        raise ClientError(f"Invalid hyperparameter {name}: {raw!r} is not one of "
                          f"{list(spec['choices'])}")
    if spec["low"] is not None and value < spec["low"]:
        raise ClientError(f"Invalid hyperparameter {name}: {raw!r} is below {spec['low']}")
    return value


def parse_hyperparameters(raw: dict[str, str], specs: dict[str, dict[str, Any]],
                          algorithm: str) -> dict[str, Any]:
    """Validated values, defaults filled in; AWS's messages for unknown and missing ones."""
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise ClientError(f"Additional hyperparameters are not allowed ({', '.join(unknown)} "
                          f"unexpected) for {algorithm}")
    missing = sorted(n for n, s in specs.items() if s["default"] is REQUIRED and n not in raw)
    if missing:
        raise ClientError(f"Missing required hyperparameter(s): {', '.join(missing)} "
                          f"({algorithm})")
    return {name: _parse(name, raw[name], spec) if name in raw else spec["default"]
            for name, spec in specs.items()}


# --- data ---------------------------------------------------------------------------------

MODEL_FILE = "model_algo-1.npz"  # a stand-in's model: named arrays in the model folder


def save_arrays(model_dir: Path, model: dict[str, Any]) -> None:
    np.savez(model_dir / MODEL_FILE, **model)


def load_arrays(model_dir: Path, hps: dict[str, Any]) -> dict[str, Any]:
    """A stand-in's ``load``: the arrays :func:`save_arrays` wrote."""
    with np.load(model_dir / MODEL_FILE) as saved:
        return dict(saved)


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``text/csv; label_size=1`` -> ("text/csv", {"label_size": "1"})."""
    kind, *options = (content_type or "").split(";")
    pairs = (o.split("=", 1) for o in options if "=" in o)
    kind = kind.strip().lower()
    return {"text/x-libsvm": LIBSVM, "application/x-libsvm": LIBSVM}.get(kind, kind), \
        {k.strip(): v.strip() for k, v in pairs}


def parse_body(body: bytes, content_type: str, label_size: int, feature_dim: int | None = None
               ) -> tuple[Any, np.ndarray]:
    """(features, labels) of one CSV, RecordIO-protobuf or LIBSVM body or file."""
    kind, options = media_type(content_type)
    if kind == CSV:
        label_size = int(options.get("label_size", label_size))
        text = body.decode("utf-8")
        rows = [line for line in text.splitlines() if line.strip()]
        if not rows:
            return np.zeros((0, feature_dim or 0), dtype="float32"), np.zeros(0)
        try:
            table = np.array([[float(x) for x in row.split(",")] for row in rows], dtype="float64")
        except ValueError as exc:
            raise ClientError(f"text/csv: {exc} (CSV is numbers only: no header)") from None
        labels = table[:, 0] if label_size else np.full(len(table), np.nan)
        return table[:, label_size:].astype("float32"), labels
    if kind == RECORDIO:
        import io

        try:
            features, labels = recordio.read_matrix(io.BytesIO(body))
        except (ValueError, IndexError, KeyError) as exc:
            raise ClientError(f"{RECORDIO}: {exc}") from None
        if labels is None:
            labels = np.full(features.shape[0], np.nan)
        return features, labels
    if kind == LIBSVM:
        import io

        from sklearn.datasets import load_svmlight_file

        features, labels = load_svmlight_file(io.BytesIO(body), n_features=feature_dim,
                                              dtype=np.float32)
        return features, labels
    raise ClientError(f"Content type {content_type!r} is not supported")


def read_channel(name: str, content_type: str, feature_dim: int | None = None) -> tuple[Any, Any]:
    """A channel's files (a folder, read in name order) as (features, labels)."""
    folder = ML / "input" / "data" / name
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ClientError(f"channel {name!r} holds no data files ({folder})")
    parts = [parse_body(f.read_bytes(), content_type, 1, feature_dim) for f in files]
    features = [p[0] for p in parts]
    labels = np.concatenate([p[1] for p in parts])
    if any(hasattr(f, "tocsr") for f in features):
        import scipy.sparse

        return scipy.sparse.vstack([scipy.sparse.csr_matrix(f) for f in features]).tocsr(), labels
    return np.vstack(features), labels


def check_feature_dim(features: Any, feature_dim: Any, channel: str) -> None:
    if feature_dim != "auto" and features.shape[1] != feature_dim:
        raise ClientError(f"feature_dim is {feature_dim} but channel {channel!r} has "
                          f"{features.shape[1]} features")


def dense(features: Any) -> np.ndarray:
    return features.toarray() if hasattr(features, "toarray") else np.asarray(features)


# --- logs ---------------------------------------------------------------------------------

def host() -> str:
    try:
        return str(json.loads((ML / "input/config/resourceconfig.json").read_text())["current_host"])
    except (OSError, ValueError, KeyError):
        return "algo-1"


def log(message: str) -> None:
    """A line as AWS's algorithms log them: ``[date time INFO pid] message``."""
    now = datetime.datetime.now().strftime("%m/%d/%Y %H:%M:%S")
    print(f"[{now} INFO {os.getpid()}] {message}", flush=True)


def quality_metric(channel: str, name: str, value: float, loss: bool, epoch: int | None = None
                   ) -> None:
    """``#quality_metric: host=algo-1, [epoch=N, ]<channel> <name> <score|loss>=<value>``."""
    where, value = f"epoch={epoch}, " if epoch is not None else "", float(value)
    if epoch is None:
        log(f"#{channel}_score ({host()}) : ({name!r}, {value!r})")
    log(f"#quality_metric: host={host()}, {where}{channel} {name} "
        f"<{'loss' if loss else 'score'}>={value}")


# --- train and serve ----------------------------------------------------------------------

def module(algorithm: str) -> Any:
    if algorithm not in MODULES:
        raise ClientError(f"no local stand-in for algorithm {algorithm!r} (stand-ins: "
                          f"{', '.join(MODULES)}); set SMTASK_ALGORITHM")
    return importlib.import_module(f"algorithms.{MODULES[algorithm]}")


def channels(names: tuple[str, ...], default_type: str, allowed: tuple[str, ...],
             feature_dim: int | None = None) -> dict[str, tuple[Any, Any]]:
    """The job's channels among ``names`` as (features, labels), by their ContentType."""
    config = json.loads((ML / "input/config/inputdataconfig.json").read_text())
    found = {}
    for name in names:
        if name not in config:
            continue
        kind, _ = media_type(config[name].get("ContentType") or default_type)
        if kind not in allowed:
            raise ClientError(f"Content type {config[name].get('ContentType')!r} of channel "
                              f"{name!r} is not supported (supported: {', '.join(allowed)})")
        found[name] = read_channel(name, config[name].get("ContentType") or default_type,
                                   feature_dim)
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise ClientError(f"unexpected channel(s) {unknown}: this algorithm reads {list(names)}")
    if "train" not in found:
        raise ClientError("the train channel is required")
    return found


def train(algorithm: str | None = None) -> None:
    algorithm = algorithm or os.environ.get("SMTASK_ALGORITHM", "")
    stand_in = module(algorithm)
    raw = json.loads((ML / "input/config/hyperparameters.json").read_text())
    hps = parse_hyperparameters(raw, stand_in.HYPERPARAMETERS, algorithm)
    shown = {k: v for k, v in hps.items() if v is not None}
    log(f"smtask local stand-in for the {algorithm} algorithm (not AWS's): {json.dumps(shown)}")
    model_dir = ML / "model"
    stand_in.train(hps, model_dir)
    (model_dir / META).write_text(json.dumps({"algorithm": algorithm, "hyperparameters": hps}))


def main(argv: list[str]) -> int:
    try:
        train()
    except ClientError as exc:
        message = f"ClientError: {exc}"
        try:
            (ML / "output").mkdir(parents=True, exist_ok=True)
            (ML / "output" / "failure").write_text(message)
        except OSError:
            pass
        print(message, file=sys.stderr, flush=True)
        return 1
    return 0


class Predictor:
    """A stand-in's model as ``serve`` uses it: ``invoke(body, content_type, accept)``."""

    def __init__(self, model_dir: Path) -> None:
        meta = json.loads((model_dir / META).read_text())
        self.algorithm, self.hps = meta["algorithm"], meta["hyperparameters"]
        self.stand_in = module(self.algorithm)
        self.model = self.stand_in.load(model_dir, self.hps)

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[bytes, str]:
        return self.stand_in.invoke(self.model, self.hps, body, content_type or CSV, accept)


def answer(predictions: list[dict[str, Any]], accept: str) -> tuple[bytes, str]:
    """The Amazon algorithms' answers: application/json ``{"predictions": [...]}`` (the
    default), application/jsonlines, or RecordIO-protobuf (each key a label tensor)."""
    kind, options = media_type(accept or "application/json")
    if kind in ("application/json", "*/*", ""):
        return json.dumps({"predictions": predictions}).encode(), "application/json"
    if kind == "application/jsonlines":
        # no newline after the last line: assemble_with Line adds one per answer
        return "\n".join(json.dumps(p) for p in predictions).encode(), kind
    if kind == RECORDIO:
        import io

        out = io.BytesIO()
        for p in predictions:  # each answer a Record whose label map holds float32 tensors
            record = b"".join(
                recordio._field(2, recordio._field(1, k.encode()) + recordio._field(
                    2, recordio._tensor(np.atleast_1d(np.asarray(v, dtype="float32")))))
                for k, v in p.items() if isinstance(v, (int, float, list)))
            recordio._write_recordio(out, record)
        return out.getvalue(), RECORDIO
    raise Unsupported(f"accept {accept!r} is not supported (application/json, "
                      f"application/jsonlines, {RECORDIO})")


class Unsupported(ClientError):
    """A request the algorithm does not answer (HTTP 415)."""


def inference_features(body: bytes, content_type: str, feature_dim: Any) -> Any:
    """Features of an inference request: CSV (features only), JSON, JSON lines, RecordIO."""
    kind, _ = media_type(content_type)
    dim = feature_dim if isinstance(feature_dim, int) else None
    if kind in ("application/json", "application/jsonlines"):
        text = body.decode("utf-8")
        items = json.loads(text)["instances"] if kind == "application/json" else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = [i["features"] if "features" in i else i["data"]["features"]["values"]
                for i in items]
        return np.asarray(rows, dtype="float32")
    if kind not in (CSV, RECORDIO):
        raise Unsupported(f"content type {content_type!r} is not supported")
    return parse_body(body, content_type, 0, dim)[0]


Metric = Callable[[np.ndarray, np.ndarray], float]
