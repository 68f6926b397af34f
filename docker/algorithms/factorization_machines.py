"""Factorization-machines stand-in: a second-order factorization machine in numpy/scipy.

``y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j`` over sparse float32 features, as
AWS's algorithm models it: trained on RecordIO-protobuf only (its only training format),
``binary_classifier`` (logistic loss, score = sigmoid) or ``regressor`` (squared loss), with
separate init, learning rate and weight decay for the bias, the linear terms and the factors,
by Adam over ``mini_batch_size`` batches for ``epochs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from algorithms import (
    RECORDIO,
    ClientError,
    answer,
    channels,
    check_feature_dim,
    hp,
    inference_features,
    load_arrays,
    quality_metric,
    save_arrays,
)

_INIT = ("normal", "uniform", "constant")
HYPERPARAMETERS = {
    "feature_dim": hp("int", low=1),
    "num_factors": hp("int", low=1),
    "predictor_type": hp("str", choices=("binary_classifier", "regressor")),
    "epochs": hp("int", 1, low=1),
    "mini_batch_size": hp("int", 1000, low=1),
    "eps": hp("float", 1e-8),
    "clip_gradient": hp("float", None),
    "rescale_grad": hp("float", None),
    **{f"{part}_{key}": spec for part, lr, wd, sigma in (
        ("bias", 0.1, 0.01, 0.01), ("linear", 0.001, 0.001, 0.01),
        ("factors", 0.0001, 0.00001, 0.001))
       for key, spec in (("lr", hp("float", lr, low=0)), ("wd", hp("float", wd, low=0)),
                         ("init_method", hp("str", "normal", choices=_INIT)),
                         ("init_sigma", hp("float", sigma, low=0)),
                         ("init_scale", hp("float", None, low=0)),
                         ("init_value", hp("float", None)))},
}


def _init(hps: dict[str, Any], part: str, shape: tuple[int, ...], rng: Any) -> np.ndarray:
    method = hps[f"{part}_init_method"]
    if method == "constant":
        return np.full(shape, hps[f"{part}_init_value"] or 0.0)
    if method == "uniform":
        scale = hps[f"{part}_init_scale"] if hps[f"{part}_init_scale"] is not None else 0.01
        return rng.uniform(-scale, scale, shape)
    return rng.normal(0.0, hps[f"{part}_init_sigma"], shape)


def _forward(model: dict[str, Any], x: Any) -> tuple[np.ndarray, np.ndarray]:
    """(output per row, x @ V) for a CSR matrix ``x``."""
    xv = np.asarray(x @ model["factors"])
    squares = np.asarray(x.multiply(x) @ (model["factors"] ** 2))
    pairwise = 0.5 * (xv ** 2 - squares).sum(axis=1)
    return model["bias"][0] + np.asarray(x @ model["linear"]).ravel() + pairwise, xv


def _score(hps: dict[str, Any], z: np.ndarray) -> np.ndarray:
    if hps["predictor_type"] == "binary_classifier":
        return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
    return z


def train(hps: dict[str, Any], model_dir: Path) -> None:
    found = channels(("train", "test"), RECORDIO, (RECORDIO,), hps["feature_dim"])
    for name, (features, labels) in found.items():
        check_feature_dim(features, hps["feature_dim"], name)
        if np.isnan(labels).any():
            raise ClientError(f"the {name} channel has records without a label")
        if hps["predictor_type"] == "binary_classifier" and not np.isin(labels, (0, 1)).all():
            raise ClientError(f"binary_classifier labels must be 0 or 1 ({name} channel)")
    x = scipy.sparse.csr_matrix(found["train"][0], dtype="float64")
    y = found["train"][1]
    rng = np.random.default_rng(0)
    d, k = hps["feature_dim"], hps["num_factors"]
    model = {"bias": _init(hps, "bias", (1,), rng), "linear": _init(hps, "linear", (d,), rng),
             "factors": _init(hps, "factors", (d, k), rng)}
    parts = ("bias", "linear", "factors")
    moments = {p: (np.zeros_like(model[p]), np.zeros_like(model[p])) for p in parts}
    step = 0
    for epoch in range(hps["epochs"]):
        order = rng.permutation(len(y))
        for start in range(0, len(y), hps["mini_batch_size"]):
            batch = order[start:start + hps["mini_batch_size"]]
            xb, yb = x[batch], y[batch]
            z, xv = _forward(model, xb)
            g = (_score(hps, z) - yb) if hps["predictor_type"] == "binary_classifier" \
                else 2 * (z - yb)
            g = g * (hps["rescale_grad"] or 1.0) / len(batch)
            grads = {
                "bias": np.array([g.sum()]),
                "linear": np.asarray(xb.T @ g).ravel(),
                "factors": np.asarray(xb.T @ (g[:, None] * xv))
                - model["factors"] * np.asarray(xb.multiply(xb).T @ g).ravel()[:, None],
            }
            step += 1
            for p in parts:
                grad = grads[p] + hps[f"{p}_wd"] * model[p]
                if hps["clip_gradient"] is not None:
                    grad = np.clip(grad, -hps["clip_gradient"], hps["clip_gradient"])
                m, v = moments[p]
                m[:] = 0.9 * m + 0.1 * grad
                v[:] = 0.999 * v + 0.001 * grad ** 2
                model[p] -= hps[f"{p}_lr"] * (m / (1 - 0.9 ** step)) / (
                    np.sqrt(v / (1 - 0.999 ** step)) + hps["eps"])
        _report(model, hps, "train", x, y, epoch)
    save_arrays(model_dir, model)
    for name, (features, labels) in found.items():
        _report(model, hps, name, scipy.sparse.csr_matrix(features, dtype="float64"), labels)


def _report(model: dict[str, Any], hps: dict[str, Any], channel: str, x: Any, y: np.ndarray,
            epoch: int | None = None) -> None:
    """Metrics as AWS's factorization machines log them (per epoch: the objective only)."""
    z, _ = _forward(model, x)
    score = _score(hps, z)
    if hps["predictor_type"] == "binary_classifier":
        ce = float(-(y * np.log(score + 1e-12) + (1 - y) * np.log(1 - score + 1e-12)).mean())
        if epoch is not None:
            quality_metric(channel, "binary_classification_cross_entropy_objective", ce,
                           loss=True, epoch=epoch)
            return
        predicted = score >= 0.5
        tp = float((predicted & (y == 1)).sum())
        precision, recall = tp / max(predicted.sum(), 1), tp / max((y == 1).sum(), 1)
        quality_metric(channel, "binary_classification_accuracy",
                       float((predicted == y).mean()), loss=False)
        quality_metric(channel, "binary_classification_cross_entropy", ce, loss=True)
        quality_metric(channel, "binary_f_1.000",
                       2 * precision * recall / max(precision + recall, 1e-12), loss=False)
    else:
        rmse = float(np.sqrt(((z - y) ** 2).mean()))
        if epoch is not None:
            quality_metric(channel, "rmse_objective", rmse, loss=True, epoch=epoch)
            return
        quality_metric(channel, "rmse", rmse, loss=True)


load = load_arrays


def invoke(model: dict[str, Any], hps: dict[str, Any], body: bytes, content_type: str,
           accept: str) -> tuple[bytes, str]:
    features = inference_features(body, content_type, hps["feature_dim"])
    if features.shape[0] == 0:
        return answer([], accept)
    check_feature_dim(features, hps["feature_dim"], "request")
    z, _ = _forward(model, scipy.sparse.csr_matrix(features, dtype="float64"))
    score = _score(hps, z)
    if hps["predictor_type"] == "binary_classifier":
        items = [{"score": float(s), "predicted_label": int(s >= 0.5)} for s in score]
    else:
        items = [{"score": float(s)} for s in score]
    return answer(items, accept)
