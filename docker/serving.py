"""SageMaker's serving contract, kept as AWS's framework containers keep it.

A model carries its code the way the SDK's ``Model`` makes it: ``SAGEMAKER_PROGRAM`` (the
entry script) from ``SAGEMAKER_SUBMIT_DIRECTORY`` (the unpacked source dir: SageMaker
downloads ``sourcedir.tar.gz`` there; local mode mounts it at ``/opt/ml/code``), or, as
AWS's inference toolkit also reads it, ``/opt/ml/model/code`` inside ``model.tar.gz``. The
folder goes on ``sys.path``, its ``requirements.txt`` is installed first, and the module is
imported. Its ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn`` (or
``transform_fn``, which may not come with the other three) serve the requests, through AWS's
own toolkit (``sagemaker_inference.transformer.Transformer``, run here behind gunicorn
instead of its Java model server), and each missing one is the image's default:

- ``SMTASK_FRAMEWORK=sklearn`` (AWS's scikit-learn image): no default ``model_fn`` (AWS's
  error), ``input_fn`` decodes CSV, JSON, JSON lines or NPY to a numpy array (float32 for
  text), ``predict_fn`` is ``model.predict``, ``output_fn`` encodes to the accept type.
- ``SMTASK_FRAMEWORK=xgboost`` (AWS's XGBoost image): with a user module, no default
  ``model_fn`` either; input CSV or LIBSVM as a DMatrix, ``model.predict``. Without one (the
  image's algorithm mode) it loads ``xgboost-model`` and scores CSV or LIBSVM.
- smtask's own image: ``model_fn`` loads ``model.joblib``; the rest as scikit-learn's.

A model with no code at all on smtask's own image is a scikit-learn ``model.joblib`` scored
from CSV, and a built-in algorithm stand-in's model (``smtask-algorithm.json``) its stand-in.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

MODEL_DIR = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
FRAMEWORK = os.environ.get("SMTASK_FRAMEWORK", "")
CSV, JSON, JSONLINES, NPY = "text/csv", "application/json", "application/jsonlines", "application/x-npy"
LIBSVM = "text/libsvm"
TEXT = (CSV, JSON, JSONLINES, LIBSVM)


class Refused(Exception):
    """A request the model server answers with a client error (415, 400)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def media_type(header: str | None) -> str:
    """``text/csv; charset=utf-8`` -> ``text/csv``; the aliases AWS's images take."""
    kind = (header or "").split(";")[0].strip().lower()
    return {"text/x-libsvm": LIBSVM, "application/x-libsvm": LIBSVM,
            "application/json-lines": JSONLINES, "application/x-jsonlines": JSONLINES}.get(kind, kind)


# --- codecs: AWS's toolkit's (CSV, JSON, NPY), and JSON lines ----------------------------------

def decode(data: Any, content_type: str) -> Any:
    from sagemaker_inference import decoder

    kind = media_type(content_type)
    if kind in TEXT and isinstance(data, bytes | bytearray):
        data = bytes(data).decode("utf-8")
    if kind == JSONLINES:
        return np.array([json.loads(line) for line in data.splitlines() if line.strip()])
    try:
        return decoder.decode(data, kind)
    except Exception as exc:
        if type(exc).__name__ == "UnsupportedFormatError":
            raise Refused(415, f"Content type {content_type} is not supported by this model "
                          f"server (text/csv, application/json, application/jsonlines, "
                          f"application/x-npy)") from None
        raise


def encode(prediction: Any, accept: str) -> bytes:
    from sagemaker_inference import encoder

    kind = media_type(accept) or JSON
    if kind == JSONLINES:
        rows = prediction.tolist() if hasattr(prediction, "tolist") else list(prediction)
        return "\n".join(json.dumps(row) for row in rows).encode()
    try:
        body = encoder.encode(prediction, kind)
    except Exception as exc:
        if type(exc).__name__ == "UnsupportedFormatError":
            raise Refused(406, f"Accept {accept} is not supported by this model server "
                          "(text/csv, application/json, application/jsonlines, "
                          "application/x-npy)") from None
        raise
    body = body.encode() if isinstance(body, str) else body
    # one answer per request: assemble_with Line adds the line break after it
    return body[:-1] if kind == CSV and body.endswith(b"\n") else body


