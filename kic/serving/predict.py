"""Batch prediction with an exported serving package.

Images go through the package's own ``serving_default`` signature (raw bytes
in, probabilities out), so batch predictions are exactly what online serving
returns. A file that cannot be read or decoded becomes an ``error`` row with a
reason; it never stops the batch.

A row's ``probabilities`` maps class names to what the signature returned:
every class, or in binary mode only the positive class (P(positive), the
serving contract's single number). ``predicted_label``, ``score`` and
``top_k`` rank all classes in either mode.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image

from kic import artifacts, storage
from kic.data import manifest
from kic.data.images import DEFAULT_MAX_PIXELS
from kic.errors import DataError, ParameterError
from kic.model import loading
from kic.model.model_info import POSITIVE_CLASS_INDEX
from kic.serving.contract import (
    DEFAULT_PREDICTION_BATCH_SIZE,
    DEFAULT_TOP_K,
    IMAGE_EXTENSIONS,
    PREDICTION_FORMATS,
    SIGNATURE_NAME,
    prediction_problems,
)

CSV_COLUMNS = ("file", "status", "predicted_label", "score", "probabilities", "top_k", "error")
SUMMARY_ERRORS_SHOWN = 20
# The limit prepare applies to training images.
MAX_PIXELS = DEFAULT_MAX_PIXELS


class PredictInputError(DataError):
    """The model or the inputs given to predict are not usable."""


@dataclasses.dataclass(frozen=True)
class PredictSummary:
    model: str
    inputs: str
    output: str
    total: int
    succeeded: int
    failed: int
    errors: tuple[tuple[str, str], ...]
    label_counts: dict[str, int]
    skipped_files: int
    seconds: float

    def to_dict(self) -> dict:
        payload = dataclasses.asdict(self)
        payload["errors"] = [{"file": file, "error": reason} for file, reason in self.errors]
        return payload


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """The ``serving_default`` signature of a loaded SavedModel and its labels."""

    signature: object
    input_name: str
    class_names: tuple[str, ...]
    binary_mode: bool = False  # probabilities is one column, P(class_names[POSITIVE_CLASS_INDEX])

    def probabilities(self, images: list[bytes]) -> np.ndarray:
        outputs = self.signature(**{self.input_name: tf.constant(images, dtype=tf.string)})
        return outputs["probabilities"].numpy()

    def named_probabilities(self, probabilities: np.ndarray) -> dict[str, float]:
        """One image's probabilities by the class they are of."""
        names = (self.class_names[POSITIVE_CLASS_INDEX],) if self.binary_mode else self.class_names
        return {name: round(float(probability), 6) for name, probability in zip(names, probabilities, strict=True)}

    def class_scores(self, probabilities: np.ndarray) -> np.ndarray:
        return loading.class_scores(probabilities, self.binary_mode).numpy()


def predict(model_path: str, inputs: str, output: str, *, batch_size: int = DEFAULT_PREDICTION_BATCH_SIZE,
            top_k: int = DEFAULT_TOP_K, output_format: str = PREDICTION_FORMATS[0]) -> PredictSummary:
    """Predicts every image in ``inputs`` and writes one row per file to ``output``.

    ``model_path``: a package directory, a SavedModel directory or a
    model.tar.gz (local or gs://). ``inputs``: a folder (searched recursively for
    image extensions), a manifest (.csv with a uri column, .txt one per line,
    .jsonl with a "uri" key; relative entries are relative to the manifest), a
    single image, or a gs:// prefix.
    """
    problems = prediction_problems(output_format=output_format, batch_size=batch_size, top_k=top_k,
                                   format_name="output_format")
    if problems:
        raise ParameterError(problems)
    started = time.perf_counter()
    files, skipped = list_inputs(inputs)
    rows: list[dict] = []
    with load_serving_model(model_path) as model:
        for start in range(0, len(files), batch_size):
            rows.extend(_predict_batch(model, files[start:start + batch_size], top_k))
    storage.write_text(output, _format_rows(rows, output_format))
    errors = tuple((row["file"], row["error"]) for row in rows if row["status"] == "error")
    labels = Counter(row["predicted_label"] for row in rows if row["status"] == "ok")
    return PredictSummary(model=model_path, inputs=inputs, output=output, total=len(rows),
                          succeeded=len(rows) - len(errors), failed=len(errors),
                          errors=errors, label_counts=dict(sorted(labels.items())), skipped_files=skipped,
                          seconds=time.perf_counter() - started)


