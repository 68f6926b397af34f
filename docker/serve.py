"""SageMaker batch-transform server: GET /ping, POST /invocations on $SAGEMAKER_BIND_TO_PORT.

Loads the scikit-learn model that training wrote (``/opt/ml/model/model.joblib``) when it
starts, so a model that cannot load stops the server with the loader's own error, and
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
MODEL = joblib.load(MODEL_PATH)


@app.get("/ping")
def ping() -> Response:
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
    predictions = MODEL.predict(features.to_numpy())
    return Response("\n".join(str(p) for p in predictions), status=200, mimetype="text/csv")