# --- the images' default handlers ------------------------------------------------------------

def _handlers() -> Any:
    from sagemaker_inference.default_inference_handler import DefaultInferenceHandler

    class ScikitLearn(DefaultInferenceHandler):
        """AWS's scikit-learn image (sagemaker_sklearn_container.serving)."""

        def default_model_fn(self, model_dir: str) -> Any:
            raise NotImplementedError("Please provide a model_fn implementation. See "
                                      "documentation for model_fn at "
                                      "https://github.com/aws/sagemaker-python-sdk")

        def default_input_fn(self, input_data: Any, content_type: str) -> Any:
            array = decode(input_data, content_type)
            return array.astype(np.float32) if media_type(content_type) in TEXT else array

        def default_predict_fn(self, data: Any, model: Any) -> Any:
            return model.predict(data)

        def default_output_fn(self, prediction: Any, accept: str) -> Any:
            return encode(prediction, accept), media_type(accept) or JSON

    class XGBoost(ScikitLearn):
        """AWS's XGBoost image with a user module (sagemaker_xgboost_container.handler_service)."""

        def default_input_fn(self, input_data: Any, content_type: str) -> Any:
            return dmatrix(input_data, content_type)

        def default_predict_fn(self, data: Any, model: Any) -> Any:
            return model.predict(data, validate_features=False)

    class Smtask(ScikitLearn):
        """smtask's own image: a scikit-learn ``model.joblib`` unless the module loads another;
        CSV is read one row a line (a one-column CSV too, which numpy would read as one row)."""

        def default_model_fn(self, model_dir: str) -> Any:
            import joblib

            return joblib.load(Path(model_dir) / "model.joblib")

        def default_input_fn(self, input_data: Any, content_type: str) -> Any:
            if media_type(content_type) == CSV:
                return csv_rows(input_data)
            return super().default_input_fn(input_data, content_type)

    return {"sklearn": ScikitLearn, "xgboost": XGBoost}.get(FRAMEWORK, Smtask)()


def csv_rows(data: Any) -> np.ndarray:
    """CSV (numbers, no header) as float32 rows, one a line."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2, dtype=np.float32)


def dmatrix(data: Any, content_type: str) -> Any:
    """CSV (numbers, no header) or LIBSVM as an XGBoost DMatrix, as AWS's XGBoost image reads."""
    import xgboost

    kind = media_type(content_type)
    raw = data.encode() if isinstance(data, str) else data
    if kind == LIBSVM:
        from sklearn.datasets import load_svmlight_file

        features, _ = load_svmlight_file(io.BytesIO(raw), dtype=np.float32)
        return xgboost.DMatrix(features)
    if kind == CSV:
        rows = [r for r in raw.decode().splitlines() if r.strip()]
        return xgboost.DMatrix(np.array([[float(x) for x in r.split(",")] for r in rows],
                                        dtype=np.float32))
    raise Refused(415, f"Content type {content_type} is not supported by XGBoost (text/csv, "
                  "text/libsvm)")


# --- the user's module -------------------------------------------------------------------------

def code_dir() -> Path | None:
    """Where the model's code is: ``SAGEMAKER_SUBMIT_DIRECTORY`` (a folder, or a tarball that
    is unpacked beside it), else ``/opt/ml/model/code``."""
    submit = os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").removeprefix("file://")
    if submit:
        path = Path(submit)
        if path.is_file() and tarfile.is_tarfile(path):
            unpacked = Path("/tmp/smtask-code")
            unpacked.mkdir(exist_ok=True)
            with tarfile.open(path) as tar:
                tar.extractall(unpacked, filter="data")
            return unpacked
        if path.is_dir():
            return path
        raise FileNotFoundError(f"SAGEMAKER_SUBMIT_DIRECTORY {submit}: no such folder or "
                                "sourcedir.tar.gz")
    return MODEL_DIR / "code" if (MODEL_DIR / "code").is_dir() else None


