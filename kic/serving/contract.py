"""What clients of an exported model depend on: signature and tensor names,
the TFLite variants, the batch-prediction formats, and the rules on the
options that choose between them.

Plain Python (no TensorFlow), so the validation front door can check export and
batch-prediction options before any step runs.
"""

from __future__ import annotations

from typing import Any

from kic.errors import Problem
from kic.model.model_info import POSITIVE_CLASS_INDEX

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image_bytes"  # string [batch]: raw encoded images
OUTPUT_NAMES = ("probabilities", "predicted_label", "predicted_index", "top_k_labels", "top_k_scores", "labels")
# In binary mode ``probabilities`` is one column: the probability of
# class_names[POSITIVE_CLASS_INDEX], as the reference algorithm returns it.
# A second signature on decoded pixels, for clients that decode themselves and
# as the TFLite converter's input.
PIXELS_SIGNATURE_NAME = "pixels"
PIXELS_INPUT_NAME = "pixels"

# What export does when the served model's inputs differ systematically from evaluation's
# (kic.serving.parity): fail (the default), or warn and export.
SKEW_ACTIONS = ("block", "warn")
TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")  # "" exports no TFLite model
PREDICTION_FORMATS = ("jsonl", "csv")  # the first is the default
DEFAULT_TOP_K = 5
DEFAULT_PREDICTION_BATCH_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def probabilities_shape(num_classes: int, binary_mode: bool) -> str:
    """The shape of ``probabilities``: [batch, 1] in binary mode, so that a
    client of the reference algorithm reading ``probabilities[0]`` of an image
    still gets P(positive), and the output keeps one rank in every mode."""
    return "[batch, 1]" if binary_mode else f"[batch, {num_classes}]"


def describe_outputs(class_names: tuple[str, ...] | list[str], binary_mode: bool, top_k: int) -> dict[str, str]:
    """What each output of ``serving_default`` holds, for the package's model info."""
    num_classes = len(class_names)
    top_k = min(top_k, num_classes)
    if binary_mode:
        probabilities = (f"float32 {probabilities_shape(num_classes, True)}: the probability of the positive "
                         f"class {class_names[POSITIVE_CLASS_INDEX]!r} (that of {class_names[0]!r} is 1 - p)")
    else:
        probabilities = (f"float32 {probabilities_shape(num_classes, False)}: the probability of each class, "
                         "in label-map order")
    return {
        "probabilities": probabilities,
        "predicted_label": "string [batch]: the most probable class",
        "predicted_index": "int64 [batch]: its index in the label map",
        "top_k_labels": f"string [batch, {top_k}]: the {top_k} most probable classes, most probable first",
        "top_k_scores": f"float32 [batch, {top_k}]: their probabilities",
        "labels": f"string [batch, {num_classes}]: every class label in label-map order (the same for every "
                  "image), as in the reference algorithm's verbose response",
    }


def export_problems(*, tflite: Any, top_k: Any, serving_skew_action: Any = SKEW_ACTIONS[0]) -> list[Problem]:
    problems = []
    if tflite not in ("", *TFLITE_QUANTIZATIONS):
        problems.append(Problem("tflite", tflite, "one of: (empty: no TFLite), " + ", ".join(TFLITE_QUANTIZATIONS)))
    if serving_skew_action not in SKEW_ACTIONS:
        problems.append(Problem("serving_skew_action", serving_skew_action,
                                "one of " + ", ".join(SKEW_ACTIONS) + " (what export does when the served model's "
                                "inputs differ systematically from evaluation's)"))
    problems.extend(top_k_problems(top_k))
    return problems


def prediction_problems(*, output_format: Any, batch_size: Any, top_k: Any,
                        format_name: str = "batch_predict_format") -> list[Problem]:
    problems = []
    if output_format not in PREDICTION_FORMATS:
        problems.append(Problem(format_name, output_format, "one of " + ", ".join(PREDICTION_FORMATS)))
    if not _is_int(batch_size) or batch_size < 1:
        problems.append(Problem("batch_size", batch_size, "an int >= 1"))
    problems.extend(top_k_problems(top_k))
    return problems


def top_k_problems(top_k: Any) -> list[Problem]:
    if not _is_int(top_k) or top_k < 1:
        return [Problem("top_k", top_k, "an int >= 1 (capped at the number of classes)")]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
