"""SageMaker's model server contract: GET /ping, POST /invocations on $SAGEMAKER_BIND_TO_PORT.

The model loads when the server starts (``serving.load``: the user's inference module
through AWS's toolkit, a framework image's defaults, or a built-in algorithm stand-in), so a
model that cannot load, or a ``model_fn`` that raises, stops the server with its own error.
A handler that raises answers 500 with its error, which fails the batch transform.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import serving
from flask import Flask, Response, request

MODEL_DIR = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))

app = Flask(__name__)
if (MODEL_DIR / "smtask-algorithm.json").exists():
    from algorithms import ClientError, Predictor, Unsupported

    STAND_IN: Predictor | None = Predictor(MODEL_DIR)
    HANDLER = None
else:
    STAND_IN, HANDLER = None, serving.load()


@app.get("/ping")
def ping() -> Response:
    return Response("ok\n", status=200)


@app.get("/execution-parameters")
def execution_parameters() -> dict:
    return {"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6}


@app.post("/invocations")
def invocations() -> Response:
    body = request.get_data()
    content_type, accept = request.content_type or "", request.headers.get("Accept", "")
    if STAND_IN is not None:
        try:
            answer, mimetype = STAND_IN.invoke(body, content_type, accept)
        except Unsupported as exc:
            return Response(f"{exc}\n", status=415)
        except (ClientError, ValueError) as exc:
            return Response(f"ClientError: {exc}\n", status=400)
        return Response(answer, status=200, mimetype=mimetype)
    try:
        status, answer, mimetype = HANDLER.invoke(body, content_type, accept)
    except Exception as exc:  # noqa: BLE001 - the handler's own error, as AWS's servers answer
        trace = traceback.format_exc()
        print(trace, flush=True)
        return Response(f"{type(exc).__name__}: {exc}\n{trace}", status=500, mimetype="text/plain")
    if status >= 400:
        print(answer.decode(errors="replace").splitlines()[0] if answer else status, flush=True)
    return Response(answer, status=status, mimetype=mimetype)
