"""SageMaker batch-transform server: GET /ping, POST /invocations on $SAGEMAKER_BIND_TO_PORT.

Loads the model in ``/opt/ml/model`` when it starts, so a model that cannot load stops the
server with the loader's own error:

- a scikit-learn ``model.joblib`` (a training script's): scores CSV rows (features only, no
  header), answering one prediction per line;
- a built-in algorithm stand-in's model (``smtask-algorithm.json``, see ``algorithms``):
  answers as AWS's algorithm does (XGBoost: CSV scores; k-NN, linear-learner, factorization
  machines: JSON ``{"predictions": [...]}``, JSON lines or RecordIO-protobuf; requests in
  CSV, JSON or RecordIO-protobuf).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
from flask import Flask, Response, request

MODEL_DIR = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))

app = Flask(__name__)
if (MODEL_DIR / "smtask-algorithm.json").exists():
    from algorithms import ClientError, Predictor, Unsupported

    STAND_IN: Predictor | None = Predictor(MODEL_DIR)
    MODEL = None
else:
    import joblib

    STAND_IN = None
    MODEL = joblib.load(MODEL_DIR / "model.joblib")


@app.get("/ping")
def ping() -> Response:
    return Response("ok\n", status=200)


@app.get("/execution-parameters")
def execution_parameters() -> dict:
    return {"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}


@app.post("/invocations")
def invocations() -> Response:
    if STAND_IN is not None:
        try:
            body, mimetype = STAND_IN.invoke(request.get_data(), request.content_type or "",
                                             request.headers.get("Accept", ""))
        except Unsupported as exc:
            return Response(f"{exc}\n", status=415)
        except (ClientError, ValueError) as exc:
            return Response(f"ClientError: {exc}\n", status=400)
        return Response(body, status=200, mimetype=mimetype)
    if request.content_type and not request.content_type.startswith("text/csv"):
        return Response(f"unsupported content type {request.content_type}\n", status=415)
    text = request.get_data().decode("utf-8")
    if not text.strip():
        return Response("", status=200, mimetype="text/csv")
    features = pd.read_csv(io.StringIO(text), header=None)
    predictions = MODEL.predict(features.to_numpy())
    return Response("\n".join(str(p) for p in predictions), status=200, mimetype="text/csv")
