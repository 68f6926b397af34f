"""Which image a job runs: an image URI as given, or one of AWS's given by framework
(``{"framework", "version"}``, resolved with the SDK's ``image_uris``, whose tables ship with
it: no network); the built-in algorithms and frameworks AWS's images are, and what local
mode runs in their place."""

from __future__ import annotations

import json
import re
from typing import Any

from smtask import sdk

LOCAL_IMAGE = "smtask-local:latest"  # local mode's image, built from docker/
DEFAULT_REGION = "us-east-1"  # local mode's region when the params name none


# AWS's built-in algorithms that the local image stands in for (in local mode), by the
# framework name image_uris knows them by; their ECR repositories are named alike.
ALGORITHMS = ("knn", "linear-learner", "factorization-machines", "xgboost")
_ALGORITHM_URI = re.compile(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/"
                            r"(?:sagemaker-)?([a-z0-9-]+)(?::[\w.-]+)?")
_RETRIEVE_SCOPES = {"processing": ("processing", "training")}  # where the SDK lacks a scope


def algorithm_of(image: Any) -> str | None:
    """The built-in algorithm ``image`` is (``{"framework": "knn"}`` or an AWS algorithm URI
    such as ``382416733822.dkr.ecr.us-east-1.amazonaws.com/knn:1``), else None."""
    if isinstance(image, dict):
        name = image.get("framework")
    else:
        match = _ALGORITHM_URI.fullmatch(image) if isinstance(image, str) else None
        name = match.group(1) if match else None
    return name if name in ALGORITHMS else None


def is_aws_image(image: Any) -> bool:
    """An image only AWS has: given as ``{"framework", ...}``, or the URI of an AWS algorithm or
    framework image (local mode runs the local image in its place)."""
    return isinstance(image, dict) or algorithm_of(image) is not None or \
        framework_of(image) is not None


def local_image(params: dict[str, Any], image: Any) -> str:
    """``image`` as local mode runs it: one of the user's own as it is; one of AWS's (given as
    ``{"framework", ...}``, or an algorithm or framework URI) as ``local.image``."""
    if isinstance(image, str) and image and not is_aws_image(image):
        return image
    return str((params.get("local") or {}).get("image", LOCAL_IMAGE))


def resolve_image(key: str, image: Any, *, scope: str, params: dict[str, Any],
                  instance_type: str = "ml.m5.large") -> str:
    """``image`` as a URI: a string is one already; ``{"framework", "version", "region",
    "py_version"}`` is resolved with the SDK's ``image_uris.retrieve`` (its tables ship with
    the SDK: no network). A framework or version the SDK does not know is a ParamsError
    naming ``key``."""
    from smtask.errors import ParamsError

    if not isinstance(image, dict):
        return str(image or "")
    region = image.get("region") or params.get("region_name") or (
        DEFAULT_REGION if params.get("mode") == "local" else None)
    if not region:
        raise ParamsError(f'{key}: an image given as {{"framework", ...}} needs a region: set '
                          '"region" in it or the top-level region_name')
    with sdk.importing():  # a task's first import of the SDK, maybe
        from sagemaker.core import image_uris

    problem = ""
    for each in _RETRIEVE_SCOPES.get(scope, (scope,)):
        try:
            return str(image_uris.retrieve(
                image["framework"], region=region, version=image.get("version"),
                py_version=image.get("py_version"), image_scope=each,
                instance_type=instance_type if instance_type.startswith("ml.") else "ml.m5.large"))
        except FileNotFoundError:
            problem = f"unknown framework {image['framework']!r}"
            break
        except (ValueError, KeyError, TypeError) as exc:
            problem = str(exc).split(" You may need to upgrade")[0]
    raise ParamsError(f"{key}: {problem.rstrip('.')} (resolving "
                      f"{json.dumps(image, sort_keys=True)} in {region})")


# AWS's framework images by their ECR repository (after "sagemaker-"), as image_uris names the
# framework; local mode stands in for LOCAL_FRAMEWORKS only.
FRAMEWORK_REPOSITORIES = {
    "scikit-learn": "sklearn", "xgboost": "xgboost", "pytorch-training": "pytorch",
    "pytorch-inference": "pytorch", "tensorflow-training": "tensorflow",
    "tensorflow-inference": "tensorflow", "mxnet-training": "mxnet", "mxnet-inference": "mxnet",
    "huggingface-pytorch-training": "huggingface", "huggingface-pytorch-inference": "huggingface",
    "sparkml-serving": "sparkml-serving", "chainer": "chainer"}
LOCAL_FRAMEWORKS = ("sklearn", "xgboost")
# AWS's built-in algorithms by the framework name image_uris knows them by (not frameworks)
AWS_ALGORITHMS = ("blazingtext", "factorization-machines", "forecasting-deepar",
                  "image-classification", "ipinsights", "kmeans", "knn", "lda",
                  "linear-learner", "ntm", "object-detection", "object2vec", "pca",
                  "randomcutforest", "semantic-segmentation", "seq2seq")


def framework_of(image: Any) -> str | None:
    """The AWS framework image ``image`` is (``{"framework": "sklearn", ...}`` or an ECR URI of
    AWS's ``sagemaker-scikit-learn`` repository...), else None. XGBoost's image is both a
    framework (with a script) and a built-in algorithm."""
    if isinstance(image, dict):
        name = image.get("framework")
        return str(name) if name and name not in AWS_ALGORITHMS else None
    match = _ALGORITHM_URI.fullmatch(image) if isinstance(image, str) else None
    return FRAMEWORK_REPOSITORIES.get(match.group(1)) if match else None
