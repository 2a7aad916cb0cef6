"""What a model registry is told about an exported model, and the rules on the
options of the Vertex AI Model Registry upload (pipeline-vertex.yaml only).

The Vertex pipeline uploads the package's SavedModel folder (``1/``) with a
TensorFlow prebuilt prediction container: TF Serving, whose REST API decodes
``{"b64": ...}`` for inputs named ``*_bytes``, so the serving signature's
``image_bytes`` takes images as sent. Plain Python (no TensorFlow, no Google
Cloud libraries), so the validation front door can check the options before any
step runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import kic
from kic.errors import Problem
from kic.model.model_info import ModelInfo
from kic.serving import contract

# Vertex AI's newest prebuilt TensorFlow prediction container (2.15; none is
# newer, while kic trains with TensorFlow 2.20/2.21). The exported graph uses only
# ops that TensorFlow 2.15 knows: exports of eight backbone families load and serve
# in TensorFlow 2.15.1 with the same probabilities (see the README). Override with
# the vertex_serving_image parameter: a GPU variant (tf2-gpu.2-15), a regional copy
# (europe-docker.pkg.dev, asia-docker.pkg.dev) or a newer version once Vertex AI
# offers one.
VERTEX_SERVING_IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"

DISPLAY_NAME_MAX = 128  # Vertex AI's limit on a model's display name
# projects/{project}/locations/{location}/models/{model}, as Vertex AI names a model
MODEL_RESOURCE_NAME = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/models/[^/@\s]+")
MODEL_RESOURCE_FORM = "projects/PROJECT/locations/LOCATION/models/MODEL_ID"

# Google Cloud labels: keys start with a lowercase letter; keys and values hold at
# most 63 lowercase letters, digits, underscores and dashes.
_LABEL_MAX = 63
_NOT_LABEL_CHARACTER = re.compile(r"[^a-z0-9_-]")
# Google Cloud Pipeline Components' upload splices the display name and the
# description into a JSON payload as they are, so a quote or a backslash would break it.
_UNSAFE_IN_PAYLOAD = re.compile(r'["\\\x00-\x1f]')


def labels(info: ModelInfo) -> dict[str, str]:
    """The model's registry labels: what it is, in Google Cloud's label alphabet."""
    return {key: _label_value(value) for key, value in {
        "framework": "tensorflow",
        "backbone": info.backbone,
        "image_size": str(info.image_size),
        "classes": str(info.num_classes),
        "mode": "binary" if info.binary_mode else "multiclass",
        "kic_version": kic.__version__,
    }.items()}


def description(info: ModelInfo, evaluation_metrics: Mapping[str, Any] | None = None) -> str:
    """One line for the registry: backbone, input, classes and test accuracy."""
    metrics = evaluation_metrics or {}
    accuracy = metrics.get("accuracy")
    text = (f"kic image classifier: {info.backbone} at {info.image_size}x{info.image_size} pixels, "
            f"{info.num_classes} classes{' (binary)' if info.binary_mode else ''}"
            + (f", test accuracy {float(accuracy):.4f}" if isinstance(accuracy, (int, float)) else "")
            + f". Serving signature {contract.SIGNATURE_NAME} ({contract.INPUT_NAME}: encoded images); "
              f"exported by kic {kic.__version__}.")
    return _UNSAFE_IN_PAYLOAD.sub("", text)


def problems(*, display_name: Any, parent_model: Any, serving_image: Any) -> list[Problem]:
    """The Vertex AI Model Registry options: an empty display name uploads nothing."""
    found = []
    if display_name:
        if not display_name.strip():
            found.append(Problem("vertex_model_display_name", display_name,
                                 "a name for the model (empty: no upload), not only spaces"))
        elif len(display_name) > DISPLAY_NAME_MAX or _UNSAFE_IN_PAYLOAD.search(display_name):
            found.append(Problem("vertex_model_display_name", display_name,
                                 f"at most {DISPLAY_NAME_MAX} characters, without double quotes, backslashes or "
                                 "control characters"))
        if not serving_image or any(character.isspace() for character in serving_image):
            found.append(Problem("vertex_serving_image", serving_image,
                                 f"a prediction container image URI, such as {VERTEX_SERVING_IMAGE}"))
    if parent_model:
        if not MODEL_RESOURCE_NAME.fullmatch(parent_model):
            found.append(Problem("vertex_parent_model", parent_model,
                                 f"a model's resource name, {MODEL_RESOURCE_FORM} (empty: a new model)"))
        elif not display_name:
            found.append(Problem("vertex_parent_model", parent_model,
                                 "needs vertex_model_display_name: the upload runs only when a display name is given"))
    return found


def _label_value(text: str) -> str:
    return _NOT_LABEL_CHARACTER.sub("-", text.lower())[:_LABEL_MAX]