def install_requirements(folder: Path) -> None:
    """The code's requirements.txt, installed before its import, as AWS's images do (local
    mode: from the wheels smtask downloaded on the host, with no index)."""
    requirements = folder / "requirements.txt"
    if requirements.is_file():
        print(f"installing {requirements}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements)],
                       check=True)


def user_module_name() -> str | None:
    program = os.environ.get("SAGEMAKER_PROGRAM")
    return program[:-3] if program and program.endswith(".py") else program


class Context:
    """The model server's request context as AWS's toolkit reads it (MMS's ``Context``)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": str(MODEL_DIR)}
        self.request_processor = [self]
        self.headers, self.status, self.content_type = headers, 200, None

    def get_request_properties(self) -> dict[str, str]:
        return self.headers

    def set_response_status(self, code: int, phrase: str = "") -> None:
        self.status = code

    def set_response_content_type(self, index: int, content_type: str) -> None:
        self.content_type = content_type


class UserModule:
    """The user's inference module behind AWS's toolkit ``Transformer``."""

    def __init__(self, name: str) -> None:
        from sagemaker_inference.transformer import Transformer

        os.environ["SAGEMAKER_PROGRAM"] = name  # the toolkit reads the module's name there
        self.name = name
        self.transformer = Transformer(default_inference_handler=_handlers())
        # the model loads now: a model_fn that fails stops the server with its own error
        self.transformer.validate_and_initialize(model_dir=str(MODEL_DIR))

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, bytes, str]:
        headers = {"Content-Type": media_type(content_type) or content_type,
                   "Accept": accept or os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", JSON)}
        context = Context(headers)
        try:
            (answer,) = self.transformer.transform([{"body": body}], context)
        except Refused as exc:
            return exc.status, f"{exc}\n".encode(), "text/plain"
        if isinstance(answer, str):
            answer = answer.encode()
        elif not isinstance(answer, bytes | bytearray):
            answer = encode(answer, accept)
        return context.status, bytes(answer), context.content_type or accept


class Joblib:
    """smtask's own image with no code: a scikit-learn ``model.joblib``, CSV in and out."""

    def __init__(self) -> None:
        import joblib

        self.model = joblib.load(MODEL_DIR / "model.joblib")

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, bytes, str]:
        if content_type and media_type(content_type) != CSV:
            return 415, f"unsupported content type {content_type}\n".encode(), "text/plain"
        if not body.strip():
            return 200, b"", CSV
        return 200, encode(self.model.predict(csv_rows(body)), CSV), CSV


class XGBoostAlgorithm:
    """AWS's XGBoost image with no user module (its algorithm mode): ``xgboost-model``."""

    def __init__(self) -> None:
        import pickle

        import xgboost

        path = MODEL_DIR / "xgboost-model"
        try:
            with open(path, "rb") as f:
                self.model = pickle.load(f)
        except Exception:  # noqa: BLE001 - not a pickle: xgboost's own format
            self.model = xgboost.Booster()
            self.model.load_model(str(path))

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, bytes, str]:
        try:
            scores = self.model.predict(dmatrix(body, content_type or CSV), validate_features=False)
        except Refused as exc:
            return exc.status, f"{exc}\n".encode(), "text/plain"
        kind = media_type(accept) or CSV
        return 200, encode(scores, kind), kind


def load() -> Any:
    """The handler of this container's model (see the module's docstring)."""
    name = user_module_name()
    if name is None and (MODEL_DIR / "code" / "inference.py").is_file():
        name = "inference"  # AWS's inference toolkit's default module, in model.tar.gz's code/
    folder = code_dir() if name else None
    if name:
        if folder is not None:
            install_requirements(folder)
            sys.path.insert(0, str(folder))
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"SAGEMAKER_PROGRAM {os.environ['SAGEMAKER_PROGRAM']}: no "
                                      f"module {name} in {folder or 'the image'}")
        return UserModule(name)
    if FRAMEWORK == "sklearn":
        # AWS's scikit-learn image imports the user module; without one it has no model_fn
        raise NotImplementedError("Please provide a model_fn implementation. This model has no "
                                  "inference code (SAGEMAKER_PROGRAM is not set)")
    if FRAMEWORK == "xgboost":
        return XGBoostAlgorithm()
    return Joblib()
