"""SageMaker batch-transform server: GET /ping, POST /invocations on port 8080.

Loads the scikit-learn model that training wrote (``/opt/ml/model/model.joblib``) and
scores CSV rows (features only, no header), answering one prediction per line.
"""

from __future__ import annotations

import io
import os

import joblib
import pandas as pd
from flask import Flask, Response, request

MODEL_PATH = os.path.join(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"), "model.joblib")

app = Flask(__name__)
_model = None


def model():
    global _model
    if _model is None:
        _model = joblib.load(MODEL_PATH)
    return _model


@app.get("/ping")
def ping() -> Response:
    # Healthy only once the model loads: SageMaker waits on /ping before sending data.
    try:
        model()
    except Exception as exc:  # noqa: BLE001 - report any load failure as unhealthy
        return Response(f"model not loadable: {exc}\n", status=500)
    return Response("ok\n", status=200)


@app.get("/execution-parameters")
def execution_parameters() -> dict:
    return {"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}


@app.post("/invocations")
def invocations() -> Response:
    if request.content_type and not request.content_type.startswith("text/csv"):
        return Response(f"unsupported content type {request.content_type}\n", status=415)
    body = request.get_data().decode("utf-8")
    if not body.strip():
        return Response("", status=200, mimetype="text/csv")
    features = pd.read_csv(io.StringIO(body), header=None)
    predictions = model().predict(features.to_numpy())
    return Response("\n".join(str(p) for p in predictions), status=200, mimetype="text/csv")
