"""Linear-learner stand-in: one linear model trained by mini-batch SGD/Adam in numpy.

As AWS's linear learner does: features (and a regressor's label) standardized, a loss by
``predictor_type`` (logistic, softmax, squared...; or ``loss``), L1/L2 (``l1``, ``wd``),
``epochs`` of ``mini_batch_size`` batches, early stopping on the validation channel, and a
binary classifier's threshold chosen by ``binary_classifier_model_selection_criteria``.
Unlike AWS's, it trains one model, not ``num_models`` in parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from algorithms import (
    CSV,
    RECORDIO,
    ClientError,
    answer,
    channels,
    check_feature_dim,
    dense,
    hp,
    inference_features,
    load_arrays,
    log,
    quality_metric,
    save_arrays,
)

HYPERPARAMETERS = {
    "predictor_type": hp("str", choices=("binary_classifier", "multiclass_classifier", "regressor")),
    "feature_dim": hp("int", "auto", low=1, auto=True),
    "num_classes": hp("int", None, low=3),
    "accuracy_top_k": hp("int", 3, low=1),
    "balance_multiclass_weights": hp("bool", False),
    "beta_1": hp("float", "auto", auto=True),
    "beta_2": hp("float", "auto", auto=True),
    "bias_lr_mult": hp("float", "auto", auto=True),
    "bias_wd_mult": hp("float", "auto", auto=True),
    "binary_classifier_model_selection_criteria": hp("str", "accuracy", choices=(
        "accuracy", "f_beta", "precision_at_target_recall", "recall_at_target_precision",
        "loss_function")),
    "early_stopping_patience": hp("int", 3, low=1),
    "early_stopping_tolerance": hp("float", 0.001),
    "epochs": hp("int", 15, low=1),
    "f_beta": hp("float", 1.0),
    "huber_delta": hp("float", 1.0),
    "init_bias": hp("float", 0.0),
    "init_method": hp("str", "uniform", choices=("uniform", "normal")),
    "init_scale": hp("float", 0.07),
    "init_sigma": hp("float", 0.01),
    "l1": hp("float", "auto", auto=True),
    "learning_rate": hp("float", "auto", auto=True),
    "loss": hp("str", "auto", choices=("auto", "logistic", "squared_loss", "absolute_loss",
                                      "hinge_loss", "huber_loss", "softmax_loss")),
    "lr_scheduler_factor": hp("float", "auto", auto=True),
    "lr_scheduler_minimum_lr": hp("float", "auto", auto=True),
    "lr_scheduler_step": hp("int", "auto", auto=True),
    "margin": hp("float", 1.0),
    "mini_batch_size": hp("int", 1000, low=1),
    "momentum": hp("float", "auto", auto=True),
    "normalize_data": hp("bool", True),
    "normalize_label": hp("bool", "auto", auto=True),
    "num_calibration_samples": hp("int", 10000000, low=1),
    "num_models": hp("int", "auto", auto=True),
    "num_point_for_scaler": hp("int", 10000, low=1),
    "optimizer": hp("str", "auto", choices=("auto", "sgd", "adam", "rmsprop")),
    "positive_example_weight_mult": hp("float", 1.0, auto=True),
    "quantile": hp("float", 0.5),
    "target_precision": hp("float", 0.8),
    "target_recall": hp("float", 0.8),
    "unbias_data": hp("bool", "auto", auto=True),
    "unbias_label": hp("bool", "auto", auto=True),
    "use_bias": hp("bool", True),
    "use_lr_scheduler": hp("bool", True),
    "wd": hp("float", "auto", auto=True),
}
_LOSSES = {"binary_classifier": ("logistic", "hinge_loss"), "multiclass_classifier": ("softmax_loss",),
           "regressor": ("squared_loss", "absolute_loss", "huber_loss")}
_OBJECTIVES = {"logistic": "binary_classification_cross_entropy", "hinge_loss": "hinge_loss",
               "softmax_loss": "multiclass_cross_entropy", "squared_loss": "square_loss",
               "absolute_loss": "absolute_loss", "huber_loss": "huber_loss"}


def _auto(value: Any, default: Any) -> Any:
    return default if value == "auto" else value


def _loss(hps: dict[str, Any]) -> str:
    loss = hps["loss"] if hps["loss"] != "auto" else _LOSSES[hps["predictor_type"]][0]
    if loss not in _LOSSES[hps["predictor_type"]]:
        raise ClientError(f"loss {loss} does not fit predictor_type {hps['predictor_type']}")
    return loss


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _outputs(model: dict[str, Any], features: Any) -> np.ndarray:
    x = (dense(features).astype("float64") - model["mean"]) / model["scale"]
    return x @ model["weights"] + model["bias"]


def _objective(loss: str, z: np.ndarray, y: np.ndarray, hps: dict[str, Any]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(loss per row, d loss / d z)."""
    if loss == "logistic":
        p = _sigmoid(z[:, 0])
        w = np.where(y == 1, hps["positive_example_weight_mult"] if isinstance(
            hps["positive_example_weight_mult"], float) else 1.0, 1.0)
        ce = -(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        return w * ce, (w * (p - y))[:, None]
    if loss == "hinge_loss":
        s = 2 * y - 1
        margin = hps["margin"] - s * z[:, 0]
        return np.maximum(margin, 0), (np.where(margin > 0, -s, 0.0))[:, None]
    if loss == "softmax_loss":
        p = _softmax(z)
        onehot = np.eye(z.shape[1])[y.astype(int)]
        return -np.log((p * onehot).sum(axis=1) + 1e-12), p - onehot
    r = z[:, 0] - y
    if loss == "squared_loss":
        return r ** 2, (2 * r)[:, None]
    if loss == "absolute_loss":
        return np.abs(r), np.sign(r)[:, None]
    d = hps["huber_delta"]
    return np.where(np.abs(r) <= d, 0.5 * r ** 2, d * (np.abs(r) - 0.5 * d)), \
        np.clip(r, -d, d)[:, None]


def _labels(hps: dict[str, Any], labels: np.ndarray, channel: str) -> np.ndarray:
    if np.isnan(labels).any():
        raise ClientError(f"the {channel} channel has records without a label")
    kind = hps["predictor_type"]
    if kind == "binary_classifier" and not np.isin(labels, (0, 1)).all():
        raise ClientError(f"binary_classifier labels must be 0 or 1 ({channel} channel)")
    if kind == "multiclass_classifier" and (
            not np.isin(labels, np.arange(hps["num_classes"])).all()):
        raise ClientError(f"multiclass_classifier labels must be 0 .. num_classes-1 = "
                          f"{hps['num_classes'] - 1} ({channel} channel)")
    return labels


def train(hps: dict[str, Any], model_dir: Path) -> None:
    kind = hps["predictor_type"]
    if kind == "multiclass_classifier" and not hps["num_classes"]:
        raise ClientError("Missing required hyperparameter(s): num_classes "
                          "(predictor_type multiclass_classifier)")
    loss = _loss(hps)
    found = channels(("train", "validation", "test"), RECORDIO, (CSV, RECORDIO),
                     hps["feature_dim"] if hps["feature_dim"] != "auto" else None)
    for name, (features, labels) in found.items():
        check_feature_dim(features, hps["feature_dim"], name)
        _labels(hps, labels, name)
    x, y = dense(found["train"][0]).astype("float64"), found["train"][1]
    rng = np.random.default_rng(0)
    sample = x[:hps["num_point_for_scaler"]]
    mean = sample.mean(axis=0) if hps["normalize_data"] else np.zeros(x.shape[1])
    scale = sample.std(axis=0) if hps["normalize_data"] else np.ones(x.shape[1])
    scale[scale == 0] = 1.0
    normalize_label = _auto(hps["normalize_label"], kind == "regressor") and kind == "regressor"
    y_mean, y_scale = (y.mean(), y.std() or 1.0) if normalize_label else (0.0, 1.0)
    outputs = hps["num_classes"] if kind == "multiclass_classifier" else 1
    shape = (x.shape[1], outputs)
    weights = rng.uniform(-hps["init_scale"], hps["init_scale"], shape) \
        if hps["init_method"] == "uniform" else rng.normal(0, hps["init_sigma"], shape)
    bias = np.full(outputs, hps["init_bias"])
    optimizer = _auto(hps["optimizer"], "adam")
    lr = _auto(hps["learning_rate"], 0.1 if optimizer == "adam" else 0.01)
    wd, l1 = _auto(hps["wd"], 0.0), _auto(hps["l1"], 0.0)
    b1, b2 = _auto(hps["beta_1"], 0.9), _auto(hps["beta_2"], 0.999)
    momentum = _auto(hps["momentum"], 0.0)
    state = {k: [np.zeros_like(weights), np.zeros_like(bias)] for k in ("m", "v")}
    model = {"mean": mean, "scale": scale, "weights": weights, "bias": bias}
    best, best_loss, bad_epochs, step = None, np.inf, 0, 0

    def mean_loss(channel: str) -> float:
        cx, cy = found[channel]
        target = (cy - y_mean) / y_scale
        return float(_objective(loss, _outputs(model, cx), target, hps)[0].mean())

    objective = _OBJECTIVES[loss] + "_objective"
    for epoch in range(hps["epochs"]):
        order = rng.permutation(len(y))
        for start in range(0, len(y), hps["mini_batch_size"]):
            batch = order[start:start + hps["mini_batch_size"]]
            xb, yb = (x[batch] - mean) / scale, (y[batch] - y_mean) / y_scale
            _, dz = _objective(loss, xb @ weights + bias, yb, hps)
            grads = [xb.T @ dz / len(batch) + wd * weights + l1 * np.sign(weights),
                     dz.mean(axis=0) if hps["use_bias"] else np.zeros_like(bias)]
            step += 1
            for i, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
                if optimizer == "adam":
                    state["m"][i] = b1 * state["m"][i] + (1 - b1) * grad
                    state["v"][i] = b2 * state["v"][i] + (1 - b2) * grad ** 2
                    m_hat = state["m"][i] / (1 - b1 ** step)
                    v_hat = state["v"][i] / (1 - b2 ** step)
                    param -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
                elif optimizer == "rmsprop":
                    state["v"][i] = 0.9 * state["v"][i] + 0.1 * grad ** 2
                    param -= lr * grad / (np.sqrt(state["v"][i]) + 1e-8)
                else:
                    state["m"][i] = momentum * state["m"][i] + grad
                    param -= lr * state["m"][i]
        quality_metric("train", objective, mean_loss("train"), loss=True, epoch=epoch)
        if "validation" in found:
            current = mean_loss("validation")
            quality_metric("validation", objective, current, loss=True, epoch=epoch)
            if best is None or current < best_loss - hps["early_stopping_tolerance"] * abs(
                    best_loss):
                best, best_loss, bad_epochs = (weights.copy(), bias.copy()), current, 0
            else:
                bad_epochs += 1
                if bad_epochs >= hps["early_stopping_patience"]:
                    log(f"early stopping after epoch {epoch}: no validation improvement")
                    break
    if best is not None:
        model["weights"], model["bias"] = best
    model["label_mean"], model["label_scale"] = np.array(y_mean), np.array(y_scale)
    model["threshold"] = np.array(_threshold(model, hps, loss, found))
    save_arrays(model_dir, model)
    for channel in found:
        _report(model, hps, loss, channel, *found[channel])


def _scores(model: dict[str, Any], hps: dict[str, Any], features: Any) -> np.ndarray:
    z = _outputs(model, features)
    kind = hps["predictor_type"]
    if kind == "binary_classifier":
        return _sigmoid(z[:, 0]) if _loss(hps) == "logistic" else z[:, 0]
    if kind == "multiclass_classifier":
        return _softmax(z)
    return z[:, 0] * float(model["label_scale"]) + float(model["label_mean"])


def _threshold(model: dict[str, Any], hps: dict[str, Any], loss: str,
               found: dict[str, Any]) -> float:
    """A binary classifier's cut on its score, chosen on validation (else train) data."""
    if hps["predictor_type"] != "binary_classifier":
        return 0.0
    default = 0.5 if loss == "logistic" else 0.0
    criteria = hps["binary_classifier_model_selection_criteria"]
    if criteria == "loss_function":
        return default
    features, labels = found.get("validation") or found["train"]
    scores = _scores(model, hps, features)
    best, best_value = default, -1.0
    for cut in np.unique(np.concatenate([scores, [default]])):
        predicted = scores >= cut
        tp = float((predicted & (labels == 1)).sum())
        precision = tp / max(predicted.sum(), 1)
        recall = tp / max((labels == 1).sum(), 1)
        if criteria == "accuracy":
            value = float((predicted == labels).mean())
        elif criteria == "f_beta":
            b2 = hps["f_beta"] ** 2
            value = (1 + b2) * precision * recall / max(b2 * precision + recall, 1e-12)
        elif criteria == "precision_at_target_recall":
            value = precision if recall >= hps["target_recall"] else -1.0
        else:
            value = recall if precision >= hps["target_precision"] else -1.0
        if value > best_value:
            best, best_value = float(cut), value
    return best


def _report(model: dict[str, Any], hps: dict[str, Any], loss: str, channel: str,
            features: Any, labels: np.ndarray) -> None:
    """A channel's final metrics, as AWS's linear learner logs them."""
    kind, scores = hps["predictor_type"], _scores(model, hps, features)
    z = _outputs(model, features)
    target = (labels - float(model["label_mean"])) / float(model["label_scale"])
    quality_metric(channel, _OBJECTIVES[loss] + "_objective",
                   float(_objective(loss, z, target, hps)[0].mean()), loss=True)
    if kind == "binary_classifier":
        predicted = (scores >= float(model["threshold"])).astype(float)
        tp = float(((predicted == 1) & (labels == 1)).sum())
        precision = tp / max(predicted.sum(), 1)
        recall = tp / max((labels == 1).sum(), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        quality_metric(channel, "binary_classification_accuracy",
                       float((predicted == labels).mean()), loss=False)
        quality_metric(channel, f"binary_f_{hps['f_beta']:.3f}", f1, loss=False)
        quality_metric(channel, "precision", precision, loss=False)
        quality_metric(channel, "recall", recall, loss=False)
    elif kind == "multiclass_classifier":
        predicted = scores.argmax(axis=1)
        top_k = np.argsort(-scores, axis=1)[:, :hps["accuracy_top_k"]]
        quality_metric(channel, "multiclass_accuracy", float((predicted == labels).mean()),
                       loss=False)
        quality_metric(channel, f"multiclass_top_k_accuracy_{hps['accuracy_top_k']}",
                       float((top_k == labels[:, None]).any(axis=1).mean()), loss=False)
    else:
        mse = float(((scores - labels) ** 2).mean())
        quality_metric(channel, "mse", mse, loss=True)
        quality_metric(channel, "rmse", float(np.sqrt(mse)), loss=True)
        quality_metric(channel, "absolute_loss", float(np.abs(scores - labels).mean()), loss=True)


load = load_arrays


def invoke(model: dict[str, Any], hps: dict[str, Any], body: bytes, content_type: str,
           accept: str) -> tuple[bytes, str]:
    features = inference_features(body, content_type, hps["feature_dim"])
    if features.shape[0] == 0:
        return answer([], accept)
    if features.shape[1] != model["mean"].shape[0]:
        raise ClientError(f"the request has {features.shape[1]} features, the model "
                          f"{model['mean'].shape[0]}")
    scores, kind = _scores(model, hps, features), hps["predictor_type"]
    if kind == "binary_classifier":
        cut = float(model["threshold"])
        items = [{"score": float(s), "predicted_label": int(s >= cut)} for s in scores]
    elif kind == "multiclass_classifier":
        items = [{"score": s.tolist(), "predicted_label": int(s.argmax())} for s in scores]
    else:
        items = [{"score": float(s)} for s in scores]
    return answer(items, accept)
