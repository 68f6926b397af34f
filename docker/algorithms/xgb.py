"""XGBoost stand-in: the xgboost package, run as AWS's XGBoost algorithm container runs it.

Channels ``train`` (required) and ``validation``: CSV (label first, no header), LIBSVM or
RecordIO-protobuf. Each round prints ``[i]#011train-<metric>:<v>#011validation-<metric>:<v>``
(the tab as CloudWatch shows it, ``#011``, so AWS's metric regexes match the local log too).
The model is ``xgboost-model``; inference answers CSV (one score per line; a row of class
probabilities for ``multi:softprob``) or JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from algorithms import (
    CSV,
    LIBSVM,
    RECORDIO,
    ClientError,
    Unsupported,
    channels,
    hp,
    inference_features,
    log,
    media_type,
    parse_body,
)

_FLOAT = {name: hp("float", None) for name in (
    "alpha", "base_score", "colsample_bylevel", "colsample_bynode", "colsample_bytree", "eta",
    "gamma", "lambda", "lambda_bias", "max_delta_step", "min_child_weight", "rate_drop",
    "scale_pos_weight", "sketch_eps", "skip_drop", "subsample", "tweedie_variance_power")}
_INT = {name: hp("int", None, low=0) for name in (
    "early_stopping_rounds", "max_bin", "max_depth", "max_leaves", "nthread", "num_class",
    "num_parallel_tree", "one_drop", "seed", "verbosity", "csv_weights")}
_STR = {name: hp("str", None) for name in (
    "booster", "eval_metric", "grow_policy", "interaction_constraints", "monotone_constraints",
    "normalize_type", "objective", "process_type", "refresh_leaf", "sample_type",
    "tree_method", "updater")}
HYPERPARAMETERS = {"num_round": hp("int", low=1), **_FLOAT, **_INT, **_STR}
_NOT_PARAMS = ("num_round", "early_stopping_rounds", "csv_weights", "eval_metric")


def _matrix(features: Any, labels: Any = None) -> Any:
    import xgboost

    return xgboost.DMatrix(features, label=labels)


def train(hps: dict[str, Any], model_dir: Path) -> None:
    import xgboost

    objective = hps["objective"] or "reg:squarederror"
    if objective.startswith("multi:") and not hps["num_class"]:
        raise ClientError(f"Missing required hyperparameter(s): num_class (objective {objective})")
    found = channels(("train", "validation"), LIBSVM, (CSV, LIBSVM, RECORDIO))
    params = {k: v for k, v in hps.items() if v is not None and k not in _NOT_PARAMS}
    params["objective"] = objective
    if hps["eval_metric"]:
        params["eval_metric"] = hps["eval_metric"].split(",")
    evals = [(_matrix(*found[name]), name) for name in ("train", "validation") if name in found]

    class PrintRound(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
            fields = [f"{data}-{metric}:{values[-1]:.5f}"
                      for data, metrics in evals_log.items() for metric, values in metrics.items()]
            log(f"[{epoch}]#011" + "#011".join(fields))
            return False

    try:
        booster = xgboost.train(params, evals[0][0], num_boost_round=hps["num_round"],
                                evals=evals, verbose_eval=False, callbacks=[PrintRound()],
                                early_stopping_rounds=hps["early_stopping_rounds"]
                                if "validation" in found else None)
    except xgboost.core.XGBoostError as exc:
        raise ClientError(f"XGBoost: {str(exc).splitlines()[0]}") from None
    booster.save_model(str(model_dir / "xgboost-model.json"))


def load(model_dir: Path, hps: dict[str, Any]) -> Any:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(model_dir / "xgboost-model.json"))
    return booster


def invoke(model: Any, hps: dict[str, Any], body: bytes, content_type: str,
           accept: str) -> tuple[bytes, str]:
    kind, _ = media_type(content_type)
    if kind == LIBSVM:
        features = parse_body(body, content_type, 0)[0]
    else:
        features = inference_features(body, content_type, None)
    if features.shape[0] == 0:
        return b"", CSV
    scores = model.predict(_matrix(features))
    accept_kind, _ = media_type(accept or CSV)
    if accept_kind in (CSV, "*/*", ""):
        lines = [",".join(f"{v:g}" for v in np.atleast_1d(row)) for row in scores]
        return "\n".join(lines).encode(), CSV
    if accept_kind in ("application/json", "application/jsonlines"):
        items = [{"score": row.tolist() if np.ndim(row) else float(row)} for row in scores]
        if accept_kind == "application/json":
            return json.dumps({"predictions": items}).encode(), accept_kind
        return "\n".join(json.dumps(i) for i in items).encode(), accept_kind
    raise Unsupported(f"accept {accept!r} is not supported (text/csv, application/json, "
                      "application/jsonlines)")
