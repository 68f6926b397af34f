"""k-NN stand-in: scikit-learn's nearest neighbours over a sample of the train channel.

AWS's k-NN samples ``sample_size`` points, optionally reduces their dimension, indexes them
(faiss) and predicts the most frequent label of the ``k`` nearest (classifier) or their mean
label (regressor). Here the index is scikit-learn's exact search; the answers have AWS's form.
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
    media_type,
    quality_metric,
    save_arrays,
)

HYPERPARAMETERS = {
    "feature_dim": hp("int", low=1),
    "k": hp("int", low=1),
    "predictor_type": hp("str", choices=("classifier", "regressor")),
    "sample_size": hp("int", low=1),
    "dimension_reduction_target": hp("int", None, low=1),
    "dimension_reduction_type": hp("str", None, choices=("sign", "fjlt")),
    "epochs": hp("int", 1, low=1),
    "faiss_index_ivf_nlists": hp("str", "auto"),
    "faiss_index_pq_m": hp("int", None, low=1),
    "index_metric": hp("str", "L2", choices=("L2", "INNER_PRODUCT", "COSINE")),
    "index_type": hp("str", "faiss.Flat", choices=("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")),
    "mini_batch_size": hp("int", 5000, low=1),
}


def _reduce(features: np.ndarray, hps: dict[str, Any], projection: np.ndarray | None) -> np.ndarray:
    return features if projection is None else features @ projection


def _neighbours(model: dict[str, Any], hps: dict[str, Any], features: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the k nearest sample points of each row."""
    from sklearn.neighbors import NearestNeighbors

    points = model["points"]
    queries = _reduce(dense(features).astype("float32"), hps, model.get("projection"))
    k = min(hps["k"], len(points))
    if hps["index_metric"] == "INNER_PRODUCT":  # the largest inner product is the nearest
        scores = queries @ points.T
        indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return -np.take_along_axis(scores, indices, axis=1), indices
    metric = "cosine" if hps["index_metric"] == "COSINE" else "euclidean"
    index = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(points)
    return index.kneighbors(queries)


def _predict(model: dict[str, Any], hps: dict[str, Any], features: Any) -> tuple[np.ndarray, Any]:
    distances, indices = _neighbours(model, hps, features)
    labels = model["labels"][indices]
    if hps["predictor_type"] == "regressor":
        return labels.mean(axis=1), (distances, labels)
    predicted = []
    for row in labels:  # the most frequent label; a tie goes to the nearest of the tied
        values, counts = np.unique(row, return_counts=True)
        tied = set(values[counts == counts.max()])
        predicted.append(next(v for v in row if v in tied))
    return np.asarray(predicted, dtype="float64"), (distances, labels)


def train(hps: dict[str, Any], model_dir: Path) -> None:
    found = channels(("train", "test"), RECORDIO, (CSV, RECORDIO), hps["feature_dim"])
    features, labels = found["train"]
    check_feature_dim(features, hps["feature_dim"], "train")
    if np.isnan(labels).any():
        raise ClientError("the train channel has records without a label")
    rng = np.random.default_rng(0)
    if len(labels) > hps["sample_size"]:
        chosen = np.sort(rng.choice(len(labels), hps["sample_size"], replace=False))
        features, labels = features[chosen], labels[chosen]
    projection = None
    if hps["dimension_reduction_type"]:
        if not hps["dimension_reduction_target"]:
            raise ClientError("dimension_reduction_type needs dimension_reduction_target")
        target = hps["dimension_reduction_target"]
        projection = rng.choice([-1.0, 1.0], size=(hps["feature_dim"], target)) / np.sqrt(target)
        projection = projection.astype("float32")
    model = {"points": _reduce(dense(features).astype("float32"), hps, projection),
             "labels": labels.astype("float64")}
    if projection is not None:
        model["projection"] = projection
    save_arrays(model_dir, model)
    if "test" in found:
        test_features, test_labels = found["test"]
        check_feature_dim(test_features, hps["feature_dim"], "test")
        predicted, _ = _predict(model, hps, test_features)
        if hps["predictor_type"] == "classifier":
            quality_metric("test", "accuracy", float((predicted == test_labels).mean()), loss=False)
        else:
            quality_metric("test", "mse", float(((predicted - test_labels) ** 2).mean()), loss=True)


load = load_arrays


def invoke(model: dict[str, Any], hps: dict[str, Any], body: bytes, content_type: str,
           accept: str) -> tuple[bytes, str]:
    """``{"predicted_label": ...}`` per record; ``accept: application/json; verbose=true``
    adds the neighbours' ``distances`` and ``labels``, as AWS's k-NN does."""
    features = inference_features(body, content_type, hps["feature_dim"])
    if features.shape[0] == 0:
        return answer([], accept)
    check_feature_dim(features, hps["feature_dim"], "request")
    predicted, (distances, labels) = _predict(model, hps, features)
    verbose = media_type(accept)[1].get("verbose") == "true"
    predictions = [{"predicted_label": float(p), **({"distances": d.tolist(), "labels": lab.tolist()}
                                                   if verbose else {})}
                   for p, d, lab in zip(predicted, distances, labels, strict=True)]
    return answer(predictions, accept)