def format_summary(summary: PredictSummary) -> str:
    rate = summary.total / summary.seconds if summary.seconds > 0 else 0.0
    lines = [
        (f"Predicted {summary.total} files with {summary.model}: {summary.succeeded} ok, "
         f"{summary.failed} failed ({summary.seconds:.1f} s, {rate:.1f} files/s)"),
        f"Output: {summary.output}",
    ]
    if summary.skipped_files:
        lines.append(f"Skipped {summary.skipped_files} files without an image extension "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
    if summary.label_counts:
        lines.append("Predicted labels: " + ", ".join(f"{label} {count}"
                                                      for label, count in summary.label_counts.items()))
    if summary.errors:
        lines.append("Failed files:")
        lines.extend(f"  {file}: {reason}" for file, reason in summary.errors[:SUMMARY_ERRORS_SHOWN])
        if len(summary.errors) > SUMMARY_ERRORS_SHOWN:
            lines.append(f"  ... and {len(summary.errors) - SUMMARY_ERRORS_SHOWN} more (see the output file)")
    return "\n".join(lines)


# --- The model ---------------------------------------------------------------

@contextlib.contextmanager
def load_serving_model(model_path: str) -> Iterator[ServingModel]:
    """Loads a package directory, a SavedModel directory or a model.tar.gz."""
    with contextlib.ExitStack() as stack:
        if not storage.exists(model_path):
            raise PredictInputError(f"model not found: {model_path}")
        local = stack.enter_context(storage.local_copy(model_path))
        if os.path.isfile(local):
            extracted = stack.enter_context(tempfile.TemporaryDirectory(prefix="kic-model-"))
            local = storage.extract_tarball(local, extracted)
        saved_model_dir = _find_saved_model(local)
        loaded = tf.saved_model.load(saved_model_dir)
        if SIGNATURE_NAME not in loaded.signatures:
            raise PredictInputError(f"{model_path} has no {SIGNATURE_NAME!r} signature")
        signature = loaded.signatures[SIGNATURE_NAME]
        input_names = list(signature.structured_input_signature[1])
        if len(input_names) != 1 or "probabilities" not in signature.structured_outputs:
            raise PredictInputError(
                f"{model_path}: the {SIGNATURE_NAME} signature must take one input (encoded images) and "
                f"return 'probabilities'; it takes {input_names} and returns "
                f"{list(signature.structured_outputs)}")
        class_names = _class_names(saved_model_dir, loaded, model_path)
        columns = signature.structured_outputs["probabilities"].shape[-1]
        yield ServingModel(signature, input_names[0], class_names,
                           binary_mode=columns == 1 and len(class_names) == 2)


def _find_saved_model(directory: str) -> str:
    if os.path.isfile(os.path.join(directory, "saved_model.pb")):
        return directory
    versions = [name for name in os.listdir(directory)
                if name.isdigit() and os.path.isfile(os.path.join(directory, name, "saved_model.pb"))]
    if not versions:
        raise PredictInputError(
            f"no SavedModel in {directory}: expected saved_model.pb, "
            f"{artifacts.SAVED_MODEL_VERSION_DIR}/saved_model.pb or a {artifacts.MODEL_TARBALL}")
    return os.path.join(directory, max(versions, key=int))


def _class_names(saved_model_dir: str, loaded, model_path: str) -> tuple[str, ...]:
    """From the label map beside the SavedModel (package layout), else from the model itself."""
    for directory in (saved_model_dir, os.path.dirname(saved_model_dir)):
        label_map = os.path.join(directory, artifacts.LABEL_MAP)
        if os.path.isfile(label_map):
            with open(label_map, encoding="utf-8") as handle:
                indices = json.load(handle)
            return tuple(sorted(indices, key=indices.get))
    if hasattr(loaded, "class_names"):
        return tuple(name.decode("utf-8") for name in loaded.class_names.numpy())
    raise PredictInputError(f"{model_path}: no {artifacts.LABEL_MAP} found beside the SavedModel")


# --- The inputs ----------------------------------------------------------------

def list_inputs(inputs: str) -> tuple[list[str], int]:
    """Returns (image files in order, number of files skipped for their extension)."""
    lower = inputs.lower()
    if manifest.is_manifest(inputs) and _is_file(inputs):
        files = [row.location for row in manifest.read_manifest(inputs, labels=False)]
        skipped = 0
    elif lower.endswith(IMAGE_EXTENSIONS) and _is_file(inputs):
        files, skipped = [inputs], 0
    else:
        try:
            found = storage.list_files(inputs)
        except FileNotFoundError:
            raise PredictInputError(f"inputs not found: {inputs}") from None
        files = [file for file in found if file.lower().endswith(IMAGE_EXTENSIONS)]
        skipped = len(found) - len(files)
    if not files:
        raise PredictInputError(
            f"no images found in {inputs} (image extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files, skipped


def _is_file(uri: str) -> bool:
    return storage.exists(uri) and (storage.is_gcs(uri) or os.path.isfile(uri))


# --- Predicting ------------------------------------------------------------------

def _predict_batch(model: ServingModel, files: list[str], top_k: int) -> list[dict]:
    rows: dict[str, dict] = {}
    readable: dict[str, bytes] = {}
    for file, content in storage.read_many(files):
        if isinstance(content, Exception):
            rows[file] = _error_row(file, f"unreadable: {content}")
        elif not content:
            rows[file] = _error_row(file, "empty file")
        elif problem := _pixel_count_problem(content):
            rows[file] = _error_row(file, problem)
        else:
            readable[file] = content
    if readable:
        try:
            probabilities = model.probabilities(list(readable.values()))
            for file, file_probabilities in zip(readable, probabilities, strict=True):
                rows[file] = _prediction_row(model, file, file_probabilities, top_k)
        except tf.errors.InvalidArgumentError:
            # One bad image fails the whole call: find it by predicting one at a time.
            for file, content in readable.items():
                rows[file] = _predict_one(model, file, content, top_k)
    return [rows[file] for file in files]


def _pixel_count_problem(content: bytes) -> str | None:
    """Reads the header only: the decoder would allocate a huge image before failing."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        return f"too many pixels: {error}"
    except Exception:  # noqa: BLE001 - not for Pillow to judge; the model's decoder gives the reason
        return None
    if width * height > MAX_PIXELS:
        return f"too many pixels: {width}x{height} (at most {MAX_PIXELS})"
    return None


def _predict_one(model: ServingModel, file: str, content: bytes, top_k: int) -> dict:
    try:
        probabilities = model.probabilities([content])[0]
    except tf.errors.InvalidArgumentError as error:
        return _error_row(file, f"cannot be decoded: {decoder_reason(error.message)}")
    return _prediction_row(model, file, probabilities, top_k)


def decoder_reason(message: str) -> str:
    """The image decoder's own sentence from a TensorFlow error message, without the graph and node noise."""
    noise = ("Graph execution error", "Detected at node", "<stack traces")
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(noise) and "[[{{" not in line and "[Op:" not in line:
            return line
    return "not a JPEG, PNG, GIF, BMP or WebP image"


def _prediction_row(model: ServingModel, file: str, probabilities: np.ndarray, top_k: int) -> dict:
    scores = model.class_scores(probabilities[np.newaxis])[0]
    order = np.argsort(-scores, kind="stable")
    return {
        "file": file,
        "status": "ok",
        "predicted_label": model.class_names[order[0]],
        "score": round(float(scores[order[0]]), 6),
        "probabilities": model.named_probabilities(probabilities),
        "top_k": [{"label": model.class_names[index], "score": round(float(scores[index]), 6)}
                  for index in order[:top_k]],
    }


def _error_row(file: str, reason: str) -> dict:
    return {"file": file, "status": "error", "error": reason}


def _format_rows(rows: list[dict], output_format: str) -> str:
    if output_format == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for key in ("probabilities", "top_k"):
            if key in flat:
                flat[key] = json.dumps(flat[key], ensure_ascii=False)
        writer.writerow(flat)
    return buffer.getvalue()
